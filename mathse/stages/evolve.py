"""Stage 2 (evolve): Algorithm 1 — K rounds of generate, judge, harvest, retrain.

Each round lives in `output/evolve/round_<r>/` and goes through units of work, each finished by
its own marker, so a kill at any moment loses nothing and a rerun redoes only the unmarked:

1. `batch.json`     the round's problems, sampled from D_remain (deterministic in seed and round)
2. shard i of n     generate n_paths per problem (journal `generations.shard-i-of-n.jsonl`), then
                    judge each path (journal `orm_reflections/evolve_round_<r>.shard-i-of-n.jsonl`);
                    marker `.shard-i-of-n.done`. `--shard i/n` runs just this on one node.
3. merge            all shards in batch order -> chosen / rejected / hard / history / remain and
                    stats (marker `.merged.json`); the cumulative `sft_chosen.jsonl`,
                    `sft_rejected.jsonl`, `hard_problems.jsonl`, `history.jsonl`, D_SFT and the
                    LLaMA-Factory dataset `mathse_stage_final` are rebuilt from all merged rounds.
4. retrain          M_r into `sft_model_round_<r>` (resumes from its last checkpoint); a round that
                    accepted no new path keeps the previous model instead (the data did not change)
5. round marker     `.mathse_done.json` with the round summary; `sft_model_final` -> latest model
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mathse.data.checking import check_inputs, checked_pool
from mathse.judging.judge import JudgeItem, PathJudge, journal_path
from mathse.judging.orm_endpoint import describe_orm_serving, orm_endpoint, rule_only_notice
from mathse.model.generation import describe as describe_generation
from mathse.model.generation import open_generator
from mathse.model.generation_items import GenItem, make_items
from mathse.model.inputs import model_inputs
from mathse.model.prompts import student_prompt
from mathse.model.token_budget import TokenBudget
from mathse.model.training import VOLATILE_ARGS, TrainJob, compose_train_job, run_train_job, training_args
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run import layout, rounds
from mathse.run.config import MathSEConfig, save_resolved_config
from mathse.run.errors import StageError
from mathse.run.fingerprint import INFERENCE_VOLATILE, Inputs, Stale, check, settle
from mathse.run.records import JudgedPathRow, PathRow, Problem, ProblemIndex, SftExample, SftRow
from mathse.run.storage import (
    Journal,
    atomic_open,
    atomic_write_json,
    atomic_write_jsonl,
    is_done,
    iter_jsonl,
    mark_done,
    read_json,
    read_marker,
    write_line,
)
from mathse.run.timing import StageTimer
from mathse.run.usage import UsageLedger

STAGE = layout.EVOLVE
DATASET_NAME = "mathse_stage_final"


# ---------------------------------------------------------------------------------------------
# Paths


def evolve_dir(cfg: MathSEConfig) -> Path:
    return layout.stage_dir(cfg, STAGE)


# ---------------------------------------------------------------------------------------------
# Stage protocol


def finished(cfg: MathSEConfig) -> bool:
    return all(is_done(layout.round_dir(cfg, r)) for r in range(1, cfg.evolve.rounds + 1)) or rounds.pool_exhausted(cfg)


def artifacts(cfg: MathSEConfig) -> dict[str, Path]:
    return {
        "D_SFT (after evolve)": layout.d_sft_path(cfg, STAGE),
        "accepted paths": layout.evolve_file(cfg, "sft_chosen"),
        "rejected paths": layout.evolve_file(cfg, "sft_rejected"),
        "hard buffer": layout.evolve_file(cfg, "hard_problems"),
        "per-problem history": layout.evolve_file(cfg, "history"),
        "evolve dataset": cfg.dataset_dir / f"{DATASET_NAME}.json",
        "latest model": cfg.model_path("sft_model_final"),
    }


def run(cfg: MathSEConfig, dry_run: bool = False, shard: rounds.Shard | None = None, merge: bool = False) -> int:
    m0 = cfg.model_path("sft_model_stage0")
    d_sft0 = layout.d_sft_path(cfg, layout.DISTILL)
    # Every record validated now; only ids and file offsets held: a problem is read when its batch needs it.
    pool = checked_pool(cfg, dry_run)  # after the data check: its drops (data_check.action: drop) left out
    if dry_run:
        print_plan(cfg, pool)
        return 0
    if not (is_done(m0) and d_sft0.is_file()):
        raise StageError(f"evolve: M0 is not trained yet ({m0}): run --stage distill first")
    beyond = rounds_beyond(cfg)
    settle(cfg, STAGE, stale(cfg))
    if beyond and not beyond[-1].is_dir():  # --redo dropped the rounds past evolve.rounds: data and model back
        last = max((r for r in range(1, cfg.evolve.rounds + 1) if is_done(layout.round_dir(cfg, r))), default=0)
        rebuild_cumulative(cfg, last)
        point_final_at(cfg, Path(read_marker(layout.round_dir(cfg, last))["model"]) if last else m0)
    save_resolved_config(cfg, evolve_dir(cfg) / "config.yaml")
    if (notice := rule_only_notice(cfg, STAGE)) is not None:
        print(notice)
    timer = StageTimer()
    try:
        return run_rounds(cfg, pool, shard, merge, timer)
    finally:
        timer.save(evolve_dir(cfg) / "timings.json")


def round_inputs(cfg: MathSEConfig, r: int) -> Inputs:
    """What round r consumes: the pool, the round before it (or M0), and every setting that decides
    its batch, paths, verdicts, data and training (not evolve.rounds: more rounds extend a run)."""
    before = ("M0", cfg.model_path("sft_model_stage0")) if r == 1 else (f"round {r - 1}", layout.round_dir(cfg, r - 1))
    inputs = check_inputs(cfg, "pool", Inputs().file("data.pool_file", cfg.require("data.pool_file")).marker(*before))
    for key in ("run.seed", "data.image_root", "model"):
        inputs.config(cfg, key)
    inputs.config(cfg, "evolve", exclude={"rounds"}).config(cfg, "inference", exclude=INFERENCE_VOLATILE).judge(cfg)
    inputs.budget("token budget of the rounds' dataset", TokenBudget.for_training(cfg, "rounds"))
    if cfg.evolve.retrain:
        inputs.value("training", {k: v for k, v in training_args(cfg, "rounds").items() if k not in VOLATILE_ARGS})
    return inputs


def round_outputs(cfg: MathSEConfig, r: int) -> tuple[Path, ...]:
    """What redoing round r discards: its folder, its model and its verdict journals."""
    journals = layout.journals_dir(cfg).glob(f"evolve_round_{r}.*.jsonl")
    return (layout.round_dir(cfg, r), layout.round_model_dir(cfg, r), *journals)


def rounds_beyond(cfg: MathSEConfig) -> list[Path]:
    """Round folders past evolve.rounds (it was lowered after they ran), in order."""
    found = [(int(p.name.split("_")[1]), p) for p in evolve_dir(cfg).glob("round_*") if p.name[6:].isdigit()]
    return [p for r, p in sorted(found) if r > cfg.evolve.rounds]


def stale(cfg: MathSEConfig) -> list[Stale]:
    """Finished rounds whose inputs changed, and every round after the first of them (built on it);
    rounds past a lowered evolve.rounds. Redoing discards them; the next run redoes them in order."""
    found: list[Stale] = []
    started = sorted(int(p.name[6:]) for p in evolve_dir(cfg).glob("round_*") if p.name[6:].isdigit())
    for r in started:
        if r > cfg.evolve.rounds:
            reasons: tuple[str, ...] = (f"evolve.rounds is {cfg.evolve.rounds}",)
        elif found:
            reasons = (f"built on round {r - 1}, which is redone",)
        elif (s := check(f"round {r}", layout.round_dir(cfg, r), round_inputs(cfg, r))) is not None:
            reasons = s.reasons
        else:
            continue
        found.append(Stale(f"round {r}", reasons, round_outputs(cfg, r)))
    return found


def run_rounds(
    cfg: MathSEConfig,
    pool: ProblemIndex,
    shard: rounds.Shard | None,
    merge: bool,
    timer: StageTimer,
) -> int:

    for r in range(1, cfg.evolve.rounds + 1):
        rd = layout.round_dir(cfg, r)
        if is_done(rd):
            continue
        remain = rounds.remaining_before(cfg, r, pool)
        if not remain:
            print(f"evolve: D_remain is empty before round {r}; nothing left to evolve on")
            break
        batch = rounds.load_or_sample_batch(cfg, r, remain)
        model = generation_model(cfg, r)
        if shard is not None:  # one node's share of the current round, nothing else
            run_shard(cfg, r, pool, batch, shard, model, timer)
            print(f"evolve: round {r} {shard.tag} done; merge with --merge once every shard is done")
            return 0
        if not merge and not rounds.sharded_elsewhere(cfg, r):
            run_shard(cfg, r, pool, batch, rounds.WHOLE, model, timer)
        complete_round(cfg, r, batch, pool, remain, timer)
        if merge:
            return 0  # the next round's shards start from this merged round
    print_final_summary(cfg)
    return 0


# ---------------------------------------------------------------------------------------------
# Models


def generation_model(cfg: MathSEConfig, r: int) -> Path:
    """The latest checkpoint before round r: round r-1's model when retraining, else M0.

    Round r-1's model is M_{r-1}, or the model before it when that round accepted no new path
    (its marker records which), so the chain never points at a model that was not trained.
    """
    if cfg.evolve.retrain and r > 1:
        return layout.round_model(cfg, r - 1)
    return cfg.model_path("sft_model_stage0")


def train_job(cfg: MathSEConfig, r: int) -> TrainJob:
    """M_r on the grown D_SFT, from the base model or from the previous checkpoint."""
    extra: dict[str, Any] = {}
    if cfg.evolve.retrain_from == "base":
        start = cfg.model.base
    else:
        start, adapter = layout.model_ref(generation_model(cfg, r))
        if adapter is not None:
            extra["adapter_name_or_path"] = adapter  # keep training the previous adapter
    return compose_train_job(
        cfg,
        name=f"train_round_{r}",
        training="rounds",
        model_path=start,
        datasets=[DATASET_NAME],
        dataset_dir=cfg.dataset_dir,
        output_dir=layout.round_model_dir(cfg, r),
        run_dir=layout.round_dir(cfg, r),
        extra=extra,
    )


def point_final_at(cfg: MathSEConfig, target: Path) -> None:
    """Make `sft_model_final` a symlink to `target`, replaced atomically."""
    link = cfg.model_path("sft_model_final")
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


# ---------------------------------------------------------------------------------------------
# Generate and judge one shard


def run_shard(
    cfg: MathSEConfig, r: int, pool: Mapping[str, Problem], batch: list[str], shard: rounds.Shard, model_dir: Path,
    timer: StageTimer,
) -> None:
    """Generate and judge this shard's problems; marks the shard done when nothing is left."""
    marker = rounds.shard_marker(cfg, r, shard)
    if marker.is_file():
        return
    mine = [pool[pid] for j, pid in enumerate(batch) if j % shard.count == shard.index]
    items = make_items(mine, cfg.inference.n_paths)
    model_path, adapter = layout.model_ref(model_dir)
    with Journal(rounds.generations_path(cfg, r, shard)) as generations:
        # Served: the checkpoint's servers start here and stop when the block ends, before judging/training.
        student = model_inputs(cfg, "rounds")
        with timer.span("model"), open_generator(model_path, adapter, student, cfg.inference, serve=cfg.serve,
                                                 ray=cfg.ray, seed=cfg.run.seed,
                                                 server_dir=layout.servers_dir(layout.round_dir(cfg, r))) as generator:
            gen = generator.generate(items, generations, progress=f"round {r} generate")
        print(gen.summary())
        paths = sum(1 for item in items if item.key in generations)
        # The paths to judge are read back from the generations journal one at a time.
        to_judge, total = paths_to_judge(items, generations), sum(1 for _ in paths_to_judge(items, generations))
        ledger = UsageLedger(layout.usage_path(cfg), cfg.pricing)
        # The trained ORM is served by the pipeline for just this judging (stopped however it ends).
        with orm_endpoint(cfg, layout.servers_dir(layout.round_dir(cfg, r))) as endpoint:
            judge = PathJudge(cfg, STAGE, ledger, endpoint=endpoint)
            try:
                # A served ORM is an API wait; a local or rule-based one is model compute.
                with Journal(journal_path(cfg, rounds.verdicts_stage(r, shard))) as verdicts, \
                        timer.span("api" if cfg.orm.backend in ("api", "trained") else "model"):
                    verdict_stats = judge.judge(to_judge, verdicts, progress=f"round {r} judge", total=total)
            finally:
                judge.close()
                ledger.save()
    print(verdict_stats.summary_line())
    if gen.retry_later or verdict_stats.failed:
        raise StageError(
            f"evolve: round {r} {shard.tag}: {gen.retry_later} generations and {verdict_stats.failed} ORM calls "
            "failed; rerun the same command to retry just those"
        )
    stats = {"problems": len(mine), "paths": paths, "gen_seconds": gen.seconds, "paths_per_s": gen.paths_per_s}
    atomic_write_json(marker, stats)


def paths_to_judge(items: list[GenItem], generations: Journal) -> Iterator[JudgeItem]:
    """The generated paths (those with a response), in item order, read from the journal as taken."""
    for item in items:
        row = generations.get(item.key)
        if row is not None and row.get("response"):
            yield JudgeItem(item.key, item.problem, row["response"])


# ---------------------------------------------------------------------------------------------
# Merge, dataset update, retrain


def complete_round(
    cfg: MathSEConfig,
    r: int,
    batch: list[str],
    by_id: Mapping[str, Problem],
    remain_before: list[str],
    timer: StageTimer,
) -> None:
    rd = layout.round_dir(cfg, r)
    if not rounds.merged_marker(cfg, r).is_file():
        counts = rounds.shard_counts(cfg, r)
        if len(counts) != 1:
            raise StageError(f"evolve: round {r} has no shard results to merge (found shardings: {sorted(counts)})")
        (n,) = counts
        missing = [i for i in range(n) if not rounds.shard_marker(cfg, r, rounds.Shard(i, n)).is_file()]
        if missing:
            raise StageError(f"evolve: round {r}: shards {missing} of {n} are not done; run them before --merge")
        stats = merge_shards(cfg, r, batch, by_id, remain_before, n)
        atomic_write_json(rounds.merged_marker(cfg, r), stats)
    stats = read_json(rounds.merged_marker(cfg, r))
    rebuild_cumulative(cfg, r)
    # Without retraining the data still grows each round; the model stays M0. A round that accepted
    # no new path left D_SFT as it was: retraining would spend hours to reproduce the model before.
    with timer.span("model"):
        if cfg.evolve.retrain and stats["accepted"] > 0:
            latest = run_train_job(train_job(cfg, r))
        else:
            latest = generation_model(cfg, r)
            if cfg.evolve.retrain:
                print(f"evolve: round {r} accepted no new path; not retraining, its model stays {latest}")
    point_final_at(cfg, latest)
    mark_done(rd, {**stats, "model": str(latest), "consumed": round_inputs(cfg, r).record()})
    print(round_summary(r, stats))


def merge_shards(
    cfg: MathSEConfig, r: int, batch: list[str], by_id: Mapping[str, Problem], remain_before: list[str], n: int
) -> dict[str, Any]:
    """Combine the shards in batch order (so the result does not depend on how it was sharded).

    Streamed: the shards' journals are read by key as each problem is merged, and the round's files
    are written row by row; only problem ids (solved, remaining) are held."""
    rd = layout.round_dir(cfg, r)
    with contextlib.ExitStack() as stack:
        parts = [rounds.Shard(i, n) for i in range(n)]
        generations = [stack.enter_context(Journal(rounds.generations_path(cfg, r, s))) for s in parts]
        verdicts = [stack.enter_context(Journal(journal_path(cfg, rounds.verdicts_stage(r, s)))) for s in parts]
        seconds = sum(read_json(rounds.shard_marker(cfg, r, s)).get("gen_seconds", 0.0) for s in parts)
        chosen, rejected, hard, history = (
            stack.enter_context(atomic_open(rd / name))
            for name in (layout.CHOSEN, "rejected.jsonl", "hard.jsonl", layout.HISTORY)
        )
        solved: set[str] = set()
        # unknown: the verdict decided nothing (an ORM reply unreadable even after a re-ask). Unknown is
        # not wrong: such a path goes neither to the rejected paths / hard buffer nor to reflection, and
        # its problem stays in D_remain, so a later round asks again.
        counts = {"attempted": len(batch), "paths": 0, "accepted": 0, "rejected": 0, "unparseable": 0, "unknown": 0,
                  "no_output": 0}
        for pid in batch:
            problem = by_id[pid]
            outcomes: list[bool | None] = []
            wrong: list[dict[str, Any]] = []
            for k in range(cfg.inference.n_paths):
                key = f"{pid}#{k}"
                gen = _lookup(generations, key)
                verdict = _lookup(verdicts, key)
                if gen is None or not gen.get("response") or verdict is None:
                    counts["no_output"] += 1
                    outcomes.append(None)
                    continue
                counts["paths"] += 1
                final = verdict["final"]
                outcomes.append(final["correct"])
                if verdict.get("orm") and not verdict["orm"].get("parsed", True):
                    counts["unparseable"] += 1
                if final["correct"] is None:
                    counts["unknown"] += 1
                    continue
                row = PathRow.of(problem, r, k, student_prompt(problem), gen["response"])
                if final["correct"] is True:
                    counts["accepted"] += 1
                    write_line(chosen, row.to_json())
                else:
                    counts["rejected"] += 1
                    judged = JudgedPathRow(
                        **row.to_json(), error_step=final.get("error_step"), analysis=final.get("analysis", ""),
                        verdict_source=final.get("source"), orm_raw=(verdict.get("orm") or {}).get("raw"),
                    ).to_json()
                    write_line(rejected, judged)
                    wrong.append(judged)
            if any(o is True for o in outcomes):
                solved.add(pid)
            elif wrong:
                write_line(hard, {**problem_row(problem), "round": r, "paths": [_path_part(w) for w in wrong]})
            write_line(history, {"id": pid, "round": r, "verdicts": outcomes, "solved": pid in solved})

    remain = [pid for pid in remain_before if pid not in solved]
    atomic_write_json(rd / "remain.json", remain)
    stats = {**counts, "solved": len(solved), "pool_left": len(remain), "shards": n,
             "gen_seconds": round(seconds, 3), "paths_per_s": round(counts["paths"] / seconds, 3) if seconds else 0.0}
    atomic_write_json(rd / layout.STATS, stats)
    return stats


def _lookup(journals: list[Journal], key: str) -> dict[str, Any] | None:
    """The row of `key` in whichever shard's journal holds it."""
    return next((row for journal in journals if (row := journal.get(key)) is not None), None)


def problem_row(problem: Problem) -> dict[str, Any]:
    return {"id": problem.id, "question": problem.question, "images": list(problem.images), "answer": problem.answer}


def _path_part(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("sample", "reasoning", "error_step", "analysis", "verdict_source")}


def rebuild_cumulative(cfg: MathSEConfig, upto: int) -> None:
    """Rewrite the run-wide buffers and D_SFT from the merged rounds 1..upto (idempotent).

    Streamed, row by row from the rounds' files: the rejected paths alone grow to n_paths times the
    pool over the rounds, so nothing here is held in memory.
    """
    round_dirs = [layout.round_dir(cfg, r) for r in range(1, upto + 1)]

    def concat(name: str) -> Iterator[dict[str, Any]]:
        for rd in round_dirs:
            yield from iter_jsonl(rd / name)

    def chosen() -> Iterator[PathRow]:
        return map(PathRow.model_validate, concat(layout.CHOSEN))

    def d_sft() -> Iterator[SftRow]:
        yield from map(SftRow.model_validate, iter_jsonl(layout.d_sft_path(cfg, layout.DISTILL)))
        for c in chosen():
            yield SftRow(id=c.id, prompt=c.prompt, images=c.images, answer=c.answer, response=c.reasoning,
                         origin=f"evolve_round_{c.round}")

    atomic_write_jsonl(layout.evolve_file(cfg, "sft_chosen"), (c.to_json() for c in chosen()))
    atomic_write_jsonl(layout.evolve_file(cfg, "sft_rejected"), concat("rejected.jsonl"))
    atomic_write_jsonl(layout.evolve_file(cfg, "hard_problems"), concat("hard.jsonl"))
    atomic_write_jsonl(layout.evolve_file(cfg, "history"), concat(layout.HISTORY))
    atomic_write_jsonl(layout.d_sft_path(cfg, STAGE), (d.to_json() for d in d_sft()))
    written = map(SftRow.model_validate, iter_jsonl(layout.d_sft_path(cfg, STAGE)))
    examples = (SftExample(prompt=d.prompt, response=d.response, images=tuple(d.images), id=d.id) for d in written)
    write_sharegpt_dataset(examples, cfg.dataset_dir, DATASET_NAME, TokenBudget.for_training(cfg, "rounds"))


# ---------------------------------------------------------------------------------------------
# Reporting


def round_summary(r: int, stats: dict[str, Any]) -> str:
    return (
        f"evolve: round {r}: attempted {stats['attempted']} problems ({stats['paths']} paths), "
        f"accepted {stats['accepted']}, rejected {stats['rejected']}, unparseable {stats['unparseable']}, "
        f"unknown {stats.get('unknown', 0)} (not rejected), "
        f"solved {stats['solved']}, pool left {stats['pool_left']}, {stats['paths_per_s']:.2f} paths/s"
    )


def print_final_summary(cfg: MathSEConfig) -> None:
    done = [r for r in range(1, cfg.evolve.rounds + 1) if is_done(layout.round_dir(cfg, r))]
    if not done:
        return
    accepted = sum(read_marker(layout.round_dir(cfg, r))["accepted"] for r in done)
    d_sft = sum(1 for _ in iter_jsonl(layout.d_sft_path(cfg, STAGE)))
    print(f"evolve: {len(done)} rounds done; {accepted} paths accepted; D_SFT now {d_sft} examples; "
          f"latest model: {cfg.model_path('sft_model_final')}")


def print_plan(cfg: MathSEConfig, pool: ProblemIndex) -> None:
    ev, inf = cfg.evolve, cfg.inference
    print(f"[dry-run] evolve: {ev.rounds} rounds over D_remain = {len(pool)} problems from {cfg.data.pool_file}")
    print(f"[dry-run] per round: batch {ev.batch_size}, {inf.n_paths} paths per problem, backend {inf.backend}, "
          f"{inf.concurrency} requests in flight; ORM backend {cfg.orm.backend}, policy {cfg.orm.policy}")
    servers = layout.servers_dir(layout.round_dir(cfg, 1))
    m0 = cfg.model_path("sft_model_stage0")
    student = model_inputs(cfg, "rounds")
    plan = describe_generation(m0, None, student, cfg.inference, serve=cfg.serve, ray=cfg.ray, server_dir=servers)
    print(f"[dry-run] round 1 generation: {plan}")
    if (notice := rule_only_notice(cfg, STAGE)) is not None:
        print(f"[dry-run] {notice}")
    elif cfg.orm.backend == "trained" and cfg.orm.api is None:
        served = describe_orm_serving(cfg, layout.servers_dir(layout.round_dir(cfg, 1)))
        print(f"[dry-run] judge: the trained ORM served by the pipeline: {served}")
    if ev.retrain:
        print(f"[dry-run] retrain each round from {ev.retrain_from}; round 1 training command (not run):")
        print(train_job(cfg, 1).describe())


def follow(cfg: MathSEConfig) -> int:
    """node_rank > 0 of a multi-node run: per round, wait for node 0's merge, join its retraining."""
    from mathse.run.nodes import wait_for

    for r in range(1, cfg.evolve.rounds + 1):
        if r > 1 and not read_json(layout.round_dir(cfg, r - 1) / "remain.json"):
            break  # node 0 stops when D_remain is empty
        wait_for(cfg, layout.round_dir(cfg, r), f"round {r} data", marker=rounds.merged_marker(cfg, r))
        if cfg.evolve.retrain and read_json(rounds.merged_marker(cfg, r))["accepted"] > 0:
            run_train_job(train_job(cfg, r))
        wait_for(cfg, layout.round_dir(cfg, r), f"round {r}")
    print(f"evolve: this node's share of the {cfg.evolve.rounds} rounds' trainings is done")
    return 0
