"""`--stage ablations`: the paper's ablations (Tables 3, 4, 5) on this run, sharing what does not change.

Each variant of `ablations:` (a preset and/or overrides of the run's config, the keys `--set` takes)
runs in its own folder, `<output_dir>/ablations/<name>/` (its `run.output_dir`), in order:

1. seed: the folder starts as a copy of the run's finished work (`mathse.run.variants.seed`:
   markers byte for byte, finished models and the answer cache hard-linked, the rest copied;
   the run's files are never written through it);
2. the pipeline's stages up to the variant's last (`until`: orm, evolve or final), each through
   `mathse.stages.load_stage` as `--stage` would run it, with `run.redo: [all]`: a unit whose
   fingerprint is unchanged is skipped, a unit the overrides make stale is redone there, so a
   variant repeats no teacher call and no training of the run that its overrides do not change;
3. eval of the variant's model (the Stage-2 model for `until: evolve`, else the final model) on
   the configured benchmarks: read from the run's own evaluation when the model is the run's
   (same completion marker) with the same eval settings, else evaluated in the variant's folder;
4. its marker (`.mathse_done.json` at the folder's top): overrides, what it performed itself
   (teacher calls, trainings: counted from the seed's baseline, across kills) and its outcomes.

Then `ablations/results.json` and `results.md`: per variant accuracy with Wilson intervals and
McNemar's exact test against the run's final model, the ORM variants' held-out accuracy, the
paper's numbers; the run report gets the same table. A killed run resumes: a finished variant is
read back, an unfinished one goes on where its stages stopped. `--dry-run` lists per variant what
it reuses and what it computes, with the teacher tokens the run spent on those stages.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathse.answers.extraction import check_path
from mathse.api.client import ChatClient
from mathse.api.messages import ChatRequest, system_message, user_message
from mathse.model.prompts import fill_template
from mathse.model.token_budget import TokenBudget
from mathse.model.training import compose_train_job, run_train_job
from mathse.model.training_data import write_sharegpt_dataset
from mathse.reporting.ablations import compare, render
from mathse.run import layout
from mathse.run.config import AblationVariant, ConfigError, MathSEConfig
from mathse.run.config_loading import variant_config
from mathse.run.errors import StageError
from mathse.run.fingerprint import StaleError, marker_digest, redo_given, survey
from mathse.run.records import SftExample
from mathse.run.storage import (
    MARKER_NAME,
    Journal,
    atomic_open,
    atomic_write_json,
    atomic_write_text,
    is_done,
    iter_jsonl,
    mark_done,
    read_json,
    read_marker,
    write_line,
)
from mathse.run.usage import UsageLedger
from mathse.run.variants import model_dirs, performed, seed
from mathse.stages import load_stage

STAGE = layout.ABLATIONS
ORDER = ("distill", "orm", "evolve", "reflect", "final")  # the pipeline's training stages, in order
_MODEL = {"evolve": ("stage2", "sft_model_final"), "final": ("final", "reflection_model_final")}
_INFERENCE_VOLATILE = {"concurrency", "vllm_gpu_util"}


def finished(cfg: MathSEConfig) -> bool:
    return bool(cfg.ablations) and all(is_done(layout.ablation_dir(cfg, v.name or "")) for v in cfg.ablations) \
        and layout.ablation_results_path(cfg).is_file()


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    found = {"ablations table": layout.ablation_results_path(cfg, "md"),
             "ablations numbers": layout.ablation_results_path(cfg)}
    return found | {f"variant {v.name}": layout.ablation_dir(cfg, v.name or "") for v in cfg.ablations}


def variants(cfg: MathSEConfig, probe: bool = False) -> list[tuple[AblationVariant, MathSEConfig, str]]:
    """(variant, its config, its last stage); `probe`: the config pointed at the run's own folder and
    redoing nothing (what the dry run asks the stages about)."""
    found = []
    for i, variant in enumerate(cfg.ablations):
        overrides, until = variant.resolved()
        folder = cfg.output_dir if probe else layout.ablation_dir(cfg, variant.name or "")
        vcfg = variant_config(cfg, overrides, folder, f"ablations[{i}].overrides")
        if probe:
            vcfg.run.redo = []
        found.append((variant, vcfg, until))
    return found


def stages(vcfg: MathSEConfig, until: str) -> list[str]:
    """The pipeline stages a variant runs: up to `until`, the ORM's only when the run trains one."""
    names = list(ORDER[: ORDER.index(until) + 1])
    return [s for s in names if s != "orm" or vcfg.orm.backend == "trained"]


def run(cfg: MathSEConfig, dry_run: bool = False) -> int:
    if not cfg.ablations:
        raise ConfigError(["config error: ablations: no variants configured (e.g. ablations: [{preset: no_reflection},"
                           " {preset: teacher_feedback}, {preset: binary_orm}, {preset: rule_judge}])"])
    if dry_run:
        return print_plan(cfg)
    main = main_entry(cfg)
    entries: list[dict[str, Any]] = []
    waiting: list[str] = []
    for variant, vcfg, until in variants(cfg):
        # A variant starts from the run's finished work: it waits until the run has finished the stages
        # it runs (it would redo them in its own folder otherwise), and the final model it is compared with.
        needs = [*stages(vcfg, until), *(["evolve"] if variant.preset == "distilled_equal_size" else [])]
        unfinished = [s for s in needs if not load_stage(s).finished(cfg)]
        if unfinished or (until != "orm" and not main["eval"] and cfg.eval.benchmarks):
            waiting.append(f"{variant.name} (the run's {', '.join(unfinished) or 'final model and its eval'})")
            continue
        entries.append(run_variant(cfg, variant, vcfg, until))
        write_results(cfg, main, entries)  # after each variant: a long run shows what is done
    table = write_results(cfg, main, entries)
    print("\n".join(["ablations: done ->", *table, f"-> {layout.ablation_results_path(cfg)}"]))
    if is_done(layout.stage_dir(cfg, layout.DISTILL)):
        load_stage("report").run(cfg)  # the run report gets the table
    if waiting:
        raise StageError(f"ablations: {len(waiting)} variant(s) wait for the run: {'; '.join(waiting)}; "
                         "finish it (--stage all), then rerun --stage ablations")
    return 0


def write_results(cfg: MathSEConfig, main: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """ablations/results.json and results.md of the variants finished so far; the table's lines."""
    results = compare(main, entries)
    atomic_write_json(layout.ablation_results_path(cfg), results)
    table = render(results)
    atomic_write_text(layout.ablation_results_path(cfg, "md"), "# Ablations\n\n" + "\n".join(table))
    return table


# ---------------------------------------------------------------------------------------------
# One variant


def run_variant(cfg: MathSEConfig, variant: AblationVariant, vcfg: MathSEConfig, until: str) -> dict[str, Any]:
    """Seed, run its stages, evaluate its model, mark it: its entry for the table."""
    name, folder = variant.name or "", vcfg.output_dir
    overrides, _ = variant.resolved()
    # What a finished variant is valid for: its overrides, and the run's models it was seeded from
    # (a run redone since, e.g. with --redo evolve, has new model markers).
    run_models = {str(p.relative_to(cfg.output_dir)): marker_digest(p) for p in model_dirs(cfg)}
    recorded = {"overrides": overrides, "until": until, "run_models": run_models}
    if is_done(folder):
        marker = read_marker(folder)
        changed = [k for k in recorded if marker.get(k) != recorded[k]]
        if not changed:
            print(f"ablations: {name}: already done, reused ({folder})")
            return dict(marker["entry"])
        why = "its overrides changed" if changed[0] != "run_models" else "the run's models were redone"
        if not redo_given(cfg, STAGE):
            raise StaleError(f"ablations: stale: variant {name}: {why} since it ran; rerun with --redo ablations "
                             "to discard it and run it again")
        print(f"ablations: {name}: {why} since it ran; running it again", flush=True)
        shutil.rmtree(folder)
    started = time.monotonic()
    baseline = seed(cfg, vcfg)
    files = baseline["files"]
    print(f"ablations: {name}: seeded {folder} from the run ({files['linked']} files linked, "
          f"{files['copied']} copied, {files['copied_bytes'] / 2**20:.1f} MiB)", flush=True)
    for stage in stages(vcfg, until):
        print(f"=== ablations: {name}: stage {stage} ===", flush=True)
        code = int(load_stage(stage).run(vcfg) or 0)
        if code:
            raise StageError(f"ablations: {name}: stage {stage} exited {code}; rerun to resume")
    entry: dict[str, Any] = {"name": name, "preset": variant.preset, "overrides": overrides, "until": until,
                             "folder": str(folder.relative_to(cfg.output_dir))}
    checkpoint = _MODEL.get(until)
    if variant.preset == "distilled_equal_size":
        entry["distilled"] = distill_equal_size(cfg, vcfg)
        checkpoint = ("distilled", str(DISTILLED_MODEL))
    entry["model"] = checkpoint[0] if checkpoint else None
    if checkpoint and cfg.eval.benchmarks:
        entry["eval"], entry["reused"] = evaluate(cfg, vcfg, *checkpoint)
    entry["performed"] = performed(vcfg, baseline)
    if until == "orm" or "orm_model" in entry["performed"]["trained"]:  # its own ORM (else it is the run's)
        entry["orm"] = orm_outcomes(vcfg)
    entry["seconds"] = round(time.monotonic() - started)  # this invocation's (a resumed variant's last part)
    mark_done(folder, {**recorded, "entry": entry})
    print(f"ablations: {name}: done; it made {entry['performed']['teacher_calls']} teacher calls and "
          f"{entry['performed']['trainings']} trainings itself", flush=True)
    return entry


def evaluate(cfg: MathSEConfig, vcfg: MathSEConfig, checkpoint: str, path_key: str) -> tuple[dict[str, Any], str]:
    """Per benchmark {item id: correct} of the variant's model, and where it came from: the run's
    evaluation of the same model (same marker, same eval settings), else the variant's own eval."""
    model = vcfg.model_path(path_key).resolve() if hasattr(vcfg.paths, path_key) else vcfg.output_dir / path_key
    same = _run_counterpart(cfg, vcfg, model)
    pairs = {s.name: _run_pair(cfg, same, s.name) for s in cfg.eval.benchmarks} if same else {}
    if same and all(pairs.values()) and _same_eval_settings(cfg, vcfg):
        where = ", ".join(str(p.relative_to(cfg.output_dir)) for p in pairs.values() if p)
        reused = f"its model is the run's ({same.name}): eval read from {where}"
        return {b: _items(p) for b, p in pairs.items() if p}, reused
    evcfg = vcfg.model_copy(deep=True)
    evcfg.eval.checkpoints = [checkpoint if hasattr(vcfg.paths, path_key) else f"{checkpoint}={model}"]
    print(f"=== ablations: {vcfg.output_dir.name}: stage eval ({checkpoint}) ===", flush=True)
    code = int(load_stage("eval").run(evcfg) or 0)
    if code:
        raise StageError(f"ablations: {vcfg.output_dir.name}: eval exited {code}; rerun to resume")
    own = {s.name: layout.pair_dir(vcfg, checkpoint, s.name) for s in vcfg.eval.benchmarks}
    return {b: _items(p) for b, p in own.items()}, ""


def _run_counterpart(cfg: MathSEConfig, vcfg: MathSEConfig, model: Path) -> Path | None:
    """The run's model folder the variant's `model` was seeded from, if the variant did not retrain it."""
    try:
        same = cfg.output_dir / model.relative_to(vcfg.output_dir.resolve())
    except ValueError:
        return None
    return same if is_done(same) and marker_digest(same) == marker_digest(model) else None


def _run_pair(cfg: MathSEConfig, model: Path, bench: str) -> Path | None:
    """The run's finished evaluation of `model` on `bench`, under whatever checkpoint name it was made:
    the same folder, or (a run folder moved or copied elsewhere) one of the same name whose completion
    marker has the same mtime (eval's `model_stamp`; a copy that keeps mtimes keeps it)."""
    stamp = (model / MARKER_NAME).stat().st_mtime_ns if (model / MARKER_NAME).is_file() else None
    for marker in sorted(layout.stage_dir(cfg, layout.EVAL).glob(f"*/{layout.safe_name(bench)}/{MARKER_NAME}")):
        settings = read_json(marker).get("settings", {})
        evaluated = settings.get("adapter") or settings.get("model")
        if not evaluated:
            continue
        if Path(evaluated).resolve() == model.resolve() or (
                stamp is not None and settings.get("model_stamp") == stamp and Path(evaluated).name == model.name):
            return marker.parent
    return None


def _same_eval_settings(cfg: MathSEConfig, vcfg: MathSEConfig) -> bool:
    def eval_settings(c: MathSEConfig) -> Any:
        return (c.eval.model_dump(mode="json", exclude={"checkpoints"}),
                c.inference.model_dump(mode="json", exclude=_INFERENCE_VOLATILE), c.model.model_dump(mode="json"))

    return bool(eval_settings(cfg) == eval_settings(vcfg))


def _items(pair: Path) -> dict[str, bool]:
    if not is_done(pair):
        raise StageError(f"ablations: no finished evaluation in {pair}")
    return {str(r["id"]): bool(r["correct"]) for r in iter_jsonl(pair / layout.PREDICTIONS)}


def orm_outcomes(cfg: MathSEConfig) -> dict[str, bool] | None:
    """Per held-out path: whether the trained ORM's verdict matched its label (None: no held-out set)."""
    heldout = layout.orm_data_dir(cfg) / "heldout.jsonl"
    verdicts = layout.stage_dir(cfg, layout.ORM) / "heldout_verdicts.jsonl"
    if cfg.orm.train_file is not None or not heldout.is_file() or not verdicts.is_file():
        return None
    labels = {f"{r['id']}#h{i}": bool(r["correct"]) for i, r in enumerate(iter_jsonl(heldout))}
    found: dict[str, bool] = {}
    for row in iter_jsonl(verdicts):
        orm = row.get("orm") or {}
        if row.get("key") in labels:
            found[row["key"]] = bool(orm.get("parsed")) and orm.get("correct") is labels[row["key"]]
    return found


def main_entry(cfg: MathSEConfig) -> dict[str, Any]:
    """The run itself: its final model's evaluation (the comparison's baseline) and its ORM's."""
    final = cfg.model_path("reflection_model_final")
    entry: dict[str, Any] = {"name": "main", "preset": None, "model": "final", "eval": {}}
    entry["orm"] = orm_outcomes(cfg) if cfg.orm.backend == "trained" and is_done(cfg.model_path("orm_model")) else None
    if not is_done(final):
        return entry  # the run is not finished: only the variants built on what it has can run
    for spec in cfg.eval.benchmarks:
        pair = _run_pair(cfg, final, spec.name)
        if pair is None:
            raise StageError(f"ablations: the run's final model has no evaluation on {spec.name}: run --stage eval "
                             "first (the variants are compared with it)")
        entry["eval"][spec.name] = _items(pair)
    return entry


# ---------------------------------------------------------------------------------------------
# distilled_equal_size (Table 4): the same problems and as many rows, written by the teacher

DISTILLED = Path("distilled")  # in the variant's folder: its D_SFT, teacher replies, training log, marker
DISTILLED_MODEL = Path("sft_model_distilled")
DISTILLED_DATASET = "mathse_distilled_equal_size"


def distill_equal_size(cfg: MathSEConfig, vcfg: MathSEConfig) -> dict[str, Any]:
    """One teacher solution per path evolve accepted in the run (the k-th of a problem salted, so k
    accepted paths of a problem get k samples), kept like distill keeps one (teacher.filter_by_answer);
    D_SFT of the seed set + those -> a model trained with the rounds' settings (`trainings.rounds`)
    from the model round 1 started from. Resumable: replies are journaled, the data marked, the
    training resumes; the teacher's answers are cached, so a rerun pays for nothing. Streamed."""
    teacher = vcfg.require("teacher")
    folder = vcfg.output_dir / DISTILLED
    chosen = layout.evolve_file(cfg, "sft_chosen")
    if not is_done(folder):
        if not chosen.is_file():
            raise StageError(f"ablations: distilled_equal_size: the run's evolve accepted nothing yet ({chosen})")
        folder.mkdir(parents=True, exist_ok=True)
        ledger = UsageLedger(layout.usage_path(vcfg), vcfg.pricing)
        with Journal(folder / "teacher.jsonl") as journal:
            todo = (r for _, r in _distill_requests(teacher, chosen) if r.key not in journal)
            client = ChatClient(teacher, vcfg.api_cache_dir, ledger=ledger, stage="distilled_equal_size")
            try:
                client.complete_many_sync(todo, on_result=lambda res: _journal_reply(journal, res), collect=False,
                                          progress="teacher (distilled_equal_size)")
            finally:
                ledger.save()
            mark_done(folder, _write_distilled(vcfg, teacher, chosen, journal))
    start = vcfg.model.base if vcfg.evolve.retrain_from == "base" else str(vcfg.model_path("sft_model_stage0"))
    job = compose_train_job(vcfg, name="train_distilled", training="rounds", model_path=start,
                            datasets=[DISTILLED_DATASET], output_dir=vcfg.output_dir / DISTILLED_MODEL, run_dir=folder)
    run_train_job(job)
    stats = read_marker(folder)
    print(f"ablations: distilled_equal_size: {stats['teacher_kept']} teacher solutions for the "
          f"{stats['accepted_paths']} paths evolve accepted ({stats['teacher_dropped']} dropped by the answer check) "
          f"+ {stats['seed_rows']} seed rows -> {job.output_dir}", flush=True)
    return stats


def _distill_requests(teacher: Any, chosen: Path) -> Iterator[tuple[dict[str, Any], ChatRequest]]:
    seen: Counter[str] = Counter()
    for row in iter_jsonl(chosen):
        k = seen[row["id"]]
        seen[row["id"]] += 1
        text = fill_template(teacher.distill_prompt, "teacher.distill_prompt", question=row["question"],
                             answer=row["answer"])
        yield row, ChatRequest(key=f"{row['id']}#{k}", cache_salt=f"distilled-{k}" if k else None,
                               messages=[system_message(teacher.system_prompt), user_message(text, row["images"])])


def _journal_reply(journal: Journal, result: Any) -> None:
    if result.ok:
        journal.append({"key": result.key, "text": result.text})


def _write_distilled(vcfg: MathSEConfig, teacher: Any, chosen: Path, journal: Journal) -> dict[str, Any]:
    """D_SFT(seed) + the kept teacher solutions -> distilled/d_sft.jsonl and its dataset; the counts."""
    counts = Counter[str]()
    with atomic_open(vcfg.output_dir / DISTILLED / layout.D_SFT) as out:
        for row in iter_jsonl(layout.d_sft_path(vcfg, layout.DISTILL)):
            counts["seed_rows"] += 1
            write_line(out, row)
        for row, request in _distill_requests(teacher, chosen):
            counts["accepted_paths"] += 1
            reply = journal.get(request.key)
            if reply is None:
                raise StageError(f"ablations: distilled_equal_size: the teacher call for {request.key} failed; "
                                 "rerun to retry the failed ones")
            if teacher.filter_by_answer and not check_path(reply["text"], row["answer"], row["question"]).correct:
                counts["teacher_dropped"] += 1
                continue
            counts["teacher_kept"] += 1
            write_line(out, {"id": row["id"], "prompt": row["prompt"], "images": row["images"], "answer": row["answer"],
                             "response": reply["text"], "origin": "teacher_distilled"})
    rows = iter_jsonl(vcfg.output_dir / DISTILLED / layout.D_SFT)
    examples = (SftExample(prompt=r["prompt"], response=r["response"], images=tuple(r["images"]), id=r["id"])
                for r in rows)
    write_sharegpt_dataset(examples, vcfg.dataset_dir, DISTILLED_DATASET, TokenBudget.for_training(vcfg, "rounds"))
    keys = ("accepted_paths", "teacher_kept", "teacher_dropped", "seed_rows")
    return {**{k: counts[k] for k in keys}, "d_sft": counts["seed_rows"] + counts["teacher_kept"]}


# ---------------------------------------------------------------------------------------------
# Dry run


def print_plan(cfg: MathSEConfig) -> int:
    """Per variant: the stages it reuses from the run, those it computes (why), the teacher tokens
    the run spent on those, and where its model's evaluation comes from."""
    usage_file = layout.usage_path(cfg)
    spent = read_json(usage_file).get("stages", {}) if usage_file.is_file() else {}
    teacher = cfg.teacher.model if cfg.teacher is not None else None
    for variant, probe, until in variants(cfg, probe=True):
        name = variant.name or ""
        overrides, _ = variant.resolved()
        print(f"[dry-run] ablations: {name}: overrides {overrides or '{}'}; stages up to {until}; "
              f"folder {layout.ablation_dir(cfg, name)}")
        if is_done(layout.ablation_dir(cfg, name)):
            print("[dry-run]   finished: its results are read back (nothing to compute)")
            continue
        names = stages(probe, until)
        lines, _, _ = survey(probe, [(s, load_stage(s)) for s in names])
        touched = {line.split(":", 1)[0] for line in lines}
        computes = False
        for stage in names:
            if stage not in touched and load_stage(stage).finished(probe):
                print(f"[dry-run]   {stage}: reused from the run (finished, inputs unchanged)")
                continue
            computes = True
            row = spent.get(stage, {}).get(teacher, {}) if teacher else {}
            tokens = int(row.get("prompt_tokens", 0)) + int(row.get("completion_tokens", 0))
            why = [line.split(": ", 1)[1] for line in lines if line.startswith(f"{stage}:")] or ["not done in the run"]
            cost = f"; at most ~{tokens:,} teacher tokens (what the run's {stage} spent; cached answers are free)" \
                if tokens else ""
            print(f"[dry-run]   {stage}: computes ({'; '.join(why)}){cost}")
        checkpoint = _MODEL.get(until)
        if variant.preset == "distilled_equal_size":
            chosen = layout.evolve_file(cfg, "sft_chosen")
            paths = sum(1 for _ in iter_jsonl(chosen)) if chosen.is_file() else 0
            print(f"[dry-run]   distilled: {paths} teacher solutions (one per path the run's evolve accepted; "
                  "cached ones are free) + D_SFT(seed) -> one training with the rounds' settings")
            checkpoint, computes = ("distilled", ""), True
        if checkpoint and cfg.eval.benchmarks:
            how = "evaluated in its folder" if computes else "read from the run's eval of the same model, if it has one"
            benches = len(cfg.eval.benchmarks)
            print(f"[dry-run]   eval: the variant's {checkpoint[0]} model on {benches} benchmark(s): {how}")
    return 0
