"""The report's ``eval`` section: eval/results.json's accuracy table, the per-checkpoint predictions
files (per-problem outcomes for Figure 2, response lengths), and a consistency check between the two.

results.json holds the accuracy table; the predictions files hold the same verdicts problem by problem.
Recounting them is a check: a checkpoint / benchmark whose counts differ (or that only the predictions
have) is listed in ``eval["disagreements"]``.
"""

from __future__ import annotations

import re
from typing import Any

from mathse.answers.eval_results import results_table
from mathse.reporting.run_files import RunFiles, length_stats, rate
from mathse.run import layout

_ROUND_CKPT = re.compile(r"^(?:sft_model_)?round_?(\d+)$")


def eval_scores(files: RunFiles) -> dict[str, Any] | None:
    """results.json as a table, the predictions' counts per checkpoint and benchmark, their disagreements,
    response lengths; ``_outcomes`` (problem -> correct, for Figure 2) is internal, dropped from report.json."""
    results = _results(files)
    predictions: dict[str, dict[str, dict[str, Any]]] = {}
    outcomes: dict[str, dict[str, dict[str, bool]]] = {}
    texts_by_ckpt: dict[str, list[Any]] = {}
    for path in sorted(layout.stage_dir(files.cfg, layout.EVAL).glob(f"*/*/{layout.PREDICTIONS}")):
        ckpt, bench = path.parent.parent.name, path.parent.name
        seen: dict[str, bool] = {}
        texts: list[Any] = []
        for row in files.rows(path):
            texts.append(row.get("response"))
            if "id" in row:
                # The rule-based verdict, as results.json's main numbers ("correct_with_judge" adds the judge).
                seen[str(row["id"])] = row.get("correct") is True
        n_correct = sum(seen.values())
        predictions.setdefault(ckpt, {})[bench] = {
            "n": len(seen), "correct": n_correct, "accuracy": rate(n_correct, len(seen))
        }
        outcomes.setdefault(ckpt, {})[bench] = seen
        texts_by_ckpt.setdefault(ckpt, []).extend(texts)
    if not predictions:
        files.missing.append("eval: no predictions (eval/<checkpoint>/<benchmark>/predictions.jsonl)")
    if results is None and not predictions:
        return None

    # results.json lists checkpoints in eval's table order; anything else goes in pipeline order.
    order = list(dict.fromkeys(layout.safe_name(k) for k in (results or {}).get("checkpoints", [])))
    order += sorted(set(predictions) - set(order), key=checkpoint_rank)
    return {
        "checkpoint_order": order,
        "results": results,
        "predictions": predictions,
        "disagreements": disagreements(results, predictions, order) if results else [],
        "lengths": {k: length_stats(v) for k, v in texts_by_ckpt.items()},
        "_outcomes": outcomes,
    }


def _results(files: RunFiles) -> dict[str, Any] | None:
    """eval/results.json as `results_table` reads it; None (noted) when absent or unreadable."""
    path = layout.eval_results_path(files.cfg, "json")
    pairs = files.json(path)
    if pairs is not None:
        try:
            return results_table(pairs)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            files.warnings.append(f"{files.rel(path)}: unreadable ({err})")
    elif not path.is_file():
        files.missing.append(f"eval: no results table ({files.rel(path)}): run --stage eval")
    return None


def disagreements(
    results: dict[str, Any], predictions: dict[str, dict[str, dict[str, Any]]], order: list[str]
) -> list[dict[str, Any]]:
    """Each checkpoint / benchmark whose predictions file counts other than results.json does (rule-based
    correct of total), in checkpoint order: ``{checkpoint, benchmark, results: {correct, total, accuracy} |
    None (not in results.json), predictions: {n, correct, accuracy}}``. Pairs without predictions are not
    checked."""
    recorded: dict[tuple[str, str], dict[str, Any]] = {}
    for ckpt, row in results["table"].items():
        for bench in results["benchmarks"]:
            correct, total = row.get(f"{bench} correct"), row.get(f"{bench} total")
            if correct is not None and total:
                recorded[layout.safe_name(ckpt), layout.safe_name(bench)] = {
                    "correct": correct, "total": total, "accuracy": rate(correct, total)}
    found: list[dict[str, Any]] = []
    for ckpt in order:
        for bench, counted in (predictions.get(ckpt) or {}).items():
            said = recorded.get((ckpt, bench))
            if said is None or (said["correct"], said["total"]) != (counted["correct"], counted["n"]):
                found.append({"checkpoint": ckpt, "benchmark": bench, "results": said, "predictions": counted})
    return found


def checkpoint_rank(name: str) -> tuple[int, int, str]:
    """Pipeline order for checkpoints: base, stage0, round_1.., stage2, final, then the rest by name."""
    fixed = {"base": 0, "stage0": 1, "sft_model_stage0": 1, "m0": 1, "stage2": 3, "sft_model_final": 3,
             "final": 4, "reflection_model_final": 4}
    if name in fixed:
        return fixed[name], 0, ""
    if m := _ROUND_CKPT.match(name):
        return 2, int(m.group(1)), ""
    return 5, 0, name
