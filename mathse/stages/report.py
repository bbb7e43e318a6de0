"""The run report: what every stage produced, as numbers (`report.json`), tables and charts (`report.md`).

Reads whatever the run has so far and never fails on a partial run: a missing input becomes a line
under "Missing" (and in ``report.json["missing"]``), an unreadable one a line under "Warnings".
Everything is recomputed from the stage outputs on every call (cheap: one streaming pass per file)
and written atomically to ``<output_dir>/report/``:

* ``report.json``  every number, for tests and tools (schema: ``SCHEMA_VERSION``; see ``collect``)
* ``report.md``    the same as markdown tables, embedding the PNG charts by relative link
* ``*.png``        charts (matplotlib's Agg canvas, no pyplot state)

Sources: ``distill/`` (marker stats, D_SFT), ``evolve/round_<r>/`` (stats, history, accepted
paths), ``orm_reflections/*.jsonl`` (verdict journals), ``usage.json`` (the API ledger),
``reflect/`` (stats, kept rows) and ``eval/`` (``results.csv``, per-checkpoint predictions).
"""

from __future__ import annotations

import csv
import io
import re
import statistics
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mathse.config import MathSEConfig
from mathse.storage import MARKER_NAME, atomic_write_bytes, atomic_write_json, atomic_write_text, iter_jsonl, read_json

STAGE = "report"
SCHEMA_VERSION = 1
DPI = 110

# Figure 2 of the paper: how a problem's outcome moves between two attempts.
TRANSITIONS = ("consistently_correct", "incorrect_to_correct", "correct_to_incorrect", "persistently_incorrect")
TRANSITION_LABELS = {
    "consistently_correct": "consistently correct",
    "incorrect_to_correct": "incorrect → correct",
    "correct_to_incorrect": "correct → incorrect",
    "persistently_incorrect": "persistently incorrect",
}
TRANSITION_COLORS = {
    "consistently_correct": "#2ca02c",
    "incorrect_to_correct": "#1f77b4",
    "correct_to_incorrect": "#ff7f0e",
    "persistently_incorrect": "#d62728",
}
ROUND_COUNTS = ("attempted", "paths", "accepted", "rejected", "unparseable", "unknown", "no_output", "solved")
USAGE_COUNTERS = ("calls", "answered", "cached", "failures", "prompt_tokens", "completion_tokens")
FIGURES = {
    "rounds": "rounds.png",
    "pool": "pool.png",
    "transitions": "transitions.png",
    "lengths": "lengths.png",
    "eval": "eval.png",
}
# Files the report reads, relative to output_dir; `finished` compares their mtimes with report.md.
INPUT_GLOBS = (
    f"distill/{MARKER_NAME}",
    "distill/d_sft.jsonl",
    "evolve/round_*/stats.json",
    "evolve/round_*/.merged.json",
    f"evolve/round_*/{MARKER_NAME}",
    "evolve/round_*/history.jsonl",
    "evolve/round_*/chosen.jsonl",
    "evolve/history.jsonl",
    "evolve/sft_chosen.jsonl",
    "orm_reflections/*.jsonl",
    "usage.json",
    "reflect/stats.json",
    "orm_reflections/reflection_rows.jsonl",
    "eval/results.csv",
    "eval/*/*/predictions.jsonl",
)
_ROUND_DIR = re.compile(r"^round_(\d+)$")
_SHARD_SUFFIX = re.compile(r"\.shard-\d+-of-\d+$")
_ROUND_CKPT = re.compile(r"^(?:sft_model_)?round_?(\d+)$")


# ---------------------------------------------------------------------------------------------
# Stage protocol


def report_dir(cfg: MathSEConfig) -> Path:
    return cfg.output_dir / STAGE


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    base = report_dir(cfg)
    return {"run report (markdown)": base / "report.md", "run report (numbers)": base / "report.json"}


def input_files(cfg: MathSEConfig) -> list[Path]:
    """Every existing file the report would read."""
    found: set[Path] = set()
    for pattern in INPUT_GLOBS:
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


# ---------------------------------------------------------------------------------------------
# Collecting numbers


class _Collector:
    """Reads the run's files defensively, noting what is missing or unreadable."""

    def __init__(self, cfg: MathSEConfig) -> None:
        self.cfg = cfg
        self.out = cfg.output_dir
        self.missing: list[str] = []
        self.warnings: list[str] = []

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.out))
        except ValueError:
            return str(path)

    def json(self, path: Path) -> Any:
        """The parsed file, or None when it is absent or unreadable (the latter is warned)."""
        if not path.is_file():
            return None
        try:
            return read_json(path)
        except (OSError, ValueError) as err:
            self.warnings.append(f"{self.rel(path)}: unreadable ({err})")
            return None

    def rows(self, path: Path) -> Iterator[dict[str, Any]]:
        """A JSONL file's dict rows, streamed; a corrupt line ends the stream with a warning."""
        try:
            for row in iter_jsonl(path):
                if isinstance(row, dict):
                    yield row
        except (OSError, ValueError) as err:
            self.warnings.append(f"{self.rel(path)}: unreadable after some rows ({err})")


def collect(cfg: MathSEConfig) -> dict[str, Any]:
    """Every number of the report (the content of report.json, less `figures`)."""
    c = _Collector(cfg)
    report: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "output_dir": str(cfg.output_dir),
    }
    sections = (
        ("distill", _distill),
        ("evolve", _evolve),
        ("reflect", _reflect),
        ("eval", _eval),
        ("orm_vs_rule", _orm_vs_rule),
        ("orm_model", _orm_model),
        ("usage", _usage),
    )
    for name, build in sections:
        try:
            report[name] = build(c)
        except Exception as err:  # a report shows what it can: one bad section must not sink the rest
            c.warnings.append(f"{name}: section skipped ({type(err).__name__}: {err})")
            report[name] = None
    for name, derive in (("transitions", _transitions), ("lengths", _lengths)):
        try:
            report[name] = derive(c, report)
        except Exception as err:  # same reason as above
            c.warnings.append(f"{name}: section skipped ({type(err).__name__}: {err})")
            report[name] = None
    if report.get("eval"):
        report["eval"].pop("_outcomes", None)  # internal: per-problem outcomes are too big for report.json
    report["missing"] = c.missing
    report["warnings"] = c.warnings
    return report


def length_stats(texts: Iterable[Any]) -> dict[str, Any]:
    """n, mean and median length in characters of the strings in `texts` (non-strings skipped)."""
    lengths = [len(t) for t in texts if isinstance(t, str)]
    if not lengths:
        return {"n": 0, "mean_chars": None, "median_chars": None}
    return {
        "n": len(lengths),
        "mean_chars": round(statistics.fmean(lengths), 2),
        "median_chars": round(float(statistics.median(lengths)), 2),
    }


def _rate(num: float | None, den: float | None) -> float | None:
    return round(num / den, 4) if num is not None and den else None


# -- distill ----------------------------------------------------------------------------------


def _distill(c: _Collector) -> dict[str, Any] | None:
    folder = c.out / "distill"
    stats = c.json(folder / MARKER_NAME)
    d_sft = folder / "d_sft.jsonl"
    if stats is None and not d_sft.is_file():
        c.missing.append("distill: no D_SFT yet (distill/d_sft.jsonl, distill/.mathse_done.json): run --stage distill")
        return None
    if stats is None:
        c.missing.append("distill: D_SFT has no completion marker (distill/.mathse_done.json): stage not finished")
    lengths = length_stats(r.get("response") for r in c.rows(d_sft))
    return {"stats": stats if isinstance(stats, dict) else None, "d_sft_rows": lengths["n"], "length": lengths}


# -- evolve -----------------------------------------------------------------------------------


def _round_numbers(c: _Collector) -> list[int]:
    folder = c.out / "evolve"
    found = {int(m.group(1)) for p in folder.glob("round_*") if p.is_dir() and (m := _ROUND_DIR.match(p.name))}
    return sorted(found)


def _evolve(c: _Collector) -> dict[str, Any] | None:
    folder = c.out / "evolve"
    planned = c.cfg.evolve.rounds
    numbers = _round_numbers(c)
    rounds: list[dict[str, Any]] = []
    pending: list[int] = []
    for r in sorted(set(numbers) | set(range(1, planned + 1))):
        rd = folder / f"round_{r}"
        stats = c.json(rd / "stats.json")
        if not isinstance(stats, dict):
            stats = c.json(rd / ".merged.json")  # same numbers, written with the merge
        if not isinstance(stats, dict):
            pending.append(r)
            continue
        row: dict[str, Any] = {"round": r, "complete": (rd / MARKER_NAME).is_file()}
        for key in (*ROUND_COUNTS, "pool_left"):
            value = stats.get(key)
            row[key] = int(value) if isinstance(value, int | float) else None
        row["accept_rate"] = _rate(row["accepted"], row["paths"])
        row["solve_rate"] = _rate(row["solved"], row["attempted"])
        row["gen_seconds"] = stats.get("gen_seconds")
        row["paths_per_s"] = stats.get("paths_per_s")
        rounds.append(row)
    if not rounds:
        c.missing.append(f"evolve: no merged round yet (evolve/round_<r>/stats.json; {planned} planned)")
        return None
    if pending:
        c.missing.append(f"evolve: {_rounds_text(pending)} of {planned} not merged yet")
    incomplete = [r["round"] for r in rounds if not r["complete"]]
    if incomplete:
        c.missing.append(f"evolve: {_rounds_text(incomplete)} merged but not retrained (no round marker)")
    totals = {key: sum(r[key] or 0 for r in rounds) for key in ROUND_COUNTS}
    first = rounds[0]
    # D_remain before round 1 = what was left after it plus what it solved (solved ⊆ batch ⊆ pool).
    pool_start = (
        first["pool_left"] + first["solved"]
        if first["round"] == 1 and first["pool_left"] is not None and first["solved"] is not None
        else None
    )
    totals["accept_rate"] = _rate(totals["accepted"], totals["paths"])
    return {"rounds_planned": planned, "pool_start": pool_start, "rounds": rounds, "totals": totals}


def _rounds_text(rounds: list[int]) -> str:
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(map(str, rounds))


def _history(c: _Collector, rounds: list[int]) -> dict[int, dict[str, bool]]:
    """round -> problem id -> correct (any path accepted), from per-round files, else the cumulative one."""
    folder = c.out / "evolve"
    outcome: dict[int, dict[str, bool]] = {}

    def add(row: dict[str, Any], round_hint: int | None) -> None:
        r = row.get("round", round_hint)
        if r is None or "id" not in row:
            return
        verdicts = row.get("verdicts")
        correct = any(v is True for v in verdicts) if isinstance(verdicts, list) else bool(row.get("solved"))
        outcome.setdefault(int(r), {})[str(row["id"])] = correct

    for r in rounds:
        for row in c.rows(folder / f"round_{r}" / "history.jsonl"):
            add(row, r)
    for row in c.rows(folder / "history.jsonl"):
        r = row.get("round")
        if r is not None and int(r) not in outcome:  # a round whose own file is gone
            add(row, None)
    return outcome


def transition_counts(pairs: Iterable[tuple[bool, bool]]) -> dict[str, int]:
    """Figure 2's four categories over (correct before, correct after) pairs, plus their total n."""
    counts = dict.fromkeys(TRANSITIONS, 0)
    for before, after in pairs:
        if before and after:
            counts["consistently_correct"] += 1
        elif after:
            counts["incorrect_to_correct"] += 1
        elif before:
            counts["correct_to_incorrect"] += 1
        else:
            counts["persistently_incorrect"] += 1
    return {**counts, "n": sum(counts.values())}


def _sum_counts(items: Iterable[dict[str, int]]) -> dict[str, int]:
    total = dict.fromkeys((*TRANSITIONS, "n"), 0)
    for item in items:
        for key in total:
            total[key] += item[key]
    return total


def _transitions(c: _Collector, report: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"evolve": None, "eval": None}
    rounds = [r["round"] for r in (report.get("evolve") or {}).get("rounds", [])]
    history = _history(c, rounds)
    pairs = []
    for r in sorted(history):
        if r + 1 not in history:
            continue
        before, after = history[r], history[r + 1]
        both = [pid for pid in before if pid in after]
        pairs.append({"from_round": r, "to_round": r + 1, **transition_counts((before[p], after[p]) for p in both)})
    if pairs:
        result["evolve"] = {"pairs": pairs, "total": _sum_counts(pairs)}

    ev = report.get("eval") or {}
    ckpts = [k for k in ev.get("checkpoint_order", []) if k in ev.get("_outcomes", {})]
    if len(ckpts) >= 2:
        first, last = ckpts[0], ckpts[-1]
        a, b = ev["_outcomes"][first], ev["_outcomes"][last]
        benches = {}
        for bench in sorted(set(a) & set(b)):
            common = [pid for pid in a[bench] if pid in b[bench]]
            benches[bench] = transition_counts((a[bench][p], b[bench][p]) for p in common)
        if benches:
            result["eval"] = {
                "from_checkpoint": first,
                "to_checkpoint": last,
                "benchmarks": benches,
                "total": _sum_counts(benches.values()),
            }
    if result["evolve"] is None and result["eval"] is None:
        c.missing.append(
            "transitions (Figure 2): no problem was attempted in two consecutive evolve rounds, and no eval "
            "predictions exist for two checkpoints"
        )
    return result


# -- reflect ----------------------------------------------------------------------------------


def _reflect(c: _Collector) -> dict[str, Any] | None:
    folder = c.out / "reflect"
    stats = c.json(folder / "stats.json")
    kept = c.out / "orm_reflections" / "reflection_rows.jsonl"
    if stats is None and not kept.is_file():
        c.missing.append("reflect: no reflection data yet (reflect/stats.json, orm_reflections/reflection_rows.jsonl)")
        return None
    if stats is None:
        c.missing.append("reflect: reflect/stats.json missing (the stage did not finish)")
    lengths = length_stats(r.get("output") for r in c.rows(kept))
    return {"stats": stats if isinstance(stats, dict) else None, "kept_rows": lengths["n"], "length": lengths}


# -- eval -------------------------------------------------------------------------------------


def _checkpoint_rank(name: str) -> tuple[int, int, str]:
    """Pipeline order for checkpoints: base, stage0, round_1.., stage2, final, then the rest by name."""
    fixed = {"base": 0, "stage0": 1, "sft_model_stage0": 1, "m0": 1, "stage2": 3, "sft_model_final": 3,
             "final": 4, "reflection_model_final": 4}
    if name in fixed:
        return fixed[name], 0, ""
    if m := _ROUND_CKPT.match(name):
        return 2, int(m.group(1)), ""
    return 5, 0, name


def _number(text: str | None) -> float | str | None:
    if text is None or not text.strip():
        return None
    try:
        return float(text.strip().rstrip("%"))
    except ValueError:
        return text.strip()


def _dir_name(name: str) -> str:
    """The folder eval keeps a checkpoint's predictions in (mirrors mathse.stages.eval._safe)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "unnamed"


def read_results_csv(path: Path) -> dict[str, Any]:
    """eval/results.csv: rows = checkpoints; per benchmark a score column ("<b>") with its
    "<b> correct", "<b> total" (and "<b> +judge") companions; MathVerse versions as "<b> (<version>)".
    """
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        body = [row for row in reader if row]
    if not header:
        raise ValueError("empty file")
    key, names = header[0], header[1:]
    companions = (" correct", " total", " +judge")
    scores = [n for n in names if n != "model" and not n.endswith(companions)]
    # "<b> (<version>)" next to a score column "<b>" is a subset of that benchmark, not a benchmark.
    subsets = [n for n in scores if (m := re.fullmatch(r"(.+) \((.+)\)", n)) and m.group(1) in scores]
    table = {row[0]: {n: (v if n == "model" else _number(v)) for n, v in zip(names, row[1:], strict=False)}
             for row in body}
    return {
        "key_column": key,
        "benchmarks": [n for n in scores if n not in subsets],
        "columns": scores,
        "checkpoints": list(table),
        "table": table,
    }


def _eval(c: _Collector) -> dict[str, Any] | None:
    folder = c.out / "eval"
    results: dict[str, Any] | None = None
    csv_path = folder / "results.csv"
    if csv_path.is_file():
        try:
            results = read_results_csv(csv_path)
        except (OSError, ValueError, csv.Error) as err:
            c.warnings.append(f"eval/results.csv: unreadable ({err})")
    else:
        c.missing.append("eval: no results table (eval/results.csv): run --stage eval")

    predictions: dict[str, dict[str, dict[str, Any]]] = {}
    outcomes: dict[str, dict[str, dict[str, bool]]] = {}
    texts_by_ckpt: dict[str, list[Any]] = {}
    for path in sorted(folder.glob("*/*/predictions.jsonl")):
        ckpt, bench = path.parent.parent.name, path.parent.name
        seen: dict[str, bool] = {}
        texts: list[Any] = []
        for row in c.rows(path):
            texts.append(row.get("response"))
            if "id" in row:
                # The rule-based verdict, as results.csv's main columns ("correct_with_judge" adds the judge).
                seen[str(row["id"])] = row.get("correct") is True
        n_correct = sum(seen.values())
        predictions.setdefault(ckpt, {})[bench] = {
            "n": len(seen), "correct": n_correct, "accuracy": _rate(n_correct, len(seen))
        }
        outcomes.setdefault(ckpt, {})[bench] = seen
        texts_by_ckpt.setdefault(ckpt, []).extend(texts)
    if not predictions:
        c.missing.append("eval: no predictions (eval/<checkpoint>/<benchmark>/predictions.jsonl)")
    if results is None and not predictions:
        return None

    # results.csv lists checkpoints in eval's table order; anything else goes in pipeline order.
    order = list(dict.fromkeys(_dir_name(k) for k in (results or {}).get("checkpoints", [])))
    order += sorted(set(predictions) - set(order), key=_checkpoint_rank)
    return {
        "checkpoint_order": order,
        "results": results,
        "predictions": predictions,
        "lengths": {k: length_stats(v) for k, v in texts_by_ckpt.items()},
        "_outcomes": outcomes,
    }


# -- ORM vs rule ------------------------------------------------------------------------------


def _orm_vs_rule(c: _Collector) -> dict[str, Any] | None:
    folder = c.out / "orm_reflections"
    groups: dict[str, dict[str, int]] = {}
    for path in sorted(folder.glob("*.jsonl")):
        if path.name.endswith(".failed.jsonl"):
            continue  # failed calls, not verdicts
        name = _SHARD_SUFFIX.sub("", path.stem)  # the shards of one round are one stage
        counts = dict.fromkeys(
            ("rows", "orm", "rule", "both", "agree", "disagree", "orm_yes_rule_no", "orm_no_rule_yes",
             "orm_unparseable"), 0,
        )
        for row in c.rows(path):
            if not any(k in row for k in ("final", "orm", "rule")):
                continue  # not a verdict row
            counts["rows"] += 1
            orm, rule = row.get("orm"), row.get("rule")
            if isinstance(orm, dict) and not orm.get("parsed", True):
                counts["orm_unparseable"] += 1
            # As JudgeStats.disagree counts it: a parsed ORM verdict against a rule verdict.
            orm_vote = orm.get("correct") if isinstance(orm, dict) and orm.get("parsed", True) else None
            rule_vote = rule.get("correct") if isinstance(rule, dict) else None
            orm_ok, rule_ok = isinstance(orm_vote, bool), isinstance(rule_vote, bool)
            counts["orm"] += orm_ok
            counts["rule"] += rule_ok
            if orm_ok and rule_ok:
                counts["both"] += 1
                if orm_vote == rule_vote:
                    counts["agree"] += 1
                else:
                    counts["disagree"] += 1
                    counts["orm_yes_rule_no" if orm_vote else "orm_no_rule_yes"] += 1
        if counts["rows"]:
            group = groups.setdefault(name, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                group[key] += value
    if not groups:
        c.missing.append("ORM vs rule: no verdict journals (orm_reflections/*.jsonl)")
        return None
    journals = {name: {**g, "rate": _rate(g["disagree"], g["both"])} for name, g in groups.items()}
    total = {key: sum(g[key] for g in groups.values()) for key in next(iter(groups.values()))}
    total["rate"] = _rate(total["disagree"], total["both"])
    if not total["both"]:
        c.missing.append("ORM vs rule: no verdict holds both an ORM and a rule verdict (orm.policy 'rule' never asks "
                         "the ORM)")
    return {"journals": journals, "total": total}


# -- usage ------------------------------------------------------------------------------------


_STAGE_ROLES = {"distill": "teacher", "evolve": "orm", "orm": "orm", "eval": "judge"}


def _stage_role(stage: str) -> str | None:
    """The role a single-purpose stage asks (evolve only ever asks the ORM); None for mixed stages."""
    return _STAGE_ROLES.get(stage.split(".")[0].split("_")[0])


def usage_role(cfg: MathSEConfig, stage: str, model: str, seen: dict[str, str] | None = None) -> str:
    """teacher / orm / judge / other: by the configured model names, the stage breaking ties.

    `seen` maps model -> role as learnt from single-purpose stages of the same ledger, so a mixed
    stage (reflect asks both teacher and ORM) is attributed even when the config no longer names them.
    """
    named = {
        "teacher": cfg.teacher.model if cfg.teacher else None,
        "orm": cfg.orm.api.model if cfg.orm.api else None,
        "judge": cfg.eval.judge.model if cfg.eval.judge else None,
    }
    roles = [role for role, name in named.items() if name == model]
    if len(roles) == 1:
        return roles[0]
    stage_role = _stage_role(stage)
    if stage_role and (not roles or stage_role in roles):
        return stage_role
    if roles:
        return roles[0]
    return (seen or {}).get(model, "other")


def _usage(c: _Collector) -> dict[str, Any] | None:
    path = c.out / "usage.json"
    data = c.json(path)
    if data is None:
        if not path.is_file():
            c.missing.append("usage: no API usage ledger (usage.json): no paid API calls so far")
        return None
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        c.warnings.append("usage.json: no 'stages' mapping (not a UsageLedger file?)")
        return None
    seen = {model: role for stage, models in stages.items() if (role := _stage_role(stage))
            for model in (models or {})}
    rows: list[dict[str, Any]] = []
    for stage, models in stages.items():
        for model, entry in (models or {}).items():
            if not isinstance(entry, dict):
                continue
            row: dict[str, Any] = {"stage": stage, "model": model, "role": usage_role(c.cfg, stage, model, seen)}
            for key in USAGE_COUNTERS:
                row[key] = int(entry.get(key, 0) or 0)
            row["cost_usd"] = round(float(entry.get("cost_usd", 0.0) or 0.0), 6)
            rows.append(row)
    roles: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = roles.setdefault(row["role"], {**dict.fromkeys(USAGE_COUNTERS, 0), "cost_usd": 0.0})
        for key in (*USAGE_COUNTERS, "cost_usd"):
            total[key] += row[key]
    for total in roles.values():
        total["cost_usd"] = round(total["cost_usd"], 6)
    return {"total_cost_usd": round(sum(r["cost_usd"] for r in rows), 6), "rows": rows, "roles": roles}


# -- answer lengths ---------------------------------------------------------------------------


def _lengths(c: _Collector, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean answer length per stage: D_SFT, accepted paths per round, reflections, eval per checkpoint."""
    rows: list[dict[str, Any]] = []
    if report.get("distill"):
        rows.append({"key": "distill", "label": "D_SFT (distill)", **report["distill"]["length"]})
    evolve = report.get("evolve") or {}
    folder = c.out / "evolve"
    cumulative: dict[int, list[Any]] | None = None
    for r in (row["round"] for row in evolve.get("rounds", [])):
        chosen = folder / f"round_{r}" / "chosen.jsonl"
        if chosen.is_file():
            texts = [row.get("reasoning") for row in c.rows(chosen)]
        else:  # the round's own file is gone: the cumulative buffer holds the same rows
            if cumulative is None:
                cumulative = {}
                for row in c.rows(folder / "sft_chosen.jsonl"):
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


# ---------------------------------------------------------------------------------------------
# Charts


def _figure(width: float = 8.0, height: float = 4.5) -> Any:
    # The object API with an explicit Agg canvas: no pyplot, no global backend switch, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def draw_figures(report: dict[str, Any], out: Path) -> dict[str, str]:
    """Draw every chart the data supports; returns name -> file name (relative to `out`)."""
    drawn: dict[str, str] = {}
    charts = (("rounds", _chart_rounds), ("pool", _chart_pool), ("transitions", _chart_transitions),
              ("lengths", _chart_lengths), ("eval", _chart_eval))
    for name, draw in charts:
        try:
            fig = draw(report)
        except Exception as err:  # a chart is a nicety: report the failure, keep the rest
            report["warnings"].append(f"chart {name}: not drawn ({type(err).__name__}: {err})")
            continue
        if fig is not None:
            _save(fig, out / FIGURES[name])
            drawn[name] = FIGURES[name]
    return drawn


def _grouped_bars(ax: Any, groups: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(groups))]
        ax.bar(xs, values, width, label=label)
    ax.set_xticks(range(len(groups)), groups)


def _integer_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5 problems


def _chart_rounds(report: dict[str, Any]) -> Any:
    rounds = (report.get("evolve") or {}).get("rounds") or []
    if not rounds:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    series = {
        "attempted (problems)": [r["attempted"] or 0 for r in rounds],
        "accepted (paths)": [r["accepted"] or 0 for r in rounds],
        "rejected (paths)": [r["rejected"] or 0 for r in rounds],
        "unparseable ORM replies (paths)": [r["unparseable"] or 0 for r in rounds],
    }
    _grouped_bars(ax, [str(r["round"]) for r in rounds], series)
    ax.set_xlabel("Evolve round")
    ax.set_ylabel("Count")
    _integer_axis(ax)
    ax.set_title("Evolve: outcomes per round")
    ax.legend()
    return fig


def _chart_pool(report: dict[str, Any]) -> Any:
    evolve = report.get("evolve") or {}
    rounds = evolve.get("rounds") or []
    if not rounds:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    xs = [r["round"] for r in rounds if r["pool_left"] is not None]
    pool = [r["pool_left"] for r in rounds if r["pool_left"] is not None]
    if evolve.get("pool_start") is not None:
        xs, pool = [0, *xs], [evolve["pool_start"], *pool]
    handles = ax.plot(xs, pool, marker="o", color="#444444", label="pool left (D_remain)")
    ax.set_xlabel("Evolve round (0 = before round 1)")
    ax.set_ylabel("Problems left in the pool")
    ax.set_xticks([0, *(r["round"] for r in rounds)] if evolve.get("pool_start") is not None else
                  [r["round"] for r in rounds])
    _integer_axis(ax)
    rates = ax.twinx()
    for key, label, color in (("accept_rate", "accept rate (accepted / paths)", "#2ca02c"),
                              ("solve_rate", "solve rate (solved / attempted)", "#1f77b4")):
        points = [(r["round"], 100 * r[key]) for r in rounds if r[key] is not None]
        if points:
            handles += rates.plot(*zip(*points, strict=True), marker="s", linestyle="--", color=color, label=label)
    rates.set_ylabel("Rate (%)")
    rates.set_ylim(0, 105)
    ax.set_title("Evolve: pool left and accept rate over rounds")
    ax.legend(handles=handles, loc="best")
    return fig


def _chart_transitions(report: dict[str, Any]) -> Any:
    trans = report.get("transitions") or {}
    panels = []
    if trans.get("evolve"):
        pairs = trans["evolve"]["pairs"]
        groups = [(f"r{p['from_round']}→r{p['to_round']}", p) for p in pairs]
        if len(pairs) > 1:
            groups.append(("all", trans["evolve"]["total"]))
        panels.append(("Evolve: consecutive rounds", "Round pair", groups))
    if trans.get("eval"):
        ev = trans["eval"]
        groups = list(ev["benchmarks"].items())
        if len(groups) > 1:
            groups.append(("all", ev["total"]))
        panels.append((f"Eval: {ev['from_checkpoint']} → {ev['to_checkpoint']}", "Benchmark", groups))
    if not panels:
        return None
    fig = _figure(width=6.0 * len(panels))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, xlabel, groups) in zip(axes, panels, strict=True):
        bottoms = [0] * len(groups)
        for key in TRANSITIONS:
            values = [g[key] for _, g in groups]
            ax.bar([name for name, _ in groups], values, bottom=bottoms, color=TRANSITION_COLORS[key],
                   label=TRANSITION_LABELS[key])
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Problems")
        _integer_axis(ax)
    axes[-1].legend(loc="best", fontsize="small")
    fig.suptitle("Figure 2: problem outcome transitions")
    return fig


def _chart_lengths(report: dict[str, Any]) -> Any:
    rows = [r for r in report.get("lengths") or [] if r["mean_chars"] is not None]
    if not rows:
        return None
    fig = _figure(width=max(6.0, 1.1 * len(rows) + 2))
    ax = fig.add_subplot()
    bars = ax.bar(range(len(rows)), [r["mean_chars"] for r in rows], color="#1f77b4")
    ax.bar_label(bars, labels=[f"{r['mean_chars']:.0f}" for r in rows])
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=25, ha="right")
    ax.set_xlabel("Stage")
    ax.set_ylabel("Mean answer length (characters)")
    ax.set_title("Average answer length per stage")
    return fig


def _chart_eval(report: dict[str, Any]) -> Any:
    ev = report.get("eval") or {}
    results = ev.get("results") or {}
    table, benches = results.get("table") or {}, results.get("benchmarks") or []
    numeric = [b for b in benches if any(isinstance(row.get(b), float) for row in table.values())]
    if numeric:
        ckpts = list(table)
        # A blank cell is NaN: no bar, rather than a bar at 0 that reads as a score of 0.
        series = {b: [v if isinstance(v := table[k].get(b), float) else float("nan") for k in ckpts] for b in numeric}
        ylabel = "Accuracy (%) from eval/results.csv"
    else:  # no usable table: accuracy from the predictions themselves
        preds = ev.get("predictions") or {}
        ckpts = [k for k in ev.get("checkpoint_order", []) if k in preds]
        names = sorted({b for k in ckpts for b in preds[k]})
        if not ckpts or not names:
            return None
        series = {b: [100 * (preds[k].get(b, {}).get("accuracy") or 0.0) for k in ckpts] for b in names}
        ylabel = "Accuracy from predictions (%)"
    fig = _figure()
    ax = fig.add_subplot()
    _grouped_bars(ax, ckpts, series)
    ax.set_xlabel("Checkpoint")
    ax.set_ylabel(ylabel)
    ax.set_title("Evaluation per checkpoint and benchmark")
    ax.legend(title="benchmark")
    return fig


# ---------------------------------------------------------------------------------------------
# Markdown


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


def render_markdown(report: dict[str, Any]) -> str:
    """report.md from the numbers (no file reads: everything comes from `report`)."""
    lines = ["# MathSE run report", "", f"Run: `{report['output_dir']}` — generated {report['generated_at']}.", ""]
    lines += ["All numbers are also in `report.json` next to this file.", ""]
    if report["missing"]:
        lines += ["## Missing", "", *(f"- {m}" for m in report["missing"]), ""]
    if report["warnings"]:
        lines += ["## Warnings", "", *(f"- {w}" for w in report["warnings"]), ""]
    lines += _md_distill(report) + _md_evolve(report) + _md_transitions(report) + _md_lengths(report)
    lines += _md_orm_model(report) + _md_orm(report) + _md_reflect(report) + _md_eval(report) + _md_usage(report)
    return "\n".join(lines).rstrip() + "\n"


def _md_distill(report: dict[str, Any]) -> list[str]:
    lines = ["## Stage 1: distill (D_SFT)", ""]
    d = report.get("distill")
    if not d:
        return [*lines, "Not run yet.", ""]
    if d["stats"]:
        lines += _table(["stat", "value"], ([k, _fmt(v)] for k, v in d["stats"].items()))
    lines += [f"D_SFT rows: {_fmt(d['d_sft_rows'])}.", ""]
    return lines


def _md_evolve(report: dict[str, Any]) -> list[str]:
    lines = ["## Stage 2: evolve rounds", ""]
    ev = report.get("evolve")
    if not ev:
        return [*lines, "No merged round yet.", ""]
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
    lines = ["## Figure 2: outcome transitions", ""]
    trans = report.get("transitions") or {}
    if not trans.get("evolve") and not trans.get("eval"):
        return [*lines, "Not enough data (see Missing).", ""]
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
        lines += [f"Eval problems, checkpoint `{ev['from_checkpoint']}` → `{ev['to_checkpoint']}`:", ""]
        rows = [[b, *(_fmt(c[k]) for k in (*TRANSITIONS, "n"))] for b, c in ev["benchmarks"].items()]
        rows.append(["**all**", *(_fmt(ev["total"][k]) for k in (*TRANSITIONS, "n"))])
        lines += _table(["benchmark", *headers], rows)
    return lines + _image(report, "transitions", "Outcome transitions")


def _md_lengths(report: dict[str, Any]) -> list[str]:
    lines = ["## Average answer length", ""]
    rows = report.get("lengths") or []
    if not rows:
        return [*lines, "No answers yet.", ""]
    lines += ["The paper reports 325 → 792 characters from the distilled data to the evolved model.", ""]
    lines += _table(["stage", "answers", "mean chars", "median chars"],
                    ([r["label"], _fmt(r["n"]), _fmt(r["mean_chars"]), _fmt(r["median_chars"])] for r in rows))
    return lines + _image(report, "lengths", "Average answer length per stage")


def _orm_model(c: _Collector) -> dict[str, Any] | None:
    """The trained ORM: its data (orm/data/stats.json) and held-out metrics (<orm_model>/orm_metrics.json)."""
    metrics_file = c.cfg.model_path("orm_model") / "orm_metrics.json"
    metrics = c.json(metrics_file)
    data = c.json(c.out / "orm" / "data" / "stats.json")
    if metrics is None and data is None:
        if c.cfg.orm.backend == "trained":
            c.missing.append("orm: no trained ORM metrics yet (orm_model/orm_metrics.json): run --stage orm")
        return None
    return {"metrics": metrics, "metrics_file": str(metrics_file) if metrics else None, "data": data}


def _md_orm_model(report: dict[str, Any]) -> list[str]:
    section = report.get("orm_model")
    if not section:
        return []
    lines = ["## The trained ORM", ""]
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
        lines += [f"From `{section['metrics_file']}`.", ""]
    return lines


def _md_orm(report: dict[str, Any]) -> list[str]:
    lines = ["## ORM vs rule verdicts", ""]
    orm = report.get("orm_vs_rule")
    if not orm:
        return [*lines, "No verdict journals.", ""]
    keys = ["rows", "both", "disagree", "orm_yes_rule_no", "orm_no_rule_yes", "orm_unparseable"]
    rows = [[name, *(_fmt(g[k]) for k in keys), _fmt(g["rate"], True)] for name, g in orm["journals"].items()]
    rows.append(["**all**", *(_fmt(orm["total"][k]) for k in keys), _fmt(orm["total"]["rate"], True)])
    lines += _table(["journal", "verdicts", "both verdicts", "disagree", "ORM yes / rule no", "ORM no / rule yes",
                     "ORM unparseable", "disagreement rate"], rows)
    return [*lines, "Disagreement rate = disagreements / verdicts holding both a parsed ORM and a rule verdict.", ""]


def _md_reflect(report: dict[str, Any]) -> list[str]:
    lines = ["## Stage 3: reflection", ""]
    ref = report.get("reflect")
    if not ref:
        return [*lines, "Not run yet.", ""]
    stats = ref["stats"] or {}
    rows = [[k, _fmt(v)] for k, v in stats.items() if not isinstance(v, dict)]
    for k, v in stats.items():
        if isinstance(v, dict):
            rows += [[f"{k}: {reason}", _fmt(n)] for reason, n in v.items()]
    if rows:
        lines += _table(["stat", "value"], rows)
    return [*lines, f"Kept rows: {_fmt(ref['kept_rows'])}.", ""]


def _md_eval(report: dict[str, Any]) -> list[str]:
    lines = ["## Evaluation", ""]
    ev = report.get("eval")
    if not ev:
        return [*lines, "Not run yet.", ""]
    results = ev.get("results")
    if results:
        columns = results["columns"]

        def cell(row: dict[str, Any], col: str) -> str:
            correct, total = row.get(f"{col} correct"), row.get(f"{col} total")
            counts = f" ({_fmt(correct)}/{_fmt(total)})" if correct is not None and total is not None else ""
            return _fmt(row.get(col)) + counts

        lines += ["From `eval/results.csv` (accuracy %, correct/total):", ""]
        lines += _table([results["key_column"], *columns],
                        ([k, *(cell(row, col) for col in columns)] for k, row in results["table"].items()))
    preds = ev.get("predictions") or {}
    if preds:
        lines += ["Accuracy recomputed from the predictions files:", ""]
        lines += _table(["checkpoint", "benchmark", "problems", "correct", "accuracy"],
                        ([k, b, _fmt(p["n"]), _fmt(p["correct"]), _fmt(p["accuracy"], True)]
                         for k in ev["checkpoint_order"] if k in preds for b, p in preds[k].items()))
    return lines + _image(report, "eval", "Evaluation results")


def _md_usage(report: dict[str, Any]) -> list[str]:
    lines = ["## API usage and cost", ""]
    usage = report.get("usage")
    if not usage:
        return [*lines, "No usage ledger.", ""]
    keys = ["answered", "cached", "failures", "calls", "prompt_tokens", "completion_tokens"]
    lines += _table(["role", *keys, "cost (USD)"],
                    ([role, *(_fmt(t[k]) for k in keys), f"{t['cost_usd']:.4f}"] for role, t in usage["roles"].items()))
    lines += _table(["stage", "model", "role", *keys, "cost (USD)"],
                    ([r["stage"], r["model"], r["role"], *(_fmt(r[k]) for k in keys), f"{r['cost_usd']:.4f}"]
                     for r in usage["rows"]))
    return [*lines, f"Total estimated cost: ${usage['total_cost_usd']:.4f} (unpriced models count as $0).", ""]
