"""The report's numbers: every stage's outputs read defensively into one dict (report.json).

Reads whatever the run has so far and never fails on a partial run: a missing input becomes a line
in ``report["missing"]``, an unreadable one a line in ``report["warnings"]`` (`run_files.RunFiles`).
One streaming pass per file. Each section is built by the module that knows its files:

* `stage_summaries`  distill, evolve rounds, reflect, the trained ORM, answer lengths
* `eval_scores`      eval/results.json, the predictions files and their consistency check
* `transitions`      the paper's Figure 2 (evolve rounds, eval checkpoints)
* `verdicts`         ORM vs rule verdicts from the journals
* `api_usage`        the API ledger (usage.json): calls, tokens, cost
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mathse.reporting.ablations import ablations_summary
from mathse.reporting.api_usage import api_usage
from mathse.reporting.data_check import data_check_summary
from mathse.reporting.eval_scores import eval_scores
from mathse.reporting.run_files import RunFiles
from mathse.reporting.stage_summaries import (
    answer_lengths,
    distill_summary,
    evolve_summary,
    orm_model_summary,
    reflect_summary,
)
from mathse.reporting.transitions import transitions
from mathse.reporting.verdicts import orm_vs_rule
from mathse.run.config import MathSEConfig

# 2: markers' `consumed` fingerprints summarised as `inputs` (not left in `stats`); eval `disagreements`.
SCHEMA_VERSION = 2

# (report key, its builder), in report.json order: sections read the run's files ...
_SECTIONS: tuple[tuple[str, Callable[[RunFiles], Any]], ...] = (
    ("distill", distill_summary),
    ("evolve", evolve_summary),
    ("reflect", reflect_summary),
    ("eval", eval_scores),
    ("orm_vs_rule", orm_vs_rule),
    ("orm_model", orm_model_summary),
    ("usage", api_usage),
    ("data_check", data_check_summary),
    ("ablations", ablations_summary),
)
# ... and these also build on the sections above.
_DERIVED: tuple[tuple[str, Callable[[RunFiles, dict[str, Any]], Any]], ...] = (
    ("transitions", transitions),
    ("lengths", answer_lengths),
)


def collect(cfg: MathSEConfig) -> dict[str, Any]:
    """Every number of the report (the content of report.json, less `figures`)."""
    files = RunFiles(cfg)
    report: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "output_dir": str(cfg.output_dir),
    }
    for name, build in _SECTIONS:
        report[name] = _section(files, name, build, files)
    for name, derive in _DERIVED:
        report[name] = _section(files, name, derive, files, report)
    if report.get("eval"):
        report["eval"].pop("_outcomes", None)  # internal: per-problem outcomes are too big for report.json
    report["missing"] = files.missing
    report["warnings"] = files.warnings
    return report


def _section(files: RunFiles, name: str, build: Callable[..., Any], *args: Any) -> Any:
    """build(*args), or None with a warning when it fails."""
    try:
        return build(*args)
    except Exception as err:  # a report shows what it can: one bad section must not sink the rest
        files.warnings.append(f"{name}: section skipped ({type(err).__name__}: {err})")
        return None
