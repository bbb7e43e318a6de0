"""A variant of a run (`--stage ablations`): its folder seeded from the run, and what it did there.

Seeding makes the variant's folder a copy of the run's finished work, so each of its stages finds
every unit whose inputs the variant does not change already done (the completion markers and
their fingerprints travel byte for byte; a fingerprint compares input files by content, so a
copy is the same file), and redoes only the units its overrides make stale (the variant runs
with `run.redo: [all]`: a stale unit's marker and outputs go, in the variant's folder only).

The run's files are never written through the variant: files are copied (journals are appended
to, datasets rewritten), except two kinds that are never modified in place and are hard-linked
(no bytes copied): the files of a *finished* model folder (a redone training removes the whole
folder first, `training_stale` discards it) and the teacher/ORM answer cache (each entry is
written to a temp file and renamed). A model folder whose training was cut short is not seeded;
eval and report folders are not either (the ablations stage reads the run's evaluations). The
seed marker records the baseline (usage ledger, model markers) from which the variant's own
teacher calls and trainings are counted, across kills and resumes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mathse.run.errors import StageError
from mathse.run.fingerprint import marker_digest
from mathse.run.storage import atomic_write_json, is_done, read_json

if TYPE_CHECKING:
    from mathse.run.config import MathSEConfig

__all__ = ["SEEDED", "model_dirs", "performed", "seed"]

SEEDED = ".seeded.json"
_NOT_SEEDED = ("ablations", "eval", "report")  # top-level folders a variant does not start from
_MODEL_PATHS = ("sft_model_stage0", "sft_model_final", "reflection_model_final", "orm_model")


def model_dirs(cfg: MathSEConfig) -> list[Path]:
    """The run's trained model folders (not the `sft_model_final` link to the latest round): the
    `paths.*` ones, every round's, and any other `sft_model_*` (an ablation's distilled model)."""
    found = [cfg.model_path(name) for name in _MODEL_PATHS]
    found += sorted(cfg.output_dir.glob("sft_model_*"))
    return [p for p in dict.fromkeys(found) if p.is_dir() and not p.is_symlink()]


def _check_paths_inside(cfg: MathSEConfig) -> None:
    root = cfg.output_dir.resolve()
    for name in _MODEL_PATHS:
        path = cfg.model_path(name)
        if path.is_absolute() and not path.resolve().is_relative_to(root):
            raise StageError(f"ablations: paths.{name} ({path}) is outside run.output_dir: a variant would train "
                             "into the run's own folder; give paths relative to run.output_dir")


def _link_or_copy(src: Path, dest: Path) -> bool:
    """Hard-link `src` at `dest` (True), or copy it where links are impossible (another filesystem)."""
    try:
        os.link(src, dest)
        return True
    except OSError:
        shutil.copy2(src, dest)
        return False


def seed(main: MathSEConfig, variant: MathSEConfig) -> dict[str, Any]:
    """Seed the variant's folder from the run's (once; a seeding cut short is started over); the baseline."""
    dest = variant.output_dir
    if (dest / SEEDED).is_file():
        return dict(read_json(dest / SEEDED))
    _check_paths_inside(main)
    _check_paths_inside(variant)
    if dest.exists():
        shutil.rmtree(dest)
    src = main.output_dir.resolve()
    models = {p.resolve() for p in model_dirs(main)}
    cache = main.api_cache_dir.resolve()
    counts = {"linked": 0, "copied": 0, "linked_bytes": 0, "copied_bytes": 0}
    for root, dirs, files in os.walk(src):
        here = Path(root)
        rel = here.relative_to(src)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in _NOT_SEEDED]
        model = next((m for m in models if here == m or m in here.parents), None)
        if model is not None and not is_done(model):
            dirs[:] = []  # a training cut short in the run: the variant trains it itself if it needs it
            continue
        shared = model is not None or here == cache or cache in here.parents
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in [d for d in dirs if (here / d).is_symlink()] + files:
            source, target = here / name, dest / rel / name
            if source.is_symlink():
                link = os.readlink(source)
                if os.path.isabs(link) and Path(link).is_relative_to(src):
                    link = str(dest / Path(link).relative_to(src))  # into the variant's own copy
                os.symlink(link, target)
                continue
            size = source.stat().st_size
            kind = "linked" if shared and _link_or_copy(source, target) else "copied"
            if kind == "copied" and not target.exists():
                shutil.copy2(source, target)  # copy2 keeps the mtime: an untouched file stays untouched
            counts[kind] += 1
            counts[f"{kind}_bytes"] += size
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
    baseline = {
        "from": str(src),
        "files": counts,
        "usage": _usage(variant),
        "models": {str(p.relative_to(dest)): marker_digest(p) for p in model_dirs(variant)},
    }
    atomic_write_json(dest / SEEDED, baseline)
    return baseline


def _usage(cfg: MathSEConfig) -> dict[str, dict[str, int]]:
    """Per model, over every stage: requests answered (paid), cached, and their tokens."""
    path = cfg.output_dir / "usage.json"
    totals: dict[str, dict[str, int]] = {}
    if not path.is_file():
        return totals
    for models in read_json(path).get("stages", {}).values():
        for model, row in models.items():
            entry = totals.setdefault(model, {"answered": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0})
            for key in entry:
                entry[key] += int(row.get(key, 0))
    return totals


def performed(cfg: MathSEConfig, baseline: dict[str, Any]) -> dict[str, Any]:
    """What the variant did in its folder since it was seeded: API requests answered per model (the
    teacher's among them: paid calls; cached answers cost nothing) and the models it trained."""
    before, now = baseline.get("usage", {}), _usage(cfg)
    calls = {}
    for model, row in now.items():
        delta = {k: v - before.get(model, {}).get(k, 0) for k, v in row.items()}
        if any(delta.values()):
            calls[model] = delta
    teacher = cfg.teacher.model if cfg.teacher is not None else None
    trained = [str(p.relative_to(cfg.output_dir)) for p in model_dirs(cfg)
               if is_done(p) and marker_digest(p) != baseline.get("models", {}).get(str(p.relative_to(cfg.output_dir)))]
    return {
        "teacher_calls": calls.get(teacher, {}).get("answered", 0) if teacher else 0,
        "teacher_tokens": sum(calls.get(teacher, {}).get(k, 0) for k in ("prompt_tokens", "completion_tokens"))
        if teacher else 0,
        "api_calls": calls,
        "trainings": len(trained),
        "trained": trained,
    }
