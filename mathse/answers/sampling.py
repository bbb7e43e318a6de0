"""pass@k and maj@k of one (checkpoint, benchmark) evaluation from k sampled answers per item.

Each sample is scored by the same rules as the greedy answer (`score_response`; the LLM judge is not
asked about samples). Per item: c of the n = k samples correct gives the unbiased pass@k estimate
(`statistics.pass_at_k`); maj@k is right when the most frequent canonical extracted answer is a
right one. Canonical: the option letter for multiple choice, else the answer's number ("0.50", "1/2"
and "50%" are not merged: the rules' own reading of a number, `numeric_value`, is) or its normalised
text. Unextracted samples do not vote; an item none of whose samples has an answer counts wrong, and
so does a tie for the top count (both are counted and stated).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mathse.answers.equivalence import normalize_answer
from mathse.answers.evalsets import EvalItem
from mathse.answers.scoring import numeric_value, score_response
from mathse.answers.statistics import majority_vote, pass_at_k, wilson_interval

__all__ = ["canonical_answer", "sample_record", "samples_summary"]


def canonical_answer(item: EvalItem, extracted: str | None) -> str | None:
    """The key samples vote with: the letter (choice), the number, else the normalised text."""
    if extracted is None:
        return None
    if item.kind == "choice":
        return extracted.strip()
    value = numeric_value(extracted)
    if value is not None:
        return f"{value:.9g}"
    return normalize_answer(extracted) or extracted.strip()


def sample_record(item: EvalItem, rows: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """One item's k samples scored: {"n", "correct", "samples": [{extracted, correct, finish_reason}], "maj"}."""
    scored = []
    for row in rows:
        score = score_response(item, (row or {}).get("response"))
        scored.append({"extracted": score.extracted, "correct": score.correct,
                       "finish_reason": (row or {}).get("finish_reason")})
    vote = majority_vote([(canonical_answer(item, s["extracted"]), s["correct"]) for s in scored])
    return {
        "n": len(scored),
        "correct": sum(1 for s in scored if s["correct"]),
        "samples": scored,
        "maj": {"answer": vote.answer, "correct": vote.correct, "tie": vote.tie, "votes": vote.votes},
    }


def _percent(value: float, total: int) -> float | None:
    return round(100 * value / total, 2) if total else None


def samples_summary(records: Iterable[dict[str, Any]], k: int, temperature: float) -> dict[str, Any]:
    """pass@k, maj@k (with ties and unextracted items), sampled pass@1, each with a 95% Wilson interval (%)."""
    pass_sum = pass1_sum = 0.0
    total = maj = ties = no_answer = unextracted = drawn = 0
    for rec in records:
        total += 1
        drawn += rec["n"]
        pass_sum += pass_at_k(rec["n"], rec["correct"], k)
        pass1_sum += rec["correct"] / rec["n"]
        maj += rec["maj"]["correct"]
        ties += rec["maj"]["tie"]
        no_answer += rec["maj"]["answer"] is None
        unextracted += sum(1 for s in rec["samples"] if s["extracted"] is None)

    def interval(value: float) -> list[float]:
        ci = wilson_interval(value, total)
        return [round(100 * ci.low, 2), round(100 * ci.high, 2)]

    return {
        "k": k,
        "temperature": temperature,
        "items": total,
        "samples": drawn,
        "unextracted_samples": unextracted,
        "pass_at_k": _percent(pass_sum, total),
        "pass_at_k_interval": interval(pass_sum),
        "maj_at_k_correct": maj,
        "maj_at_k": _percent(maj, total),
        "maj_at_k_interval": interval(maj),
        "maj_ties": ties,  # counted wrong
        "maj_no_answer": no_answer,  # no sample had an extractable answer: counted wrong
        "pass_at_1": _percent(pass1_sum, total),  # the mean accuracy of one sample
    }
