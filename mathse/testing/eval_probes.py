"""The rule scorer graded against a human grader on a probe set of realistic benchmark responses.

The probe set (tests/data/eval_probes/) holds benchmark records in their published layouts
(`mathvista.json`, `mathverse.json`, `mathvision.json`, read by the real loaders) and
`responses.jsonl`: one model response per line with the verdict a careful human grader gives it
({"benchmark", "id", "response", "human": "correct" | "incorrect", "set", "note"}; set "heldout"
or "heldout2": written after the rules were changed and not tuned against, "dev": the rest). Used by
tests/answers/test_scoring.py and benchmarks/bench_eval_extraction.py.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mathse.answers.evalsets import EvalItem, load_benchmark
from mathse.answers.scoring import Score, score_response
from mathse.run.config import BenchmarkSpec

__all__ = ["Probe", "ProbeReport", "grade_probes", "load_probes"]

LAYOUTS = ("mathvista", "mathverse", "mathvision")


@dataclass(frozen=True)
class Probe:
    """One response to one benchmark item, with the human grader's verdict."""

    line: int  # line in responses.jsonl (1-based), to name the probe in messages
    benchmark: str
    item: EvalItem
    response: str
    human_correct: bool
    note: str
    part: str = "dev"  # "heldout...": written after the rules were changed


@dataclass(frozen=True)
class ProbeReport:
    """How the rule scorer's verdicts compare with the human ones."""

    total: int
    agree: int
    wrong_passed: list[tuple[Probe, Score]]  # human: incorrect, rules: correct
    correct_failed: list[tuple[Probe, Score]]  # human: correct, rules: incorrect
    correct_unextracted: int  # of those, how many the rules found no answer in
    human_correct: int

    @property
    def agreement(self) -> float:
        return self.agree / self.total if self.total else 0.0

    @property
    def unextracted_share(self) -> float:
        """Share of the correct answers in which the rules find no answer at all."""
        return self.correct_unextracted / self.human_correct if self.human_correct else 0.0


def load_probes(folder: Path) -> list[Probe]:
    """Items through the real benchmark loaders, joined with the responses and verdicts."""
    items: dict[tuple[str, str], EvalItem] = {}
    with tempfile.TemporaryDirectory() as cache:
        for layout in LAYOUTS:
            spec = BenchmarkSpec(name=layout, format=layout, path=folder / f"{layout}.json")
            for item in load_benchmark(spec, Path(cache), materialize=False):
                items[(layout, item.id)] = item
    probes = []
    path = folder / "responses.jsonl"
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        key = (row["benchmark"], str(row["id"]))
        if key not in items:
            raise ValueError(f"{path}:{lineno}: no {row['benchmark']} record with id {row['id']!r}")
        if row["human"] not in ("correct", "incorrect"):
            raise ValueError(f"{path}:{lineno}: human verdict must be correct or incorrect, got {row['human']!r}")
        probes.append(
            Probe(
                lineno,
                key[0],
                items[key],
                row["response"],
                row["human"] == "correct",
                row.get("note", ""),
                row.get("set", "dev"),
            )
        )
    return probes


def grade_probes(probes: list[Probe]) -> ProbeReport:
    """Score every probe with the rules and compare with the human verdicts."""
    agree = unextracted = 0
    wrong_passed: list[tuple[Probe, Score]] = []
    correct_failed: list[tuple[Probe, Score]] = []
    for probe in probes:
        score = score_response(probe.item, probe.response)
        if score.correct == probe.human_correct:
            agree += 1
        elif score.correct:
            wrong_passed.append((probe, score))
        else:
            correct_failed.append((probe, score))
            unextracted += score.extracted is None
    return ProbeReport(
        total=len(probes),
        agree=agree,
        wrong_passed=wrong_passed,
        correct_failed=correct_failed,
        correct_unextracted=unextracted,
        human_correct=sum(p.human_correct for p in probes),
    )
