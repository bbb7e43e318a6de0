"""The report's charts: PNGs drawn from the numbers of `collect` (matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mathse.reporting.transitions import TRANSITION_LABELS, TRANSITIONS
from mathse.run.storage import atomic_write_bytes

DPI = 110
TRANSITION_COLORS = {
    "consistently_correct": "#2ca02c",
    "incorrect_to_correct": "#1f77b4",
    "correct_to_incorrect": "#ff7f0e",
    "persistently_incorrect": "#d62728",
}
FIGURES = {
    "rounds": "rounds.png",
    "pool": "pool.png",
    "transitions": "transitions.png",
    "lengths": "lengths.png",
    "eval": "eval.png",
}


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


def _grouped_bars(ax: Any, groups: list[str], series: dict[str, list[float]],
                  intervals: dict[str, list[Any]] | None = None) -> None:
    """Bars per group and series; `intervals` ([low, high] or None per bar) draw as error bars."""
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(groups))]
        bounds = (intervals or {}).get(label)
        yerr = None
        if bounds:
            yerr = [[v - b[0] if b else 0.0 for v, b in zip(values, bounds, strict=True)],
                    [b[1] - v if b else 0.0 for v, b in zip(values, bounds, strict=True)]]
        ax.bar(xs, values, width, label=label, yerr=yerr, capsize=3 if yerr else 0)
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
        groups = [(f"{p['from_checkpoint']}→{p['to_checkpoint']}", p["total"]) for p in ev["pairs"]]
        panels.append(("Eval: consecutive checkpoints (all benchmarks)", "Checkpoint pair", groups))
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
        intervals = {b: [table[k].get(f"{b} interval") for k in ckpts] for b in numeric}
        ylabel = "Accuracy (%) from eval/results.json, 95% intervals"
    else:  # no usable table: accuracy from the predictions themselves
        preds = ev.get("predictions") or {}
        ckpts = [k for k in ev.get("checkpoint_order", []) if k in preds]
        names = sorted({b for k in ckpts for b in preds[k]})
        if not ckpts or not names:
            return None
        series = {b: [100 * (preds[k].get(b, {}).get("accuracy") or 0.0) for k in ckpts] for b in names}
        intervals = {}
        ylabel = "Accuracy from predictions (%)"
    fig = _figure()
    ax = fig.add_subplot()
    _grouped_bars(ax, ckpts, series, intervals)
    ax.set_xlabel("Checkpoint")
    ax.set_ylabel(ylabel)
    ax.set_title("Evaluation per checkpoint and benchmark")
    ax.legend(title="benchmark")
    return fig
