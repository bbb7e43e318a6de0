"""The stages, one module each (read top to bottom), all with the same contract, `Stage`.

A stage module never imports another stage: what stages share lives in flat modules under
`mathse/` (paths in `mathse.run.layout`, rows in `mathse.run.records`, ...).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from mathse.run.config import MathSEConfig

__all__ = ["Stage", "load_stage"]


class Stage(Protocol):
    """What `mathse.cli` (and `--stage all`) needs of a stage module."""

    def run(self, cfg: MathSEConfig, dry_run: bool = False) -> int:
        """Do the stage's work (resuming what a killed run left); 0 on success. Extra keyword
        options (evolve's shard / merge) come from the command line."""
        ...

    def finished(self, cfg: MathSEConfig) -> bool:
        """Every unit of the stage's work carries its completion marker: a rerun does nothing."""
        ...

    def artifacts(self, cfg: MathSEConfig) -> dict[str, Path]:
        """The stage's outputs a user looks at, by description."""
        ...


def load_stage(module: str) -> Stage:
    """The stage module `mathse.stages.<module>` (imported on demand: torch loads only when needed)."""
    return cast(Stage, importlib.import_module(f"{__name__}.{module}"))
