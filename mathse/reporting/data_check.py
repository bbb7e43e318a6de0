"""The data check's section of the report: duplicates and benchmark contamination, counts and examples."""

from __future__ import annotations

from typing import Any

from mathse.reporting.run_files import RunFiles
from mathse.run import layout

_ROLES = ("seed", "pool")


def data_check_summary(files: RunFiles) -> dict[str, Any] | None:
    """check/summary.json as written by the check (None: the check has not run)."""
    summary = files.json(layout.check_summary_path(files.cfg))
    if summary is None:
        return None
    return {"action": summary.get("action"), "benchmarks": summary.get("benchmarks", []),
            "counts": summary.get("counts", {}), "examples": summary.get("examples", {}),
            "unreadable": summary.get("unreadable", []),
            "pairs": files.rel(layout.check_pairs_path(files.cfg))}


def md_data_check(report: dict[str, Any]) -> list[str]:
    dc = report.get("data_check")
    if not dc:
        return []
    c = dc["counts"]
    benches = ", ".join(dc["benchmarks"]) or "none configured"
    lines = [f"Checked against the benchmarks: {benches}; action: {dc['action']}.", "",
             "| file | problems | contaminated (in a benchmark) | duplicates of an earlier problem | dropped "
             "| images unreadable (text checked only) |",
             "|---|---|---|---|---|---|"]
    for role in _ROLES:
        if f"{role}_checked" in c:
            lines.append(f"| {role} | {c[f'{role}_checked']:,} | {c.get(f'{role}_contamination', 0):,} | "
                         f"{c.get(f'{role}_duplicate', 0):,} | {c.get(f'{role}_dropped', 0):,} | "
                         f"{c.get(f'{role}_unreadable_images', 0):,} |")
    signals = [f"{k.replace('_by_', ' by ')}: {v:,}" for k, v in sorted(c.items()) if "_by_" in k]
    lines += ["", f"Pairs by signal: {'; '.join(signals) or 'none'} (every pair: `{dc['pairs']}`).", ""]
    lines += [f"- unreadable image: {line}" for line in dc["unreadable"]]
    for kind, rows in dc["examples"].items():
        for row in rows:
            text = str(row.get("question", "")).replace("|", "\\|")
            lines.append(f"- {kind}: {row['source']} `{row['id']}` ~ {row['other_source']} `{row['other_id']}` "
                         f"({row['signal']}; image distance {row['image_distance']}, text similarity "
                         f"{row['text_similarity']}): {text[:80]}")
    return [*lines, ""] if dc["examples"] or dc["unreadable"] else lines
