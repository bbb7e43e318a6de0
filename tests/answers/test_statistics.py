import math

import pytest

from mathse.answers.statistics import majority_vote, mcnemar_counts, mcnemar_exact, pass_at_k, wilson_interval


def test_wilson_interval_matches_the_textbook_value_and_stays_inside_zero_one():
    interval = wilson_interval(71, 150)  # 47.3%
    assert interval.low == pytest.approx(0.3951, abs=1e-4) and interval.high == pytest.approx(0.5529, abs=1e-4)
    assert wilson_interval(0, 10).low == 0.0 and wilson_interval(10, 10).high == pytest.approx(1.0)
    assert wilson_interval(0, 0).as_percent() == "[0.0, 100.0]"
    with pytest.raises(ValueError, match="correct <= total"):
        wilson_interval(11, 10)


def test_mcnemar_counts_only_discordant_pairs():
    same = mcnemar_exact([True, False, True], [True, False, True])
    assert same.p_value == 1.0 and not same.significant()
    # 10 items improved, none got worse: p = 2 * 0.5**10
    test = mcnemar_exact([False] * 10 + [True] * 5, [True] * 15)
    assert (test.only_first, test.only_second) == (0, 10)
    assert test.p_value == pytest.approx(2 / 1024) and test.significant()
    with pytest.raises(ValueError, match="pair the same items"):
        mcnemar_exact([True], [True, False])


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_majority_vote_counts_ties_and_unextracted_as_wrong():
    assert majority_vote([("7", True), ("7", True), ("8", False)]).correct
    tie = majority_vote([("7", True), ("8", False)])
    assert tie.tie and not tie.correct
    assert not majority_vote([(None, False), (None, False)]).correct
    assert majority_vote([(None, False), ("7", True)]).answer == "7"


def test_mcnemar_from_counts_and_pass_at_k_sums_get_intervals():
    assert mcnemar_counts(15, 0, 10) == mcnemar_exact([False] * 10 + [True] * 5, [True] * 15)
    assert mcnemar_counts(150, 9, 21).p_value == pytest.approx(0.0428, abs=1e-4)  # binomial tail, 2 * P(X <= 9)
    with pytest.raises(ValueError, match="discordant pairs"):
        mcnemar_counts(5, 4, 3)
    # A sum of per-item pass@k values (not a count) gets an interval as well.
    mean = wilson_interval(2.5, 4)
    assert wilson_interval(2, 4).low < mean.low < wilson_interval(3, 4).low
