"""The report's per-stage sections: what distill, evolve, reflect and the ORM stage produced, and the
average answer length per stage.

Sources, all located through `mathse.run.layout`: ``distill/`` (marker counts, D_SFT), ``evolve/round_<r>/``
(stats, accepted paths), ``reflect/`` (stats, kept rows), ``orm/data/stats.json`` and the ORM's
``orm_metrics.json``. A completion marker's ``consumed`` fingerprint is summarised (`marker_inputs`),
never copied into the counts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mathse.reporting.marker_inputs import split_consumed
from mathse.reporting.run_files import RunFiles, length_stats, rate
from mathse.run import layout
from mathse.run.storage import MARKER_NAME

ROUND_COUNTS = ("attempted", "paths", "accepted", "rejected", "unparseable", "unknown", "no_output", "solved")
_ROUND_DIR = re.compile(r"^round_(\d+)$")


def distill_summary(files: RunFiles) -> dict[str, Any] | None:
    """D_SFT: the marker's counts (``stats``), what it was made from (``inputs``), its rows and their lengths."""
    return _stats_and_rows(
        files, layout.stage_dir(files.cfg, layout.DISTILL) / MARKER_NAME, layout.d_sft_path(files.cfg, layout.DISTILL),
        "response", "d_sft_rows",
        "distill: no D_SFT yet (distill/d_sft.jsonl, distill/.mathse_done.json): run --stage distill",
        "distill: D_SFT has no completion marker (distill/.mathse_done.json): stage not finished",
    )


def evolve_summary(files: RunFiles) -> dict[str, Any] | None:
    """Per merged round its counts and rates, their totals, and the pool before round 1."""
    planned = files.cfg.evolve.rounds
    rounds: list[dict[str, Any]] = []
    pending: list[int] = []
    for r in sorted(set(_round_numbers(files)) | set(range(1, planned + 1))):
        rd = layout.round_dir(files.cfg, r)
        stats = files.json(rd / layout.STATS)
        if not isinstance(stats, dict):
            stats = files.json(rd / layout.MERGED)  # same numbers, written with the merge
        if not isinstance(stats, dict):
            pending.append(r)
            continue
        row: dict[str, Any] = {"round": r, "complete": (rd / MARKER_NAME).is_file()}
        for key in (*ROUND_COUNTS, "pool_left"):
            value = stats.get(key)
            row[key] = int(value) if isinstance(value, int | float) else None
        row["accept_rate"] = rate(row["accepted"], row["paths"])
        row["solve_rate"] = rate(row["solved"], row["attempted"])
        row["gen_seconds"] = stats.get("gen_seconds")
        row["paths_per_s"] = stats.get("paths_per_s")
        rounds.append(row)
    if not rounds:
        files.missing.append(f"evolve: no merged round yet (evolve/round_<r>/stats.json; {planned} planned)")
        return None
    if pending:
        files.missing.append(f"evolve: {_rounds_text(pending)} of {planned} not merged yet")
    incomplete = [r["round"] for r in rounds if not r["complete"]]
    if incomplete:
        files.missing.append(f"evolve: {_rounds_text(incomplete)} merged but not retrained (no round marker)")
    totals = {key: sum(r[key] or 0 for r in rounds) for key in ROUND_COUNTS}
    first = rounds[0]
    # D_remain before round 1 = what was left after it plus what it solved (solved ⊆ batch ⊆ pool).
    pool_start = (
        first["pool_left"] + first["solved"]
        if first["round"] == 1 and first["pool_left"] is not None and first["solved"] is not None
        else None
    )
    totals["accept_rate"] = rate(totals["accepted"], totals["paths"])
    return {"rounds_planned": planned, "pool_start": pool_start, "rounds": rounds, "totals": totals}


def reflect_summary(files: RunFiles) -> dict[str, Any] | None:
    """reflect/stats.json (``stats``, ``inputs``) and the kept reflection rows (counted, with their lengths)."""
    return _stats_and_rows(
        files, layout.stage_dir(files.cfg, layout.REFLECT) / layout.STATS, layout.reflection_rows_path(files.cfg),
        "output", "kept_rows",
        "reflect: no reflection data yet (reflect/stats.json, orm_reflections/reflection_rows.jsonl)",
        "reflect: reflect/stats.json missing (the stage did not finish)",
    )


def orm_model_summary(files: RunFiles) -> dict[str, Any] | None:
    """The trained ORM: its data (orm/data/stats.json) and held-out metrics (<orm_model>/orm_metrics.json)."""
    metrics_file = layout.orm_metrics_path(files.cfg)
    metrics = files.json(metrics_file)
    data = files.json(layout.orm_data_dir(files.cfg) / layout.STATS)
    if metrics is None and data is None:
        if files.cfg.orm.backend == "trained":
            files.missing.append("orm: no trained ORM metrics yet (orm_model/orm_metrics.json): run --stage orm")
        return None
    if isinstance(data, dict):
        data = split_consumed(data)[0]
    return {"metrics": metrics, "metrics_file": str(metrics_file) if metrics else None, "data": data}


def answer_lengths(files: RunFiles, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean answer length per stage: D_SFT, accepted paths per round, reflections, eval per checkpoint."""
    rows: list[dict[str, Any]] = []
    if report.get("distill"):
        rows.append({"key": "distill", "label": "D_SFT (distill)", **report["distill"]["length"]})
    evolve = report.get("evolve") or {}
    cumulative: dict[int, list[Any]] | None = None
    for r in (row["round"] for row in evolve.get("rounds", [])):
        chosen = layout.round_dir(files.cfg, r) / layout.CHOSEN
        if chosen.is_file():
            texts = [row.get("reasoning") for row in files.rows(chosen)]
        else:  # the round's own file is gone: the cumulative buffer holds the same rows
            if cumulative is None:
                cumulative = {}
                for row in files.rows(layout.evolve_file(files.cfg, "sft_chosen")):
                    if isinstance(row.get("round"), int):
                        cumulative.setdefault(row["round"], []).append(row.get("reasoning"))
            texts = cumulative.get(r, [])
        rows.append({"key": f"evolve_round_{r}", "label": f"accepted paths, round {r}", **length_stats(texts)})
    if report.get("reflect"):
        rows.append({"key": "reflect", "label": "reflection outputs", **report["reflect"]["length"]})
    ev = report.get("eval") or {}
    for ckpt in ev.get("checkpoint_order", []):
        if ckpt in ev.get("lengths", {}):
            rows.append({"key": f"eval:{ckpt}", "label": f"eval responses, {ckpt}", **ev["lengths"][ckpt]})
    return rows


def _stats_and_rows(
    files: RunFiles, stats_file: Path, rows_file: Path, text_field: str, count: str, absent: str, unfinished: str
) -> dict[str, Any] | None:
    """A stage's stats file (``stats``: its counts; ``inputs``: its fingerprint summarised, None without one)
    and its output rows (counted, with their text lengths); `absent` / `unfinished` are what Missing says
    without both / without the stats."""
    stats = files.json(stats_file)
    if stats is None and not rows_file.is_file():
        files.missing.append(absent)
        return None
    if stats is None:
        files.missing.append(unfinished)
    counts, inputs = split_consumed(stats) if isinstance(stats, dict) else (None, None)
    lengths = length_stats(r.get(text_field) for r in files.rows(rows_file))
    return {"stats": counts, "inputs": inputs, count: lengths["n"], "length": lengths}


def _round_numbers(files: RunFiles) -> list[int]:
    folder = layout.stage_dir(files.cfg, layout.EVOLVE)
    found = {int(m.group(1)) for p in folder.glob("round_*") if p.is_dir() and (m := _ROUND_DIR.match(p.name))}
    return sorted(found)


def _rounds_text(rounds: list[int]) -> str:
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(map(str, rounds))
