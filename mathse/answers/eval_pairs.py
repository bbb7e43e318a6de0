"""One (checkpoint, benchmark) evaluation's records: a prediction row per item and the pair's scores.

The eval stage generates and judges; this module turns what it got into `predictions.jsonl` rows
(question, answer, response, extracted answer, verdicts, and with `eval.samples` k > 1 each sample's
extracted answer and verdict, the majority vote) and `scores.json` (accuracy with its 95% Wilson
interval, per subset and breakdown field, unextracted answers, the judge's counts, pass@k / maj@k).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from mathse.answers.evalsets import BREAKDOWN_FIELDS, SUBSET_FIELDS, EvalItem
from mathse.answers.sampling import samples_summary
from mathse.answers.scoring import Score
from mathse.answers.statistics import wilson_interval

__all__ = ["pair_summary", "prediction", "summarize", "tally"]


def prediction(
    item: EvalItem, row: dict[str, Any], score: Score, verdict: dict[str, Any] | None,
    sampled: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The predictions.jsonl row of one item; `sampled`: its `sampling.sample_record` (eval.samples > 1)."""
    judge_correct = verdict is not None and verdict.get("verdict") == "correct"
    record: dict[str, Any] = {
        "id": item.id,
        "question": item.question,
        "images": list(item.images),
        "answer": item.answer,
        "kind": item.kind,
        "response": row.get("response"),
        "extracted": score.extracted,
        "correct": score.correct,
        "reason": score.reason,
        "judge": verdict,
        "correct_with_judge": score.correct or judge_correct,
        "finish_reason": row.get("finish_reason"),
        "metadata": item.metadata,
    }
    if item.kind == "choice":
        record["options"] = list(item.options)
        record["answer_letter"] = item.answer_letter
    if row.get("error"):
        record["error"] = row["error"]
    if sampled is not None:
        record["sampled"] = sampled
    return record


def _interval(correct: int, total: int) -> list[float] | None:
    if not total:
        return None
    ci = wilson_interval(correct, total)
    return [round(100 * ci.low, 2), round(100 * ci.high, 2)]


def tally(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts and accuracy (%) of prediction rows, rules alone and with the judge, each with its 95% interval."""
    total = len(rows)
    correct = sum(1 for r in rows if r["correct"])
    with_judge = sum(1 for r in rows if r["correct_with_judge"])
    return {
        "total": total,
        "correct": correct,
        "accuracy": round(100 * correct / total, 2) if total else None,
        "interval": _interval(correct, total),
        "correct_with_judge": with_judge,
        "accuracy_with_judge": round(100 * with_judge / total, 2) if total else None,
        "interval_with_judge": _interval(with_judge, total),
    }


def summarize(
    checkpoint: str,
    spec: Any,
    items: list[EvalItem],
    predictions: list[dict[str, Any]],
    *,
    judge_model: str | None,
    settings: dict[str, Any],
    samples: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """Scores of one pair: overall, per subset (MathVerse versions), per breakdown field, and with
    `samples` = (k, temperature) pass@k and maj@k. `spec` is the pair's BenchmarkSpec."""
    verdicts = Counter(p["judge"]["verdict"] for p in predictions if p["judge"])
    judge = None
    if judge_model is not None:
        judge = {
            "model": judge_model,
            "asked": sum(verdicts.values()),
            **{k: verdicts.get(k, 0) for k in ("correct", "incorrect", "unparseable", "failed")},
        }
    breakdowns: dict[str, dict[str, Any]] = {}
    for field_name in BREAKDOWN_FIELDS.get(spec.format, ()):
        groups: dict[str, list[dict[str, Any]]] = {}
        for p in predictions:
            value = p["metadata"].get(field_name)
            if value is not None and value != "":
                groups.setdefault(str(value), []).append(p)
        if groups:
            breakdowns[field_name] = {k: tally(v) for k, v in sorted(groups.items())}
    subset_field = SUBSET_FIELDS.get(spec.format)
    stats = {
        "checkpoint": checkpoint,
        "benchmark": spec.name,
        "format": spec.format,
        "split": spec.split,
        **tally(predictions),
        "unextracted": sum(1 for p in predictions if p["extracted"] is None),
        "generation_errors": sum(1 for p in predictions if p.get("error")),
        "choice_items": sum(1 for i in items if i.kind == "choice"),
        "judge": judge,
        "subset_field": subset_field,
        "subsets": breakdowns.get(subset_field, {}) if subset_field else {},
        "breakdowns": breakdowns,
        "settings": settings,
    }
    if samples is not None:
        stats["sampled"] = samples_summary((p["sampled"] for p in predictions), *samples)
    return stats


def pair_summary(stats: dict[str, Any]) -> str:
    """The console line of one finished pair."""
    line = (
        f"eval: {stats['checkpoint']}/{stats['benchmark']}: {stats['accuracy']:.2f}% "
        f"({stats['correct']}/{stats['total']}); {stats['unextracted']} answers not found"
    )
    if stats["judge"]:
        j = stats["judge"]
        line += (
            f"; judge on those: {j['correct']} correct, {j['incorrect']} incorrect, {j['unparseable']} unparseable "
            f"-> {stats['accuracy_with_judge']:.2f}% with the judge"
        )
    if stats.get("sampled"):
        s = stats["sampled"]
        line += (
            f"; {s['k']} samples at T={s['temperature']}: pass@{s['k']} {s['pass_at_k']:.2f}%, "
            f"maj@{s['k']} {s['maj_at_k']:.2f}% ({s['maj_ties']} ties, {s['maj_no_answer']} without an answer)"
        )
    return line
