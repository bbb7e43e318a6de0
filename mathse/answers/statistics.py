"""The numbers a published accuracy needs beside it: intervals, paired tests, pass@k and maj@k.

Pure functions over counts and per-item outcomes; the eval stage, the report and the ablations
table all read them from here so each figure is computed one way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def as_percent(self) -> str:
        return f"[{100 * self.low:.1f}, {100 * self.high:.1f}]"


def wilson_interval(correct: float, total: int, z: float = Z_95) -> Interval:
    """The Wilson score interval of a proportion (95% by default); [0, 1] when there are no items.

    `correct` may also be a sum of per-item scores in [0, 1] (pass@k): their mean varies no more than a
    proportion's, so the interval is then conservative.
    """
    if total < 0 or not 0 <= correct <= total:
        raise ValueError(f"wilson_interval: need 0 <= correct <= total, got {correct}/{total}")
    if total == 0:
        return Interval(0.0, 1.0)
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


ALPHA = 0.05  # a paired test's p below this is called significant


@dataclass(frozen=True)
class PairedTest:
    """McNemar's exact test on the items two checkpoints both answered."""

    items: int
    only_first: int  # right before, wrong after
    only_second: int  # wrong before, right after
    p_value: float

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.p_value < alpha

    def to_json(self) -> dict[str, Any]:
        """items, improved (right only after), worsened (right only before), p_value, significant (p < ALPHA)."""
        return {"items": self.items, "improved": self.only_second, "worsened": self.only_first,
                "p_value": self.p_value, "significant": self.significant()}


def mcnemar_exact(first: Sequence[bool], second: Sequence[bool]) -> PairedTest:
    """Two-sided exact McNemar test (a binomial test on the discordant pairs, p = 1/2)."""
    if len(first) != len(second):
        raise ValueError(f"mcnemar_exact: {len(first)} outcomes against {len(second)}: pair the same items")
    only_first = sum(1 for a, b in zip(first, second, strict=True) if a and not b)
    only_second = sum(1 for a, b in zip(first, second, strict=True) if b and not a)
    return mcnemar_counts(len(first), only_first, only_second)


def mcnemar_counts(items: int, only_first: int, only_second: int) -> PairedTest:
    """`mcnemar_exact` from the counts of discordant pairs (right only before, right only after)."""
    if min(only_first, only_second) < 0 or only_first + only_second > items:
        raise ValueError(f"mcnemar_counts: {only_first} + {only_second} discordant pairs of {items} items")
    discordant = only_first + only_second
    if discordant == 0:
        return PairedTest(items, 0, 0, 1.0)
    smaller = min(only_first, only_second)
    tail = sum(math.comb(discordant, i) for i in range(smaller + 1)) / 2**discordant
    return PairedTest(items, only_first, only_second, min(1.0, 2 * tail))


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021) from n >= k samples of which c are correct."""
    if not 0 < k <= samples or not 0 <= correct <= samples:
        raise ValueError(f"pass_at_k: need 0 < k <= n and 0 <= c <= n, got n={samples} c={correct} k={k}")
    if samples - correct < k:
        return 1.0
    return 1.0 - math.comb(samples - correct, k) / math.comb(samples, k)


@dataclass(frozen=True)
class MajorityVote:
    """maj@k for one item: the most frequent extracted answer and whether it is right.

    `tie` is True when two or more answers share the top count: the vote then counts as wrong (a coin
    flip would make the figure depend on sample order), and the report says how many items tied.
    Unextracted samples (None) do not vote; an item with no extracted answer is wrong.
    """

    answer: Hashable | None
    correct: bool
    tie: bool
    votes: int


def majority_vote(answers: Sequence[tuple[Hashable | None, bool]]) -> MajorityVote:
    """`answers`: one (canonical extracted answer or None, is that sample correct) per sample."""
    counts = Counter(key for key, _ in answers if key is not None)
    if not counts:
        return MajorityVote(None, False, False, 0)
    ranked = counts.most_common()
    top_key, top_votes = ranked[0]
    tie = len(ranked) > 1 and ranked[1][1] == top_votes
    right = any(ok for key, ok in answers if key == top_key)
    return MajorityVote(top_key, right and not tie, tie, top_votes)
