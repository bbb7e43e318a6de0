"""Reading a run's files for the report without ever failing, and the two statistics every section uses.

A missing input becomes a line in `RunFiles.missing`, an unreadable one a line in `RunFiles.warnings`;
both end up in report.json (``missing``, ``warnings``) and at the top of report.md.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mathse.run.config import MathSEConfig
from mathse.run.storage import iter_jsonl, read_json


class RunFiles:
    """Reads the run's files defensively, noting what is missing or unreadable."""

    def __init__(self, cfg: MathSEConfig) -> None:
        self.cfg = cfg
        self.out = cfg.output_dir
        self.missing: list[str] = []
        self.warnings: list[str] = []

    def rel(self, path: Path) -> str:
        """`path` relative to the output folder (as given when it is outside)."""
        try:
            return str(path.relative_to(self.out))
        except ValueError:
            return str(path)

    def json(self, path: Path) -> Any:
        """The parsed file, or None when it is absent or unreadable (the latter is warned)."""
        if not path.is_file():
            return None
        try:
            return read_json(path)
        except (OSError, ValueError) as err:
            self.warnings.append(f"{self.rel(path)}: unreadable ({err})")
            return None

    def rows(self, path: Path) -> Iterator[dict[str, Any]]:
        """A JSONL file's dict rows, streamed; a corrupt line ends the stream with a warning."""
        try:
            for row in iter_jsonl(path):
                if isinstance(row, dict):
                    yield row
        except (OSError, ValueError) as err:
            self.warnings.append(f"{self.rel(path)}: unreadable after some rows ({err})")


def length_stats(texts: Iterable[Any]) -> dict[str, Any]:
    """n, mean and median length in characters of the strings in `texts` (non-strings skipped)."""
    lengths = [len(t) for t in texts if isinstance(t, str)]
    if not lengths:
        return {"n": 0, "mean_chars": None, "median_chars": None}
    return {
        "n": len(lengths),
        "mean_chars": round(statistics.fmean(lengths), 2),
        "median_chars": round(float(statistics.median(lengths)), 2),
    }


def rate(num: float | None, den: float | None) -> float | None:
    """num / den to 4 places; None when either is unknown or den is 0."""
    return round(num / den, 4) if num is not None and den else None
