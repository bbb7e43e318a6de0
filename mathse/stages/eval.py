"""`--stage eval`: accuracy of every checkpoint of the run on every configured benchmark.

Checkpoints (`eval.checkpoints`, default: every model the run produced that exists):
"base" (model.base), "stage0" (M0), "round_<r>" (each retrained evolve round), "stage2" (the latest
evolve model, `paths.sft_model_final`), "final" (`paths.reflection_model_final`), or any model
folder as "path" or "label=path". LoRA adapter folders are loaded on their base model.

Each (checkpoint, benchmark) pair is a unit of work in `output/eval/<checkpoint>/<benchmark>/`:
`generations.jsonl` (journal: a kill loses at most the requests in flight), then
`predictions.jsonl` (question, answer, response, extracted answer, verdicts: every score can be
audited), `scores.json` and the completion marker, written last. A rerun skips finished pairs and
loads a model only when one of its pairs has generation left. The tables `output/eval/results.md`
and `results.csv` (rows: checkpoints; columns: benchmarks, MathVerse also per version; each accuracy
with its 95% Wilson interval, exact McNemar tests between consecutive checkpoints) and the per-item
`items.csv` are rebuilt from the markers and predictions at the end of every run.

With `eval.samples` k > 1 the greedy pass (temperature 0) is joined by k answers per item sampled at
`eval.temperature` on the same engine, journaled in `samples.jsonl` (keys `<id>#<i>`, each request
seeded from run.seed and its first key, as generation always is; a kill repeats no journaled
sample), scored by the same rules: pass@k (unbiased estimator) and maj@k per pair. Raising k on a
finished pair keeps its greedy answers and samples and draws only the missing samples.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mathse.answers.eval_pairs import pair_summary, prediction, summarize
from mathse.answers.eval_results import accuracy_table, items_csv, paired_tests, read_outcomes, render_results
from mathse.answers.evalsets import EvalItem, load_benchmark
from mathse.answers.sampling import sample_record
from mathse.answers.scoring import run_judge, score_response
from mathse.model.generation import ServedGenerator, open_generator
from mathse.model.generation import describe as describe_generation
from mathse.model.generation_items import GenItem
from mathse.model.inference import Generator
from mathse.model.inputs import model_inputs
from mathse.run import layout
from mathse.run.checkpoints import Checkpoint, resolve_checkpoints
from mathse.run.config import BenchmarkSpec, ConfigError, InferenceConfig, MathSEConfig, save_resolved_config
from mathse.run.errors import StageError
from mathse.run.fingerprint import redo_given
from mathse.run.storage import (
    Journal,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    clear_marker,
    is_done,
    mark_done,
    read_marker,
)
from mathse.run.usage import UsageLedger

STAGE = layout.EVAL


# ---------------------------------------------------------------------------------------------
# Paths


def eval_dir(cfg: MathSEConfig) -> Path:
    return layout.stage_dir(cfg, STAGE)


pair_dir = layout.pair_dir
image_dir = layout.eval_image_dir


# ---------------------------------------------------------------------------------------------
# Checkpoints


# ---------------------------------------------------------------------------------------------
# Stage protocol


def finished(cfg: MathSEConfig) -> bool:
    """Every (checkpoint, benchmark) pair is marked done and the tables are written."""
    if not cfg.eval.benchmarks:
        return False
    try:
        checkpoints = resolve_checkpoints(cfg)
    except (StageError, ConfigError):
        return False
    pairs_done = all(_has_samples(cfg, c.name, b.name) for c in checkpoints for b in cfg.eval.benchmarks)
    return pairs_done and layout.eval_results_path(cfg, "md").is_file()


def _has_samples(cfg: MathSEConfig, checkpoint: str, benchmark: str) -> bool:
    """The pair is done with as many samples per item as eval.samples asks (raising k reopens it)."""
    folder = pair_dir(cfg, checkpoint, benchmark)
    return is_done(folder) and read_marker(folder).get("settings", {}).get("samples", 1) == cfg.eval.samples


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    found = {
        "results table (markdown)": layout.eval_results_path(cfg, "md"),
        "results table (CSV)": layout.eval_results_path(cfg, "csv"),
        "results (JSON, with breakdowns)": layout.eval_results_path(cfg, "json"),
        "per-item outcomes (CSV)": layout.eval_items_path(cfg),
    }
    try:
        checkpoints = resolve_checkpoints(cfg)
    except (StageError, ConfigError):
        checkpoints = []
    for c in checkpoints:
        for b in cfg.eval.benchmarks:
            found[f"predictions {c.name}/{b.name}"] = pair_dir(cfg, c.name, b.name) / layout.PREDICTIONS
    return found


def eval_inference(cfg: MathSEConfig) -> InferenceConfig:
    """cfg.inference with eval's sampling: one path per item at eval.temperature (greedy by default); with
    eval.samples > 1 this pass is greedy and the samples are drawn at eval.temperature (`evaluate_pair`)."""
    temperature = 0.0 if cfg.eval.samples > 1 else cfg.eval.temperature
    update: dict[str, Any] = {"temperature": temperature, "n_paths": 1}
    if cfg.eval.max_new_tokens is not None:
        update["max_new_tokens"] = cfg.eval.max_new_tokens
    return cfg.inference.model_copy(update=update)


def run(
    cfg: MathSEConfig,
    dry_run: bool = False,
    *,
    chat_model_factory: Callable[[dict[str, Any]], Any] | None = None,
) -> int:
    """Evaluate every pending (checkpoint, benchmark) pair, then write the results tables.

    `chat_model_factory` replaces LLaMA-Factory's ChatModel (tests).
    """
    specs = cfg.eval.benchmarks
    if not specs:
        raise ConfigError(["config error: eval.benchmarks: no benchmarks configured (entries: name, format, path)"])
    dup = [n for n, k in Counter(layout.safe_name(s.name) for s in specs).items() if k > 1]
    if dup:
        raise ConfigError([f"config error: eval.benchmarks: duplicate benchmark name(s) {dup}"])
    checkpoints = resolve_checkpoints(cfg)
    if dry_run:
        print_plan(cfg, checkpoints, specs)
        return 0

    # Read and validate every benchmark before any model loads (a bad record fails in seconds).
    benches = {s.name: load_benchmark(s, image_dir(cfg, s.name)) for s in specs}
    for c in checkpoints:
        for s in specs:
            if is_done(pair_dir(cfg, c.name, s.name)):
                _redo_or_warn_if_stale(cfg, c, s, benches[s.name])
    pending = [(c, s) for c in checkpoints for s in specs if not is_done(pair_dir(cfg, c.name, s.name))]
    if pending:
        save_resolved_config(cfg, eval_dir(cfg) / "config.yaml")
    else:
        print(f"eval: all {len(checkpoints) * len(specs)} evaluations already done, nothing to run")

    for checkpoint in checkpoints:
        todo = [s for c, s in pending if c is checkpoint]
        if not todo:
            continue
        # In-process ChatModel, or (inference.backend: served) this checkpoint's servers.
        generator = open_generator(
            checkpoint.model,
            checkpoint.adapter,
            model_inputs(cfg, "rounds"),
            eval_inference(cfg),
            serve=cfg.serve,
            ray=cfg.ray,
            seed=cfg.run.seed,
            server_dir=layout.servers_dir(eval_dir(cfg)) / layout.safe_name(checkpoint.name),
            chat_model_factory=chat_model_factory,
        )
        with generator:  # loaded (or served) lazily: only if some item still needs a response
            for spec in todo:
                stats = evaluate_pair(cfg, checkpoint, spec, benches[spec.name], generator)
                print(pair_summary(stats))
    write_results(cfg, checkpoints, specs)
    table = layout.eval_results_path(cfg, "md")
    rows = accuracy_table(table.read_text(encoding="utf-8"))
    print("\n".join([f"eval: accuracy % (correct/total) -> {table}", *rows]))
    return 0


# ---------------------------------------------------------------------------------------------
# One (checkpoint, benchmark) pair


def settings(cfg: MathSEConfig, checkpoint: Checkpoint, items: list[EvalItem]) -> dict[str, Any]:
    """What an evaluation's result depends on, stored in its marker to spot stale results."""
    inf = eval_inference(cfg)
    ids = hashlib.sha256("\x00".join(i.id for i in items).encode()).hexdigest()[:16]
    return {
        "model": checkpoint.model,
        "adapter": checkpoint.adapter,
        "model_stamp": checkpoint.stamp,
        "temperature": inf.temperature,
        "max_new_tokens": inf.max_new_tokens,
        "items": len(items),
        "item_ids": ids,
        "samples": cfg.eval.samples,
        "sample_temperature": cfg.eval.temperature if cfg.eval.samples > 1 else None,
    }


def _redo_or_warn_if_stale(cfg: MathSEConfig, checkpoint: Checkpoint, spec: BenchmarkSpec,
                           items: list[EvalItem]) -> None:
    """A finished pair made with other settings (e.g. a retrained checkpoint): redone under --redo
    eval, else kept with a warning (an evaluation is never thrown away unasked)."""
    folder = pair_dir(cfg, checkpoint.name, spec.name)
    before = read_marker(folder).get("settings", {})
    now = settings(cfg, checkpoint, items)
    before.setdefault("samples", 1)
    changed = ", ".join(sorted(k for k in now if k in before and before[k] != now[k]))
    if not changed:
        return
    if changed == "samples" or (changed == "sample_temperature, samples" and before["samples"] == 1):
        clear_marker(folder)  # only k changed: greedy answers and journaled samples stay, the missing are drawn
        print(f"eval: {checkpoint.name}/{spec.name}: {now['samples']} samples per item wanted "
              f"(had {before['samples']}); drawing the missing ones")
        return
    if redo_given(cfg, "eval"):
        shutil.rmtree(folder)
        print(f"eval: {checkpoint.name}/{spec.name} was evaluated with other {changed}; evaluating it again")
    else:
        print(f"eval: warning: {checkpoint.name}/{spec.name} was evaluated with other {changed}; its results "
              "are kept. Rerun with --redo eval to evaluate it again.")


def evaluate_pair(
    cfg: MathSEConfig,
    checkpoint: Checkpoint,
    spec: BenchmarkSpec,
    items: list[EvalItem],
    generator: Generator | ServedGenerator,
) -> dict[str, Any]:
    """Generate (resumably), score, judge, write predictions and scores, mark done."""
    folder = pair_dir(cfg, checkpoint.name, spec.name)
    progress = f"eval {checkpoint.name}/{spec.name}"
    gen_items = [GenItem(f"{item.id}#0", item.to_problem(), 0) for item in items]
    with Journal(folder / "generations.jsonl") as journal:
        retry = generator.generate(gen_items, journal, progress=progress).retry_later
        rows = {g.problem.id: journal.get(g.key) for g in gen_items}
    k = cfg.eval.samples
    sampled: dict[str, dict[str, Any]] = {}
    if k > 1:  # k answers per item at eval.temperature, same engine, own journal
        drawn = [GenItem(f"{item.id}#{i}", gen_items[n].problem, i) for n, item in enumerate(items) for i in range(k)]
        with Journal(folder / "samples.jsonl") as journal:
            retry += generator.generate(drawn, journal, progress=f"{progress} x{k}",
                                        temperature=cfg.eval.temperature).retry_later
            if not retry:
                sampled = {i.id: sample_record(i, [journal.get(f"{i.id}#{s}") for s in range(k)]) for i in items}
    if retry:
        raise StageError(
            f"eval: {checkpoint.name}/{spec.name}: {retry} generations failed; "
            "rerun the same command to retry just those"
        )

    scores = {item.id: score_response(item, (rows[item.id] or {}).get("response")) for item in items}
    judged: dict[str, dict[str, Any]] = {}
    judge = cfg.eval.judge
    if judge is not None:
        unread = [
            (item, rows[item.id]["response"])
            for item in items
            if scores[item.id].extracted is None and (rows[item.id] or {}).get("response")
        ]
        ledger = UsageLedger(layout.usage_path(cfg), cfg.pricing)
        try:
            judged = run_judge(
                judge,
                unread,
                cfg.api_cache_dir,
                ledger,
                STAGE,
                progress=f"judge {checkpoint.name}/{spec.name}" if unread else None,
            )
        finally:
            ledger.save()

    predictions = [prediction(item, rows[item.id] or {}, scores[item.id], judged.get(item.id), sampled.get(item.id))
                   for item in items]
    atomic_write_jsonl(folder / layout.PREDICTIONS, predictions)
    stats = summarize(checkpoint.name, spec, items, predictions, judge_model=judge.model if judge else None,
                      settings=settings(cfg, checkpoint, items), samples=(k, cfg.eval.temperature) if k > 1 else None)
    atomic_write_json(folder / "scores.json", stats)
    failed = stats["judge"]["failed"] if stats["judge"] else 0
    if failed:
        raise StageError(
            f"eval: {checkpoint.name}/{spec.name}: {failed} judge calls failed; rerun the same command to retry "
            "them (answered calls come from the cache)"
        )
    mark_done(folder, stats)
    return stats


# ---------------------------------------------------------------------------------------------
# Results tables


def collect_results(
    cfg: MathSEConfig, checkpoints: list[Checkpoint], specs: list[BenchmarkSpec]
) -> dict[tuple[str, str], dict[str, Any]]:
    results = {}
    for ck in checkpoints:
        for spec in specs:
            folder = pair_dir(cfg, ck.name, spec.name)
            if is_done(folder):
                results[(ck.name, spec.name)] = read_marker(folder)
    return results


def _write_if_changed(path: Path, text: str) -> None:
    # A rerun with nothing new leaves the files (and their mtimes) alone.
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def write_results(cfg: MathSEConfig, checkpoints: list[Checkpoint], specs: list[BenchmarkSpec]) -> None:
    """results.md / .csv / .json (accuracies, intervals, pass@k / maj@k, paired tests) and items.csv."""
    results = collect_results(cfg, checkpoints, specs)
    outcomes = {pair: read_outcomes(pair_dir(cfg, *pair) / layout.PREDICTIONS) for pair in results}
    tests = paired_tests([c.name for c in checkpoints], [s.name for s in specs], outcomes)
    markdown, table = render_results(checkpoints, specs, results, tests)
    _write_if_changed(layout.eval_results_path(cfg, "md"), markdown)
    _write_if_changed(layout.eval_results_path(cfg, "csv"), table)
    payload = [dict(stats, paired_test=tests.get(pair)) for pair, stats in results.items()]
    _write_if_changed(layout.eval_results_path(cfg, "json"), json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    _write_if_changed(layout.eval_items_path(cfg), items_csv(checkpoints, specs, outcomes))


# ---------------------------------------------------------------------------------------------
# Dry run


def print_plan(cfg: MathSEConfig, checkpoints: list[Checkpoint], specs: list[BenchmarkSpec]) -> None:
    total = len(checkpoints) * len(specs)
    done = sum(1 for c in checkpoints for s in specs if _has_samples(cfg, c.name, s.name))
    print(
        f"[dry-run] eval: {len(specs)} benchmarks x {len(checkpoints)} checkpoints = {total} evaluations "
        f"({total - done} to run, {done} already done)"
    )
    for spec in specs:
        # Validates every record; embedded images are not written in a dry run.
        items = load_benchmark(spec, image_dir(cfg, spec.name), materialize=False)
        choice = sum(1 for i in items if i.kind == "choice")
        split = f", split {spec.split}" if spec.split else ""
        print(
            f"[dry-run] benchmark {spec.name} ({spec.format}{split}): {len(items)} items "
            f"({choice} multiple choice, {len(items) - choice} free form) from {spec.path}"
        )
    for ck in checkpoints:
        status = [s.name for s in specs if _has_samples(cfg, ck.name, s.name)]
        adapter = f" + adapter {ck.adapter}" if ck.adapter else ""
        print(
            f"[dry-run] checkpoint {ck.name}: {ck.model}{adapter}" + (f" (done: {', '.join(status)})" if status else "")
        )
    inf = eval_inference(cfg)
    mode = "greedy" if inf.temperature == 0 else f"sampling, top_p {inf.top_p}"
    print(
        f"[dry-run] generation: temperature {inf.temperature} ({mode}), max_new_tokens {inf.max_new_tokens}, "
        f"backend {inf.backend}, {inf.concurrency} requests in flight"
    )
    if cfg.eval.samples > 1:
        print(f"[dry-run] samples: {cfg.eval.samples} per item at temperature {cfg.eval.temperature} (top_p "
              f"{inf.top_p}) beside the greedy answer -> pass@{cfg.eval.samples}, maj@{cfg.eval.samples}")
    if checkpoints:
        ck = checkpoints[0]
        servers = layout.servers_dir(eval_dir(cfg)) / layout.safe_name(ck.name)
        student = model_inputs(cfg, "rounds")
        plan = describe_generation(ck.model, ck.adapter, student, inf, serve=cfg.serve, ray=cfg.ray, server_dir=servers)
        print(f"[dry-run] {ck.name}: {plan}")
    judge = cfg.eval.judge
    print(
        "[dry-run] judge: "
        + (
            f"{judge.model} at {judge.base_url}, only for responses whose answer the rules "
            "cannot find (reported separately)"
            if judge
            else "none (rule-based scoring only)"
        )
    )
    print(
        f"[dry-run] outputs: {eval_dir(cfg)}/<checkpoint>/<benchmark>/predictions.jsonl; tables "
        f"{layout.eval_results_path(cfg, 'md')} and {layout.eval_results_path(cfg, 'csv')}"
    )
