"""pass@k and maj@k from k scored samples per item."""

from __future__ import annotations

import pytest

from mathse.answers.evalsets import EvalItem
from mathse.answers.sampling import canonical_answer, sample_record, samples_summary


def free(answer: str) -> EvalItem:
    return EvalItem(id="x", question="q", images=(), answer=answer, kind="free")


def test_equal_numbers_vote_together_and_ties_or_silence_count_wrong() -> None:
    half = free("0.5")
    assert canonical_answer(half, "\\frac{1}{2}") == canonical_answer(half, "0.50") == "0.5"
    assert canonical_answer(half, None) is None
    won = sample_record(half, [{"response": "\\boxed{1/2}"}, {"response": "\\boxed{0.5}"}, {"response": "\\boxed{3}"}])
    assert (won["n"], won["correct"]) == (3, 2)
    assert won["maj"] == {"answer": "0.5", "correct": True, "tie": False, "votes": 2}
    tie = sample_record(half, [{"response": "\\boxed{0.5}"}, {"response": "\\boxed{3}"}, None])
    assert tie["maj"]["tie"] and not tie["maj"]["correct"] and tie["samples"][2]["extracted"] is None
    silent = sample_record(half, [{"response": "Hmm."}, {"response": "Let me think."}, {"response": "?"}])
    assert silent["maj"] == {"answer": None, "correct": False, "tie": False, "votes": 0}

    summary = samples_summary([won, tie, silent], 3, 0.8)
    assert summary["pass_at_k"] == pytest.approx(66.67) and summary["maj_at_k"] == pytest.approx(33.33)
    assert (summary["maj_ties"], summary["maj_no_answer"], summary["unextracted_samples"]) == (1, 1, 4)
    assert summary["pass_at_1"] == pytest.approx(100 * (2 / 3 + 1 / 3) / 3, abs=0.01)
    low, high = summary["maj_at_k_interval"]
    assert 0 < low < 33.33 < high < 100
