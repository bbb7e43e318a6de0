"""The run's checkpoints by name (base, stage0, round_<r>, stage2, final) or as folders, for evaluation."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mathse.run import layout
from mathse.run.config import ConfigError, MathSEConfig
from mathse.run.errors import StageError
from mathse.run.storage import (
    MARKER_NAME,
    is_done,
)


@dataclass(frozen=True)
class Checkpoint:
    """A model to evaluate: `name` labels its row and folder."""

    name: str
    model: str  # model_name_or_path
    adapter: str | None  # LoRA adapter folder, loaded on `model`
    source: Path | None  # the run's folder for it (None: the base model as configured)

    @property
    def stamp(self) -> int | None:
        """When the model was finished (its marker's mtime): tells a retrained model apart."""
        if self.source is None:
            return None
        marker = self.source / MARKER_NAME
        return marker.stat().st_mtime_ns if marker.is_file() else None


_ROUND = re.compile(r"round_(\d+)")


def _named_dir(cfg: MathSEConfig, name: str) -> Path | None:
    if name == "stage0":
        return cfg.model_path("sft_model_stage0")
    if name == "stage2":
        return cfg.model_path("sft_model_final")
    if name == "final":
        return cfg.model_path("reflection_model_final")
    match = _ROUND.fullmatch(name)
    # A round that accepted no new path kept the model before it: that is round r's checkpoint.
    return layout.round_model(cfg, int(match.group(1))) if match else None


def _from_dir(name: str, folder: Path) -> Checkpoint:
    model, adapter = layout.model_ref(folder)
    return Checkpoint(name, model, adapter, folder)


def _base(cfg: MathSEConfig) -> Checkpoint:
    return Checkpoint("base", cfg.model.base, None, None)


def resolve_checkpoints(cfg: MathSEConfig) -> list[Checkpoint]:
    """The checkpoints to evaluate, in table order; explicit ones that do not exist are errors."""
    if cfg.eval.checkpoints is None:
        found = [_base(cfg)]
        for name in ("stage0", *(f"round_{r}" for r in range(1, cfg.evolve.rounds + 1)), "final"):
            folder = _named_dir(cfg, name)
            if folder is not None and is_done(folder):
                found.append(_from_dir(name, folder))
        return found
    checkpoints: list[Checkpoint] = []
    for i, entry in enumerate(cfg.eval.checkpoints):
        key = f"eval.checkpoints[{i}]"
        if entry == "base":
            checkpoints.append(_base(cfg))
            continue
        folder = _named_dir(cfg, entry)
        if folder is not None:
            if not is_done(folder):
                raise StageError(f"eval: checkpoint {entry!r} is not trained yet ({folder})")
            checkpoints.append(_from_dir(entry, folder))
            continue
        label, sep, raw = entry.partition("=")
        path = Path(raw if sep else entry).expanduser()
        path = path if path.is_absolute() else (cfg.config_dir / path).resolve()
        if not path.is_dir():
            hint = " (names: base, stage0, round_<r>, stage2, final)" if not sep and "/" not in entry else ""
            raise ConfigError([f"config error: {key}: {entry!r}: model folder not found: {path}{hint}"])
        checkpoints.append(_from_dir(label.strip() if sep else path.name, path))
    names = Counter(c.name for c in checkpoints)
    duplicated = [n for n, k in names.items() if k > 1]
    if duplicated:
        raise ConfigError(
            [f"config error: eval.checkpoints: duplicate checkpoint name(s) {duplicated}; use label=path"]
        )
    return checkpoints
