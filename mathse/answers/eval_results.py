"""eval/results.{md,csv,json}: the table of accuracies, rows = checkpoints, columns = benchmarks (MathVerse
also per version). Written by the eval stage from its per-pair scores; `results_table` reads results.json
back into the same table for the run report, so the format is known in one place.

Every accuracy comes with its 95% Wilson interval; with `eval.samples` pass@k and maj@k stand beside the
greedy accuracy; consecutive checkpoints get an exact McNemar test on the items both answered
(`paired_tests`), and `items_csv` exports each item's outcome per checkpoint (eval/items.csv).
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mathse.answers.evalsets import SUBSET_FIELDS, ordered_subsets
from mathse.answers.statistics import ALPHA, mcnemar_counts, wilson_interval
from mathse.run.config import BenchmarkSpec
from mathse.run.storage import iter_jsonl

__all__ = [
    "CheckpointLike", "accuracy_table", "items_csv", "paired_tests", "read_outcomes", "render_results",
    "results_table",
]  # fmt: skip


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


def _interval(correct: float, total: int) -> tuple[float, float]:
    """The 95% Wilson interval in percent."""
    ci = wilson_interval(correct, total)
    return round(100 * ci.low, 1), round(100 * ci.high, 1)


def _ci(low_high: Sequence[float]) -> str:
    return f"[{low_high[0]:.1f}, {low_high[1]:.1f}]"


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
            cells.append("–" if cell is None else f"{cell[0]} ({cell[1]}/{cell[2]}) {_ci(_interval(cell[1], cell[2]))}")
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


def _sampled_table(
    checkpoints: Sequence[CheckpointLike], specs: list[BenchmarkSpec], results: dict[tuple[str, str], dict[str, Any]]
) -> list[str]:
    """pass@k and maj@k beside the greedy accuracy, one row per sampled (checkpoint, benchmark)."""
    rows = []
    for ck in checkpoints:
        for spec in specs:
            stats = results.get((ck.name, spec.name)) or {}
            s = stats.get("sampled")
            if not s:
                continue
            greedy = _cell(stats, _Column(spec.name, spec.name))
            assert greedy is not None
            rows.append(
                f"| {ck.name} | {spec.name} | {s['k']} | {s['temperature']} | {greedy[0]} "
                f"{_ci(_interval(greedy[1], greedy[2]))} | {s['pass_at_k']:.2f} {_ci(s['pass_at_k_interval'])} | "
                f"{s['maj_at_k']:.2f} ({s['maj_at_k_correct']}/{s['items']}) {_ci(s['maj_at_k_interval'])} | "
                f"{s['pass_at_1']:.2f} | {s['maj_ties']} | {s['maj_no_answer']} | "
                f"{s['unextracted_samples']}/{s['samples']} |"
            )
    if not rows:
        return []
    return [
        "", "## pass@k and maj@k", "",
        "Greedy: the temperature-0 answer (the table above). pass@k: the unbiased estimator from the k samples; "
        "maj@k: the most frequent extracted answer of the k samples (a tie for the top count, or no sample with "
        "an answer, counts wrong); pass@1: the mean accuracy of one sample. Intervals: 95% Wilson (for pass@k, "
        "whose per-item values lie in [0, 1], conservative).", "",
        "| checkpoint | benchmark | k | temperature | greedy | pass@k | maj@k | pass@1 (sampled) | maj ties "
        "| no sample answered | unextracted samples |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]  # fmt: skip


def _paired_table(tests: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    if not tests:
        return []
    rows = [
        f"| {t['from']} → {t['to']} | {t['benchmark']} | {t['items']} | {t['improved']} | {t['worsened']} | "
        f"{t['p_value']:.3g} | {'yes' if t['significant'] else 'no'} |"
        for t in tests.values()
    ]
    return [
        "", "## Paired tests between consecutive checkpoints", "",
        f"Exact McNemar test on the items both checkpoints answered: improved = wrong before, right after; "
        f"worsened = the reverse; significant when p < {ALPHA}. A step that is not significant may be noise.", "",
        "| checkpoints | benchmark | items | improved | worsened | p | significant |",
        "|---|---|---:|---:|---:|---:|---|",
        *rows,
    ]  # fmt: skip


def render_results(
    checkpoints: Sequence[CheckpointLike], specs: list[BenchmarkSpec], results: dict[tuple[str, str], dict[str, Any]],
    tests: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> tuple[str, str]:
    """(markdown, CSV) of the results: rows = checkpoints, columns = benchmarks (+ MathVerse versions);
    `tests`: `paired_tests` (shown in the markdown)."""
    columns = _columns(specs, results)
    judged = any(stats.get("judge") for stats in results.values())
    sampled = {spec.name for spec in specs if any(s.get("sampled") for (_, b), s in results.items() if b == spec.name)}
    md = [
        "# MathSE evaluation results",
        "",
        "Accuracy % (correct/total) [95% Wilson interval], rule-based answer checking. – = not evaluated yet.",
        "",
        *_markdown_table(checkpoints, columns, results, judged=False),
        *_sampled_table(checkpoints, specs, results),
        *_paired_table(tests or {}),
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
            [col.label, f"{col.label} correct", f"{col.label} total", f"{col.label} ci_low", f"{col.label} ci_high"]
            + ([f"{col.label} unextracted"] if col.subset is None else [])
            + ([f"{col.label} +judge"] if judged else [])
            + ([f"{col.label} k", f"{col.label} pass@k", f"{col.label} maj@k"]
               if col.subset is None and col.benchmark in sampled else [])
        )
    writer.writerow(header)
    for ck in checkpoints:
        row = [ck.name, ck.model + (f" + {ck.adapter}" if ck.adapter else "")]
        for col in columns:
            stats = results.get((ck.name, col.benchmark))
            cell = _cell(stats, col)
            row += [*cell, *_interval(cell[1], cell[2])] if cell else ["", "", "", "", ""]
            if col.subset is None:
                row.append(stats["unextracted"] if stats else "")
            if judged:
                with_judge = _cell(stats, col, judged=True)
                row.append(with_judge[0] if with_judge else "")
            if col.subset is None and col.benchmark in sampled:
                s = (stats or {}).get("sampled") or {}
                row += [s.get("k", ""), s.get("pass_at_k", ""), s.get("maj_at_k", "")]
        writer.writerow(row)
    return "\n".join(md) + "\n", buffer.getvalue()


def read_outcomes(path: Path) -> dict[str, dict[str, Any]]:
    """A pair's predictions.jsonl, streamed, as item id -> {correct, samples, samples_correct, maj_correct}."""
    outcomes: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return outcomes
    for row in iter_jsonl(path):
        sampled = row.get("sampled") or {}
        outcomes[str(row["id"])] = {
            "correct": row.get("correct") is True,
            "samples": sampled.get("n"),
            "samples_correct": sampled.get("correct"),
            "maj_correct": (sampled.get("maj") or {}).get("correct"),
        }
    return outcomes


def paired_tests(
    checkpoints: Sequence[str], benchmarks: Sequence[str], outcomes: dict[tuple[str, str], dict[str, dict[str, Any]]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Exact McNemar test of each consecutive pair of evaluated checkpoints per benchmark, on the items both
    answered: {(later checkpoint, benchmark): {from, to, benchmark, items, improved, worsened, p_value,
    significant}}, in checkpoint order."""
    tests: dict[tuple[str, str], dict[str, Any]] = {}
    for bench in benchmarks:
        evaluated = [c for c in checkpoints if outcomes.get((c, bench))]
        for first, second in itertools.pairwise(evaluated):
            before, after = outcomes[(first, bench)], outcomes[(second, bench)]
            common = [i for i in before if i in after]
            worse = sum(1 for i in common if before[i]["correct"] and not after[i]["correct"])
            better = sum(1 for i in common if after[i]["correct"] and not before[i]["correct"])
            tests[(second, bench)] = {"from": first, "to": second, "benchmark": bench,
                                      **mcnemar_counts(len(common), worse, better).to_json()}
    order = {c: n for n, c in enumerate(checkpoints)}
    return dict(sorted(tests.items(), key=lambda kv: (order[kv[0][0]], benchmarks.index(kv[0][1]))))


def items_csv(
    checkpoints: Sequence[CheckpointLike], specs: list[BenchmarkSpec],
    outcomes: dict[tuple[str, str], dict[str, dict[str, Any]]],
) -> str:
    """eval/items.csv: item, benchmark, checkpoint, correct (1/0), and with samples: samples, samples_correct,
    maj_correct (empty otherwise)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["item", "benchmark", "checkpoint", "correct", "samples", "samples_correct", "maj_correct"])
    for spec in specs:
        for ck in checkpoints:
            for item, o in (outcomes.get((ck.name, spec.name)) or {}).items():
                maj = "" if o["maj_correct"] is None else int(o["maj_correct"])
                writer.writerow([item, spec.name, ck.name, int(o["correct"]), o["samples"] or "",
                                 "" if o["samples_correct"] is None else o["samples_correct"], maj])
    return buffer.getvalue()


def accuracy_table(markdown: str) -> list[str]:
    """The accuracy table's lines of a results.md (its first table), for a console summary."""
    lines = markdown.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


# results_table's columns for sampled pairs: suffix -> the key of scores.json's "sampled"
_SAMPLED_SUFFIXES = {
    " k": "k", " pass@k": "pass_at_k", " pass@k interval": "pass_at_k_interval", " maj@k": "maj_at_k",
    " maj@k interval": "maj_at_k_interval", " maj ties": "maj_ties", " maj no answer": "maj_no_answer",
}  # fmt: skip


def results_table(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """eval/results.json (one entry per evaluated checkpoint and benchmark) as a table: rows = checkpoints;
    per benchmark a score column ("<b>", accuracy %) with its "<b> correct", "<b> total", "<b> interval" (95%
    Wilson, [low, high] %) (and "<b> +judge") companions, and for sampled pairs "<b> k", "<b> pass@k", "<b> maj@k"
    (each with " interval"), "<b> maj ties", "<b> maj no answer"; MathVerse versions as "<b> (<version>)".
    A cell not evaluated is None.
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
    sampled = any(p.get("sampled") for p in pairs)
    suffixes = ("", " correct", " total", " interval", *((" +judge",) if judged else ()),
                *(_SAMPLED_SUFFIXES if sampled else ()))
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
            row[f"{label} interval"] = list(_interval(tally["correct"], total))
            if judged:
                row[f"{label} +judge"] = round(100 * tally["correct_with_judge"] / total, 2)
            if subset is None and pair.get("sampled"):
                s = pair["sampled"]
                row.update({f"{label} {suffix.strip()}": s[key] for suffix, key in _SAMPLED_SUFFIXES.items()})
    return {
        "key_column": "checkpoint",
        "benchmarks": benchmarks,
        "columns": [label for label, _, _ in columns],
        "checkpoints": list(table),
        "table": table,
    }
