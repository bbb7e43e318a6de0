"""`--stage eval`: checkpoints x benchmarks -> predictions, scores, results tables; resumable."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mathse.run.checkpoints import resolve_checkpoints
from mathse.run.config import ConfigError, MathSEConfig
from mathse.run.errors import StageError
from mathse.run.storage import is_done, iter_jsonl, mark_done, read_marker
from mathse.stages import eval as eval_stage
from mathse.testing.chat_model import FakeChatModel
from mathse.testing.openai_server import FakeOpenAIServer, last_user_text
from tests.answers.test_evalsets import write_mathverse_json, write_mathvista_parquet
from tests.conftest import PROJECT_ROOT

# ---------------------------------------------------------------------------------------------
# A stand-in ChatModel with scripted answers (fast)

# Question snippet -> reply of the "good" model; the other model never states an answer.
SCRIPT = {
    "spring compressed": "Step 1: energy.\nThe final answer is \\boxed{1.23}",  # float, precision 1: right
    "measuring cup": "It holds one thousand grams, I believe.",  # no extractable answer: judge
    "平分线": "The final answer is \\boxed{C}",  # right letter
    "above the line": "The final answer is \\boxed{[5, 2]}",  # wrong order
    "angle CED": "The answer is (D).",  # right
    "According to the question shown": "\\boxed{13}",  # wrong
    "The radius is 3 cm": "L = \\sqrt{13^2+6^2}, so \\boxed{\\sqrt{205}}",  # right
}


def scripted_model(good: bool) -> FakeChatModel:
    """Answers from SCRIPT by the question it sees; a bad model never gives an answer."""
    def reply(content: str, call: int, i: int) -> str:
        if not good:
            return "Let me think about the figure for a while longer."
        return next(r for key, r in SCRIPT.items() if key in content)

    return FakeChatModel(reply=reply)


class Factory:
    """Builds one scripted model per checkpoint (the copy of the model answers nothing)."""

    def __init__(self) -> None:
        self.models: dict[str, FakeChatModel] = {}

    def __call__(self, args: dict[str, Any]) -> FakeChatModel:
        path = args["model_name_or_path"]
        self.models[path] = scripted_model(good=not path.endswith("copy"))
        return self.models[path]

    @property
    def calls(self) -> int:
        return sum(len(m.calls) for m in self.models.values())


def judge_reply(body: dict[str, Any]) -> str:
    return "Correct" if "Reference answer: 1000" in last_user_text(body) else "Incorrect"


def make_config(tmp_path: Path, judge_url: str | None = None, **eval_section: Any) -> MathSEConfig:
    vista = write_mathvista_parquet(tmp_path / "bench" / "MathVista")
    verse = write_mathverse_json(tmp_path / "bench" / "MathVerse")
    (tmp_path / "base").mkdir(exist_ok=True)
    (tmp_path / "copy").mkdir(exist_ok=True)
    section: dict[str, Any] = {
        "benchmarks": [
            {"name": "MathVista", "format": "mathvista", "path": str(vista)},
            {"name": "MathVerse", "format": "mathverse", "path": str(verse)},
        ],
        "checkpoints": ["base", f"copy={tmp_path / 'copy'}"],
    }
    if judge_url:
        section["judge"] = {"base_url": judge_url, "model": "judge-model", "max_retries": 0}
    section.update(eval_section)
    return MathSEConfig.model_validate(
        {
            "model": {"base": str(tmp_path / "base")},
            "run": {"output_dir": str(tmp_path / "out")},
            "llama_factory": {"recipe": str(PROJECT_ROOT / "configs" / "llama_factory" / "sft_full.yaml")},
            "eval": section,
        }
    )


def test_eval_end_to_end_with_judge_tables_and_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    factory = Factory()
    with FakeOpenAIServer(replies=judge_reply) as judge:
        cfg = make_config(tmp_path, judge.base_url)
        assert eval_stage.run(cfg, chat_model_factory=factory) == 0
        out = tmp_path / "out" / "eval"
        assert factory.calls == 2 * 7  # every item once per checkpoint, greedy
        # Only the responses the rules could not read went to the judge: 1 (base) + 7 (copy).
        assert judge.chat_calls == 8
        printed = capsys.readouterr().out
        assert "eval: base/MathVista: 50.00% (2/4); 1 answers not found; judge on those: 1 correct" in printed

        preds = {p["id"]: p for p in iter_jsonl(out / "base" / "MathVista" / "predictions.jsonl")}
        assert preds["1"]["extracted"] == "1.23" and preds["1"]["correct"] is True
        assert preds["2"]["extracted"] is None and preds["2"]["judge"]["verdict"] == "correct"
        assert preds["2"]["correct"] is False and preds["2"]["correct_with_judge"] is True
        assert preds["3"]["options"][2] == "145°" and preds["3"]["answer_letter"] == "C" and preds["3"]["correct"]
        assert preds["4"]["reason"] == "mismatch: got [5, 2], expected [2, 5]"
        assert preds["3"]["question"].startswith("Hint:") and preds["3"]["images"][0].endswith(".png")
        assert set(preds["1"]) >= {"id", "question", "answer", "response", "extracted", "correct", "judge", "metadata"}

        scores = json.loads((out / "base" / "MathVerse" / "scores.json").read_text())
        assert scores["subsets"]["Vision Only"]["correct"] == 0 and scores["breakdowns"]["subject"]
        assert is_done(out / "copy" / "MathVerse")

        md = (out / "results.md").read_text()
        versions = "MathVerse (Text Dominant) | MathVerse (Vision Only) | MathVerse (Text Only)"
        assert f"| checkpoint | MathVista | MathVerse | {versions} |" in md
        # Each accuracy with its 95% Wilson interval.
        assert ("| base | 50.00 (2/4) [15.0, 85.0] | 66.67 (2/3) [20.8, 93.9] | 100.00 (1/1) [20.7, 100.0] | "
                "0.00 (0/1) [0.0, 79.3] | 100.00 (1/1) [20.7, 100.0] |") in md
        assert "| copy | 0.00 (0/4) [0.0, 49.0] | 0.00 (0/3) [0.0, 56.1] |" in md
        assert "## With the LLM judge" in md and "| base | 75.00 (3/4) [30.1, 95.4] | 66.67 (2/3)" in md
        # base -> copy: 2 + 2 items worse, none better; exact McNemar p = 2 * 0.5**2 on each benchmark.
        assert "| base → copy | MathVista | 4 | 0 | 2 | 0.5 | no |" in md
        assert "| base → copy | MathVerse | 3 | 0 | 2 | 0.5 | no |" in md
        # Per benchmark, how many answers the rules could not extract.
        unread = md.split("Answers the rules could not extract", 1)[1].split("## With the LLM judge", 1)[0]
        assert "| checkpoint | MathVista | MathVerse |" in unread and "| base | 1/4 | 0/3 |" in unread
        assert "| copy | 4/4 | 3/3 |" in unread
        rows = list(csv.DictReader((out / "results.csv").open()))
        assert rows[0]["MathVista unextracted"] == "1" and rows[1]["MathVerse unextracted"] == "3"
        assert [r["checkpoint"] for r in rows] == ["base", "copy"]
        assert rows[0]["MathVista"] == "50.00" and rows[0]["MathVista total"] == "4"
        assert rows[0]["MathVista +judge"] == "75.00" and rows[0]["MathVerse (Vision Only) correct"] == "0"
        assert (rows[0]["MathVista ci_low"], rows[0]["MathVista ci_high"]) == ("15.0", "85.0")
        items = list(csv.DictReader((out / "items.csv").open()))
        assert len(items) == 2 * 7 and set(items[0]) == {"item", "benchmark", "checkpoint", "correct", "samples",
                                                         "samples_correct", "maj_correct"}
        assert {(r["item"], r["checkpoint"], r["correct"]) for r in items if r["benchmark"] == "MathVista"} == {
            ("1", "base", "1"), ("2", "base", "0"), ("3", "base", "1"), ("4", "base", "0"),
            ("1", "copy", "0"), ("2", "copy", "0"), ("3", "copy", "0"), ("4", "copy", "0")}
        payload = {(p["checkpoint"], p["benchmark"]): p for p in json.loads((out / "results.json").read_text())}
        assert payload["base", "MathVista"]["paired_test"] is None and payload["base", "MathVista"]["interval"]
        assert payload["copy", "MathVista"]["paired_test"]["worsened"] == 2

        # Rerun: nothing generated, judged or rewritten.
        mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
        factory2 = Factory()
        assert eval_stage.run(cfg, chat_model_factory=factory2) == 0
        assert factory2.calls == 0 and factory2.models == {} and judge.chat_calls == 8
        assert "all 4 evaluations already done" in capsys.readouterr().out
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes
    assert eval_stage.finished(cfg)
    assert eval_stage.artifacts(cfg)["predictions copy/MathVerse"].is_file()


def test_killed_pair_resumes_only_missing_items_and_stale_settings_warn_or_redo(tmp_path: Path, capsys) -> None:
    cfg = make_config(tmp_path, checkpoints=["base"])
    assert eval_stage.run(cfg, chat_model_factory=Factory()) == 0
    pair = tmp_path / "out" / "eval" / "base" / "MathVista"
    # As if killed after two generations: marker and predictions gone, journal half written.
    (pair / ".mathse_done.json").unlink()
    (pair / "predictions.jsonl").unlink()
    journal = pair / "generations.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:2]) + '{"key": "torn')
    factory = Factory()
    assert eval_stage.run(cfg, chat_model_factory=factory) == 0
    assert factory.calls == 2 and len(list(iter_jsonl(pair / "predictions.jsonl"))) == 4
    capsys.readouterr()

    changed = make_config(tmp_path, checkpoints=["base"], max_new_tokens=7)
    factory = Factory()
    assert eval_stage.run(changed, chat_model_factory=factory) == 0
    assert factory.calls == 0
    assert "base/MathVista was evaluated with other max_new_tokens; its results are kept" in capsys.readouterr().out

    changed.run.redo = ["eval"]
    factory = Factory()
    assert eval_stage.run(changed, chat_model_factory=factory) == 0
    assert factory.calls == 7 and "evaluating it again" in capsys.readouterr().out  # both benchmarks: 4 + 3 items
    assert read_marker(pair)["settings"]["max_new_tokens"] == 7
    assert len(list(iter_jsonl(pair / "predictions.jsonl"))) == 4


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path, capsys) -> None:
    cfg = make_config(tmp_path, temperature=0.0, max_new_tokens=64)
    assert eval_stage.run(cfg, dry_run=True) == 0
    printed = capsys.readouterr().out
    assert "[dry-run] eval: 2 benchmarks x 2 checkpoints = 4 evaluations (4 to run, 0 already done)" in printed
    assert "[dry-run] benchmark MathVista (mathvista): 4 items (1 multiple choice, 3 free form)" in printed
    assert "[dry-run] checkpoint copy:" in printed and "max_new_tokens 64" in printed and "(greedy)" in printed
    assert '"do_sample": false' in printed
    assert not (tmp_path / "out").exists()


def test_checkpoint_resolution(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, checkpoints=None)
    assert [c.name for c in resolve_checkpoints(cfg)] == ["base"]
    # A finished LoRA M0 and round 1: found by default, loaded as adapters on their base model.
    for name in ("sft_model_stage0", "sft_model_round_1"):
        folder = tmp_path / "out" / name
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "base")}))
        mark_done(folder, {})
    (tmp_path / "out" / "sft_model_round_2").mkdir()  # not finished: skipped
    found = resolve_checkpoints(cfg)
    assert [c.name for c in found] == ["base", "stage0", "round_1"]
    assert found[1].model == str(tmp_path / "base") and found[1].adapter == str(tmp_path / "out" / "sft_model_stage0")

    with pytest.raises(StageError, match=r"checkpoint 'round_2' is not trained yet"):
        resolve_checkpoints(make_config(tmp_path, checkpoints=["round_2"]))
    # Round 2 accepted no new path, so it did not retrain: its marker names the model it kept.
    mark_done(tmp_path / "out" / "evolve" / "round_2", {"model": str(tmp_path / "out" / "sft_model_round_1")})
    kept = resolve_checkpoints(make_config(tmp_path, checkpoints=["round_2"]))
    assert [(c.name, c.adapter) for c in kept] == [("round_2", str(tmp_path / "out" / "sft_model_round_1"))]
    with pytest.raises(ConfigError, match=r"eval.checkpoints\[0\]: 'nope': model folder not found"):
        resolve_checkpoints(make_config(tmp_path, checkpoints=["nope"]))
    with pytest.raises(ConfigError, match=r"no benchmarks configured"):
        eval_stage.run(make_config(tmp_path, benchmarks=[]))


# ---------------------------------------------------------------------------------------------
# The real tiny Qwen2-VL through the command line


@pytest.mark.slow
def test_cli_eval_tiny_model_base_and_stage0(run_config, tiny_model: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from mathse import cli

    monkeypatch.setitem(cli.STAGES, "eval", ("eval", "Evaluate checkpoints on benchmarks -> results table"))
    vista = write_mathvista_parquet(tmp_path / "bench" / "MathVista")
    verse = write_mathverse_json(tmp_path / "bench" / "MathVerse")
    benchmarks = [
        {"name": "MathVista", "format": "mathvista", "path": str(vista)},
        {"name": "MathVerse", "format": "mathverse", "path": str(verse), "limit": 2},
    ]
    config = run_config(eval={"benchmarks": benchmarks, "max_new_tokens": 8})
    out = config.parent / "output"
    # "M0": a copy of the tiny model where the run keeps it, marked finished.
    shutil.copytree(tiny_model, out / "sft_model_stage0")
    mark_done(out / "sft_model_stage0", {"job": "copy"})

    assert cli.main(["--stage", "eval", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "eval: stage0/MathVerse:" in printed
    md = (out / "eval" / "results.md").read_text()
    for name in ("base", "stage0"):
        assert f"| {name} | " in md and "/4) [" in md and "/2) [" in md
        preds = list(iter_jsonl(out / "eval" / name / "MathVista" / "predictions.jsonl"))
        assert [p["id"] for p in preds] == ["1", "2", "3", "4"]
        assert all(isinstance(p["response"], str) and "correct" in p for p in preds)
    assert "(Text Dominant)" in md and "(Vision Only)" in md

    journals = {p: p.read_bytes() for p in (out / "eval").rglob("generations.jsonl")}
    assert len(journals) == 4
    assert cli.main(["--stage", "eval", "--config", str(config)]) == 0
    assert "already done, nothing to run" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in journals} == journals


# ---------------------------------------------------------------------------------------------
# eval.samples: pass@k and maj@k beside the greedy answer

# Question snippet -> the k = 4 sampled replies (the greedy reply is SCRIPT's).
SAMPLED = {
    "spring compressed": ["\\boxed{1.2}", "\\boxed{1.3}", "\\boxed{1.2}", "I am not sure."],  # 2 right, maj right
    "measuring cup": ["\\boxed{1000}", "\\boxed{900}", "\\boxed{900}", "\\boxed{1000}"],  # 2 right, a tie: maj wrong
    "平分线": ["\\boxed{C}"] * 4,  # all right
    "above the line": ["\\boxed{[5, 2]}"] * 4,  # none right
}


class SamplingFactory:
    """The scripted model: greedy calls (no temperature given) answer from SCRIPT, sampling calls from SAMPLED."""

    def __init__(self) -> None:
        self.model: FakeChatModel | None = None

    def __call__(self, args: dict[str, Any]) -> FakeChatModel:
        def reply(content: str, call: int, i: int) -> str:
            kw = self.model.calls[call - 1]["kw"] if self.model else {}
            if not kw.get("temperature"):
                return next(r for key, r in SCRIPT.items() if key in content)
            return next(r for key, r in SAMPLED.items() if key in content)[i]

        self.model = FakeChatModel(reply=reply)
        return self.model

    def sequences(self, sampled: bool) -> int:
        calls = self.model.calls if self.model else []
        return sum(c["kw"].get("num_return_sequences", 1) for c in calls if bool(c["kw"].get("temperature")) is sampled)


def sampling_config(tmp_path: Path, samples: int) -> MathSEConfig:
    vista = {"name": "MathVista", "format": "mathvista", "path": str(tmp_path / "bench" / "MathVista")}
    return make_config(tmp_path, checkpoints=["base"], benchmarks=[vista], samples=samples, temperature=1.0)


def test_samples_give_pass_at_k_and_maj_at_k_and_resume_without_repeating_a_sample(tmp_path: Path, capsys) -> None:
    factory = SamplingFactory()
    cfg = sampling_config(tmp_path, 4)
    assert eval_stage.run(cfg, chat_model_factory=factory) == 0
    assert factory.sequences(sampled=False) == 4 and factory.sequences(sampled=True) == 16
    sample_calls = [c["kw"] for c in factory.model.calls if c["kw"].get("temperature")]
    assert all(kw == {"temperature": 1.0, "do_sample": True, "num_return_sequences": 4} for kw in sample_calls)
    pair = tmp_path / "out" / "eval" / "base" / "MathVista"
    scores = json.loads((pair / "scores.json").read_text())
    assert (scores["correct"], scores["total"]) == (2, 4)  # greedy, as without samples
    s = scores["sampled"]
    assert (s["k"], s["pass_at_k"], s["maj_at_k"], s["maj_at_k_correct"], s["pass_at_1"]) == (4, 75.0, 50.0, 2, 50.0)
    assert (s["maj_ties"], s["maj_no_answer"], s["unextracted_samples"], s["samples"]) == (1, 0, 1, 16)
    assert s["pass_at_k_interval"][0] < 75.0 < s["pass_at_k_interval"][1]
    printed = capsys.readouterr().out
    assert "4 samples at T=1.0: pass@4 75.00%, maj@4 50.00% (1 ties, 0 without an answer)" in printed
    preds = {p["id"]: p for p in iter_jsonl(pair / "predictions.jsonl")}
    assert preds["2"]["sampled"]["maj"] == {"answer": "1000", "correct": False, "tie": True, "votes": 2}
    assert [x["extracted"] for x in preds["1"]["sampled"]["samples"]] == ["1.2", "1.3", "1.2", None]
    md = (tmp_path / "out" / "eval" / "results.md").read_text()
    assert "| base | MathVista | 4 | 1.0 | 50.00 [15.0, 85.0] | 75.00 [" in md and "| 50.00 (2/4) [15.0, 85.0] |" in md
    items = list(csv.DictReader((tmp_path / "out" / "eval" / "items.csv").open()))
    assert [(r["item"], r["samples"], r["samples_correct"], r["maj_correct"]) for r in items] == [
        ("1", "4", "2", "1"), ("2", "4", "2", "0"), ("3", "4", "4", "1"), ("4", "4", "0", "0")]

    # Killed mid-sampling: the marker and predictions gone, the samples journal cut inside item 2.
    (pair / ".mathse_done.json").unlink()
    (pair / "predictions.jsonl").unlink()
    journal = pair / "samples.jsonl"
    kept = journal.read_text().splitlines(keepends=True)[:6]
    journal.write_text("".join(kept) + '{"key": "3#0", "resp')
    factory = SamplingFactory()
    assert eval_stage.run(cfg, chat_model_factory=factory) == 0
    assert factory.sequences(sampled=False) == 0 and factory.sequences(sampled=True) == 10  # only the missing
    keys = [r["key"] for r in iter_jsonl(journal)]
    assert len(keys) == len(set(keys)) == 16 and journal.read_text().startswith("".join(kept))
    assert is_done(pair)


def test_raising_samples_keeps_the_greedy_answers_and_draws_only_the_missing(tmp_path: Path, capsys) -> None:
    vista = {"name": "MathVista", "format": "mathvista", "path": str(tmp_path / "bench" / "MathVista")}
    factory = SamplingFactory()
    greedy_only = make_config(tmp_path, checkpoints=["base"], benchmarks=[vista])
    assert eval_stage.run(greedy_only, chat_model_factory=factory) == 0
    assert factory.sequences(sampled=False) == 4
    greedy = (tmp_path / "out" / "eval" / "base" / "MathVista" / "generations.jsonl").read_bytes()
    assert eval_stage.finished(greedy_only) and not eval_stage.finished(sampling_config(tmp_path, 2))
    assert eval_stage.run(sampling_config(tmp_path, 2), dry_run=True) == 0
    assert "(1 to run, 0 already done)" in capsys.readouterr().out
    for k, drawn in ((2, 8), (4, 8)):
        factory = SamplingFactory()
        assert eval_stage.run(sampling_config(tmp_path, k), chat_model_factory=factory) == 0
        wanted = f"base/MathVista: {k} samples per item wanted (had {k // 2}); drawing the missing ones"
        assert wanted in capsys.readouterr().out
        assert factory.sequences(sampled=False) == 0 and factory.sequences(sampled=True) == drawn
    assert (tmp_path / "out" / "eval" / "base" / "MathVista" / "generations.jsonl").read_bytes() == greedy
    scores = json.loads((tmp_path / "out" / "eval" / "base" / "MathVista" / "scores.json").read_text())
    # The fake answers samples 2 and 3 as it answered 0 and 1: items 1 and 2 tie, only item 3 wins its vote.
    assert scores["sampled"]["maj_at_k"] == 25.0 and scores["settings"]["samples"] == 4


def test_samples_need_a_temperature(tmp_path: Path) -> None:
    from mathse.run.config_loading import load_config

    config = tmp_path / "config.yaml"
    config.write_text(f"model: {{base: {tmp_path}}}\neval: {{samples: 4}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert str(err.value).strip().count("\n") == 0 and "eval.samples is 4 but eval.temperature is 0.0" in str(err.value)
    assert load_config(config, ["eval.temperature=0.7"]).eval.samples == 4


@pytest.mark.slow
def test_cli_eval_samples_killed_mid_sampling_resumes_without_repeating_a_sample(
    run_config, demo_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """The real tiny Qwen2-VL, eval.samples 4, killed (SIGKILL) while it samples: the rerun draws only the
    samples missing from the journal (a repeated one would be a second row with its key)."""
    from mathse import cli

    bench = [{"name": "pool", "format": "jsonl", "path": str(demo_data[1]), "limit": 6}]
    # One request in flight: each item's 4 samples arrive as one request's answer, item after item, so the
    # kill lands between items (with 32 in flight all six answers came back in one burst before the kill).
    config = run_config(eval={"benchmarks": bench, "checkpoints": ["base"], "max_new_tokens": 12, "samples": 4,
                              "temperature": 1.0}, inference={"concurrency": 1})
    pair = config.parent / "output" / "eval" / "base" / "pool"
    journal = pair / "samples.jsonl"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with (tmp_path / "killed.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "main.py"), "--stage", "eval", "--config",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if journal.is_file() and journal.read_bytes().count(b"\n") >= 4:  # one problem's samples
                break
            time.sleep(0.05)
        assert proc.poll() is None, "eval finished before it could be killed: " + (tmp_path / "killed.log").read_text()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    kept = [line for line in journal.read_text().splitlines(keepends=True) if line.endswith("\n")]
    assert 4 <= len(kept) < 24 and not (pair / ".mathse_done.json").exists()

    assert cli.main(["--stage", "eval", "--config", str(config)]) == 0
    keys = [row["key"] for row in iter_jsonl(journal)]
    assert len(keys) == len(set(keys)) == 6 * 4  # every sample once: none repeated, none lost
    answers: dict[str, set[str]] = {}
    for row in iter_jsonl(journal):
        answers.setdefault(row["id"], set()).add(row["response"])
    assert any(len(a) > 1 for a in answers.values())  # sampled at eval.temperature, not greedy
    assert journal.read_text().startswith("".join(kept))  # the samples drawn before the kill stay as they were
    greedy = [row["key"] for row in iter_jsonl(pair / "generations.jsonl")]
    assert len(greedy) == len(set(greedy)) == 6
    sampled = json.loads((pair / "scores.json").read_text())["sampled"]
    assert sampled["k"] == 4 and sampled["samples"] == 24 and sampled["items"] == 6
