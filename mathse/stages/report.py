"""The run report: what every stage produced, as numbers (`report.json`), tables and charts (`report.md`).

Never fails on a partial run: what is missing is listed in the report. Everything is recomputed
from the stage outputs on every call and written atomically to ``<output_dir>/report/``:

* ``report.json``  every number, for tests and tools (`mathse.reporting.collect`, which names the
                   module that reads each section)
* ``report.md``    the same as markdown tables, each number once (`mathse.reporting.markdown`),
                   embedding the charts
* ``*.png``        the charts (`mathse.reporting.charts`)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mathse.reporting.charts import FIGURES, draw_figures
from mathse.reporting.collect import collect
from mathse.reporting.markdown import render_markdown
from mathse.run import layout
from mathse.run.config import MathSEConfig
from mathse.run.storage import atomic_write_json, atomic_write_text

STAGE = layout.REPORT

# ---------------------------------------------------------------------------------------------
# Stage protocol


def report_dir(cfg: MathSEConfig) -> Path:
    return layout.stage_dir(cfg, STAGE)


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    base = report_dir(cfg)
    return {"run report (markdown)": base / "report.md", "run report (numbers)": base / "report.json"}


def input_files(cfg: MathSEConfig) -> list[Path]:
    """Every existing file the report would read."""
    found: set[Path] = set()
    for pattern in layout.REPORT_INPUT_GLOBS:
        found.update(p for p in cfg.output_dir.glob(pattern) if p.is_file())
    return sorted(found)


def finished(cfg: MathSEConfig) -> bool:
    """report.md exists and no input changed after it was written."""
    md = report_dir(cfg) / "report.md"
    if not md.is_file():
        return False
    written = md.stat().st_mtime
    return all(p.stat().st_mtime <= written for p in input_files(cfg))


def run(cfg: MathSEConfig, dry_run: bool = False) -> int:
    if dry_run:
        inputs = input_files(cfg)
        print(f"[dry-run] report: would read {len(inputs)} files under {cfg.output_dir}:")
        for path in inputs:
            print(f"[dry-run]   {path.relative_to(cfg.output_dir)}")
        print(f"[dry-run] report: would write report.md, report.json and charts to {report_dir(cfg)}")
        return 0
    report = write_report(cfg)
    out = report_dir(cfg)
    n = len(report["figures"])
    print(f"report: wrote {out / 'report.md'} and report.json ({n} chart{'' if n == 1 else 's'})")
    for line in report["missing"]:
        print(f"report: missing: {line}")
    for line in report["warnings"]:
        print(f"report: warning: {line}", file=sys.stderr)
    return 0


def write_report(cfg: MathSEConfig) -> dict[str, Any]:
    """Collect the numbers, draw the charts, write report.json and report.md; returns the numbers."""
    report = collect(cfg)
    out = report_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    report["figures"] = draw_figures(report, out)
    # A chart that no longer applies must not linger next to a report that does not link it.
    for name, filename in FIGURES.items():
        if name not in report["figures"]:
            (out / filename).unlink(missing_ok=True)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    return report
