"""`--stage orm`: build the ORM's training data, train the outcome reward model, measure it.

Read top to bottom, four units of work, each finished by its own marker (a rerun redoes only
what is unmarked; a finished stage does nothing):

1. data (`output/orm/data/`), the paper's way, unless a hand-made `orm.train_file` is given:
   sample `orm.data.paths_per_problem` paths from M0 (the distilled model, LLaMA-Factory
   `ChatModel`) on labelled problems (`orm.data.source`: the seed set, the first problems of the
   pool, or a file); label each path by the rule check (final answer vs reference); ask the
   teacher, for every incorrect path, for the first faulty step (numbered as `mathse.judging.steps`
   numbers them) and an analysis, in the verdict contract of `mathse.judging.verdict`. An annotation
   whose step is out of range or that does not parse is asked again once (the reply and a
   reminder go back), then dropped and counted. Correct and incorrect paths are balanced
   (`orm.data.correct_per_incorrect`), a deterministic share of the problems is held out, and
   `train.jsonl` / `heldout.jsonl` are written (labelled-path format of `mathse.judging.orm_data`).
   Generations and annotations are journaled as they arrive, teacher calls are cached and
   accounted in `usage.json`, so a killed run repeats no teacher call.
2. dataset: the training paths -> LLaMA-Factory dataset `mathse_orm` in the ORM contract
   (system `ORM_SYSTEM_PROMPT`, user `build_orm_prompt`, assistant `format_orm_response`).
3. model: `llamafactory-cli train` into `paths.orm_model`.
4. metrics: the trained ORM judges the held-out paths (served by the pipeline, see
   `mathse.judging.orm_endpoint`); accuracy overall / on correct / on incorrect paths, error-step exact
   match and unparseable rate are printed and written to `<orm_model>/orm_metrics.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathse.answers.extraction import check_path
from mathse.api.client import ChatClient
from mathse.api.messages import ChatRequest, ChatResult, system_message
from mathse.data.checking import check_inputs, excluded_ids
from mathse.judging.judge import JudgeItem, PathJudge
from mathse.judging.orm_data import (
    ANNOTATOR_SYSTEM_PROMPT,
    REASK_ANNOTATION,
    REASK_CHECK,
    LabelledPath,
    annotation_prompt,
    balance,
    check_prompt,
    class_counts,
    heldout_ids,
    orm_metrics,
    read_labelled_paths,
    valid_annotation,
    valid_check,
)
from mathse.judging.orm_endpoint import orm_endpoint
from mathse.judging.steps import split_steps
from mathse.model.generation import describe as describe_generation
from mathse.model.generation import open_generator
from mathse.model.generation_items import make_items
from mathse.model.inputs import model_inputs
from mathse.model.token_budget import TokenBudget
from mathse.model.training import TrainJob, compose_train_job, run_train_job, training_stale
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run import fingerprint, layout
from mathse.run.config import ConfigError, MathSEConfig, save_resolved_config
from mathse.run.errors import StageError
from mathse.run.fingerprint import API_VOLATILE, INFERENCE_VOLATILE, Inputs, Stale, check
from mathse.run.records import Problem, read_problems
from mathse.run.storage import (
    Journal,
    atomic_write_json,
    atomic_write_jsonl,
    is_done,
    mark_done,
    read_json,
    read_marker,
)
from mathse.run.usage import UsageLedger

STAGE = layout.ORM
DATASET_NAME = "mathse_orm"
# Below this share of either class the ORM mostly learns to say one thing: worth a warning.
IMBALANCE_WARN = 0.1


def stage_dir(cfg: MathSEConfig) -> Path:
    return layout.stage_dir(cfg, STAGE)


data_dir = layout.orm_data_dir


metrics_path = layout.orm_metrics_path


def run(cfg: MathSEConfig, dry_run: bool = False) -> int:
    hand_made = cfg.orm.train_file
    rows = read_labelled_paths(hand_made, cfg.data.image_root) if hand_made else None  # validated before any write
    job = train_job(cfg)
    if dry_run:
        print_plan(cfg, rows, job)
        return 0
    fingerprint.settle(cfg, STAGE, stale(cfg))
    if finished(cfg):
        print(f"orm: already done, nothing to do (ORM at {job.output_dir}; metrics {metrics_text(cfg)})")
        return 0

    save_resolved_config(cfg, stage_dir(cfg) / "config.yaml")
    if rows is None:
        if not is_done(data_dir(cfg)):
            mark_done(data_dir(cfg), {**build_data(cfg), "consumed": data_inputs(cfg).record()})
        print(data_summary(read_marker(data_dir(cfg))))
        fingerprint.settle(cfg, STAGE, stale(cfg))  # new paths make the dataset (and the model on it) stale
        rows = read_labelled_paths(data_dir(cfg) / "train.jsonl")
    if not is_done(stage_dir(cfg)):
        mark_done(stage_dir(cfg), {**build_dataset(cfg, rows), "consumed": dataset_inputs(cfg).record()})
        fingerprint.settle(cfg, STAGE, stale(cfg))
    stats = read_marker(stage_dir(cfg))
    run_train_job(job)
    print(summary(stats))
    print(f"orm: ORM checkpoint: {job.output_dir}")

    heldout = heldout_rows(cfg)
    if heldout and not metrics_path(cfg).is_file():
        atomic_write_json(metrics_path(cfg), measure(cfg, heldout))
    print(f"orm: held-out metrics {metrics_text(cfg)}")
    return 0


def finished(cfg: MathSEConfig) -> bool:
    """Dataset and model carry their markers, and the metrics exist wherever there is a held-out set."""
    if not (is_done(stage_dir(cfg)) and is_done(cfg.model_path("orm_model"))):
        return False
    return metrics_path(cfg).is_file() or not heldout_rows(cfg)


def data_inputs(cfg: MathSEConfig) -> Inputs:
    """What the labelled paths are made of: M0, the source problems, orm.data, the teacher, sampling."""
    key = {"seed": "data.seed_file", "pool": "data.pool_file", "file": "orm.data.file"}[cfg.orm.data.source]
    found = Inputs().marker("M0", cfg.model_path("sft_model_stage0")).file(key, cfg.require(key))
    if cfg.orm.data.source != "file":
        check_inputs(cfg, cfg.orm.data.source, found)  # the problems the data check dropped are left out
    for name in ("orm.data", "run.seed", "data.image_root", "model"):
        found.config(cfg, name)
    return found.config(cfg, "teacher", exclude=API_VOLATILE).config(cfg, "inference", exclude=INFERENCE_VOLATILE)


def dataset_inputs(cfg: MathSEConfig) -> Inputs:
    """What the ORM dataset is made of: the training paths (hand-made or built) and the token budget."""
    train = ("orm.train_file", cfg.orm.train_file) if cfg.orm.train_file else ("orm/data/train.jsonl",
                                                                               data_dir(cfg) / "train.jsonl")
    found = Inputs().file(*train).budget("token budget of the ORM dataset", TokenBudget.for_training(cfg, "orm"))
    return found.value("orm.targets", cfg.orm.targets) if cfg.orm.targets != "diagnostic" else found


def stale(cfg: MathSEConfig) -> list[Stale]:
    """The ORM's data, dataset and model made from inputs that changed since (mathse.run.fingerprint).

    Rebuilding the dataset file is done on the spot; new labelled paths (sampling from M0, teacher
    annotations) and a new model wait for --redo orm. The held-out verdicts go with the model.
    """
    model_extra = (stage_dir(cfg) / "heldout_verdicts.jsonl",)
    found = [
        None if cfg.orm.train_file else check("labelled paths", data_dir(cfg), data_inputs(cfg),
                                              discard=(data_dir(cfg),)),
        check("ORM dataset", stage_dir(cfg), dataset_inputs(cfg), auto=True),
        training_stale(train_job(cfg), "ORM model", discard=model_extra),
    ]
    return [s for s in found if s is not None]


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    return {
        "ORM training paths": data_dir(cfg) / "train.jsonl",
        "ORM held-out paths": data_dir(cfg) / "heldout.jsonl",
        "ORM dataset (LLaMA-Factory)": cfg.dataset_dir / f"{DATASET_NAME}.json",
        "ORM training log": stage_dir(cfg) / "train_orm.log",
        "ORM checkpoint": cfg.model_path("orm_model"),
        "ORM held-out metrics": metrics_path(cfg),
    }


def train_job(cfg: MathSEConfig) -> TrainJob:
    return compose_train_job(
        cfg,
        name="train_orm",
        training="orm",
        datasets=[DATASET_NAME],
        output_dir=cfg.model_path("orm_model"),
        run_dir=stage_dir(cfg),
    )


# ---------------------------------------------------------------------------------------------
# 1. Data: M0's paths, labelled by the rule, annotated by the teacher, balanced, split


def source_problems(cfg: MathSEConfig) -> list[Problem]:
    """The labelled problems paths are sampled on (`orm.data.source`), the first max_problems of them."""
    data = cfg.orm.data
    key = {"seed": "data.seed_file", "pool": "data.pool_file", "file": "orm.data.file"}[data.source]
    path: Path = cfg.require(key)
    dropped = excluded_ids(cfg, data.source) if data.source != "file" else frozenset()  # data_check.action: drop
    problems = [p for p in read_problems(path, cfg.data.image_root) if p.answer.strip() and p.id not in dropped]
    if not problems:
        raise ConfigError([f"config error: {key}: no problem with a reference answer to label paths against"])
    return problems[: data.max_problems] if data.max_problems else problems


def build_data(cfg: MathSEConfig) -> dict[str, Any]:
    """Write train.jsonl / heldout.jsonl under orm/data; returns the stats kept in its marker."""
    m0 = cfg.model_path("sft_model_stage0")
    if not is_done(m0):
        raise StageError(f"orm: M0 is not trained yet ({m0}): run --stage distill first (or set orm.train_file)")
    data, out = cfg.orm.data, data_dir(cfg)
    problems = source_problems(cfg)
    by_id = {p.id: p for p in problems}
    paths = sample_paths(cfg, problems, m0)

    labelled: list[LabelledPath] = []
    wrong: dict[str, tuple[Problem, str]] = {}
    right: dict[str, tuple[Problem, str]] = {}  # right answer, steps checked by the teacher (verify_correct)
    for row in paths:
        problem = by_id[row["id"]]
        if not check_path(row["response"], problem.answer, problem.question).correct:
            wrong[row["key"]] = (problem, row["response"])
        elif data.verify_correct:
            right[row["key"]] = (problem, row["response"])
        else:
            labelled.append(_labelled(problem, row["response"], True, None, data.correct_analysis))
    notes = annotate(cfg, wrong, right)
    dropped = faulty = 0
    for key, (problem, path) in (wrong | right).items():
        note = notes[key]
        if note["status"] != "ok":
            dropped += 1
        elif note.get("correct", False):
            labelled.append(_labelled(problem, path, True, None, data.correct_analysis))
        else:
            faulty += key in right
            labelled.append(_labelled(problem, path, False, note["error_step"], note["analysis"]))

    kept = balance(labelled, data.correct_per_incorrect, data.max_incorrect, cfg.run.seed)
    held = heldout_ids((r.id for r in kept), data.heldout_fraction, cfg.run.seed)
    train = [r for r in kept if r.id not in held]
    heldout = [r for r in kept if r.id in held]
    if not train:
        raise StageError(f"orm: no training path left after balancing ({class_counts(labelled)}); "
                         "sample more paths (orm.data.paths_per_problem) or more problems")
    atomic_write_jsonl(out / "train.jsonl", (r.model_dump(mode="json") for r in train))
    atomic_write_jsonl(out / "heldout.jsonl", (r.model_dump(mode="json") for r in heldout))
    stats = {
        "problems": len(problems), "paths": len(paths), "labelled_correct": len(paths) - len(wrong),
        "labelled_incorrect": len(wrong), "annotated": len(wrong) + len(right) - dropped, "annotation_dropped": dropped,
        "verified": len(right), "faulty_right_answers": faulty,
        "reasked": sum(1 for k in wrong | right if notes[k]["asks"] > 1),
        "train": class_counts(train), "heldout": class_counts(heldout), "heldout_problems": len(held),
    }
    atomic_write_json(out / "stats.json", stats)
    return stats


def _labelled(problem: Problem, path: str, correct: bool, step: int | None, analysis: str) -> LabelledPath:
    return LabelledPath(id=problem.id, question=problem.question, images=problem.images, answer=problem.answer,
                        path=path, correct=correct, error_step=step, analysis=analysis)


def sample_paths(cfg: MathSEConfig, problems: list[Problem], m0: Path) -> list[dict[str, Any]]:
    """paths_per_problem paths per problem from M0 at orm.data.temperature, journaled as they come."""
    inf = cfg.inference.model_copy(update={"temperature": cfg.orm.data.temperature})
    items = make_items(problems, cfg.orm.data.paths_per_problem)
    model_path, adapter = layout.model_ref(m0)
    with Journal(data_dir(cfg) / "generations.jsonl") as journal:
        servers = layout.servers_dir(data_dir(cfg))
        with open_generator(model_path, adapter, model_inputs(cfg, "rounds"), inf, serve=cfg.serve, ray=cfg.ray,
                            seed=cfg.run.seed, server_dir=servers) as generator:
            gen = generator.generate(items, journal, progress="orm: sample M0")
        print(gen.summary())
        rows = [row for i in items if (row := journal.get(i.key)) is not None and row.get("response")]
    if gen.retry_later:
        raise StageError(f"orm: {gen.retry_later} generations failed; rerun the same command to retry just those")
    return rows


def annotate(
    cfg: MathSEConfig, wrong: dict[str, tuple[Problem, str]], right: dict[str, tuple[Problem, str]] | None = None
) -> dict[str, dict[str, Any]]:
    """The teacher's note per path: {status ok|dropped, correct, error_step, analysis, asks}.

    `wrong` (wrong final answer): the first faulty step and an analysis. `right` (right answer,
    orm.data.verify_correct): a check of every step, which may find a faulty one. Journaled as
    each settles (`orm/data/annotations.jsonl`); a failed call is not journaled, so the rerun asks
    just that one again (and the answer cache makes every answered call free).
    """
    teacher, right = cfg.teacher, right or {}
    paths = wrong | right
    with Journal(data_dir(cfg) / "annotations.jsonl") as journal:
        pending = [k for k in paths if k not in journal]
        if pending and teacher is None:
            raise ConfigError([f"config error: teacher: required to annotate {len(pending)} paths"])
        failed: dict[str, str] = {}
        if pending and teacher is not None:
            ledger = UsageLedger(layout.usage_path(cfg), cfg.pricing)
            client = ChatClient(teacher, cfg.api_cache_dir, ledger=ledger, stage=STAGE)
            steps = {k: split_steps(paths[k][1]) for k in pending}

            def first(k: str) -> list[dict[str, Any]]:
                # Built when the client takes the request: images are ImageRefs, encoded when sent.
                prompt = (check_prompt if k in right else annotation_prompt)(cfg.orm.data, paths[k][0], steps[k])
                return [system_message(ANNOTATOR_SYSTEM_PROMPT), client.user_message(prompt, paths[k][0].images)]

            again: dict[str, str] = {}  # key -> the unusable first answer, asked again with a reminder

            def settle(result: ChatResult, asks: int) -> None:
                k = result.key
                if not result.ok or result.text is None:
                    failed[k] = result.error or "no answer"
                    return
                verdict = (valid_check if k in right else valid_annotation)(result.text, len(steps[k]))
                if verdict is not None:
                    journal.append({"key": k, "status": "ok", "correct": verdict.correct,
                                    "error_step": verdict.error_step, "analysis": verdict.analysis, "asks": asks})
                elif asks == 1:
                    again[k] = result.text
                else:
                    journal.append({"key": k, "status": "dropped", "reason": "unusable annotation after a re-ask",
                                    "raw": result.text, "asks": asks})

            try:
                client.complete_many_sync((ChatRequest(key=k, messages=first(k)) for k in pending),
                                          on_result=lambda r: settle(r, 1), progress="orm: teacher annotates",
                                          collect=False, total=len(pending))
                if again:
                    reasks = (ChatRequest(key=k, messages=[
                        *first(k), {"role": "assistant", "content": text},
                        {"role": "user", "content": (REASK_CHECK if k in right else REASK_ANNOTATION).format(
                            n_steps=len(steps[k]))}])
                        for k, text in again.items())
                    client.complete_many_sync(reasks, on_result=lambda r: settle(r, 2),
                                              progress="orm: teacher re-asked", collect=False, total=len(again))
            finally:
                ledger.save()
            print(ledger.summary_line(STAGE))
        if failed:
            key = next(iter(failed))
            raise StageError(f"orm: {len(failed)} teacher annotations failed (first: {key}: {failed[key]}); "
                             "rerun the same command to ask just those again")
        return {k: journal[k] for k in paths}


def data_summary(stats: dict[str, Any]) -> str:
    train, held = stats["train"], stats["heldout"]
    return (
        f"orm: data: {stats['paths']} paths from M0 on {stats['problems']} problems: {stats['labelled_correct']} "
        f"correct, {stats['labelled_incorrect']} incorrect ({stats['annotated']} annotated by the teacher, "
        f"{stats['reasked']} after a re-ask, {stats['annotation_dropped']} dropped)"
        f"{_verified_text(stats)}; balanced: train "
        f"{train['correct']} correct + {train['incorrect']} incorrect, held out {held['correct']} + "
        f"{held['incorrect']} ({stats['heldout_problems']} problems)"
    )


def _verified_text(stats: dict[str, Any]) -> str:
    if not stats.get("verified"):
        return ""
    return (f"; the teacher checked the {stats['verified']} right answers step by step: "
            f"{stats['faulty_right_answers']} had a faulty step (labelled incorrect)")


# ---------------------------------------------------------------------------------------------
# 2. Dataset


def build_dataset(cfg: MathSEConfig, rows: list[LabelledPath]) -> dict[str, Any]:
    """Write the ORM's SFT dataset; returns the stats kept in the stage marker."""
    counts = class_counts(rows)
    for label in ("correct", "incorrect"):
        if counts[label] < IMBALANCE_WARN * counts["rows"]:
            print(f"orm: warning: only {counts[label]} of {counts['rows']} labelled paths are {label}")
    examples = write_sharegpt_dataset((r.example(cfg.orm.targets) for r in rows), cfg.dataset_dir, DATASET_NAME,
                                      TokenBudget.for_training(cfg, "orm"))
    return {**counts, "examples": examples}


def summary(stats: dict[str, Any]) -> str:
    rows = max(stats["rows"], 1)
    return (
        f"orm: done: {stats['rows']} labelled paths ({stats['correct']} correct / {stats['incorrect']} incorrect, "
        f"{100 * stats['correct'] / rows:.0f}% correct; {stats['error_step_known']} with a first wrong step) "
        f"-> dataset {DATASET_NAME} ({stats['examples']} examples)"
    )


def follow(cfg: MathSEConfig) -> int:
    """node_rank > 0 of a multi-node run: wait for node 0's ORM dataset, then join the ORM's training."""
    from mathse.run.nodes import wait_for

    wait_for(cfg, stage_dir(cfg), "ORM dataset")
    run_train_job(train_job(cfg))
    print(f"orm: this node's share of the ORM's training is done ({cfg.model_path('orm_model')})")
    return 0


# ---------------------------------------------------------------------------------------------
# 4. Metrics on the held-out paths


def heldout_rows(cfg: MathSEConfig) -> list[LabelledPath]:
    """The held-out labelled paths: orm.heldout_file for a hand-made train file, else the built split."""
    if cfg.orm.train_file is not None:
        path = cfg.orm.heldout_file
        return read_labelled_paths(path, cfg.data.image_root) if path is not None else []
    path = data_dir(cfg) / "heldout.jsonl"
    return read_labelled_paths(path) if path.is_file() and path.stat().st_size else []


def measure(cfg: MathSEConfig, heldout: list[LabelledPath]) -> dict[str, Any]:
    """The trained ORM (alone: policy orm) judges the held-out paths; the Table-5 numbers."""
    judge_cfg = cfg.model_copy(deep=True)
    if judge_cfg.orm.backend == "rule":
        judge_cfg.orm.backend = "trained"  # measure the ORM this stage trained, whatever judges the run
    judge_cfg.orm.policy = "orm"
    items = [JudgeItem(f"{r.id}#h{i}", r.problem(), r.path) for i, r in enumerate(heldout)]
    ledger = UsageLedger(layout.usage_path(cfg), cfg.pricing)
    with orm_endpoint(judge_cfg, layout.servers_dir(stage_dir(cfg)), measuring=True) as endpoint, \
            Journal(stage_dir(cfg) / "heldout_verdicts.jsonl") as journal:
        judge = PathJudge(judge_cfg, "orm_heldout", ledger, endpoint=endpoint)
        try:
            stats = judge.judge(items, journal, progress="orm: judge held-out")
        finally:
            judge.close()
            ledger.save()
        verdicts = {k: journal.get(k) for k in (i.key for i in items)}
    print(stats.summary_line())
    if stats.failed:
        raise StageError(f"orm: {stats.failed} ORM calls on the held-out paths failed; rerun to retry just those")
    metrics = orm_metrics((r, (verdicts[i.key] or {}).get("orm")) for r, i in zip(heldout, items, strict=True))
    return {**metrics, "model": str(cfg.model_path("orm_model")), "heldout_file": str(_heldout_source(cfg))}


def _heldout_source(cfg: MathSEConfig) -> Path | None:
    return cfg.orm.heldout_file if cfg.orm.train_file is not None else data_dir(cfg) / "heldout.jsonl"


def metrics_text(cfg: MathSEConfig) -> str:
    path = metrics_path(cfg)
    if not path.is_file():
        return "(none: no held-out paths)"
    m = read_json(path)

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%"

    return (
        f"on {m['paths']} paths: accuracy {pct(m['accuracy'])} (correct paths {pct(m['accuracy_on_correct'])}, "
        f"incorrect paths {pct(m['accuracy_on_incorrect'])}), error step exact {pct(m['error_step_exact'])}, "
        f"unparseable {pct(m['unparseable_rate'])} -> {path}"
    )


# ---------------------------------------------------------------------------------------------
# Dry run


def print_plan(cfg: MathSEConfig, rows: list[LabelledPath] | None, job: TrainJob) -> None:
    if rows is not None:
        counts = class_counts(rows)
        print(f"[dry-run] orm: {counts['rows']} labelled paths from {cfg.orm.train_file}")
        print(f"[dry-run] {counts['correct']} correct / {counts['incorrect']} incorrect "
              f"({counts['error_step_known']} with a first wrong step)")
    else:
        data = cfg.orm.data
        problems = source_problems(cfg)
        m0 = cfg.model_path("sft_model_stage0")
        teacher = cfg.teacher.describe() if cfg.teacher else "NOT CONFIGURED (teacher: required)"
        print(f"[dry-run] orm data: {len(problems)} labelled problems ({data.source}"
              f"{f', first {data.max_problems}' if data.max_problems else ''}) x {data.paths_per_problem} paths "
              f"= {len(problems) * data.paths_per_problem} paths from M0 ({m0}) at temperature {data.temperature}")
        inf = cfg.inference.model_copy(update={"temperature": data.temperature})
        model_path, adapter = layout.model_ref(m0)
        servers = layout.servers_dir(data_dir(cfg))
        student = model_inputs(cfg, "rounds")
        plan = describe_generation(model_path, adapter, student, inf, serve=cfg.serve, ray=cfg.ray, server_dir=servers)
        print(f"[dry-run] sampling: {plan}")
        print(f"[dry-run] labels: rule check against the reference; every incorrect path -> teacher {teacher} "
              "(first faulty step + analysis; unusable -> asked again once, then dropped)")
        print(f"[dry-run] balance {data.correct_per_incorrect:g} correct per incorrect"
              f"{f', at most {data.max_incorrect} incorrect' if data.max_incorrect else ''}; "
              f"{100 * data.heldout_fraction:g}% of the problems held out -> {data_dir(cfg)}/"
              "train.jsonl, heldout.jsonl")
    print(f"[dry-run] dataset {DATASET_NAME} in {cfg.dataset_dir}")
    print("[dry-run] training command (not run):")
    print(job.describe())
    print(f"[dry-run] then: held-out metrics with the trained ORM -> {metrics_path(cfg)}")

