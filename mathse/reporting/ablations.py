"""The ablations table (`--stage ablations`): each variant's model and ORM next to the run's and the paper's.

Accuracy with its Wilson 95% interval; against the run's own final model (or ORM), McNemar's exact
test on the items both answered (`mathse.answers.statistics`). `compare` builds the numbers of
`ablations/results.json` from per-item outcomes; `render` is its markdown; `ablations_summary` and
`md_ablations` put it in the run report.
"""

from __future__ import annotations

from typing import Any

from mathse.answers.statistics import mcnemar_exact, wilson_interval
from mathse.reporting.run_files import RunFiles
from mathse.run import layout

__all__ = ["PAPER", "ablations_summary", "compare", "md_ablations", "outcome", "render"]

# The paper's numbers (arXiv 2511.06805, Qwen2-VL-7B; accuracy % on MathVL-test, ORM accuracy % on its
# held-out paths): Table 3 (reflection), Table 4 (self-evolved vs distilled data), Table 5 (ORM targets).
PAPER: dict[str, dict[str, float]] = {
    "main": {"accuracy": 64.70, "orm_accuracy": 97.10},  # Table 3: ORM feedback; Table 5: with analysis
    "no_reflection": {"accuracy": 62.35},  # Table 3 (and Table 4: self-evolved)
    "teacher_feedback": {"accuracy": 64.25},  # Table 3: GPT-4o feedback
    "distilled_equal_size": {"accuracy": 58.00},  # Table 4: distilled
    "binary_orm": {"orm_accuracy": 92.65},  # Table 5: binary only
}


def outcome(items: dict[str, bool]) -> dict[str, Any]:
    """Accuracy % of per-item outcomes with its Wilson 95% interval."""
    correct, total = sum(items.values()), len(items)
    ci = wilson_interval(correct, total)
    return {"correct": correct, "total": total, "accuracy": round(100 * correct / total, 2) if total else None,
            "interval": [round(100 * ci.low, 2), round(100 * ci.high, 2)]}


def _paired(main: dict[str, bool], variant: dict[str, bool]) -> dict[str, Any]:
    shared = sorted(set(main) & set(variant))
    test = mcnemar_exact([main[k] for k in shared], [variant[k] for k in shared])
    return {"items": test.items, "only_main": test.only_first, "only_variant": test.only_second,
            "p_value": round(test.p_value, 6)}


def compare(main: dict[str, Any], variants: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json: `main` and each variant as {name, preset, model, eval: {bench: {item: correct}},
    orm: {path key: verdict right} or None, ...}; outcomes, intervals and paired tests added."""

    def row(entry: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
        out = {k: v for k, v in entry.items() if k not in ("eval", "orm")}
        out["paper"] = PAPER.get(entry.get("preset") or entry["name"], {})
        out["benchmarks"] = {}
        for bench, items in (entry.get("eval") or {}).items():
            cell = outcome(items)
            if base is not None and bench in (base.get("eval") or {}):
                cell["vs_main"] = _paired(base["eval"][bench], items)
            out["benchmarks"][bench] = cell
        if entry.get("orm"):
            cell = outcome(entry["orm"])
            if base is not None and base.get("orm"):
                cell["vs_main"] = _paired(base["orm"], entry["orm"])
            out["orm_heldout"] = cell
        return out

    return {"version": 1, "main": row(main, None), "variants": [row(v, main) for v in variants]}


def _cell(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("accuracy") is None:
        return "—"
    low, high = cell["interval"]
    text = f"{cell['accuracy']:.2f} ({cell['correct']}/{cell['total']}; {low:.1f}–{high:.1f})"
    paired = cell.get("vs_main")
    if paired:
        text += f"; vs main +{paired['only_variant']}/−{paired['only_main']}, p={paired['p_value']:.3g}"
    return text


def render(results: dict[str, Any]) -> list[str]:
    """The table: rows = the run and its variants; per benchmark accuracy % (correct/total; Wilson 95%
    interval; items only the variant / only the run got right and McNemar's exact p), the ORM's
    held-out accuracy, the paper's figure, and what the variant computed itself."""
    rows = [results["main"], *results["variants"]]
    benches = sorted({b for r in rows for b in r.get("benchmarks", {})})
    headers = ["variant", "model", *benches, "ORM held-out", "paper", "teacher calls", "trainings"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        paper = ", ".join(f"{'ORM ' if k == 'orm_accuracy' else ''}{v:.2f}" for k, v in r["paper"].items()) or "—"
        done = r.get("performed")
        lines.append("| " + " | ".join([
            r["name"], r.get("model") or "—", *(_cell(r["benchmarks"].get(b)) for b in benches),
            _cell(r.get("orm_heldout")), paper,
            str(done["teacher_calls"]) if done else "(the run)", str(done["trainings"]) if done else "(the run)",
        ]) + " |")
    lines += ["", "Accuracy % (correct/total; Wilson 95% interval); vs main: items only the variant / only the "
              "run got right, McNemar's exact p. Paper: arXiv 2511.06805 (Qwen2-VL-7B, MathVL-test; ORM: Table 5). "
              "Teacher calls and trainings: what the variant paid for itself; everything else it reused.", ""]
    for r in results["variants"]:
        if r.get("reused"):
            lines.append(f"- {r['name']}: {r['reused']}")
    return [*lines, ""] if results["variants"] else lines


def ablations_summary(files: RunFiles) -> dict[str, Any] | None:
    """The report's section: ablations/results.json as the ablations stage wrote it (None: never run)."""
    data = files.json(layout.ablation_results_path(files.cfg))
    return data if isinstance(data, dict) else None


def md_ablations(report: dict[str, Any]) -> list[str]:
    section = report.get("ablations")
    return render(section) if section else []
