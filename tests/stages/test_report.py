"""The run report: a synthetic run directory with known numbers, every number checked in report.json."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mathse.api.messages import ChatResult
from mathse.reporting.api_usage import usage_role
from mathse.reporting.collect import SCHEMA_VERSION
from mathse.reporting.marker_inputs import input_lines, split_consumed, summarise
from mathse.reporting.transitions import TRANSITIONS, transition_counts
from mathse.run.config import MathSEConfig
from mathse.run.fingerprint import Inputs
from mathse.run.records import PathRow, ReflectionRow, SftRow, VerdictRow
from mathse.run.storage import MARKER_NAME, atomic_write_json, atomic_write_jsonl, read_json
from mathse.run.usage import UsageLedger
from mathse.stages import report

TEACHER, ORM = "gpt-4o", "mathse-orm"
N_PATHS = 2

# Per round: problem id -> verdict per path (None: no output). Solved problems leave the pool.
ROUNDS: dict[int, dict[str, list[bool | None]]] = {
    1: {"p1": [True, False], "p2": [False, False], "p3": [False, None], "p4": [None, None]},
    2: {"p2": [True, True], "p3": [False, False], "p5": [True, False]},
    3: {"p3": [False, True], "p4": [False, False], "p6": [False, False]},
}
POOL = ["p1", "p2", "p3", "p4", "p5", "p6"]
UNPARSEABLE = {1: 1, 2: 0, 3: 2}
# Accepted path lengths (characters) per round, in the order the accepted verdicts appear above.
CHOSEN_LENGTHS = {1: [700], 2: [800, 900, 700], 3: [792]}


def make_cfg(out: Path) -> MathSEConfig:
    api = {"base_url": "http://127.0.0.1:9/v1"}
    return MathSEConfig.model_validate(
        {
            "model": {"base": "tiny"},
            "run": {"output_dir": str(out)},
            "teacher": {**api, "model": TEACHER},
            "orm": {"backend": "api", "policy": "orm", "api": {**api, "model": ORM}},
            "evolve": {"rounds": 3},
            "pricing": {TEACHER: {"prompt_per_1m": 2.5, "completion_per_1m": 10.0}},
        }
    )


def seed_inputs(out: Path) -> Inputs:
    """What distill records it consumed: the seed file, the image root, the token budget and the teacher's config."""
    seed = out.parent / "seed.jsonl"
    seed.write_text('{"id": "s0", "question": "Q", "answer": "1"}\n')
    teacher = {"model": TEACHER, "temperature": 0.7, "system_prompt": "You are a careful | math teacher.",
               "filter_by_answer": True}
    return (Inputs().file("data.seed_file", seed).value("data.image_root", None)
            .value("token budget of M0's dataset", {"cutoff_len": 2048}).value("teacher", teacher))


def write_distill(out: Path) -> None:
    """D_SFT and its completion marker as distill writes them, `consumed` fingerprint included."""
    stats = {"seed": 4, "given": 1, "teacher_sent": 3, "teacher_kept": 2, "teacher_dropped": 1,
             "teacher_failed": 0, "d_sft": 3}
    rows = [SftRow(id=f"s{i}", prompt="Q", images=[], answer="1", response="a" * n, origin="teacher").to_json()
            for i, n in enumerate((300, 350, 325))]
    atomic_write_jsonl(out / "distill" / "d_sft.jsonl", rows)
    atomic_write_json(out / "distill" / MARKER_NAME, {**stats, "consumed": seed_inputs(out).record()})


def write_evolve(out: Path) -> None:
    """Round files as evolve.merge_shards writes them; round 3 is merged but not retrained."""
    remain = list(POOL)
    cumulative: dict[str, list[dict[str, Any]]] = {"history": [], "chosen": []}
    for r, batch in ROUNDS.items():
        rd = out / "evolve" / f"round_{r}"
        history, chosen = [], []
        lengths = iter(CHOSEN_LENGTHS[r])
        for pid, verdicts in batch.items():
            solved = any(v is True for v in verdicts)
            history.append({"id": pid, "round": r, "verdicts": verdicts, "solved": solved})
            chosen += [PathRow(id=pid, question="Q", images=[], answer="1", round=r, sample=k, prompt="Q",
                               reasoning="x" * next(lengths)).to_json()
                       for k, v in enumerate(verdicts) if v is True]
        solved_ids = {h["id"] for h in history if h["solved"]}
        remain = [p for p in remain if p not in solved_ids]
        flat = [v for verdicts in batch.values() for v in verdicts]
        paths = sum(v is not None for v in flat)
        accepted = sum(v is True for v in flat)
        stats = {"attempted": len(batch), "paths": paths, "accepted": accepted, "rejected": paths - accepted,
                 "unparseable": UNPARSEABLE[r], "no_output": len(batch) * N_PATHS - paths, "solved": len(solved_ids),
                 "pool_left": len(remain), "shards": 1, "gen_seconds": 3.0, "paths_per_s": round(paths / 3.0, 3)}
        atomic_write_jsonl(rd / "history.jsonl", history)
        if r != 3:  # round 3's own file is gone: the report falls back to the cumulative buffer
            atomic_write_jsonl(rd / "chosen.jsonl", chosen)
        atomic_write_json(rd / "remain.json", remain)
        atomic_write_json(rd / "stats.json", stats)
        atomic_write_json(rd / ".merged.json", stats)
        if r != 3:
            atomic_write_json(rd / MARKER_NAME, {**stats, "model": f"sft_model_round_{r}"})
        cumulative["history"] += history
        cumulative["chosen"] += chosen
    atomic_write_jsonl(out / "evolve" / "history.jsonl", cumulative["history"])
    atomic_write_jsonl(out / "evolve" / "sft_chosen.jsonl", cumulative["chosen"])


def verdict(key: str, orm: bool | str | None, rule: bool | None) -> dict[str, Any]:
    """A journal row; orm "garbage" is an unparseable ORM reply, None an ORM never asked."""
    orm_part = None
    if orm == "garbage":
        orm_part = {"raw": "I like turtles.", "correct": False, "error_step": None, "analysis": "", "score": None,
                    "parsed": False}
    elif orm is not None:
        orm_part = {"raw": "{}", "correct": orm, "error_step": None if orm else 1, "analysis": "", "score": None,
                    "parsed": True}
    rule_part = None if rule is None else {"correct": rule, "extracted": "1", "reason": "match" if rule else "mismatch"}
    final = {"correct": bool(orm is True), "error_step": None, "analysis": "", "source": "orm"}
    return VerdictRow(key=key, id=key.split("#")[0], path="Step 1: ...", steps=["..."], orm=orm_part,
                      rule=rule_part, final=final).to_json()


def write_journals(out: Path) -> None:
    j = out / "orm_reflections"
    atomic_write_jsonl(j / "evolve_round_1.shard-0-of-2.jsonl",
                       [verdict("a#0", True, True), verdict("a#1", True, False), verdict("b#0", "garbage", False)])
    atomic_write_jsonl(j / "evolve_round_1.shard-1-of-2.jsonl",
                       [verdict("c#0", False, True), verdict("c#1", False, False), verdict("d#0", True, None)])
    # Failed calls are not verdicts: ignored.
    atomic_write_jsonl(j / "evolve_round_1.shard-0-of-2.failed.jsonl",
                       [{"key": "e#0", "id": "e", "stage": "evolve", "error": "timeout", "time": 1.0}])
    atomic_write_jsonl(j / "evolve_round_2.shard-0-of-1.jsonl",  # policy "rule": the ORM is never asked
                       [verdict("f#0", None, True), verdict("f#1", None, False)])
    atomic_write_jsonl(j / "reflect.jsonl",
                       [verdict("g#0", True, True), verdict("g#1", False, True), verdict("g#2", True, True)])


def write_usage(out: Path, cfg: MathSEConfig) -> None:
    ledger = UsageLedger(out / "usage.json", cfg.pricing)
    for _ in range(2):
        answered = ChatResult("k", text="t", prompt_tokens=1000, completion_tokens=500, attempts=1)
        ledger.record("distill", TEACHER, answered)
    ledger.record("distill", TEACHER, ChatResult("k", text="t", cached=True))
    ledger.record("distill", TEACHER, ChatResult("k", error="gave up", attempts=3))
    for _ in range(3):
        ledger.record("evolve", ORM, ChatResult("k", text="{}", prompt_tokens=200, completion_tokens=50, attempts=1))
    ledger.record("reflect", TEACHER,  # by the Batch API: half price
                  ChatResult("k", text="t", prompt_tokens=4000, completion_tokens=2000, attempts=1, batch=True))
    ledger.record("reflect", ORM, ChatResult("k", text="{}", prompt_tokens=300, completion_tokens=60, attempts=1))
    ledger.save()


def write_reflect(out: Path) -> None:
    atomic_write_json(out / "reflect" / "stats.json",
                      {"sent": 5, "kept": 2, "dropped": {"orm rejected": 2, "no corrected solution": 1}})
    atomic_write_jsonl(out / "orm_reflections" / "reflection_rows.jsonl",
                       [ReflectionRow(id=f"r{i}", instruction="Q", input="", draft="d", reflection="r", output="o" * n,
                                      key=f"r{i}#r1#s0", images=[], answer="1", round=1, error_step=1, analysis="")
                        .to_json() for i, n in enumerate((1000, 1200))])


# checkpoint -> benchmark -> per problem correct (None: judged neither way), response length
PREDICTIONS: dict[str, dict[str, tuple[list[bool | None], int]]] = {
    "base": {"mathvista": ([True, True, False, False], 325), "mathverse": ([False, False], 325)},
    "round_2": {"mathvista": ([True, True, True, False], 500)},
    "final": {"mathvista": ([True, False, True, False], 792), "mathverse": ([True, None], 792)},
}


def write_eval(out: Path) -> None:
    """results.json in the eval stage's layout: one entry per pair, MathVerse versions as subsets."""
    def pair(ckpt: str, model: str, bench: str, correct: int, total: int, **subsets: tuple[int, int]) -> dict[str, Any]:
        tally = {"total": total, "correct": correct, "correct_with_judge": correct}
        return {"checkpoint": ckpt, "benchmark": bench, **tally, "judge": None,
                "subsets": {k.replace("_", " "): {"total": t, "correct": c, "correct_with_judge": c}
                            for k, (c, t) in subsets.items()},
                "settings": {"model": model, "adapter": None}}

    atomic_write_json(out / "eval" / "results.json", [
        pair("base", "tiny", "mathvista", 2, 4), pair("base", "tiny", "mathverse", 0, 2, Vision_Only=(0, 1)),
        pair("round_2", "out/sft_model_round_2", "mathvista", 3, 4),
        pair("final", "out/reflection_model_final", "mathvista", 2, 4),
        pair("final", "out/reflection_model_final", "mathverse", 1, 2, Vision_Only=(1, 1)),
    ])
    for ckpt, benches in PREDICTIONS.items():
        for bench, (correct, length) in benches.items():
            rows = [{"id": f"{bench}-{i}", "question": "Q", "answer": "1", "response": "r" * length, "extracted": "1",
                     "correct": c, "correct_with_judge": c} for i, c in enumerate(correct)]
            atomic_write_jsonl(out / "eval" / ckpt / bench / "predictions.jsonl", rows)


@pytest.fixture
def full_run(tmp_path: Path) -> MathSEConfig:
    out = tmp_path / "out"
    cfg = make_cfg(out)
    write_distill(out)
    write_evolve(out)
    write_journals(out)
    write_usage(out, cfg)
    write_reflect(out)
    write_eval(out)
    return cfg


def zero_transitions(**counts: int) -> dict[str, int]:
    full = dict.fromkeys(TRANSITIONS, 0) | counts
    return {**full, "n": sum(full.values())}


def test_full_run_report_numbers(full_run: MathSEConfig, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = full_run
    assert not report.finished(cfg)
    assert report.run(cfg) == 0
    assert report.finished(cfg)
    out = report.report_dir(cfg)
    data = read_json(out / "report.json")
    assert data["version"] == SCHEMA_VERSION and data["warnings"] == []
    assert "report.md" in capsys.readouterr().out

    # Distill
    assert data["distill"]["stats"]["d_sft"] == 3 and data["distill"]["stats"]["teacher_kept"] == 2
    assert data["distill"]["d_sft_rows"] == 3

    # Evolve rounds
    ev = data["evolve"]
    assert ev["rounds_planned"] == 3 and ev["pool_start"] == 6
    keys = ("round", "attempted", "paths", "accepted", "rejected", "unparseable", "no_output", "solved", "pool_left")
    assert [tuple(r[k] for k in keys) for r in ev["rounds"]] == [
        (1, 4, 5, 1, 4, 1, 3, 1, 5),
        (2, 3, 6, 3, 3, 0, 0, 2, 3),
        (3, 3, 6, 1, 5, 2, 0, 1, 2),
    ]
    assert [r["accept_rate"] for r in ev["rounds"]] == [0.2, 0.5, 0.1667]
    assert [r["solve_rate"] for r in ev["rounds"]] == [0.25, 0.6667, 0.3333]
    assert [r["complete"] for r in ev["rounds"]] == [True, True, False]
    assert ev["totals"] == {"attempted": 10, "paths": 17, "accepted": 5, "rejected": 12, "unparseable": 3,
                            "unknown": 0, "no_output": 3, "solved": 4, "accept_rate": 0.2941}

    # Figure 2 transitions: evolve (p2 I->C, p3 I->I; then p3 I->C) and eval (base -> final)
    tr = data["transitions"]
    assert tr["evolve"]["pairs"] == [
        {"from_round": 1, "to_round": 2, **zero_transitions(incorrect_to_correct=1, persistently_incorrect=1)},
        {"from_round": 2, "to_round": 3, **zero_transitions(incorrect_to_correct=1)},
    ]
    assert tr["evolve"]["total"] == zero_transitions(incorrect_to_correct=2, persistently_incorrect=1)
    # eval: one entry per consecutive checkpoint pair (base -> round_2 -> final), then base -> final
    assert [(p["from_checkpoint"], p["to_checkpoint"]) for p in tr["eval"]["pairs"]] == [
        ("base", "round_2"), ("round_2", "final")]
    assert [p["benchmarks"] for p in tr["eval"]["pairs"]] == [
        {"mathvista": zero_transitions(consistently_correct=2, incorrect_to_correct=1, persistently_incorrect=1)},
        {"mathvista": zero_transitions(consistently_correct=2, correct_to_incorrect=1, persistently_incorrect=1)},
    ]
    overall = tr["eval"]["first_to_last"]
    assert overall["from_checkpoint"] == "base" and overall["to_checkpoint"] == "final"
    assert overall["benchmarks"] == {
        "mathverse": zero_transitions(incorrect_to_correct=1, persistently_incorrect=1),
        "mathvista": zero_transitions(consistently_correct=1, incorrect_to_correct=1, correct_to_incorrect=1,
                                      persistently_incorrect=1),
    }
    assert overall["total"] == zero_transitions(consistently_correct=1, incorrect_to_correct=2,
                                                correct_to_incorrect=1, persistently_incorrect=2)

    # Answer lengths
    lengths = {r["key"]: (r["n"], r["mean_chars"], r["median_chars"]) for r in data["lengths"]}
    assert list(lengths) == ["distill", "evolve_round_1", "evolve_round_2", "evolve_round_3", "reflect",
                             "eval:base", "eval:round_2", "eval:final"]
    assert lengths == {
        "distill": (3, 325.0, 325.0),
        "evolve_round_1": (1, 700.0, 700.0),
        "evolve_round_2": (3, 800.0, 800.0),
        "evolve_round_3": (1, 792.0, 792.0),
        "reflect": (2, 1100.0, 1100.0),
        "eval:base": (6, 325.0, 325.0),
        "eval:round_2": (4, 500.0, 500.0),
        "eval:final": (6, 792.0, 792.0),
    }

    # ORM vs rule, per stage (the shards of a round together) and in total
    orm = data["orm_vs_rule"]
    assert orm["journals"] == {
        "evolve_round_1": {"rows": 6, "orm": 5, "rule": 5, "both": 4, "agree": 2, "disagree": 2, "orm_yes_rule_no": 1,
                           "orm_no_rule_yes": 1, "orm_unparseable": 1, "rate": 0.5},
        "evolve_round_2": {"rows": 2, "orm": 0, "rule": 2, "both": 0, "agree": 0, "disagree": 0, "orm_yes_rule_no": 0,
                           "orm_no_rule_yes": 0, "orm_unparseable": 0, "rate": None},
        "reflect": {"rows": 3, "orm": 3, "rule": 3, "both": 3, "agree": 2, "disagree": 1, "orm_yes_rule_no": 0,
                    "orm_no_rule_yes": 1, "orm_unparseable": 0, "rate": 0.3333},
    }
    assert orm["total"] == {"rows": 11, "orm": 8, "rule": 10, "both": 7, "agree": 4, "disagree": 3,
                            "orm_yes_rule_no": 1, "orm_no_rule_yes": 2, "orm_unparseable": 1, "rate": 0.4286}

    # Usage, from a ledger written by UsageLedger itself
    usage = data["usage"]
    assert usage["total_cost_usd"] == pytest.approx(0.03)
    assert usage["roles"]["teacher"] == {"calls": 6, "answered": 3, "cached": 1, "failures": 1, "prompt_tokens": 6000,
                                         "completion_tokens": 3000, "batch_answered": 1, "cost_usd": 0.03}
    assert usage["roles"]["orm"] == {"calls": 4, "answered": 4, "cached": 0, "failures": 0, "prompt_tokens": 900,
                                     "completion_tokens": 210, "batch_answered": 0, "cost_usd": 0.0}
    assert {(r["stage"], r["model"], r["role"]) for r in usage["rows"]} == {
        ("distill", TEACHER, "teacher"), ("evolve", ORM, "orm"),
        ("reflect", TEACHER, "teacher"), ("reflect", ORM, "orm"),
    }

    # Reflection and eval
    assert data["reflect"]["stats"]["dropped"] == {"orm rejected": 2, "no corrected solution": 1}
    assert data["reflect"]["kept_rows"] == 2
    e = data["eval"]
    assert e["checkpoint_order"] == ["base", "round_2", "final"]
    assert e["results"]["benchmarks"] == ["mathvista", "mathverse"]
    assert e["results"]["columns"] == ["mathvista", "mathverse", "mathverse (Vision Only)"]
    assert e["results"]["table"]["round_2"] == {
        "model": "out/sft_model_round_2", "mathvista": 75.0, "mathvista correct": 3.0, "mathvista total": 4.0,
        "mathvista interval": [30.1, 95.4],  # 95% Wilson
        **dict.fromkeys(("mathverse", "mathverse correct", "mathverse total", "mathverse interval",
                         "mathverse (Vision Only)", "mathverse (Vision Only) correct", "mathverse (Vision Only) total",
                         "mathverse (Vision Only) interval")),
    }
    assert e["results"]["table"]["final"]["mathverse (Vision Only)"] == 100.0
    assert e["predictions"]["base"]["mathvista"] == {"n": 4, "correct": 2, "accuracy": 0.5}
    assert e["predictions"]["round_2"]["mathvista"] == {"n": 4, "correct": 3, "accuracy": 0.75}
    assert e["predictions"]["final"]["mathverse"] == {"n": 2, "correct": 1, "accuracy": 0.5}
    assert e["predictions"]["base"]["mathverse"]["accuracy"] == 0.0
    assert "_outcomes" not in e

    # Only round 3's missing retrain is missing.
    assert len(data["missing"]) == 1 and "round 3 merged but not retrained" in data["missing"][0]

    # Charts exist, open, are a sensible size, and report.md links each one.
    assert data["figures"] == {name: f"{name}.png" for name in ("rounds", "pool", "transitions", "lengths", "eval")}
    md = (out / "report.md").read_text()
    for filename in data["figures"].values():
        with Image.open(out / filename) as image:
            image.verify()
        with Image.open(out / filename) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 400
        assert f"]({filename})" in md
    for heading in ("Stage 1: distill", "Stage 2: evolve rounds", "Figure 2", "Average answer length",
                    "ORM vs rule", "Stage 3: reflection", "Evaluation", "API usage and cost"):
        assert f"## {heading}" in md
    # unknown is n/a: these round stats predate the count
    assert "| 1 | 4 | 5 | 1 | 4 | 1 | n/a | 3 | 1 | 5 | 20.0% | 25.0% | yes |" in md
    assert "| final | 50 (2/4) [15.0, 85.0] | 50 (1/2) [9.5, 90.5] | 100 (1/1) [20.7, 100.0] |" in md
    # Each consecutive pair of checkpoints (and first -> last) with its exact McNemar test.
    assert "| checkpoints | benchmark | items | improved | worsened | p | significant |" in md
    assert "| base → round_2 | mathvista | 4 | 1 | 0 | 1 | no |" in md
    assert tr["eval"]["pairs"][0]["paired_tests"] == {
        "mathvista": {"items": 4, "improved": 1, "worsened": 0, "p_value": 1.0, "significant": False}}
    assert "| role | answered | batch_answered | cached |" in md
    assert "| teacher | 3 | 1 | 1 | 1 | 6 | 6,000 | 3,000 | 0.0300 |" in md


FULL_HASH = re.compile(r"\b[0-9a-f]{64}\b")


def test_report_shows_inputs_not_raw_fingerprints(full_run: MathSEConfig) -> None:
    """A marker's `consumed` fingerprint is a short list of inputs, never a table cell holding the raw dict."""
    report.run(full_run)
    out = report.report_dir(full_run)
    md = (out / "report.md").read_text()
    sha = hashlib.sha256((full_run.output_dir.parent / "seed.jsonl").read_bytes()).hexdigest()
    assert "- data.seed_file: seed.jsonl (sha256 " + sha[:8] + ")" in md
    assert "- settings: data.image_root, token budget of M0's dataset, teacher" in md
    assert not FULL_HASH.search(md), FULL_HASH.search(md)
    for raw in ("{'files'", '"files"', "consumed", "mtime_ns", "careful", str(full_run.output_dir.parent)):
        assert raw not in md.replace(f"Run: `{full_run.output_dir}`", ""), raw
    stage1 = md.split("## Stage 1")[1].split("\n## ")[0]
    assert all(len(line) < 80 for line in stage1.splitlines()), stage1

    data = read_json(out / "report.json")
    assert "consumed" not in data["distill"]["stats"] and data["distill"]["stats"]["d_sft"] == 3
    assert data["distill"]["inputs"] == {
        "files": [{"label": "data.seed_file", "name": "seed.jsonl", "size": 45, "sha256": sha}],
        "markers": [], "settings": ["data.image_root", "token budget of M0's dataset", "teacher"],
    }
    assert data["reflect"]["inputs"] is None  # reflect/stats.json carries no fingerprint


def test_marker_inputs_summary_is_defensive(tmp_path: Path) -> None:
    """No fingerprint, a malformed one, an absent file and (not) done markers each summarise to a short line."""
    assert summarise(None) is None and summarise("garbage") is None
    assert split_consumed({"kept": 2}) == ({"kept": 2}, None)
    gone = Inputs().file("seed", tmp_path / "gone.jsonl").marker("ORM", tmp_path / "orm").record()
    assert input_lines(summarise(gone)) == ["seed: absent", "ORM: not done"]
    (tmp_path / "orm").mkdir()
    atomic_write_json(tmp_path / "orm" / MARKER_NAME, {"done": True})
    digest = hashlib.sha256((tmp_path / "orm" / MARKER_NAME).read_bytes()).hexdigest()
    done = Inputs().marker("ORM", tmp_path / "orm").record()
    assert input_lines(summarise(done)) == [f"ORM: completion marker (sha256 {digest[:8]})"]
    assert input_lines(summarise({"files": {"x": {"path": 3}}, "values": []})) == ["x: absent"]


RESULTS_HEADER = "| checkpoint | mathvista | mathverse | mathverse (Vision Only) |"
PREDICTIONS_HEADER = "| checkpoint | benchmark | problems | correct | accuracy |"


def test_accuracy_table_appears_once(full_run: MathSEConfig) -> None:
    """results.json's table is shown once; the predictions files are a check, a line only where they disagree."""
    cfg = full_run
    report.run(cfg)
    md = (report.report_dir(cfg) / "report.md").read_text()
    assert md.count(RESULTS_HEADER) == 1 and PREDICTIONS_HEADER not in md
    assert "recomputed" not in md and "Check failed" not in md
    assert "The predictions files, recounted, give the same counts." in md
    assert read_json(report.report_dir(cfg) / "report.json")["eval"]["disagreements"] == []

    # round_2 / mathvista: results.json says 3 of 4, its predictions file now 4 of 4; stage0 has no results entry.
    rows = [{"id": f"mathvista-{i}", "response": "r", "correct": True} for i in range(4)]
    atomic_write_jsonl(cfg.output_dir / "eval" / "round_2" / "mathvista" / "predictions.jsonl", rows)
    atomic_write_jsonl(cfg.output_dir / "eval" / "stage0" / "mathvista" / "predictions.jsonl", rows[:1])
    report.run(cfg)
    md = (report.report_dir(cfg) / "report.md").read_text()
    assert md.count(RESULTS_HEADER) == 1 and PREDICTIONS_HEADER not in md
    check = [line for line in md.splitlines() if "Check failed" in line]
    assert check == [
        "- Check failed: round_2 / mathvista: results.json 3/4 (75.0%), the predictions files recounted 4/4 (100.0%).",
        "- Check failed: stage0 / mathvista: results.json has no entry, the predictions files recounted 1/1 (100.0%).",
    ]
    data = read_json(report.report_dir(cfg) / "report.json")
    assert [(d["checkpoint"], d["benchmark"]) for d in data["eval"]["disagreements"]] == [
        ("round_2", "mathvista"), ("stage0", "mathvista")]

    # Without results.json the predictions files' counts are the table, once.
    (cfg.output_dir / "eval" / "results.json").unlink()
    report.run(cfg)
    md = (report.report_dir(cfg) / "report.md").read_text()
    assert md.count(PREDICTIONS_HEADER) == 1 and RESULTS_HEADER not in md and "Check failed" not in md
    assert "| round_2 | mathvista | 4 | 4 | 100.0% |" in md


def test_finished_tracks_inputs_and_stale_charts_go(full_run: MathSEConfig) -> None:
    cfg = full_run
    report.run(cfg)
    md = report.report_dir(cfg) / "report.md"
    assert report.finished(cfg)
    future = md.stat().st_mtime + 10
    os.utime(cfg.output_dir / "usage.json", (future, future))
    assert not report.finished(cfg)  # an input changed after the report

    shutil.rmtree(cfg.output_dir / "eval")
    report.run(cfg)
    data = read_json(report.report_dir(cfg) / "report.json")
    assert "eval" not in data["figures"] and not (report.report_dir(cfg) / "eval.png").exists()
    assert "eval.png" not in md.read_text()
    assert data["transitions"]["eval"] is None and data["transitions"]["evolve"] is not None
    assert any("eval/results.json" in m for m in data["missing"])


def test_partial_run_reports_what_is_missing(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "out")
    write_distill(cfg.output_dir)
    assert report.run(cfg) == 0
    out = report.report_dir(cfg)
    data = read_json(out / "report.json")
    assert data["evolve"] is None and data["reflect"] is None and data["eval"] is None
    assert data["usage"] is None and data["orm_vs_rule"] is None
    assert data["transitions"] == {"evolve": None, "eval": None}
    assert [r["key"] for r in data["lengths"]] == ["distill"]
    assert data["figures"] == {"lengths": "lengths.png"}
    missing = "\n".join(data["missing"])
    for what in ("evolve:", "reflect:", "eval:", "usage:", "ORM vs rule:", "transitions (Figure 2)"):
        assert what in missing
    md = (out / "report.md").read_text()
    assert "## Missing" in md and "evolve: no merged round yet" in md and "](lengths.png)" in md
    assert "rounds.png" not in md


def test_empty_and_corrupt_inputs_do_not_crash(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path / "out")
    assert report.run(cfg, dry_run=True) == 0 and not report.report_dir(cfg).exists()
    assert report.run(cfg) == 0
    assert read_json(report.report_dir(cfg) / "report.json")["figures"] == {}

    (cfg.output_dir / "usage.json").write_text("{not json")
    (cfg.output_dir / "distill").mkdir()
    (cfg.output_dir / "distill" / "d_sft.jsonl").write_text('{"response": "ab"}\n{broken\n')
    assert report.run(cfg) == 0
    data = read_json(report.report_dir(cfg) / "report.json")
    assert data["distill"]["d_sft_rows"] == 1  # rows before the corrupt line still count
    assert any("usage.json" in w for w in data["warnings"]) and any("d_sft.jsonl" in w for w in data["warnings"])
    assert (cfg.output_dir / "usage.json").read_text() == "{not json"  # never moved aside, unlike UsageLedger


def test_transition_counts_and_usage_roles(tmp_path: Path) -> None:
    pairs = [(True, True), (False, True), (True, False), (False, False), (False, False)]
    assert transition_counts(pairs) == zero_transitions(
        consistently_correct=1, incorrect_to_correct=1, correct_to_incorrect=1, persistently_incorrect=2
    )
    cfg = make_cfg(tmp_path)
    assert usage_role(cfg, "reflect", TEACHER) == "teacher"
    assert usage_role(cfg, "reflect", ORM) == "orm"
    assert usage_role(cfg, "evolve", "some-served-orm") == "orm"
    assert usage_role(cfg, "distill", "other-teacher") == "teacher"
    assert usage_role(cfg, "reflect", "mystery") == "other"
    assert usage_role(cfg, "reflect", "mystery", seen={"mystery": "orm"}) == "orm"
    assert json.dumps(report.artifacts(cfg), default=str)
