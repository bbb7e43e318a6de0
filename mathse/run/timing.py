"""Where a stage's wall time goes: model compute, API waits, and the pipeline's own overhead.

Each stage wraps its model work (generation, training) and its API batches (teacher, served ORM)
in spans and saves `<stage dir>/timings.json` at the end; the rest of the wall time is MathSE's
own overhead (reading, validating, writing), which `benchmarks/bench_overhead.py` checks.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from mathse.run.storage import atomic_write_json

KINDS = ("model", "api")


class StageTimer:
    """Accumulates seconds per kind ("model", "api") between creation and `save`."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def span(self, kind: str) -> Iterator[None]:
        if kind not in KINDS:
            raise ValueError(f"unknown timing kind {kind!r}; expected one of {KINDS}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] += time.perf_counter() - start

    def summary(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        measured = sum(self.seconds.values())
        overhead = max(0.0, wall - measured)
        return {
            "wall_s": round(wall, 3),
            **{f"{kind}_s": round(self.seconds[kind], 3) for kind in KINDS},
            "overhead_s": round(overhead, 3),
            "overhead_share": round(overhead / wall, 4) if wall > 0 else 0.0,
        }

    def save(self, path: Path) -> dict[str, float]:
        summary = self.summary()
        atomic_write_json(path, summary)
        return summary
