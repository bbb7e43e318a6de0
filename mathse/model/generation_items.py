"""What a generator is asked for and what it writes, for the in-process and the served engine alike:
items (a problem and a sample index), requests cut from them, journal rows, counts, seeds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from mathse.model.prompts import student_prompt
from mathse.model.training_data import IMAGE_TOKEN
from mathse.run.errors import StageError
from mathse.run.records import Problem
from mathse.run.storage import Journal

# Upper bound for auto grouping on huggingface: k sequences share one batched generate, and k KV
# caches must fit in memory at once.
MAX_PATHS_PER_REQUEST = 16


class GenerationError(StageError):
    """Generation cannot go on (e.g. the engine died): too many requests failed in a row."""


class GenItem(NamedTuple):
    """One reasoning path to generate: `sample_index` tells the paths of a problem apart."""

    key: str
    problem: Problem
    sample_index: int


def make_items(problems: Iterable[Problem], n_paths: int) -> list[GenItem]:
    """`n_paths` items per problem, keyed `<id>#<sample_index>`."""
    return [GenItem(f"{p.id}#{i}", p, i) for p in problems for i in range(n_paths)]


def user_turn(problem: Problem) -> str:
    """The user message sent: one image tag per image, then the student prompt (as in training)."""
    return IMAGE_TOKEN * len(problem.images) + student_prompt(problem)


@dataclass
class GenStats:
    """What one `generate` call did."""

    done: int = 0  # paths generated and journaled
    skipped_existing: int = 0  # keys already in the journal
    failed: int = 0  # image errors (journaled with "error") + generation errors (not journaled)
    retry_later: int = 0  # the generation errors among `failed`: a rerun tries them again
    seconds: float = 0.0  # generation wall time, engine loading excluded
    load_seconds: float = 0.0  # building the ChatModel (0 when it was already loaded or not needed)

    @property
    def paths_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"generation: {self.done} paths done, {self.skipped_existing} already in the journal, "
            f"{self.failed} failed ({self.retry_later} left for a rerun) in {self.seconds:.1f} s "
            f"({self.paths_per_s:.2f} paths/s; model load {self.load_seconds:.1f} s)"
        )


def plan_chunks(items: Sequence[GenItem], journal: Journal, group: int) -> tuple[list[tuple[GenItem, ...]], int]:
    """The items not yet in `journal`, grouped by problem in first-seen order and cut into chunks of
    at most `group` paths (one request each), and how many were skipped as already done."""
    seen: set[str] = set()
    skipped = 0
    by_problem: dict[str, list[GenItem]] = {}
    for item in items:
        if item.key in seen:
            raise ValueError(f"duplicate generation key {item.key!r}")
        seen.add(item.key)
        if item.key in journal:
            skipped += 1
        else:
            by_problem.setdefault(item.problem.id, []).append(item)
    chunks = [tuple(p[i : i + group]) for p in by_problem.values() for i in range(0, len(p), group)]
    return chunks, skipped


def derive_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def journal_row(
    item: GenItem, prompt: str, response: str | None, finish_reason: str | None, gen_s: float
) -> dict[str, Any]:
    return {
        "key": item.key,
        "id": item.problem.id,
        "sample": item.sample_index,
        "response": response,
        "prompt": prompt,
        "images": list(item.problem.images),
        "finish_reason": finish_reason,
        "gen_s": gen_s,
    }
