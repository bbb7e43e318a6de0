"""The data check of a run: seed and pool against each other and against every configured eval
benchmark (`--stage check`; distill and evolve call `ensure_checked` first, so new files are always
checked and unchanged ones cost a few `stat` calls).

One unit of work, `output/check/`: `pairs.jsonl` (one row per matched problem), `summary.json`
(counts and examples), `excluded_seed.txt` / `excluded_pool.txt` (the ids distill and evolve skip
with `data_check.action: drop`; empty with `warn`) and the completion marker, whose fingerprint
records the seed, pool and benchmark files and the settings. The sketches of each file are cached
by content (`mathse.data.sketches`), so a changed pool re-sketches the pool only.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from mathse.data.duplicates import SketchIndex, Verdict, check_stream
from mathse.data.sketches import Item, SketchSettings, content_digest, read_sketches, sketch_file
from mathse.run import layout
from mathse.run.config import DataCheckConfig, MathSEConfig
from mathse.run.fingerprint import Inputs, Stale, check
from mathse.run.records import ProblemIndex, iter_problems
from mathse.run.storage import atomic_open, atomic_write_json, atomic_write_text, is_done, mark_done, write_line

__all__ = ["check_inputs", "checked_pool", "ensure_checked", "excluded_ids", "inputs", "stale"]

Role = Literal["seed", "pool"]
ROLES: tuple[Role, ...] = ("seed", "pool")


def _role_file(cfg: MathSEConfig, role: Role) -> Path | None:
    return cfg.data.seed_file if role == "seed" else cfg.data.pool_file


def benchmark_files(cfg: MathSEConfig) -> dict[str, list[Path]]:
    """Each configured benchmark's data files (what its fingerprint and sketch cache key cover)."""
    from mathse.answers.benchmark_files import data_files
    from mathse.answers.evalsets import DEFAULT_SPLITS

    return {s.name: [s.path] if s.format == "jsonl" else data_files(s.path, s.split, DEFAULT_SPLITS.get(s.format))
            for s in cfg.eval.benchmarks}


def inputs(cfg: MathSEConfig) -> Inputs:
    """What the check consumes: seed, pool, the benchmarks' files and specs, its settings."""
    found = Inputs()
    for role in ROLES:
        if (path := _role_file(cfg, role)) is not None:
            found.file(f"data.{role}_file", path)
    for name, files in benchmark_files(cfg).items():
        for i, path in enumerate(files):
            found.file(f"benchmark {name}" + (f" [{i}]" if i else ""), path)
    found.config(cfg, "eval.benchmarks").config(cfg, "data.image_root")
    return found.config(cfg, "data_check", exclude={"enabled", "examples", "workers"})


def stale(cfg: MathSEConfig) -> list[Stale]:
    """The check's result when its inputs changed: redone on the spot (it calls no API, trains nothing)."""
    if not cfg.data_check.enabled:
        return []
    found = check("data check", layout.stage_dir(cfg, layout.CHECK), inputs(cfg), auto=True)
    return [found] if found is not None else []


def excluded_ids(cfg: MathSEConfig, role: Role) -> frozenset[str]:
    """The `role` problems distill / evolve skip: those the check dropped (none unless action: drop)."""
    path = layout.check_excluded_path(cfg, role)
    if not (cfg.data_check.enabled and cfg.data_check.action == "drop") or not path.is_file():
        return frozenset()
    return frozenset(line for line in path.read_text(encoding="utf-8").splitlines() if line)


def check_inputs(cfg: MathSEConfig, role: Role, found: Inputs) -> Inputs:
    """`found` plus, when the check drops problems, the list of `role` ids it dropped: a unit built
    from seed/pool is stale when that list changes. (Nothing is added with warn: no marker changes.)"""
    if cfg.data_check.enabled and cfg.data_check.action == "drop":
        found.file(f"data check: dropped {role} ids", layout.check_excluded_path(cfg, role))
    return found


def checked_pool(cfg: MathSEConfig, dry_run: bool = False) -> ProblemIndex:
    """The pool as evolve reads it (every record validated before anything is written), checked
    (unless a dry run), minus the problems the check dropped."""
    pool = ProblemIndex(cfg.require("data.pool_file"), cfg.data.image_root)
    if not dry_run:
        ensure_checked(cfg, "evolve")
    dropped = excluded_ids(cfg, "pool")
    return ProblemIndex(pool.path, cfg.data.image_root, exclude=dropped) if dropped else pool


def ensure_checked(cfg: MathSEConfig, say: str = "check") -> dict[str, Any] | None:
    """Run the check unless its result is current; its summary (None: data_check.enabled is off)."""
    if not cfg.data_check.enabled:
        return None
    folder = layout.stage_dir(cfg, layout.CHECK)
    for unit in stale(cfg):
        print(f"{say}: {'; '.join(unit.reasons[:3])}: checking the data again", flush=True)
        (folder / ".mathse_done.json").unlink(missing_ok=True)
    if is_done(folder):
        from mathse.run.storage import read_json

        return read_json(layout.check_summary_path(cfg))
    summary = run_check(cfg, say)
    mark_done(folder, {"counts": summary["counts"], "consumed": inputs(cfg).record()})
    return summary


def run_check(cfg: MathSEConfig, say: str) -> dict[str, Any]:
    """Sketch every file (cached), find the pairs, write pairs / excluded ids / summary."""
    dc = cfg.data_check
    settings = SketchSettings(dc.num_perm)
    sketch_dir = layout.check_sketch_dir(cfg)
    bench_index = _benchmark_index(cfg, settings, sketch_dir, say) if cfg.eval.benchmarks else None
    try:
        summary = _check_sources(cfg, settings, sketch_dir, bench_index, say)
    finally:
        if bench_index is not None:
            bench_index.close()
    _print_summary(summary, say)
    return summary


def _check_sources(cfg: MathSEConfig, settings: SketchSettings, sketch_dir: Path, bench_index: SketchIndex | None,
                   say: str) -> dict[str, Any]:
    sources = []
    for role in ROLES:
        path = _role_file(cfg, role)
        if path is None:
            continue
        digest = content_digest([path], {"image_root": cfg.data.image_root})
        cached = sketch_file(sketch_dir, role, digest, lambda p=path: _problem_items(p, cfg.data.image_root),
                             settings, str(path), _progress(say, role), _workers(cfg.data_check))
        sources.append((role, read_sketches(cached)))
    verdicts = check_stream(bench_index, sources, cfg.data_check, layout.check_index_path(cfg, "own"))
    try:
        return _write_results(cfg, verdicts)
    finally:
        verdicts.close()  # a failure part way: the own index is removed all the same


def _problem_items(path: Path, image_root: Path | None) -> Iterator[Item]:
    for p in iter_problems(path, image_root):
        yield Item(p.id, p.question, p.images, p.answer)


def _benchmark_index(cfg: MathSEConfig, settings: SketchSettings, sketch_dir: Path, say: str) -> SketchIndex:
    index = SketchIndex(cfg.data_check, layout.check_index_path(cfg, "benchmarks"))
    try:
        _index_benchmarks(cfg, settings, sketch_dir, say, index)
    except BaseException:
        index.close()
        raise
    return index


def _index_benchmarks(cfg: MathSEConfig, settings: SketchSettings, sketch_dir: Path, say: str,
                      index: SketchIndex) -> None:
    from mathse.answers.evalsets import load_benchmark

    for spec, (name, files) in zip(cfg.eval.benchmarks, benchmark_files(cfg).items(), strict=True):
        digest = content_digest(files, spec.model_dump(mode="json"))

        def items(spec: Any = spec) -> Iterator[Item]:
            for item in load_benchmark(spec, layout.eval_image_dir(cfg, spec.name)):
                yield Item(item.id, item.question, item.images, item.answer)

        cached = sketch_file(sketch_dir, f"bench-{layout.safe_name(name)}", digest, items, settings, str(spec.path),
                             _progress(say, f"benchmark {name}"), _workers(cfg.data_check))
        for sketch in read_sketches(cached):
            index.add(sketch, name)


def _workers(dc: DataCheckConfig) -> int:
    return dc.workers or len(os.sched_getaffinity(0))


def _progress(say: str, what: str) -> Any:
    def report(made: int) -> None:
        if made % 50_000 == 0:
            print(f"{say}: sketched {made} problems of {what}", flush=True)
    return report


def _write_results(cfg: MathSEConfig, verdicts: Iterator[Verdict]) -> dict[str, Any]:
    """Stream the verdicts into pairs.jsonl and the excluded lists; the summary with counts and examples."""
    dc = cfg.data_check
    drop = dc.action == "drop"
    counts: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {"contamination": [], "duplicate": []}
    excluded = {role: [] for role in ROLES}  # only the dropped ids (a few) are held
    unreadable: list[str] = []  # the first few, named; all counted
    with atomic_open(layout.check_pairs_path(cfg)) as pairs:
        for v in verdicts:
            counts[f"{v.source}_checked"] += 1
            if v.sketch.unreadable:
                counts[f"{v.source}_unreadable_images"] += len(v.sketch.unreadable)
                unreadable.extend(v.sketch.unreadable[: max(0, dc.examples - len(unreadable))])
            for kind, matches in (("contamination", v.contamination), ("duplicate", v.duplicates)):
                if not matches:
                    continue
                counts[f"{v.source}_{kind}"] += 1
                counts[f"{kind}_pairs"] += len(matches)
                for m in matches:
                    counts[f"{kind}_by_{m.signal}"] += 1
                    write_line(pairs, {"source": v.source, "id": v.sketch.id, "kind": kind, **m.to_json()})
                if len(examples[kind]) < dc.examples:
                    m = matches[0]
                    examples[kind].append({"source": v.source, "id": v.sketch.id, "question": v.sketch.snippet,
                                           **m.to_json()})
            if v.contamination or v.duplicates:
                counts[f"{v.source}_flagged"] += 1
                if drop:
                    excluded[v.source].append(v.sketch.id)  # type: ignore[index]
    for role in ROLES:
        counts[f"{role}_dropped"] = len(excluded[role])
        atomic_write_text(layout.check_excluded_path(cfg, role), "".join(f"{i}\n" for i in excluded[role]))
    summary = {"action": dc.action, "benchmarks": [b.name for b in cfg.eval.benchmarks], "counts": dict(counts),
               "examples": examples, "unreadable": unreadable, "pairs": str(layout.check_pairs_path(cfg))}
    atomic_write_json(layout.check_summary_path(cfg), summary)
    return summary


def _print_summary(summary: dict[str, Any], say: str) -> None:
    c = summary["counts"]
    for role in ROLES:
        if f"{role}_checked" not in c:
            continue
        print(f"{say}: {role}: {c[f'{role}_checked']} problems, {c.get(f'{role}_contamination', 0)} contaminated "
              f"(in a benchmark), {c.get(f'{role}_duplicate', 0)} duplicates of an earlier problem; "
              f"{c.get(f'{role}_dropped', 0)} dropped (data_check.action: {summary['action']})")
    for role in ROLES:
        if n := c.get(f"{role}_unreadable_images"):
            print(f"{say}: {role}: {n} image(s) unreadable, those problems checked by their text only; first: "
                  f"{summary['unreadable'][0]}")
    for kind, rows in summary["examples"].items():
        for row in rows[:3]:
            print(f"{say}:   {kind}: {row['source']} {row['id']} ~ {row['other_source']} {row['other_id']} "
                  f"({row['signal']}; image distance {row['image_distance']}, text {row['text_similarity']})"
                  f": {row['question'][:60]!r}")
    if any(c.get(f"{r}_flagged") for r in ROLES):
        print(f"{say}: every pair: {summary['pairs']}")
