"""report.md from the numbers of `collect` (no file reads), embedding the charts by relative link."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mathse.answers.statistics import ALPHA
from mathse.reporting.ablations import md_ablations
from mathse.reporting.data_check import md_data_check
from mathse.reporting.marker_inputs import input_lines
from mathse.reporting.transitions import TRANSITION_LABELS, TRANSITIONS


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    if percent:
        return f"{100 * value:.1f}%"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _image(report: dict[str, Any], name: str, alt: str) -> list[str]:
    filename = report["figures"].get(name)
    return [f"![{alt}]({filename})", ""] if filename else []


def _stat_rows(stats: dict[str, Any]) -> list[list[str]]:
    """A stats dict as (stat, value) rows: plain values first, then one row per entry of a nested count
    (``dropped: orm rejected``)."""
    rows = [[k, _fmt(v)] for k, v in stats.items() if not isinstance(v, dict)]
    for k, v in stats.items():
        if isinstance(v, dict):
            rows += [[f"{k}: {sub}", _fmt(n)] for sub, n in v.items()]
    return rows


def _inputs(summary: dict[str, Any] | None, intro: str) -> list[str]:
    """A completion marker's inputs as a short list (file names with hash prefixes, setting names)."""
    lines = input_lines(summary) if summary else []
    if not lines:
        return []
    return [f"{intro} (as its completion marker records):", "", *(f"- {line}" for line in lines), ""]


def render_markdown(report: dict[str, Any]) -> str:
    """report.md from the numbers (no file reads: everything comes from `report`)."""
    lines = ["# MathSE run report", "", f"Run: `{report['output_dir']}` — generated {report['generated_at']}.", ""]
    lines += ["All numbers are also in `report.json` next to this file.", ""]
    if report["missing"]:
        lines += ["## Missing", "", *(f"- {m}" for m in report["missing"]), ""]
    if report["warnings"]:
        lines += ["## Warnings", "", *(f"- {w}" for w in report["warnings"]), ""]
    for title, empty, render in _SECTIONS:
        lines += [f"## {title}", "", *(render(report) or [empty, ""])]
    return "\n".join(lines).rstrip() + "\n"


def _md_distill(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    d = report.get("distill")
    if not d:
        return []
    if d["stats"]:
        lines += _table(["stat", "value"], _stat_rows(d["stats"]))
    lines += [f"D_SFT rows: {_fmt(d['d_sft_rows'])}.", ""]
    return lines + _inputs(d.get("inputs"), "D_SFT was made from")


def _md_evolve(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    ev = report.get("evolve")
    if not ev:
        return []
    keys = ["attempted", "paths", "accepted", "rejected", "unparseable", "unknown", "no_output", "solved", "pool_left"]
    rows = [[str(r["round"]), *(_fmt(r[k]) for k in keys), _fmt(r["accept_rate"], True),
             _fmt(r["solve_rate"], True), _fmt(r["complete"])] for r in ev["rounds"]]
    t = ev["totals"]
    rows.append(["**all**", *(_fmt(t.get(k)) for k in keys), _fmt(t["accept_rate"], True), "", ""])
    lines += _table(["round", *keys, "accept rate", "solve rate", "retrained"], rows)
    lines += [f"Pool before round 1: {_fmt(ev['pool_start'])}; rounds planned: {ev['rounds_planned']}. "
              "attempted / solved / pool_left count problems; the others count reasoning paths.", ""]
    lines += _image(report, "rounds", "Outcomes per evolve round") + _image(report, "pool", "Pool left and accept rate")
    return lines


def _md_transitions(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    trans = report.get("transitions") or {}
    if not trans.get("evolve") and not trans.get("eval"):
        return []
    headers = [*(TRANSITION_LABELS[k] for k in TRANSITIONS), "n"]
    if trans.get("evolve"):
        lines += ["Problems attempted in consecutive evolve rounds (correct = any path accepted). Solved problems "
                  "leave the pool, so within evolve only incorrect → correct / persistently incorrect can occur.", ""]
        rows = [[f"{p['from_round']} → {p['to_round']}", *(_fmt(p[k]) for k in (*TRANSITIONS, "n"))]
                for p in trans["evolve"]["pairs"]]
        rows.append(["**all**", *(_fmt(trans["evolve"]["total"][k]) for k in (*TRANSITIONS, "n"))])
        lines += _table(["rounds", *headers], rows)
    if trans.get("eval"):
        ev = trans["eval"]
        pairs = [*ev["pairs"], *([ev["first_to_last"]] if ev.get("first_to_last") else [])]
        several = len({b for p in pairs for b in p["benchmarks"]}) > 1
        lines += ["Eval problems answered by both checkpoints of each consecutive pair (the paper's Figure 2)"
                  + (", then first → last" if ev.get("first_to_last") else "") + ":", ""]
        rows = []
        for p in pairs:
            name = f"{p['from_checkpoint']} → {p['to_checkpoint']}"
            if several:
                rows += [[name, b, *(_fmt(c[k]) for k in (*TRANSITIONS, "n"))] for b, c in p["benchmarks"].items()]
            rows.append([name, "**all**" if several else next(iter(p["benchmarks"])),
                         *(_fmt(p["total"][k]) for k in (*TRANSITIONS, "n"))])
        lines += _table(["checkpoints", "benchmark", *headers], rows)
    return lines + _image(report, "transitions", "Outcome transitions")


def _md_lengths(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    rows = report.get("lengths") or []
    if not rows:
        return []
    lines += ["The paper reports 325 → 792 characters from the distilled data to the evolved model.", ""]
    lines += _table(["stage", "answers", "mean chars", "median chars"],
                    ([r["label"], _fmt(r["n"]), _fmt(r["mean_chars"]), _fmt(r["median_chars"])] for r in rows))
    return lines + _image(report, "lengths", "Average answer length per stage")


def _md_orm_model(report: dict[str, Any]) -> list[str]:
    section = report.get("orm_model")
    if not section:
        return []
    lines: list[str] = []
    data = section.get("data")
    if data:
        lines += [f"Data: {data['paths']} paths from M0 on {data['problems']} problems; "
                  f"{data['labelled_correct']} correct / {data['labelled_incorrect']} incorrect by the rule check; "
                  f"{data['annotated']} annotated by the teacher ({data['annotation_dropped']} dropped); "
                  f"train {data['train']['rows']} paths, held out {data['heldout']['rows']}.", ""]
    m = section.get("metrics")
    if m:
        keys = ["accuracy", "accuracy_on_correct", "accuracy_on_incorrect", "error_step_exact", "unparseable_rate"]
        lines += _table(["held-out paths", *keys], [[_fmt(m["paths"]), *(_fmt(m[k], True) for k in keys)]])
        lines += [f"From `{section['metrics_file']}` (the paper's Table 5 reports 97.10% accuracy).", ""]
    return lines


def _md_orm(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    orm = report.get("orm_vs_rule")
    if not orm:
        return []
    keys = ["rows", "both", "disagree", "orm_yes_rule_no", "orm_no_rule_yes", "orm_unparseable"]
    rows = [[name, *(_fmt(g[k]) for k in keys), _fmt(g["rate"], True)] for name, g in orm["journals"].items()]
    rows.append(["**all**", *(_fmt(orm["total"][k]) for k in keys), _fmt(orm["total"]["rate"], True)])
    lines += _table(["journal", "verdicts", "both verdicts", "disagree", "ORM yes / rule no", "ORM no / rule yes",
                     "ORM unparseable", "disagreement rate"], rows)
    return [*lines, "Disagreement rate = disagreements / verdicts holding both a parsed ORM and a rule verdict.", ""]


def _md_reflect(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    ref = report.get("reflect")
    if not ref:
        return []
    rows = _stat_rows(ref["stats"] or {})
    if rows:
        lines += _table(["stat", "value"], rows)
    return [*lines, f"Kept rows: {_fmt(ref['kept_rows'])}.", ""]


def _md_eval(report: dict[str, Any]) -> list[str]:
    """One accuracy table: results.json's, checked against the predictions files; without results.json,
    the predictions files' own counts."""
    ev = report.get("eval")
    if not ev:
        return []
    results = ev.get("results")
    preds = ev.get("predictions") or {}
    lines: list[str] = []
    if results:
        columns = results["columns"]

        def cell(row: dict[str, Any], col: str) -> str:
            correct, total = row.get(f"{col} correct"), row.get(f"{col} total")
            counts = f" ({_fmt(correct)}/{_fmt(total)})" if correct is not None and total is not None else ""
            return _fmt(row.get(col)) + counts + _ci(row.get(f"{col} interval"))

        lines += ["From `eval/results.json` (accuracy %, correct/total, [95% Wilson interval]):", ""]
        lines += _table([results["key_column"], *columns],
                        ([k, *(cell(row, col) for col in columns)] for k, row in results["table"].items()))
        lines += _eval_check(ev.get("disagreements") or [], bool(preds))
        lines += _eval_sampled(results)
    elif preds:
        lines += ["Accuracy from the predictions files (no readable `eval/results.json`):", ""]
        lines += _table(["checkpoint", "benchmark", "problems", "correct", "accuracy"],
                        ([k, b, _fmt(p["n"]), _fmt(p["correct"]), _fmt(p["accuracy"], True)]
                         for k in ev["checkpoint_order"] if k in preds for b, p in preds[k].items()))
    return lines + _eval_paired(report) + _image(report, "eval", "Evaluation results")


def _ci(interval: Any) -> str:
    return f" [{interval[0]:.1f}, {interval[1]:.1f}]" if isinstance(interval, list) and len(interval) == 2 else ""


def _eval_sampled(results: dict[str, Any]) -> list[str]:
    """pass@k and maj@k beside the greedy accuracy (eval.samples > 1), one row per checkpoint and benchmark."""
    rows = [[ck, b, _fmt(row[f"{b} k"]), _fmt(row.get(b)) + _ci(row.get(f"{b} interval")),
             _fmt(row[f"{b} pass@k"]) + _ci(row.get(f"{b} pass@k interval")),
             _fmt(row[f"{b} maj@k"]) + _ci(row.get(f"{b} maj@k interval")),
             f"{_fmt(row.get(f'{b} maj ties'))} ties, {_fmt(row.get(f'{b} maj no answer'))} unanswered"]
            for ck, row in results["table"].items() for b in results["benchmarks"]
            if row.get(f"{b} pass@k") is not None]
    if not rows:
        return []
    return ["Sampled (`eval.samples`): greedy accuracy, pass@k (unbiased estimator) and maj@k (majority of the k "
            "extracted answers; ties and items no sample answered count wrong), each with its 95% interval:", "",
            *_table(["checkpoint", "benchmark", "k", "greedy", "pass@k", "maj@k", "maj@k wrong by"], rows)]


def _eval_paired(report: dict[str, Any]) -> list[str]:
    """The exact McNemar test of each consecutive pair of evaluated checkpoints (and first → last)."""
    ev = (report.get("transitions") or {}).get("eval") or {}
    pairs = [*ev.get("pairs", []), *([ev["first_to_last"]] if ev.get("first_to_last") else [])]
    rows = [[f"{p['from_checkpoint']} → {p['to_checkpoint']}", bench, _fmt(t["items"]), _fmt(t["improved"]),
             _fmt(t["worsened"]), f"{t['p_value']:.3g}", "yes" if t["significant"] else "no"]
            for p in pairs for bench, t in (p.get("paired_tests") or {}).items()]
    if not rows:
        return []
    return ["Paired tests on the items both checkpoints answered (exact McNemar; improved = wrong before, right "
            f"after; significant at p < {ALPHA} — a step that is not may be noise):", "",
            *_table(["checkpoints", "benchmark", "items", "improved", "worsened", "p", "significant"], rows)]


def _eval_check(disagreements: list[dict[str, Any]], checked: bool) -> list[str]:
    """The predictions files recounted against results.json: one line per checkpoint / benchmark that differs
    (naming both figures), one line saying they agree otherwise."""
    if not checked:
        return []
    if not disagreements:
        return ["The predictions files, recounted, give the same counts.", ""]
    lines: list[str] = []
    for d in disagreements:
        said, counted = d["results"], d["predictions"]
        recorded = _fraction(said["correct"], said["total"]) if said else "has no entry"
        lines.append(f"- Check failed: {d['checkpoint']} / {d['benchmark']}: results.json {recorded}, "
                     f"the predictions files recounted {_fraction(counted['correct'], counted['n'])}.")
    return [*lines, ""]


def _fraction(correct: Any, total: Any) -> str:
    """``2/4 (50.0%)``."""
    share = correct / total if total else None
    return f"{_fmt(correct)}/{_fmt(total)} ({_fmt(share, True)})"


def _md_usage(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    usage = report.get("usage")
    if not usage:
        return []
    keys = ["answered", "batch_answered", "cached", "failures", "calls", "prompt_tokens", "completion_tokens"]
    lines += _table(["role", *keys, "cost (USD)"],
                    ([role, *(_fmt(t[k]) for k in keys), f"{t['cost_usd']:.4f}"] for role, t in usage["roles"].items()))
    lines += _table(["stage", "model", "role", *keys, "cost (USD)"],
                    ([r["stage"], r["model"], r["role"], *(_fmt(r[k]) for k in keys), f"{r['cost_usd']:.4f}"]
                     for r in usage["rows"]))
    return [*lines, f"Total estimated cost: ${usage['total_cost_usd']:.4f} (unpriced models count as $0).", ""]


# (title, what an empty section says, its body: [] when there is nothing to show), in report order
_SECTIONS: tuple[tuple[str, str, Callable[[dict[str, Any]], list[str]]], ...] = (
    ("Stage 1: distill (D_SFT)", "Not run yet.", _md_distill),
    ("Stage 2: evolve rounds", "No merged round yet.", _md_evolve),
    ("Figure 2: outcome transitions", "Not enough data (see Missing).", _md_transitions),
    ("Average answer length", "No answers yet.", _md_lengths),
    ("The trained ORM", "No trained ORM (orm.backend is not trained, or --stage orm has not run).", _md_orm_model),
    ("ORM vs rule verdicts", "No verdict journals.", _md_orm),
    ("Stage 3: reflection", "Not run yet.", _md_reflect),
    ("Evaluation", "Not run yet.", _md_eval),
    ("API usage and cost", "No usage ledger.", _md_usage),
    ("Data check: duplicates and contamination", "Not run (see data_check).", md_data_check),
    ("Ablations", "Not run (`--stage ablations`, README \"Ablations\").", md_ablations),
)
