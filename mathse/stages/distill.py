"""Stage 1 (distill): teacher solutions for the seed problems -> D_SFT -> fine-tune M0.

Two units of work, each with its own completion marker: the dataset (`output/distill/`) and the
model (`paths.sft_model_stage0`). Teacher replies live in the client's on-disk cache, so a run
killed midway repeats no paid call when rerun.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mathse.answers.extraction import check_path
from mathse.api.client import ChatClient
from mathse.api.messages import ChatRequest, ChatResult, system_message, user_message
from mathse.data.checking import check_inputs, ensure_checked, excluded_ids
from mathse.model.prompts import fill_template, student_prompt
from mathse.model.token_budget import TokenBudget
from mathse.model.training import TrainJob, compose_train_job, run_train_job, training_stale
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run import layout
from mathse.run.config import ConfigError, MathSEConfig, save_resolved_config
from mathse.run.errors import StageError
from mathse.run.fingerprint import API_VOLATILE, Inputs, Stale, check, settle
from mathse.run.records import DataError, Problem, SftExample, SftRow, iter_problems
from mathse.run.storage import Journal, atomic_open, is_done, iter_jsonl, mark_done, read_marker, write_line
from mathse.run.timing import StageTimer
from mathse.run.usage import UsageLedger

STAGE = layout.DISTILL
DATASET_NAME = "mathse_stage0"


def run(cfg: MathSEConfig, dry_run: bool = False) -> int:
    seed = check_seed(cfg)  # every record and image validated before any write; none kept in memory
    if not dry_run and ensure_checked(cfg, STAGE) is not None:  # duplicates, benchmark contamination
        seed = count_seed(cfg)  # without the problems the check dropped (data_check.action: drop)
    stage_dir = layout.stage_dir(cfg, STAGE)
    job = train_job(cfg)
    if dry_run:
        print_plan(cfg, seed, job)
        return 0
    settle(cfg, STAGE, stale(cfg))
    if finished(cfg):
        stats = read_marker(stage_dir)
        print(f"distill: already done, nothing to do ({stats['d_sft']} examples; M0 at {job.output_dir})")
        return 0

    save_resolved_config(cfg, stage_dir / "config.yaml")
    timer = StageTimer()
    if not is_done(stage_dir):
        built = build_d_sft(cfg, seed, stage_dir, timer)
        if built["teacher_retry"]:
            # A flaky API must not cost seed problems: no marker, so the rerun asks again (answered
            # calls come from the cache); M0 is not trained on a D_SFT with holes.
            raise StageError(
                f"distill: {built['teacher_retry']} teacher calls failed after their retries (see "
                f"{stage_dir / 'dropped.jsonl'}); rerun the same command to retry just those"
            )
        mark_done(stage_dir, {**built, "consumed": data_inputs(cfg, built["teacher_sent"] > 0).record()})
        settle(cfg, STAGE, stale(cfg))  # a D_SFT rebuilt with other content makes a trained M0 stale
    stats = read_marker(stage_dir)
    if stats["d_sft"] == 0:
        raise ConfigError([f"config error: teacher: no usable solutions in D_SFT (see {stage_dir / 'dropped.jsonl'})"])
    with timer.span("model"):
        run_train_job(job)
    timer.save(stage_dir / "timings.json")
    print(
        f"distill: done: {stats['seed']} seed problems, {stats['given']} with solutions, "
        f"{stats['teacher_kept']} teacher solutions kept, {stats['teacher_dropped']} dropped, "
        f"{stats['teacher_failed']} teacher calls failed -> D_SFT {stats['d_sft']} examples"
    )
    print(f"distill: M0 checkpoint: {job.output_dir}")
    return 0


@dataclass(frozen=True)
class SeedCounts:
    total: int
    pending: int  # without a solution: the teacher is asked for these


def seed_problems(cfg: MathSEConfig) -> Iterator[Problem]:
    """The seed problems, read from their file one at a time (each pass reads it again), minus those
    the data check dropped (data_check.action: drop)."""
    dropped = excluded_ids(cfg, "seed")
    return (p for p in iter_problems(cfg.require("data.seed_file"), cfg.data.image_root) if p.id not in dropped)


def check_seed(cfg: MathSEConfig) -> SeedCounts:
    """Read the seed file through once: every record valid and every local image a readable image
    file (header and chunks, no full decode). Otherwise the teacher is paid for a garbage image and
    `llamafactory-cli train` fails much later with a traceback that names no record."""
    from PIL import Image

    seed_file = cfg.require("data.seed_file")
    total = pending = 0
    for problem in seed_problems(cfg):
        total += 1
        pending += not problem.solution
        for ref in problem.images:
            if ref.startswith(("http://", "https://", "data:")):
                continue
            try:
                with Image.open(ref) as image:
                    image.verify()
            except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
                raise DataError(
                    f"{seed_file}: record {problem.id!r}: image unreadable: {ref} ({type(exc).__name__}: {exc})"
                ) from None
    return SeedCounts(total, pending)


def count_seed(cfg: MathSEConfig) -> SeedCounts:
    total = pending = 0
    for problem in seed_problems(cfg):
        total, pending = total + 1, pending + (not problem.solution)
    return SeedCounts(total, pending)


def finished(cfg: MathSEConfig) -> bool:
    """Both units of work (D_SFT and M0) carry their completion markers."""
    return is_done(layout.stage_dir(cfg, STAGE)) and is_done(cfg.model_path("sft_model_stage0"))


def data_inputs(cfg: MathSEConfig, asked_teacher: bool) -> Inputs:
    """What D_SFT is made of: the seed file, the teacher's settings (when it was asked) and the
    token budget of M0's training (it decides which examples are left out)."""
    inputs = Inputs().file("data.seed_file", cfg.require("data.seed_file")).config(cfg, "data.image_root")
    check_inputs(cfg, "seed", inputs)
    inputs.budget("token budget of M0's dataset", TokenBudget.for_training(cfg, "m0"))
    return inputs.config(cfg, "teacher", exclude=API_VOLATILE) if asked_teacher else inputs


def stale(cfg: MathSEConfig) -> list[Stale]:
    """D_SFT or M0 made from inputs that changed since (mathse.run.fingerprint)."""
    stage_dir = layout.stage_dir(cfg, STAGE)
    asked = is_done(stage_dir) and read_marker(stage_dir).get("teacher_sent", 0) > 0
    # Without teacher calls, rebuilding D_SFT costs nothing: redone on the spot.
    found = [check("D_SFT", stage_dir, data_inputs(cfg, asked), auto=not asked),
             training_stale(train_job(cfg), "M0")]
    return [s for s in found if s is not None]


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    stage_dir = layout.stage_dir(cfg, STAGE)
    return {
        "D_SFT (distilled)": layout.d_sft_path(cfg, STAGE),
        "dropped teacher solutions": stage_dir / "dropped.jsonl",
        "LLaMA-Factory dataset": cfg.dataset_dir / f"{DATASET_NAME}.json",
        "M0 checkpoint": cfg.model_path("sft_model_stage0"),
    }


def train_job(cfg: MathSEConfig) -> TrainJob:
    return compose_train_job(
        cfg,
        name="train_m0",
        training="m0",
        datasets=[DATASET_NAME],
        output_dir=cfg.model_path("sft_model_stage0"),
        run_dir=layout.stage_dir(cfg, STAGE),
    )


def print_plan(cfg: MathSEConfig, seed: SeedCounts, job: TrainJob) -> None:
    teacher = cfg.teacher.describe() if cfg.teacher else "not configured"
    print(f"[dry-run] distill: {seed.total} seed problems from {cfg.data.seed_file}")
    print(f"[dry-run] {seed.total - seed.pending} have solutions; {seed.pending} would go to the teacher ({teacher})")
    print(f"[dry-run] D_SFT -> {layout.d_sft_path(cfg, STAGE)}; dataset {DATASET_NAME} in {cfg.dataset_dir}")
    print("[dry-run] training command (not run):")
    print(job.describe())


def build_d_sft(cfg: MathSEConfig, seed: SeedCounts, stage_dir: Path, timer: StageTimer) -> dict[str, int]:
    """Collect a solution per seed problem, keep the good ones, write D_SFT and its dataset.

    Streamed: the teacher's replies go to a scratch journal as they arrive, then D_SFT and the
    dropped list are written in two passes over the seed file (the given solutions, then the
    teacher's, each in seed order); no list of problems, replies or rows is held."""
    replies_path = stage_dir / "teacher_replies.jsonl"
    replies_path.unlink(missing_ok=True)  # this build's replies only; answered calls come from the cache
    with Journal(replies_path) as replies:
        if seed.pending:
            with timer.span("api"):
                ask_teacher(cfg, (p for p in seed_problems(cfg) if not p.solution), replies, seed.pending)
        counts = Counter[str]()
        with atomic_open(stage_dir / "dropped.jsonl") as dropped, atomic_open(layout.d_sft_path(cfg, STAGE)) as d_sft:
            for problem in seed_problems(cfg):
                counts["seed"] += 1
                if problem.solution:
                    counts["given"] += 1
                    write_line(d_sft, sft_row(problem, problem.solution, "seed").to_json())
            for problem in seed_problems(cfg):
                if problem.solution:
                    continue
                counts["teacher_sent"] += 1
                reply = replies.get(problem.id) or {"text": None, "error": "no reply", "retryable": True}
                text = reply["text"]
                if text is None:
                    counts["teacher_failed"] += 1
                    counts["teacher_retry"] += reply["retryable"]
                    write_line(dropped, {"id": problem.id, "reason": f"teacher call failed: {reply['error']}"})
                    continue
                check = check_path(text, problem.answer, problem.question)
                if cfg.require("teacher").filter_by_answer and not check.correct:
                    counts["teacher_dropped"] += 1
                    write_line(dropped, {"id": problem.id, "reason": check.reason, "response": text})
                    continue
                counts["teacher_kept"] += 1
                write_line(d_sft, sft_row(problem, text, "teacher").to_json())
    replies_path.unlink()
    rows = (SftRow(**row) for row in iter_jsonl(layout.d_sft_path(cfg, STAGE)))
    examples = (SftExample(prompt=r.prompt, response=r.response, images=tuple(r.images), id=r.id) for r in rows)
    write_sharegpt_dataset(examples, cfg.dataset_dir, DATASET_NAME, TokenBudget.for_training(cfg, "m0"))
    keys = ("seed", "given", "teacher_sent", "teacher_kept", "teacher_dropped", "teacher_failed", "teacher_retry")
    return {**{k: counts[k] for k in keys}, "d_sft": counts["given"] + counts["teacher_kept"]}


def is_transient(result: ChatResult) -> bool:
    """A failure another try may fix (429, 5xx, timeout, ...: the client gave up after its retries),
    as opposed to a deterministic one (HTTP 400, a refusal) that a rerun would only pay for again."""
    return not result.ok and result.retryable


def sft_row(problem: Problem, response: str, origin: str) -> SftRow:
    """A D_SFT record: the student prompt, images and target response, with provenance."""
    return SftRow(id=problem.id, prompt=student_prompt(problem), images=list(problem.images), answer=problem.answer,
                  response=response, origin=origin)


def ask_teacher(cfg: MathSEConfig, problems: Iterable[Problem], replies: Journal, total: int) -> None:
    """Ask the teacher for a solution to each problem; each reply (or failure) is appended to
    `replies` (key: the problem id) as it arrives, so no list of results is held."""
    teacher = cfg.teacher
    if teacher is None:
        raise ConfigError([f"config error: teacher: required: {total} seed problems have no solution"])
    def messages(p: Problem) -> list[dict]:
        text = fill_template(teacher.distill_prompt, "teacher.distill_prompt", question=p.question, answer=p.answer)
        return [system_message(teacher.system_prompt), user_message(text, p.images)]

    def journal_it(result: ChatResult) -> None:
        replies.append({"key": result.key, "text": result.text, "error": result.error,
                        "retryable": is_transient(result)})

    # A generator: the client builds each request (and encodes its images) only as it sends it.
    requests = (ChatRequest(key=p.id, messages=messages(p)) for p in problems)
    ledger = UsageLedger(layout.usage_path(cfg), cfg.pricing)
    client = ChatClient(teacher, cfg.api_cache_dir, ledger=ledger, stage=STAGE)
    try:
        client.complete_many_sync(requests, on_result=journal_it, progress="teacher", collect=False, total=total)
    finally:
        ledger.save()


def follow(cfg: MathSEConfig) -> int:
    """node_rank > 0 of a multi-node run: wait for node 0's D_SFT, then join M0's training."""
    from mathse.run.nodes import wait_for

    wait_for(cfg, layout.stage_dir(cfg, STAGE), "D_SFT")
    run_train_job(train_job(cfg))
    print(f"distill: this node's share of M0's training is done ({cfg.model_path('sft_model_stage0')})")
    return 0
