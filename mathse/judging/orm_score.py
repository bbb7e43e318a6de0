"""The ORM's probability that a path is correct, from the token log-probabilities of its verdict.

Servers that speak OpenAI's protocol return them when asked (`logprobs`, `top_logprobs`; vLLM and
SGLang do, `llamafactory-cli api` does not). The judge records the score with each verdict and
`orm.score_threshold` turns a "correct" below it into a rejection; without log-probabilities the
score the ORM wrote in its reply is used, else there is none and no threshold applies.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["score_from_logprobs"]

_CORRECT_KEY_RE = re.compile(r"""["']?correct["']?\s*:\s*$""", re.IGNORECASE)


def _vote(token: str) -> bool | None:
    """True / False when a token spells the start of a JSON boolean ("true", " false", "tr")."""
    word = token.strip().strip("\"'").lower()
    if not word:
        return None
    if "true".startswith(word) or word.startswith("true"):
        return True
    if "false".startswith(word) or word.startswith("false"):
        return False
    return None


def score_from_logprobs(content: list[dict[str, Any]] | None) -> float | None:
    """P(correct) from the token log-probabilities of an ORM reply (OpenAI `choices[0].logprobs.content`).

    The ORM answers ``{"correct": true|false, ...}``: at the token that holds the value of
    "correct", P(correct) = P(true) / (P(true) + P(false)), summing the probability of every
    alternative in ``top_logprobs`` that spells true resp. false. Without ``top_logprobs`` only the
    chosen token's probability p is known: P(correct) = p for "true", 1 - p for "false". None when
    the reply has no such token (not the ORM's JSON) or no log-probabilities were returned.
    """
    if not content:
        return None
    text = ""
    for entry in content:
        token = entry.get("token") if isinstance(entry, dict) else None
        if not isinstance(token, str):
            return None
        if _CORRECT_KEY_RE.search(text) and token.strip():
            return _token_score(entry, token)
        text += token
    return None


def _token_score(entry: dict[str, Any], token: str) -> float | None:
    chosen = _vote(token)
    if chosen is None:
        return None
    mass = {True: 0.0, False: 0.0}
    alternatives = entry.get("top_logprobs") or []
    for alt in alternatives:
        vote = _vote(alt.get("token", "")) if isinstance(alt, dict) else None
        if vote is not None and isinstance(alt.get("logprob"), int | float):
            mass[vote] += math.exp(alt["logprob"])
    if mass[True] + mass[False] > 0:
        return mass[True] / (mass[True] + mass[False])
    logprob = entry.get("logprob")
    if not isinstance(logprob, int | float):
        return None
    p = min(1.0, math.exp(logprob))
    return p if chosen else 1.0 - p
