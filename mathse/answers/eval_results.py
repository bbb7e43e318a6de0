"""eval/results.{md,csv,json}: the table of accuracies, rows = checkpoints, columns = benchmarks (MathVerse
also per version). Written by the eval stage from its per-pair scores; `results_table` reads results.json
back into the same table for the run report, so the format is known in one place.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mathse.answers.evalsets import SUBSET_FIELDS, ordered_subsets
from mathse.run.config import BenchmarkSpec

__all__ = ["CheckpointLike", "accuracy_table", "render_results", "results_table"]


class CheckpointLike(Protocol):
    """A row of the table: the checkpoint's name and the model (and LoRA adapter) it loads."""

    name: str
    model: str
    adapter: str | None


@dataclass(frozen=True)
class _Column:
    label: str
    benchmark: str
    subset: str | None = None


def _columns(specs: list[BenchmarkSpec], results: dict[tuple[str, str], dict[str, Any]]) -> list[_Column]:
    columns: list[_Column] = []
    for spec in specs:
        columns.append(_Column(spec.name, spec.name))
        if SUBSET_FIELDS.get(spec.format) is None:
            continue
        seen = {v for (_, b), stats in results.items() if b == spec.name for v in stats.get("subsets", {})}
        for value in ordered_subsets(seen):
            columns.append(_Column(f"{spec.name} ({value})", spec.name, value))
    return columns


def _cell(stats: dict[str, Any] | None, column: _Column, judged: bool = False) -> tuple[str, int, int] | None:
    if stats is None:
        return None
    tally = stats if column.subset is None else stats.get("subsets", {}).get(column.subset)
    if not tally or not tally["total"]:
        return None
    correct = tally["correct_with_judge"] if judged else tally["correct"]
    return f"{100 * correct / tally['total']:.2f}", correct, tally["total"]


def _markdown_table(
    checkpoints: Sequence[CheckpointLike], columns: list[_Column], results: dict, judged: bool
) -> list[str]:
    lines = [
        "| checkpoint | " + " | ".join(c.label for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for ck in checkpoints:
        cells = []
        for col in columns:
            cell = _cell(results.get((ck.name, col.benchmark)), col, judged)
            cells.append("–" if cell is None else f"{cell[0]} ({cell[1]}/{cell[2]})")
        lines.append(f"| {ck.name} | " + " | ".join(cells) + " |")
    return lines


def _unextracted_table(
    checkpoints: Sequence[CheckpointLike], specs: list[BenchmarkSpec], results: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    lines = ["| checkpoint | " + " | ".join(s.name for s in specs) + " |", "|---|" + "---:|" * len(specs)]
    for ck in checkpoints:
        stats = [results.get((ck.name, s.name)) for s in specs]
        cells = ["–" if st is None else f"{st['unextracted']}/{st['total']}" for st in stats]
        lines.append(f"| {ck.name} | " + " | ".join(cells) + " |")
    return lines


def render_results(
    checkpoints: Sequence[CheckpointLike], specs: list[BenchmarkSpec], results: dict[tuple[str, str], dict[str, Any]]
) -> tuple[str, str]:
    """(markdown, CSV) of the results: rows = checkpoints, columns = benchmarks (+ MathVerse versions)."""
    columns = _columns(specs, results)
    judged = any(stats.get("judge") for stats in results.values())
    md = [
        "# MathSE evaluation results",
        "",
        "Accuracy % (correct/total), rule-based answer checking. – = not evaluated yet.",
        "",
        *_markdown_table(checkpoints, columns, results, judged=False),
        "",
        "Answers the rules could not extract (counted wrong above; for numbers to publish, let the LLM "
        "judge `eval.judge` read them):",
        "",
        *_unextracted_table(checkpoints, specs, results),
    ]
    if judged:
        md += [
            "",
            "## With the LLM judge",
            "",
            "Rule-based verdicts plus the judge's verdicts on the responses whose answer the rules could not find.",
            "",
            *_markdown_table(checkpoints, columns, results, judged=True),
        ]
    md += ["", "## Checkpoints", ""]
    for ck in checkpoints:
        md.append(f"- `{ck.name}`: {ck.model}" + (f" + adapter {ck.adapter}" if ck.adapter else ""))
    md += ["", "## Benchmarks", ""]
    for spec in specs:
        md.append(
            f"- `{spec.name}`: {spec.format}" + (f", split {spec.split}" if spec.split else "") + f", {spec.path}"
        )

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["checkpoint", "model"]
    for col in columns:
        header += (
            [col.label, f"{col.label} correct", f"{col.label} total"]
            + ([f"{col.label} unextracted"] if col.subset is None else [])
            + ([f"{col.label} +judge"] if judged else [])
        )
    writer.writerow(header)
    for ck in checkpoints:
        row = [ck.name, ck.model + (f" + {ck.adapter}" if ck.adapter else "")]
        for col in columns:
            stats = results.get((ck.name, col.benchmark))
            cell = _cell(stats, col)
            row += list(cell) if cell else ["", "", ""]
            if col.subset is None:
                row.append(stats["unextracted"] if stats else "")
            if judged:
                with_judge = _cell(stats, col, judged=True)
                row.append(with_judge[0] if with_judge else "")
        writer.writerow(row)
    return "\n".join(md) + "\n", buffer.getvalue()


def accuracy_table(markdown: str) -> list[str]:
    """The accuracy table's lines of a results.md (its first table), for a console summary."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def results_table(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """eval/results.json (one entry per evaluated checkpoint and benchmark) as a table: rows = checkpoints;
    per benchmark a score column ("<b>", accuracy %) with its "<b> correct", "<b> total" (and "<b> +judge")
    companions; MathVerse versions as "<b> (<version>)". A cell not evaluated is None.
    """
    if not isinstance(pairs, list) or not all(isinstance(p, dict) and "checkpoint" in p for p in pairs):
        raise ValueError("expected a list of per-pair results")
    benchmarks = list(dict.fromkeys(str(p["benchmark"]) for p in pairs))
    columns: list[tuple[str, str, str | None]] = []  # (label, benchmark, subset)
    for bench in benchmarks:
        columns.append((bench, bench, None))
        seen = {v for p in pairs if p["benchmark"] == bench for v in (p.get("subsets") or {})}
        columns += [(f"{bench} ({v})", bench, v) for v in ordered_subsets(seen)]
    judged = any(p.get("judge") for p in pairs)
    suffixes = ("", " correct", " total", *((" +judge",) if judged else ()))
    table: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        settings = pair.get("settings") or {}
        adapter = settings.get("adapter")
        row = table.setdefault(str(pair["checkpoint"]), {
            "model": str(settings.get("model")) + (f" + {adapter}" if adapter else ""),
            **{label + suffix: None for label, _, _ in columns for suffix in suffixes},
        })
        for label, bench, subset in columns:
            tally = pair if subset is None else (pair.get("subsets") or {}).get(subset)
            if bench != pair["benchmark"] or not tally or not tally.get("total"):
                continue
            total = tally["total"]
            row[label] = round(100 * tally["correct"] / total, 2)
            row[f"{label} correct"], row[f"{label} total"] = tally["correct"], total
            if judged:
                row[f"{label} +judge"] = round(100 * tally["correct_with_judge"] / total, 2)
    return {
        "key_column": "checkpoint",
        "benchmarks": benchmarks,
        "columns": [label for label, _, _ in columns],
        "checkpoints": list(table),
        "table": table,
    }
