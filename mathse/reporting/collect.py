"""The report's numbers: every stage's outputs read defensively into one dict (report.json).

Reads whatever the run has so far and never fails on a partial run: a missing input becomes a line
in ``report["missing"]``, an unreadable one a line in ``report["warnings"]``. One streaming pass per
file. Sources, all located through `mathse.run.layout`: ``distill/`` (marker stats, D_SFT),
``evolve/round_<r>/`` (stats, history, accepted paths), ``orm_reflections/*.jsonl`` (verdict
journals), ``usage.json`` (the API ledger), ``reflect/`` (stats, kept rows) and ``eval/``
(``results.json``, per-checkpoint predictions).
"""

from __future__ import annotations

import itertools
import re
import statistics
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mathse.run import layout
from mathse.run.config import MathSEConfig
from mathse.answers.eval_results import results_table
from mathse.run.storage import MARKER_NAME, iter_jsonl, read_json
from mathse.run.usage import COUNTERS

SCHEMA_VERSION = 1

# Figure 2 of the paper: how a problem's outcome moves between two attempts.
TRANSITIONS = ("consistently_correct", "incorrect_to_correct", "correct_to_incorrect", "persistently_incorrect")
TRANSITION_LABELS = {
    "consistently_correct": "consistently correct",
    "incorrect_to_correct": "incorrect → correct",
    "correct_to_incorrect": "correct → incorrect",
    "persistently_incorrect": "persistently incorrect",
}
ROUND_COUNTS = ("attempted", "paths", "accepted", "rejected", "unparseable", "unknown", "no_output", "solved")
_ROUND_DIR = re.compile(r"^round_(\d+)$")
_SHARD_SUFFIX = re.compile(r"\.shard-\d+-of-\d+$")
_ROUND_CKPT = re.compile(r"^(?:sft_model_)?round_?(\d+)$")


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


def _stats_and_rows(
    c: _Collector, stats_file: Path, rows_file: Path, text_field: str, count: str, absent: str, unfinished: str
) -> dict[str, Any] | None:
    """A stage's stats file and its output rows (counted, with their text lengths); `absent` /
    `unfinished` are what Missing says without both / without the stats."""
    stats = c.json(stats_file)
    if stats is None and not rows_file.is_file():
        c.missing.append(absent)
        return None
    if stats is None:
        c.missing.append(unfinished)
    lengths = length_stats(r.get(text_field) for r in c.rows(rows_file))
    return {"stats": stats if isinstance(stats, dict) else None, count: lengths["n"], "length": lengths}


def _distill(c: _Collector) -> dict[str, Any] | None:
    return _stats_and_rows(
        c, layout.stage_dir(c.cfg, layout.DISTILL) / MARKER_NAME, layout.d_sft_path(c.cfg, layout.DISTILL),
        "response", "d_sft_rows",
        "distill: no D_SFT yet (distill/d_sft.jsonl, distill/.mathse_done.json): run --stage distill",
        "distill: D_SFT has no completion marker (distill/.mathse_done.json): stage not finished",
    )


# -- evolve -----------------------------------------------------------------------------------


def _round_numbers(c: _Collector) -> list[int]:
    folder = layout.stage_dir(c.cfg, layout.EVOLVE)
    found = {int(m.group(1)) for p in folder.glob("round_*") if p.is_dir() and (m := _ROUND_DIR.match(p.name))}
    return sorted(found)


def _evolve(c: _Collector) -> dict[str, Any] | None:
    planned = c.cfg.evolve.rounds
    numbers = _round_numbers(c)
    rounds: list[dict[str, Any]] = []
    pending: list[int] = []
    for r in sorted(set(numbers) | set(range(1, planned + 1))):
        rd = layout.round_dir(c.cfg, r)
        stats = c.json(rd / layout.STATS)
        if not isinstance(stats, dict):
            stats = c.json(rd / layout.MERGED)  # same numbers, written with the merge
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
    outcome: dict[int, dict[str, bool]] = {}

    def add(row: dict[str, Any], round_hint: int | None) -> None:
        r = row.get("round", round_hint)
        if r is None or "id" not in row:
            return
        verdicts = row.get("verdicts")
        correct = any(v is True for v in verdicts) if isinstance(verdicts, list) else bool(row.get("solved"))
        outcome.setdefault(int(r), {})[str(row["id"])] = correct

    for r in rounds:
        for row in c.rows(layout.round_dir(c.cfg, r) / layout.HISTORY):
            add(row, r)
    for row in c.rows(layout.evolve_file(c.cfg, "history")):
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
    # Figure 2 of the paper: each consecutive pair of evaluated checkpoints (stage0 -> round_1 -> ... -> final).
    eval_pairs = [p for a, b in itertools.pairwise(ckpts) if (p := _eval_pair(ev["_outcomes"], a, b)) is not None]
    if eval_pairs:
        result["eval"] = {"pairs": eval_pairs}
        if len(ckpts) > 2 and (overall := _eval_pair(ev["_outcomes"], ckpts[0], ckpts[-1])) is not None:
            result["eval"]["first_to_last"] = overall
    if result["evolve"] is None and result["eval"] is None:
        c.missing.append(
            "transitions (Figure 2): no problem was attempted in two consecutive evolve rounds, and no eval "
            "predictions exist for two checkpoints"
        )
    return result


def _eval_pair(outcomes: dict[str, dict[str, dict[str, bool]]], first: str, last: str) -> dict[str, Any] | None:
    """Transition counts of the eval problems both checkpoints answered, per benchmark and in total."""
    a, b = outcomes[first], outcomes[last]
    benches = {}
    for bench in sorted(set(a) & set(b)):
        common = [pid for pid in a[bench] if pid in b[bench]]
        benches[bench] = transition_counts((a[bench][p], b[bench][p]) for p in common)
    if not benches:
        return None
    return {"from_checkpoint": first, "to_checkpoint": last, "benchmarks": benches,
            "total": _sum_counts(benches.values())}


# -- reflect ----------------------------------------------------------------------------------


def _reflect(c: _Collector) -> dict[str, Any] | None:
    return _stats_and_rows(
        c, layout.stage_dir(c.cfg, layout.REFLECT) / layout.STATS, layout.reflection_rows_path(c.cfg),
        "output", "kept_rows",
        "reflect: no reflection data yet (reflect/stats.json, orm_reflections/reflection_rows.jsonl)",
        "reflect: reflect/stats.json missing (the stage did not finish)",
    )


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


def _eval(c: _Collector) -> dict[str, Any] | None:
    folder = layout.stage_dir(c.cfg, layout.EVAL)
    results: dict[str, Any] | None = None
    results_path = layout.eval_results_path(c.cfg, "json")
    pairs = c.json(results_path)
    if pairs is not None:
        try:
            results = results_table(pairs)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:
            c.warnings.append(f"{c.rel(results_path)}: unreadable ({err})")
    elif not results_path.is_file():
        c.missing.append(f"eval: no results table ({c.rel(results_path)}): run --stage eval")

    predictions: dict[str, dict[str, dict[str, Any]]] = {}
    outcomes: dict[str, dict[str, dict[str, bool]]] = {}
    texts_by_ckpt: dict[str, list[Any]] = {}
    for path in sorted(folder.glob(f"*/*/{layout.PREDICTIONS}")):
        ckpt, bench = path.parent.parent.name, path.parent.name
        seen: dict[str, bool] = {}
        texts: list[Any] = []
        for row in c.rows(path):
            texts.append(row.get("response"))
            if "id" in row:
                # The rule-based verdict, as results.json's main numbers ("correct_with_judge" adds the judge).
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

    # results.json lists checkpoints in eval's table order; anything else goes in pipeline order.
    order = list(dict.fromkeys(layout.safe_name(k) for k in (results or {}).get("checkpoints", [])))
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
    folder = layout.journals_dir(c.cfg)
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
    path = layout.usage_path(c.cfg)
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
            for key in COUNTERS:
                row[key] = int(entry.get(key, 0) or 0)
            row["cost_usd"] = round(float(entry.get("cost_usd", 0.0) or 0.0), 6)
            rows.append(row)
    roles: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = roles.setdefault(row["role"], {**dict.fromkeys(COUNTERS, 0), "cost_usd": 0.0})
        for key in (*COUNTERS, "cost_usd"):
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
    cumulative: dict[int, list[Any]] | None = None
    for r in (row["round"] for row in evolve.get("rounds", [])):
        chosen = layout.round_dir(c.cfg, r) / layout.CHOSEN
        if chosen.is_file():
            texts = [row.get("reasoning") for row in c.rows(chosen)]
        else:  # the round's own file is gone: the cumulative buffer holds the same rows
            if cumulative is None:
                cumulative = {}
                for row in c.rows(layout.evolve_file(c.cfg, "sft_chosen")):
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


# -- the trained ORM --------------------------------------------------------------------------


def _orm_model(c: _Collector) -> dict[str, Any] | None:
    """The trained ORM: its data (orm/data/stats.json) and held-out metrics (<orm_model>/orm_metrics.json)."""
    metrics_file = layout.orm_metrics_path(c.cfg)
    metrics = c.json(metrics_file)
    data = c.json(layout.orm_data_dir(c.cfg) / layout.STATS)
    if metrics is None and data is None:
        if c.cfg.orm.backend == "trained":
            c.missing.append("orm: no trained ORM metrics yet (orm_model/orm_metrics.json): run --stage orm")
        return None
    return {"metrics": metrics, "metrics_file": str(metrics_file) if metrics else None, "data": data}
