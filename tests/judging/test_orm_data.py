"""ORM data the paper's way (`--stage orm`, part 1) and the trained ORM's held-out metrics (part 4).

M0's paths come from the generation journal the stage resumes from (filled here with known paths,
so the test knows which are right); the teacher and the ORM are real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from mathse.cli import main
from mathse.judging.orm_data import LabelledPath, balance, heldout_ids, orm_metrics, read_labelled_paths
from mathse.run.config_loading import load_config
from mathse.run.errors import StageError
from mathse.run.records import read_problems
from mathse.run.storage import Journal, is_done, iter_jsonl, mark_done, read_json
from mathse.stages import orm as orm_stage
from mathse.testing.openai_server import FakeHTTPError, FakeOpenAIServer

GOOD = "Step 1: Read the figure.\nStep 2: Work it out.\nThe final answer is \\boxed{{{answer}}}"
BAD = "Step 1: Read the figure of {pid}.\nStep 2: Guess instead.\nThe final answer is \\boxed{{-999}}"


def teacher_reply(body: dict[str, Any], refuse: set[str]) -> str:
    """Annotations by problem: seed-0003 first names step 9 of 2 (asked again), seed-0005 never parses."""
    prompt = json.dumps(body["messages"][1])
    pid = re.search(r"figure of (seed-\d+)", prompt).group(1)  # type: ignore[union-attr]
    asked_again = len(body["messages"]) > 2
    if pid in refuse:
        raise FakeHTTPError(400, "refused")
    if pid == "seed-0005":
        return "I would rather not say."
    if pid == "seed-0003" and not asked_again:
        return '{"correct": false, "error_step": 9, "analysis": "somewhere"}'
    return '{"correct": false, "error_step": 2, "analysis": "Step 2 guesses instead of computing."}'


def data_config(run_config, server: FakeOpenAIServer, **data: Any) -> Path:
    teacher = {"base_url": server.base_url, "model": "teacher-x", "max_retries": 0, "backoff_base_s": 0.0}
    plan = {"paths_per_problem": 2, "heldout_fraction": 0.25, **data}
    return run_config(teacher=teacher, orm={"backend": "rule", "policy": "rule", "data": plan})


def prefill_m0_paths(cfg) -> None:
    """M0 'trained' and its two paths per seed problem already journaled: one right, one wrong."""
    mark_done(cfg.model_path("sft_model_stage0"), {"job": "test"})
    with Journal(orm_stage.data_dir(cfg) / "generations.jsonl") as journal:
        for p in read_problems(cfg.data.seed_file):
            for k, text in enumerate((GOOD.format(answer=p.answer), BAD.format(pid=p.id))):
                journal.append({"key": f"{p.id}#{k}", "id": p.id, "sample": k, "response": text})


def test_data_labels_annotates_reasks_drops_balances_splits_and_resumes(run_config) -> None:
    refuse = {"seed-0006"}
    with FakeOpenAIServer(replies=lambda body: teacher_reply(body, refuse)) as server:
        cfg = load_config(data_config(run_config, server))
        prefill_m0_paths(cfg)
        # A teacher call that fails: the stage stops, marks nothing, keeps what was answered.
        with pytest.raises(StageError, match=r"1 teacher annotations failed \(first: seed-0006#1: HTTP 400"):
            orm_stage.build_data(cfg)
        assert server.chat_calls == 8 + 2  # 8 incorrect paths, seed-0003 and seed-0005 asked again
        assert not is_done(orm_stage.data_dir(cfg))
        reask = server.requests[-1]["messages"]
        assert reask[2]["role"] == "assistant" and "from 1 to 2" in reask[3]["content"]

        refuse.clear()
        stats = orm_stage.build_data(cfg)  # the rerun asks only the failed one
        assert server.chat_calls == 11
        mark_done(orm_stage.data_dir(cfg), stats)

    assert (stats["paths"], stats["labelled_correct"], stats["labelled_incorrect"]) == (16, 8, 8)
    assert (stats["annotated"], stats["annotation_dropped"], stats["reasked"]) == (7, 1, 2)
    train = read_labelled_paths(orm_stage.data_dir(cfg) / "train.jsonl")
    heldout = read_labelled_paths(orm_stage.data_dir(cfg) / "heldout.jsonl")
    rows = train + heldout
    # Balanced 1:1 (one correct path cut), the dropped annotation is gone, labels are right.
    assert sum(r.correct for r in rows) == 7 and sum(not r.correct for r in rows) == 7
    assert not any(r.id == "seed-0005" and not r.correct for r in rows)
    assert all(r.error_step == 2 and "guesses" in r.analysis for r in rows if not r.correct)
    assert all(r.path.endswith(f"{{{r.answer}}}") for r in rows if r.correct)
    # Held out by problem: 2 of the 8 problems, none of them in training.
    assert len({r.id for r in heldout}) == 2 and not {r.id for r in heldout} & {r.id for r in train}
    assert stats["train"]["rows"] == len(train) and stats["heldout"]["rows"] == len(heldout)
    # The teacher's cost is in the ledger under stage "orm".
    usage = read_json(cfg.output_dir / "usage.json")["stages"]["orm"]["teacher-x"]
    assert (usage["answered"], usage["failures"], usage["calls"]) == (10, 1, 11)

    # Killed before the marker, rerun: the same files, and not one teacher call (journal + cache).
    before = (orm_stage.data_dir(cfg) / "train.jsonl").read_text()
    (orm_stage.data_dir(cfg) / ".mathse_done.json").unlink()
    with FakeOpenAIServer(replies=lambda body: teacher_reply(body, set())) as again:
        cfg2 = load_config(data_config(run_config, again))
        assert orm_stage.build_data(cfg2) == stats and again.chat_calls == 0
    assert (orm_stage.data_dir(cfg) / "train.jsonl").read_text() == before


def labelled(pid: str, correct: bool, step: int | None = None) -> LabelledPath:
    path = "Step 1: a.\nStep 2: b.\nStep 3: c."
    return LabelledPath(id=pid, question="q", path=path, correct=correct, error_step=step, analysis="x")


def test_balance_ratio_cap_and_determinism() -> None:
    rows = [labelled(f"c{i}", True) for i in range(10)] + [labelled(f"w{i}", False, 2) for i in range(4)]
    one = balance(rows, 1.0, None, seed=1)
    assert (sum(r.correct for r in one), sum(not r.correct for r in one)) == (4, 4)
    assert balance(rows, 1.0, None, seed=1) == one  # same rows every run
    assert [r.id for r in one] == [r.id for r in rows if r in one]  # input order kept
    half = balance(rows, 0.5, None, seed=1)
    assert (sum(r.correct for r in half), sum(not r.correct for r in half)) == (2, 4)
    capped = balance(rows, 2.0, 3, seed=1)
    assert (sum(r.correct for r in capped), sum(not r.correct for r in capped)) == (6, 3)
    few_correct = balance(rows[8:], 1.0, None, seed=1)  # 2 correct, 4 incorrect: incorrect cut to 2
    assert (sum(r.correct for r in few_correct), sum(not r.correct for r in few_correct)) == (2, 2)


def test_heldout_split_is_by_problem_and_stable() -> None:
    ids = [f"p{i}" for i in range(20)]
    held = heldout_ids(ids, 0.1, seed=3)
    assert len(held) == 2 and held == heldout_ids(reversed(ids), 0.1, seed=3)
    assert heldout_ids(ids, 0.0, seed=3) == set() and heldout_ids(["only"], 0.5, seed=3) == set()


def test_metrics_on_known_answers() -> None:
    pairs = [
        (labelled("a", True), {"correct": True, "error_step": None, "parsed": True}),  # right
        (labelled("b", True), {"correct": None, "error_step": None, "parsed": False}),  # unparseable
        (labelled("c", False, 2), {"correct": False, "error_step": 2, "parsed": True}),  # right, step right
        (labelled("d", False, 2), {"correct": False, "error_step": 1, "parsed": True}),  # right, step wrong
        (labelled("e", False, 3), {"correct": True, "error_step": None, "parsed": True}),  # wrong
        (labelled("f", False, None), None),  # never answered
    ]
    m = orm_metrics(pairs)
    assert (m["paths"], m["correct_paths"], m["incorrect_paths"]) == (6, 2, 4)
    assert m["accuracy"] == round(3 / 6, 4) and m["accuracy_on_correct"] == 0.5 and m["accuracy_on_incorrect"] == 0.5
    assert m["error_step_exact"] == round(1 / 3, 4) and m["unparseable_rate"] == round(2 / 6, 4)


def orm_reply(body: dict[str, Any]) -> str:
    text = json.dumps(body["messages"][1])
    if "[right]" in text:
        return '{"correct": true, "error_step": null, "analysis": "fine"}'
    if "[garbage]" in text:
        return "turtles"
    step = 2 if "[step-right]" in text else 1
    return json.dumps({"correct": False, "error_step": step, "analysis": "wrong"})


def test_stage_measures_the_orm_on_its_heldout_file(run_config, demo_data, tmp_path: Path, capsys) -> None:
    seed = read_problems(demo_data[0])[0]
    base = {"id": seed.id, "question": seed.question, "images": list(seed.images), "answer": seed.answer}
    good = "Step 1: Look. {tag}\nStep 2: Work it out.\nThe final answer is \\boxed{{10}}"
    bad = "Step 1: Look. {tag}\nStep 2: Guess.\nThe final answer is \\boxed{{0}}"
    rows = [
        {**base, "path": good.format(tag="[right]"), "correct": True, "error_step": None, "analysis": "ok"},
        {**base, "path": good.format(tag="[garbage]"), "correct": True, "error_step": None, "analysis": "ok"},
        {**base, "path": bad.format(tag="[step-right]"), "correct": False, "error_step": 2, "analysis": "guess"},
        {**base, "path": bad.format(tag="[step-wrong]"), "correct": False, "error_step": 2, "analysis": "guess"},
    ]
    train_file = tmp_path / "train.jsonl"
    heldout_file = tmp_path / "heldout.jsonl"
    for f in (train_file, heldout_file):
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with FakeOpenAIServer(replies=orm_reply) as server:
        api = {"base_url": server.base_url, "model": "orm", "max_retries": 0}
        config = run_config(orm={"backend": "api", "policy": "orm", "api": api, "train_file": str(train_file),
                                 "heldout_file": str(heldout_file)})
        cfg = load_config(config)
        mark_done(cfg.model_path("orm_model"), {"job": "trained elsewhere in this test"})
        assert main(["--stage", "orm", "--config", str(config)]) == 0
        printed = capsys.readouterr().out
        calls = server.chat_calls
        assert main(["--stage", "orm", "--config", str(config)]) == 0  # finished: nothing asked again
        assert server.chat_calls == calls == 5  # 4 paths + the garbage one asked again
    metrics = read_json(cfg.model_path("orm_model") / "orm_metrics.json")
    assert metrics["accuracy"] == 0.75 and metrics["accuracy_on_correct"] == 0.5
    assert metrics["accuracy_on_incorrect"] == 1.0 and metrics["error_step_exact"] == 0.5
    assert metrics["unparseable_rate"] == 0.25 and metrics["paths"] == 4
    assert "accuracy 75.0% (correct paths 50.0%, incorrect paths 100.0%), error step exact 50.0%" in printed
    assert str(cfg.model_path("orm_model") / "orm_metrics.json") in printed
    assert len(list(iter_jsonl(cfg.output_dir / "orm" / "heldout_verdicts.jsonl"))) == 4

    # The run report shows them.
    assert main(["--stage", "report", "--config", str(config)]) == 0
    report = (cfg.output_dir / "report" / "report.md").read_text()
    section = report[report.index("## The trained ORM"):]
    assert "| 4 | 75.0% | 50.0% | 100.0% | 50.0% | 25.0% |" in section
    assert read_json(cfg.output_dir / "report" / "report.json")["orm_model"]["metrics"]["accuracy"] == 0.75


def test_dry_run_prints_the_data_plan_and_training_command(run_config, capsys, tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        config = data_config(run_config, server, max_problems=5, temperature=0.9)
        assert main(["--stage", "orm", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[dry-run] orm data: 5 labelled problems (seed, first 5) x 2 paths = 10 paths from M0" in out
    assert "at temperature 0.9" in out and "teacher teacher-x" in out and "25% of the problems held out" in out
    assert re.search(r"\$ llamafactory-cli train \S+/orm/train_orm\.yaml", out)
    assert not (tmp_path / "output").exists()


@pytest.mark.slow
def test_m0_really_samples_the_paths(run_config, tiny_model) -> None:
    """M0 (the tiny model) generates through LLaMA-Factory's ChatModel; all its paths are wrong, so
    the teacher is asked about each, and with no correct path to balance against the stage says so."""
    reply = '{"correct": false, "error_step": 1, "analysis": "Step 1 does not read the figure."}'
    with FakeOpenAIServer(replies=reply) as server:
        cfg = load_config(data_config(run_config, server, max_problems=3))
        shutil.copytree(tiny_model, cfg.model_path("sft_model_stage0"))
        mark_done(cfg.model_path("sft_model_stage0"), {"job": "the tiny model stands in for M0"})
        with pytest.raises(StageError, match=r"no training path left after balancing .*'correct': 0"):
            orm_stage.build_data(cfg)
        generations = list(iter_jsonl(orm_stage.data_dir(cfg) / "generations.jsonl"))
        answered = [g for g in generations if g["response"]]
        assert len(generations) == 6 and {g["id"] for g in generations} == {"seed-0000", "seed-0001", "seed-0002"}
        assert server.chat_calls == len(answered) > 0
        notes = list(iter_jsonl(orm_stage.data_dir(cfg) / "annotations.jsonl"))
        assert len(notes) == len(answered) and all(n["status"] == "ok" and n["error_step"] == 1 for n in notes)


@pytest.mark.slow
def test_orm_stage_end_to_end_data_training_served_metrics_and_a_free_rerun(run_config, capsys) -> None:
    """Built data -> real `llamafactory-cli train` -> the pipeline serves the ORM -> held-out metrics."""
    with FakeOpenAIServer(replies=lambda body: teacher_reply(body, set())) as server:
        teacher = {"base_url": server.base_url, "model": "teacher-x", "max_retries": 0}
        orm = {"backend": "trained", "policy": "orm", "max_new_tokens": 8, "logprobs": False, "serve_timeout_s": 300,
               "data": {"paths_per_problem": 2, "heldout_fraction": 0.25}}
        config = run_config(teacher=teacher, orm=orm, llama_factory={"max_steps": 2, "cutoff_len": 1024})
        cfg = load_config(config)
        prefill_m0_paths(cfg)
        assert main(["--stage", "orm", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        calls = server.chat_calls
        assert calls == 8 + 2  # every incorrect path annotated, two asked again
        model = cfg.model_path("orm_model")
        assert is_done(model) and (model / "model.safetensors").is_file()
        assert "orm: data: 16 paths from M0 on 8 problems" in out and "server(s) for mathse-orm" in out
        metrics = read_json(model / "orm_metrics.json")
        heldout = read_labelled_paths(orm_stage.data_dir(cfg) / "heldout.jsonl")
        assert metrics["paths"] == len(heldout) > 0 and f"held-out metrics on {len(heldout)} paths" in out
        assert list((cfg.output_dir / "orm" / "servers").glob("mathse-orm.replica-*.log"))

        mtime = (model / "model.safetensors").stat().st_mtime_ns
        assert main(["--stage", "orm", "--config", str(config)]) == 0
        assert "orm: already done, nothing to do" in capsys.readouterr().out
        assert server.chat_calls == calls and (model / "model.safetensors").stat().st_mtime_ns == mtime


def test_verify_correct_asks_the_teacher_about_right_answers_too(run_config) -> None:
    """orm.data.verify_correct: a right answer reached through a faulty step is an incorrect example."""
    faulty_answers = {"30", "9"}  # seed-0001, seed-0004, seed-0006: the teacher finds a faulty step

    def reply(body: dict[str, Any]) -> str:
        text = json.dumps(body["messages"][1])
        if "reaches the reference answer" not in text:  # a wrong answer: orm.data.annotate_prompt
            return '{"correct": false, "error_step": 2, "analysis": "Step 2 guesses instead of computing."}'
        if re.search(r"\((\w+)\) reaches", text).group(1) in faulty_answers:  # type: ignore[union-attr]
            return '{"correct": false, "error_step": 1, "analysis": "Step 1 misreads the figure."}'
        return '{"correct": true, "error_step": null, "analysis": "All steps hold."}'

    with FakeOpenAIServer(replies=reply) as server:
        cfg = load_config(data_config(run_config, server, verify_correct=True,
                                      verify_prompt="Problem {question} ({answer}) reaches the reference answer:\n"
                                                    "{steps}\nJSON with error_step from 1 to {n_steps}."))
        prefill_m0_paths(cfg)
        stats = orm_stage.build_data(cfg)
        assert server.chat_calls == 16  # every path once: 8 wrong answers, 8 right ones checked
    assert (stats["verified"], stats["faulty_right_answers"]) == (8, 3)
    assert (stats["labelled_correct"], stats["labelled_incorrect"]) == (8, 8)
    rows = read_labelled_paths(orm_stage.data_dir(cfg) / "train.jsonl") + \
        read_labelled_paths(orm_stage.data_dir(cfg) / "heldout.jsonl")
    faulty = [r for r in rows if not r.correct and r.path.endswith(f"{{{r.answer}}}")]
    assert faulty and all(r.error_step == 1 and r.analysis == "Step 1 misreads the figure." for r in faulty)
    assert all(r.answer not in faulty_answers and r.analysis == cfg.orm.data.correct_analysis
               for r in rows if r.correct)
