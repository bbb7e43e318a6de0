"""The ORM judge: rule backend, and the api backend against a real OpenAI-protocol HTTP server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mathse.judging.judge import JudgeItem, PathJudge, failures_path, journal_path, local_orm_args, open_journal
from mathse.judging.verdict import ORM_SYSTEM_PROMPT
from mathse.run.config import MathSEConfig
from mathse.run.records import Problem
from mathse.run.storage import Journal, iter_jsonl
from mathse.run.usage import UsageLedger
from mathse.stages import orm as orm_stage
from mathse.testing.openai_server import FakeHTTPError, FakeOpenAIServer, FaultPlan, last_user_text, token_logprobs

# Scripted ORM replies, chosen by a tag the test writes into the path (the server sees the path).
REPLIES = {
    "[json-ok]": '{"correct": true, "error_step": null, "analysis": "All steps hold.", "score": 0.9}',
    "[json-bad]": 'Sure. {"correct": false, "error_step": 2, "analysis": "Step 2 adds wrongly.", "score": 0.1}',
    "[fenced]": '```json\n{"correct": false, "error_step": 1, "analysis": "Miscounted."}\n```',
    "[tagged]": "Correct: no\nError step: 2\nAnalysis: the sum is off by one",
    "[garbage]": "I like turtles.",
    "[ok-0.6]": '{"correct": true, "error_step": null, "analysis": "Looks fine.", "score": 0.6}',
}


def scripted(body: dict[str, Any]) -> str:
    # The path's tag is in the first user turn; a re-ask adds the reply and a reminder after it.
    text = last_user_text({"messages": body["messages"][:2]})
    for tag, reply in REPLIES.items():
        if tag in text:
            return reply
    raise FakeHTTPError(400, f"no scripted reply for: {text[-80:]}")


@pytest.fixture
def problem(tmp_path: Path) -> Problem:
    image = tmp_path / "figure.png"
    Image.new("RGB", (16, 16), "white").save(image)
    return Problem(id="p1", question="The figure shows 2 and 3. What is their sum?", images=(str(image),), answer="5")


def path_for(tag: str, answer: str = "5") -> str:
    steps = f"Step 1: Read the numbers 2 and 3. {tag}\nStep 2: Add them: 2 + 3 = {answer}.\n"
    return steps + f"The final answer is \\boxed{{{answer}}}"


def make_cfg(tmp_path: Path, **orm: Any) -> MathSEConfig:
    return MathSEConfig.model_validate(
        {"model": {"base": "tiny"}, "run": {"output_dir": str(tmp_path / "out")},
         "orm": {"backend": "rule", "policy": "rule", **orm}}
    )


def api_section(server: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {"base_url": server.base_url, "model": "orm-7b", "max_retries": 0, "backoff_base_s": 0.0, **extra}


def judge_once(cfg: MathSEConfig, items: list[JudgeItem], stage: str = "evolve-r1", **kwargs: Any):
    """Judge with a freshly opened journal (as a new process would), closing it after."""
    with open_journal(cfg, stage) as journal:
        stats = PathJudge(cfg, stage, **kwargs).judge(items, journal)
    return stats, {row["key"]: row for row in iter_jsonl(journal_path(cfg, stage))}


def test_rule_backend_records_rule_and_resumes(tmp_path: Path, problem: Problem) -> None:
    cfg = make_cfg(tmp_path)  # backend rule, policy rule
    items = [JudgeItem("p1#0", problem, path_for("")), JudgeItem("p1#1", problem, path_for("", answer="6"))]
    stats, rows = judge_once(cfg, items)
    assert (stats.judged, stats.correct, stats.incorrect, stats.failed) == (2, 1, 1, 0)
    good, bad = rows["p1#0"], rows["p1#1"]
    assert good["orm"] is None and good["rule"]["correct"] is True and good["final"]["correct"] is True
    assert bad["final"]["correct"] is False and bad["final"]["error_step"] is None and bad["final"]["source"] == "rule"
    assert "mismatch" in bad["rule"]["reason"] and bad["rule"]["extracted"] == "6"
    assert good["id"] == "p1" and good["steps"][0].startswith("Read the numbers") and len(good["steps"]) == 2
    assert journal_path(cfg, "evolve-r1") == tmp_path / "out" / "orm_reflections" / "evolve-r1.jsonl"

    # A resumed run judges nothing twice; a new item is judged.
    items.append(JudgeItem("p1#2", problem, path_for("")))
    stats, rows = judge_once(cfg, items)
    assert (stats.judged, stats.skipped_existing) == (1, 2) and len(rows) == 3
    assert "judged 1 new paths: 1 correct" in stats.summary_line() and "2 already judged" in stats.summary_line()


def test_api_reply_formats_prompt_content_and_rerun_makes_no_calls(tmp_path: Path, problem: Problem) -> None:
    with FakeOpenAIServer(replies=scripted) as server:
        # Without log-probabilities the score is what the ORM wrote (see the logprobs test below).
        cfg = make_cfg(tmp_path, backend="api", policy="orm", api=api_section(server), logprobs=False)
        tags = ["[json-ok]", "[json-bad]", "[fenced]", "[tagged]", "[garbage]"]
        items = [JudgeItem(f"p1#{i}", problem, path_for(tag)) for i, tag in enumerate(tags)]
        ledger = UsageLedger(tmp_path / "usage.json")
        stats, rows = judge_once(cfg, items, ledger=ledger)
        assert server.chat_calls == len(items) + 1  # the garbage reply is asked again once
        reask = server.requests[-1]["messages"]
        assert reask[2] == {"role": "assistant", "content": "I like turtles."}
        assert reask[3]["role"] == "user" and "could not be read as a verdict" in reask[3]["content"]

        # What the ORM was shown: system prompt, the image as a data URL, then the numbered steps
        # and the reference answer.
        body = server.requests[0]
        system, user = body["messages"]
        assert system == {"role": "system", "content": ORM_SYSTEM_PROMPT}
        image_part, text_part = user["content"]
        assert image_part["image_url"]["url"].startswith("data:image/png;base64,")
        text = text_part["text"]
        assert text.startswith(f"## Problem\n{problem.question}")
        assert "## Reference answer\n5" in text
        assert "Step 1: Read the numbers 2 and 3." in text and "\nStep 2: Add them: 2 + 3 = 5." in text
        assert "(2 steps)" in text and "from 1 to 2" in text

        by_tag = {tag: rows[f"p1#{i}"] for i, tag in enumerate(tags)}
        assert by_tag["[json-ok]"]["orm"]["score"] == 0.9 and by_tag["[json-ok]"]["final"]["correct"] is True
        assert by_tag["[json-bad]"]["final"] == {
            "correct": False,
            "error_step": 2,
            "analysis": "Step 2 adds wrongly.",  # policy "orm": the rule is recorded, not used
            "source": "orm",
        }
        assert by_tag["[fenced]"]["orm"]["error_step"] == 1 and by_tag["[fenced]"]["final"]["correct"] is False
        assert by_tag["[tagged]"]["orm"]["analysis"] == "the sum is off by one"
        assert by_tag["[tagged]"]["final"]["error_step"] == 2
        garbage = by_tag["[garbage]"]
        assert garbage["orm"]["parsed"] is False and garbage["orm"]["raw"] == "I like turtles."
        assert garbage["orm"]["correct"] is None and garbage["final"]["correct"] is None
        assert all(row["rule"]["correct"] is True for row in rows.values())  # the rule is always recorded
        assert (stats.judged, stats.correct, stats.incorrect, stats.undecided) == (5, 1, 3, 1)
        assert (stats.unparseable, stats.disagree, stats.failed, stats.reasked) == (1, 3, 0, 1)
        assert ledger.stage("evolve-r1")["answered"] == 6
        assert garbage["asks"] == 1

        # Rerun: the decided verdicts cost nothing; the unknown one is asked again (past the answer
        # cache: a new ask, then its re-ask) and its new row supersedes the old one.
        stats, rows = judge_once(cfg, items)
        assert server.chat_calls == len(items) + 3 and (stats.judged, stats.skipped_existing) == (1, 4)
        assert rows["p1#4"]["asks"] == 2 and rows["p1#4"]["final"]["correct"] is None
        with open_journal(cfg, "evolve-r1") as journal:
            assert journal["p1#4"]["asks"] == 2 and len(journal) == 5


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("orm", (True, False)), ("both", (False, False)), ("either", (True, True))],
)
def test_policies_with_a_disagreeing_rule(
    tmp_path: Path, problem: Problem, policy: str, expected: tuple[bool, bool]
) -> None:
    with FakeOpenAIServer(replies=scripted) as server:
        cfg = make_cfg(tmp_path, backend="api", policy=policy, api=api_section(server))
        # ORM says correct but the answer is wrong; ORM says step 2 is wrong but the answer is right.
        items = [
            JudgeItem("a", problem, path_for("[json-ok]", answer="7")),
            JudgeItem("b", problem, path_for("[json-bad]")),
        ]
        stats, rows = judge_once(cfg, items)
    assert (rows["a"]["final"]["correct"], rows["b"]["final"]["correct"]) == expected
    assert rows["a"]["rule"]["correct"] is False and rows["b"]["rule"]["correct"] is True
    assert stats.disagree == 2 and rows["a"]["final"]["source"] == policy
    # The ORM's located error survives whenever the final verdict is negative.
    assert rows["b"]["final"]["error_step"] == (2 if not expected[1] else None)
    if policy != "orm":
        assert "Rule check: mismatch" in rows["a"]["final"]["analysis"]


@pytest.mark.parametrize(("threshold", "correct"), [(None, True), (0.5, True), (0.8, False)])
def test_score_threshold(tmp_path: Path, problem: Problem, threshold: float | None, correct: bool) -> None:
    with FakeOpenAIServer(replies=scripted) as server:
        cfg = make_cfg(
            tmp_path, backend="api", policy="orm", score_threshold=threshold, api=api_section(server), logprobs=False
        )
        stats, rows = judge_once(cfg, [JudgeItem("x", problem, path_for("[ok-0.6]"))])
    assert rows["x"]["orm"]["correct"] is True and rows["x"]["orm"]["score"] == 0.6
    assert rows["x"]["final"]["correct"] is correct and stats.correct == int(correct)
    if not correct:
        assert "below threshold 0.8" in rows["x"]["final"]["analysis"]


def test_failed_calls_are_counted_not_journaled_and_retried(tmp_path: Path, problem: Problem) -> None:
    refuse = {"on": True}

    def replies(body: dict[str, Any]) -> str:
        if refuse["on"] and "[fail]" in last_user_text(body):
            raise FakeHTTPError(400, "image too large")
        return REPLIES["[json-ok]"]

    with FakeOpenAIServer(replies=replies) as server:
        cfg = make_cfg(tmp_path, backend="api", policy="both", api=api_section(server, max_retries=3))
        items = [JudgeItem(f"k{i}", problem, path_for(f"({i})" + ("[fail]" if i % 2 else ""))) for i in range(4)]
        stats, rows = judge_once(cfg, items)
        assert (stats.judged, stats.failed) == (2, 2) and set(rows) == {"k0", "k2"}
        assert server.chat_calls == 4  # a 400 is not retried
        assert set(stats.unjudged) == {"k1", "k3"}
        unjudged = stats.unjudged["k1"]
        assert unjudged["final"]["correct"] is None and "HTTP 400: image too large" in unjudged["error"]
        assert unjudged["rule"]["correct"] is True and unjudged["orm"] is None
        side = list(iter_jsonl(failures_path(journal_path(cfg, "evolve-r1"))))
        assert {row["key"] for row in side} == {"k1", "k3"} and "2 failed" in stats.summary_line()

        # The rerun asks again for the failed ones only.
        refuse["on"] = False
        stats, rows = judge_once(cfg, items)
        assert (stats.judged, stats.failed, stats.skipped_existing) == (2, 0, 2) and len(rows) == 4
        assert server.chat_calls == 6 and rows["k1"]["final"]["correct"] is True


def test_server_that_always_500s(tmp_path: Path, problem: Problem) -> None:
    with FakeOpenAIServer(replies=scripted, faults=FaultPlan(rate=1.0, kinds=("500",))) as server:
        cfg = make_cfg(tmp_path, backend="api", policy="either", api=api_section(server))
        items = [JudgeItem("a", problem, path_for("[json-ok]")), JudgeItem("b", problem, path_for("[tagged]"))]
        stats, rows = judge_once(cfg, items)
        assert (stats.judged, stats.failed, rows) == (0, 2, {})
        assert stats.unjudged["a"]["error"] == "HTTP 500 after 0 retries"
        assert not (tmp_path / "out" / "cache" / "api").exists() or not any(
            (tmp_path / "out" / "cache" / "api").rglob("*.json")
        )

        server.faults = None  # the server recovers
        stats, rows = judge_once(cfg, items)
        assert (stats.judged, stats.failed) == (2, 0) and rows["b"]["orm"]["error_step"] == 2
        # Under "either" the rule's "correct" carries a path the ORM rejected.
        assert rows["b"]["final"]["correct"] is True
        calls = server.chat_calls
        assert judge_once(cfg, items)[0].skipped_existing == 2 and server.chat_calls == calls


def test_policy_rule_never_asks_the_orm(tmp_path: Path, problem: Problem) -> None:
    with FakeOpenAIServer(replies=scripted) as server:
        cfg = make_cfg(tmp_path, backend="api", policy="rule", api=api_section(server))
        stats, rows = judge_once(cfg, [JudgeItem("a", problem, path_for("[json-ok]"))])
        assert server.chat_calls == 0 and stats.judged == 1 and rows["a"]["orm"] is None


def test_items_are_taken_lazily_as_verdicts_are_journaled(tmp_path: Path, problem: Problem) -> None:
    """A generator of paths is never read far ahead of the verdicts: at most the client's in-flight
    window (concurrency * 4 + 16) is taken but not journaled, so memory does not grow with the batch."""
    n, concurrency = 80, 1
    window = concurrency * 4 + 16
    with FakeOpenAIServer(replies=scripted) as server:
        cfg = make_cfg(tmp_path, backend="api", policy="orm", logprobs=False,
                       api=api_section(server, concurrency=concurrency))
        with open_journal(cfg, "evolve-r1") as journal:
            ahead: list[int] = []

            def items():
                for i in range(n):
                    ahead.append(i - len(journal))  # taken before this one, minus journaled
                    yield JudgeItem(f"p1#{i}", problem, path_for(f"[json-ok] variant {i}"))

            stats = PathJudge(cfg, "evolve-r1").judge(items(), journal, total=n)
            assert stats.judged == stats.correct == len(journal) == server.chat_calls == n
            assert max(ahead) <= window + 1 and ahead[-1] <= window + 1
            # Rerun over the same generator: everything is already judged, nothing is asked.
            assert PathJudge(cfg, "evolve-r1").judge(items(), journal).skipped_existing == n
        assert server.chat_calls == n


def test_duplicate_keys_are_rejected(tmp_path: Path, problem: Problem) -> None:
    cfg = make_cfg(tmp_path)
    with Journal(tmp_path / "j.jsonl") as journal, pytest.raises(ValueError, match="duplicate"):
        PathJudge(cfg, "s").judge([JudgeItem("a", problem, "x"), JudgeItem("a", problem, "y")], journal)


def test_problem_without_reference_has_no_rule_verdict(tmp_path: Path, problem: Problem) -> None:
    cfg = make_cfg(tmp_path)
    stats, rows = judge_once(cfg, [JudgeItem("a", problem.model_copy(update={"answer": ""}), path_for(""))])
    assert rows["a"]["rule"] is None and rows["a"]["final"]["correct"] is None and stats.undecided == 1
    assert json.dumps(rows["a"])  # a plain JSON row


@pytest.mark.parametrize("override", [None, 50176])
def test_local_orm_resizes_images_like_its_training(tmp_path: Path, override: int | None) -> None:
    """The in-process ORM's ChatModel gets the image_max_pixels its training job used: the recipe's
    value, or the llama_factory block's override of it."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("stage: sft\nfinetuning_type: lora\nimage_max_pixels: 200704\n", encoding="utf-8")
    cfg = MathSEConfig.model_validate({
        "model": {"base": "tiny"}, "run": {"output_dir": str(tmp_path / "out")},
        "llama_factory": {"recipe": str(recipe), "image_max_pixels": override},
        "orm": {"backend": "local", "policy": "orm",
                "local": {"model_name_or_path": "orm-model", "adapter_name_or_path": "orm-adapter"}},
    })
    args = local_orm_args(cfg)
    trained = orm_stage.train_job(cfg).args["image_max_pixels"]
    assert trained == (override or 200704)
    assert args["image_max_pixels"] == trained
    assert args["do_sample"] is False and args["infer_backend"] == "huggingface"
    assert (args["model_name_or_path"], args["adapter_name_or_path"]) == ("orm-model", "orm-adapter")


@pytest.mark.parametrize("own", [None, "qwen2_vl"])
def test_local_orm_follows_the_model_template_and_gets_inference_extra(tmp_path: Path, own: str | None) -> None:
    """An InternVL run's in-process ORM uses intern_vl (not a Qwen default) unless orm.local names its own
    template, and the processor arguments of inference.extra reach it like every other ChatModel."""
    local = {"model_name_or_path": "orm-model", **({"template": own} if own else {})}
    cfg = MathSEConfig.model_validate({
        "model": {"base": "tiny", "template": "intern_vl"}, "run": {"output_dir": str(tmp_path / "out")},
        "inference": {"extra": {"crop_to_patches": True}},
        "orm": {"backend": "local", "policy": "orm", "local": local},
    })
    args = local_orm_args(cfg)
    assert args["template"] == (own or "intern_vl")
    assert args["crop_to_patches"] is True and args["do_sample"] is False
@pytest.mark.parametrize(("threshold", "accepted"), [(None, True), (0.5, True), (0.8, False)])
def test_score_from_logprobs_and_the_threshold_decide(
    tmp_path: Path, problem: Problem, threshold: float | None, accepted: bool
) -> None:
    """The ORM says correct with P(true) = 0.7 at its verdict token; the threshold turns it down above 0.7."""
    reply = '{"correct": true, "error_step": null, "analysis": "fine", "score": 0.99}'
    with FakeOpenAIServer(replies=reply, logprobs=lambda body, text: token_logprobs(text, p_true=0.7)) as server:
        cfg = make_cfg(tmp_path, backend="api", policy="orm", api=api_section(server), score_threshold=threshold)
        stats, rows = judge_once(cfg, [JudgeItem("p1#0", problem, path_for(""))])
    body = server.requests[0]
    assert body["logprobs"] is True and body["top_logprobs"] >= 2
    row = rows["p1#0"]
    # The score comes from the log-probabilities (0.7), not from the 0.99 the ORM wrote.
    assert row["orm"]["score"] == pytest.approx(0.7) and row["orm"]["score_source"] == "logprobs"
    assert row["orm"]["correct"] is True and row["final"]["correct"] is accepted
    assert (stats.correct, stats.incorrect) == ((1, 0) if accepted else (0, 1))
    if not accepted:
        assert "below threshold 0.8" in row["final"]["analysis"]


def test_without_logprobs_the_reply_score_is_used_or_none(tmp_path: Path, problem: Problem) -> None:
    """A server that returns no log-probabilities (llamafactory-cli api): the ORM's own score, else none."""
    replies = {"[a]": '{"correct": true, "analysis": "ok", "score": 0.6}', "[b]": '{"correct": true, "analysis": "ok"}'}

    def reply(body: dict[str, Any]) -> str:
        return next(v for k, v in replies.items() if k in last_user_text(body))

    with FakeOpenAIServer(replies=reply, logprobs=lambda body, text: None) as server:
        cfg = make_cfg(tmp_path, backend="api", policy="orm", api=api_section(server), score_threshold=0.8)
        items = [JudgeItem("p1#0", problem, path_for("[a]")), JudgeItem("p1#1", problem, path_for("[b]"))]
        _, rows = judge_once(cfg, items)
    assert rows["p1#0"]["orm"]["score_source"] == "reply" and rows["p1#0"]["final"]["correct"] is False
    assert rows["p1#1"]["orm"]["score"] is None and rows["p1#1"]["final"]["correct"] is True  # no score: no threshold
