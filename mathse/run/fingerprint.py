"""What a unit of work consumed, recorded in its completion marker, so a changed input is caught.

A marker's ``consumed`` maps a label to what the unit read: an input file's identity (size,
mtime and sha256 of its content), another unit's completion marker (sha256 of the marker file:
a redone upstream unit writes a new one), or a config value (the sub-block it depends on, minus
keys that do not change results: concurrency, timeouts, endpoints). A later run builds the same
map from the current config and files; any difference names what changed and the unit is stale.

Normal resume (kill, rerun with the same config and files) never looks stale: nothing recorded
changes. A touched file with the same content is the same file (the content hash decides). A
marker written before fingerprints existed (no ``consumed``) is trusted.

Policy: a stale unit is never reused silently. Rebuilding a dataset file from data the run
already has is redone on the spot, with a line saying why. Anything that would generate, call
a paid API or train again is not touched: the stage stops (exit 2) with one line naming the
unit, what changed and ``--redo <stage>``, which discards that stage's stale units and redoes
them (README, "Changed inputs").
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mathse.run.errors import StageError
from mathse.run.storage import MARKER_NAME, is_done, read_marker

if TYPE_CHECKING:
    from mathse.run.config import MathSEConfig

__all__ = [
    "API_VOLATILE", "INFERENCE_VOLATILE", "ORM_JUDGING_EXCLUDE", "Inputs", "Stale", "StaleError", "check",
    "marker_digest", "settle", "stale_lines", "survey",
]

# ApiConfig keys that change how a request travels, not its answer (the answer cache ignores them too).
API_VOLATILE = {"base_url", "api_key", "concurrency", "timeout_s", "max_retries", "backoff_base_s", "backoff_max_s"}
# InferenceConfig keys that change speed or memory, not the paths sampled.
INFERENCE_VOLATILE = {"concurrency", "vllm_gpu_util"}
# OrmConfig keys that do not change a verdict (the ORM's own training data, waiting, endpoints).
# (`targets` is the ORM's training data too; the ORM's own marker says which ORM judges.)
ORM_JUDGING_EXCLUDE: dict[str, Any] = {"train_file": True, "heldout_file": True, "data": True, "targets": True,
                                       "serve_timeout_s": True, "api": API_VOLATILE}
_CHUNK = 1 << 20


class StaleError(StageError):
    """A finished unit's inputs changed and redoing it is not cheap: the user decides (--redo)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(path: Path) -> dict[str, Any] | None:
    """A file's size, mtime and content hash (None: no such file)."""
    if not path.is_file():
        return None
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": _sha256(path)}


def _same_file(recorded: dict[str, Any] | None, path: Path) -> bool:
    if recorded is None or not path.is_file():
        return recorded is None and not path.is_file()
    st = path.stat()
    if st.st_size != recorded["size"]:
        return False
    if st.st_mtime_ns == recorded["mtime_ns"] and str(path) == recorded["path"]:
        return True  # untouched: no need to read it
    return _sha256(path) == recorded["sha256"]  # touched, copied or moved: the content decides


def marker_digest(folder: Path) -> str | None:
    """sha256 of a unit's completion marker (None: not done): redoing the unit changes it."""
    marker = folder / MARKER_NAME
    return hashlib.sha256(marker.read_bytes()).hexdigest() if marker.is_file() else None


def _plain(value: Any) -> Any:
    """`value` as JSON would give it back (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Inputs:
    """What a unit consumes, by label: files, other units' markers, config values."""

    files: dict[str, Path] = field(default_factory=dict)
    markers: dict[str, Path] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def file(self, label: str, path: Path) -> Inputs:
        self.files[label] = path
        return self

    def marker(self, label: str, folder: Path) -> Inputs:
        self.markers[label] = folder
        return self

    def value(self, label: str, value: Any) -> Inputs:
        self.values[label] = _plain(value)
        return self

    def config(self, cfg: MathSEConfig, dotted: str, exclude: Any = None) -> Inputs:
        """The config value at `dotted` (a sub-block: pydantic's `exclude` drops keys that do not
        change results)."""
        node: Any = cfg
        for part in dotted.split("."):
            node = getattr(node, part)
        dumped = node.model_dump(mode="json", exclude=exclude) if hasattr(node, "model_dump") else node
        return self.value(dotted, dumped)

    def budget(self, label: str, budget: Any) -> Inputs:
        """A dataset's token budget (a `TokenBudget`): what decides which examples are left out."""
        return self.value(label, budget.settings())

    def judge(self, cfg: MathSEConfig) -> Inputs:
        """What decides a verdict: the ORM settings and, when the run trains it, the ORM itself."""
        self.config(cfg, "orm", exclude=ORM_JUDGING_EXCLUDE)
        return self.marker("ORM", cfg.model_path("orm_model")) if cfg.orm.backend == "trained" else self

    def record(self) -> dict[str, Any]:
        """What goes into the marker's ``consumed``."""
        return {
            "files": {label: file_identity(path) for label, path in self.files.items()},
            "markers": {label: marker_digest(folder) for label, folder in self.markers.items()},
            "values": self.values,
        }

    def changes(self, recorded: dict[str, Any]) -> list[str]:
        """What differs from `recorded` (a label absent there was absent then, i.e. None)."""
        found: list[str] = []
        files, markers, values = (recorded.get(k, {}) for k in ("files", "markers", "values"))
        for label, path in self.files.items():
            if not _same_file(files.get(label), path):
                found.append(f"{label} changed ({path.name})" if path.is_file() else f"{label} is gone ({path})")
        for label, folder in self.markers.items():
            now = marker_digest(folder)
            if now != markers.get(label):
                found.append(f"{label} was {'redone' if markers.get(label) else 'done'} since ({folder.name})"
                             if now else f"{label} is not done any more ({folder.name})")
        for label, value in self.values.items():
            found.extend(_value_changes(label, values.get(label), value))
        return found


def _value_changes(label: str, old: Any, new: Any) -> list[str]:
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new), key=str)
                for line in _value_changes(f"{label}.{key}", old.get(key), new.get(key))]
    return [f"{label}: {_short(old)} -> {_short(new)}"]


@dataclass(frozen=True)
class Stale:
    """A finished unit whose inputs changed: what it is, why, and what redoing it discards."""

    unit: str
    reasons: tuple[str, ...]
    discard: tuple[Path, ...]
    auto: bool = False  # cheap to redo (a dataset file rebuilt from data at hand): redone on the spot


def check(unit: str, folder: Path, inputs: Inputs, discard: Sequence[Path] = (), auto: bool = False) -> Stale | None:
    """The unit marked done in `folder`, if what it consumed differs from `inputs`; else None."""
    if not is_done(folder):
        return None
    recorded = read_marker(folder).get("consumed")
    if not isinstance(recorded, dict):
        return None  # marked before fingerprints: trusted
    reasons = inputs.changes(recorded)
    if not reasons:
        return None
    return Stale(unit, tuple(reasons), (folder / MARKER_NAME, *discard), auto)


def _blocked(cfg: MathSEConfig, stage: str, stale: Iterable[Stale]) -> list[Stale]:
    return [s for s in stale if not (s.auto or redo_given(cfg, stage))]


def _line(stage: str, s: Stale) -> str:
    why = "; ".join(s.reasons[:3]) + (f"; +{len(s.reasons) - 3} more" if len(s.reasons) > 3 else "")
    return f"{stage}: stale: {s.unit}: {why}"


def redo_hint(stages: Sequence[str]) -> str:
    flags = " ".join(f"--redo {s}" for s in stages)
    return f"rerun with {flags} to discard what is stale and redo it (README: Changed inputs)"


def settle(cfg: MathSEConfig, stage: str, stale: Sequence[Stale]) -> None:
    """Before a stage works: stop on a stale unit the user has not asked to redo; else discard the
    stale units (their markers, and outputs a rerun would otherwise pick up) so they are redone."""
    blocked = _blocked(cfg, stage, stale)
    if blocked:
        more = f" (+{len(blocked) - 1} more stale)" if len(blocked) > 1 else ""
        raise StaleError(f"{_line(stage, blocked[0])}{more}; {redo_hint([stage])}")
    for s in stale:
        print(f"{_line(stage, s)}; redoing it", flush=True)
        for path in s.discard:
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)


def stale_lines(
    cfg: MathSEConfig, stages: Sequence[tuple[str, Sequence[Stale], bool]]
) -> tuple[list[str], list[str], list[str]]:
    """For --stage all and --dry-run, over (stage, its stale units, finished) in pipeline order:
    (one line per stale unit, the stages that must be given --redo, the stages worth giving it).

    A finished stage after a stale one was built on results that will change: it is named too
    (it is checked again when it is reached; if its inputs came out the same it is kept).
    """
    lines: list[str] = []
    blocked: list[str] = []
    advised: list[str] = []
    upstream: str | None = None
    for stage, stale, finished in stages:
        for s in stale:
            lines.append(_line(stage, s) + ("" if _blocked(cfg, stage, [s]) else " (will be redone)"))
        if _blocked(cfg, stage, stale):
            blocked.append(stage)
        if stale and not all(s.auto for s in stale):
            upstream = upstream or stage
            advised += [] if redo_given(cfg, stage) else [stage]
        elif upstream is not None and finished and not redo_given(cfg, stage):
            lines.append(f"{stage}: stale once {upstream} is redone: it was built on {upstream}'s results")
            advised.append(stage)
    return lines, blocked, advised


def redo_given(cfg: MathSEConfig, stage: str) -> bool:
    """Whether `--redo` named `stage` (or all)."""
    return stage in cfg.run.redo or "all" in cfg.run.redo


def survey(cfg: MathSEConfig, stages: Sequence[tuple[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """`stale_lines` over stage modules (those with a `stale(cfg)`; eval and report check their own)."""
    from mathse.run.config import ConfigError
    from mathse.run.errors import USER_ERRORS

    rows: list[tuple[str, Sequence[Stale], bool]] = []
    for name, module in stages:
        if not hasattr(module, "stale"):
            continue
        try:
            rows.append((name, module.stale(cfg), module.finished(cfg)))
        except (ConfigError, *USER_ERRORS):
            rows.append((name, [], False))  # the stage itself will say what is missing
    return stale_lines(cfg, rows)
