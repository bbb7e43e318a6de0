"""Figure 2 of the paper: how a problem's outcome moves between two attempts.

Two sources: consecutive evolve rounds (per-problem history: correct = any path accepted) and each
consecutive pair of evaluated checkpoints (per-problem eval outcomes, collected by `eval_scores`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from mathse.answers.statistics import mcnemar_counts
from mathse.reporting.run_files import RunFiles
from mathse.run import layout

TRANSITIONS = ("consistently_correct", "incorrect_to_correct", "correct_to_incorrect", "persistently_incorrect")
TRANSITION_LABELS = {
    "consistently_correct": "consistently correct",
    "incorrect_to_correct": "incorrect → correct",
    "correct_to_incorrect": "correct → incorrect",
    "persistently_incorrect": "persistently incorrect",
}


def transition_counts(pairs: Iterable[tuple[bool, bool]]) -> dict[str, int]:
    """Figure 2's four categories over (correct before, correct after) pairs, plus their total n."""
    counts = dict.fromkeys(TRANSITIONS, 0)
    for before, after in pairs:
        if before and after:
            counts["consistently_correct"] += 1
        elif after:
            counts["incorrect_to_correct"] += 1
        elif before:
            counts["correct_to_incorrect"] += 1
        else:
            counts["persistently_incorrect"] += 1
    return {**counts, "n": sum(counts.values())}


def transitions(files: RunFiles, report: dict[str, Any]) -> dict[str, Any]:
    """The report's ``transitions``: evolve round pairs and eval checkpoint pairs (None where there are none)."""
    result: dict[str, Any] = {"evolve": None, "eval": None}
    rounds = [r["round"] for r in (report.get("evolve") or {}).get("rounds", [])]
    history = _history(files, rounds)
    pairs = []
    for r in sorted(history):
        if r + 1 not in history:
            continue
        before, after = history[r], history[r + 1]
        both = [pid for pid in before if pid in after]
        pairs.append({"from_round": r, "to_round": r + 1, **transition_counts((before[p], after[p]) for p in both)})
    if pairs:
        result["evolve"] = {"pairs": pairs, "total": _sum_counts(pairs)}

    ev = report.get("eval") or {}
    ckpts = [k for k in ev.get("checkpoint_order", []) if k in ev.get("_outcomes", {})]
    # Figure 2 of the paper: each consecutive pair of evaluated checkpoints (stage0 -> round_1 -> ... -> final).
    eval_pairs = [p for a, b in itertools.pairwise(ckpts) if (p := _eval_pair(ev["_outcomes"], a, b)) is not None]
    if eval_pairs:
        result["eval"] = {"pairs": eval_pairs}
        if len(ckpts) > 2 and (overall := _eval_pair(ev["_outcomes"], ckpts[0], ckpts[-1])) is not None:
            result["eval"]["first_to_last"] = overall
    if result["evolve"] is None and result["eval"] is None:
        files.missing.append(
            "transitions (Figure 2): no problem was attempted in two consecutive evolve rounds, and no eval "
            "predictions exist for two checkpoints"
        )
    return result


def _history(files: RunFiles, rounds: list[int]) -> dict[int, dict[str, bool]]:
    """round -> problem id -> correct (any path accepted), from per-round files, else the cumulative one."""
    outcome: dict[int, dict[str, bool]] = {}

    def add(row: dict[str, Any], round_hint: int | None) -> None:
        r = row.get("round", round_hint)
        if r is None or "id" not in row:
            return
        verdicts = row.get("verdicts")
        correct = any(v is True for v in verdicts) if isinstance(verdicts, list) else bool(row.get("solved"))
        outcome.setdefault(int(r), {})[str(row["id"])] = correct

    for r in rounds:
        for row in files.rows(layout.round_dir(files.cfg, r) / layout.HISTORY):
            add(row, r)
    for row in files.rows(layout.evolve_file(files.cfg, "history")):
        r = row.get("round")
        if r is not None and int(r) not in outcome:  # a round whose own file is gone
            add(row, None)
    return outcome


def _sum_counts(items: Iterable[dict[str, int]]) -> dict[str, int]:
    total = dict.fromkeys((*TRANSITIONS, "n"), 0)
    for item in items:
        for key in total:
            total[key] += item[key]
    return total


def _eval_pair(outcomes: dict[str, dict[str, dict[str, bool]]], first: str, last: str) -> dict[str, Any] | None:
    """Transition counts of the eval problems both checkpoints answered, per benchmark and in total."""
    a, b = outcomes[first], outcomes[last]
    benches = {}
    for bench in sorted(set(a) & set(b)):
        common = [pid for pid in a[bench] if pid in b[bench]]
        benches[bench] = transition_counts((a[bench][p], b[bench][p]) for p in common)
    if not benches:
        return None
    total = _sum_counts(benches.values())
    tests = {bench: paired_test(counts) for bench, counts in benches.items()}
    if len(benches) > 1:
        tests["all"] = paired_test(total)
    return {"from_checkpoint": first, "to_checkpoint": last, "benchmarks": benches, "total": total,
            "paired_tests": tests}


def paired_test(counts: dict[str, int]) -> dict[str, Any]:
    """Exact McNemar test of one transition count: is the step from the first checkpoint to the second noise?"""
    return mcnemar_counts(counts["n"], counts["correct_to_incorrect"], counts["incorrect_to_correct"]).to_json()
