"""`main.py` / `mathse`: parse arguments, load the config, dispatch to one stage. Nothing else."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mathse.run.config import ConfigError, MathSEConfig
from mathse.run.config_loading import load_config
from mathse.stages import load_stage

# Stage name -> (module under mathse.stages, one-line help). Modules are imported lazily so a
# config error is reported in a fraction of a second, before torch or LLaMA-Factory load.
STAGES: dict[str, tuple[str, str]] = {
    "check": ("check", "Data check: duplicates in seed/pool and benchmark contamination, by text and image"),
    "distill": ("distill", "Stage 1: teacher solutions for the seed set -> D_SFT; train M0"),
    "evolve": ("evolve", "Stage 2: K rounds of generate -> ORM judge -> harvest -> retrain (--shard, --merge)"),
    "reflect": ("reflect", "Stage 3 data: teacher corrects wrong paths from the ORM's diagnosis; ORM re-checks"),
    "final": ("final", "Stage 3 training: final SFT on D_SFT + reflections from the Stage-2 checkpoint"),
    "eval": ("eval", "Evaluate checkpoints (base, M0, rounds, final) on the benchmarks -> results table"),
    "report": ("report", "Run report: tables, charts and report.json from whatever the run produced so far"),
    "orm": ("orm", "The ORM: M0's paths labelled + teacher's first wrong step -> train -> held-out metrics"),
    "ablations": ("ablations", "The paper's ablations (ablations:): each variant in its own folder, reusing the run"),
}
# `--stage all` runs these in order, stopping at the first failure; each stage skips the work it
# already finished, so a rerun resumes where the last one stopped. The ORM stage runs when the judge
# is the ORM the run trains (orm.backend: trained, as in the paper); eval when benchmarks are set.
PIPELINE = ("check", "distill", "orm", "evolve", "reflect", "final", "eval", "report")


def build_parser() -> argparse.ArgumentParser:
    stage_help = "\n".join(f"  {name:<9} {text}" for name, (_, text) in STAGES.items())
    parser = argparse.ArgumentParser(
        prog="mathse",
        description="MathSE: self-evolving multimodal math reasoning (arXiv 2511.06805).",
        epilog=f"stages:\n{stage_help}\n  {'all':<9} every pipeline stage in order: {' -> '.join(PIPELINE)} "
        "(check when data_check.enabled, orm when orm.backend is trained, eval when eval.benchmarks is set)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", required=True, choices=[*STAGES, "all"], help="which stage to run")
    parser.add_argument("--config", default="config.yaml", help="the config hub (default: config.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set llama_factory.learning_rate=1e-5 (repeatable)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would run (sizes, commands, YAML); run nothing"
    )
    parser.add_argument(
        "--redo",
        action="append",
        default=[],
        choices=[*STAGES, "all"],
        metavar="STAGE",
        help="discard the STAGE's results whose inputs changed since they were made, and redo them "
        "(repeatable; 'all': every stage). Without it a stale result stops the run",
    )
    parser.add_argument(
        "--shard", metavar="I/N", help="evolve: generate and judge only shard I of N of the current round (0-based)"
    )
    parser.add_argument(
        "--merge", action="store_true", help="evolve: merge the current round's shards, update the data, retrain"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    options: dict[str, object] = {}
    if args.shard is not None or args.merge:
        if args.stage != "evolve":
            print("error: --shard and --merge go with --stage evolve", file=sys.stderr)
            return 2
        from mathse.run.rounds import Shard

        try:
            options = {"shard": Shard.parse(args.shard) if args.shard else None, "merge": args.merge}
        except ConfigError as exc:
            print("\n".join(exc.lines), file=sys.stderr)
            return 2
    cfg.run.redo = [*cfg.run.redo, *args.redo]
    stages = pipeline(cfg) if args.stage == "all" else [args.stage]
    if (len(stages) > 1 or args.dry_run) and report_stale(cfg, stages, args.dry_run):
        return 2
    for stage in stages:
        if len(stages) > 1:
            print(f"=== mathse: stage {stage} ===", flush=True)
        code = run_stage(stage, cfg, args.dry_run, **options)
        if code != 0:
            if len(stages) > 1:
                print(f"mathse: stopped at stage {stage} (exit {code}); rerun to resume", file=sys.stderr)
            return code
    return 0


def pipeline(cfg: MathSEConfig) -> list[str]:
    """The stages `--stage all` runs for this config."""
    skip = {"eval"} if not cfg.eval.benchmarks else set()
    if not cfg.data_check.enabled:
        skip.add("check")
    if cfg.orm.backend != "trained":
        skip.add("orm")
    return [stage for stage in PIPELINE if stage not in skip]


def report_stale(cfg: MathSEConfig, stages: list[str], dry_run: bool) -> bool:
    """Name the stale results of `stages` before any runs; True: stop (stale and no --redo for it)."""
    from mathse.run.fingerprint import redo_hint, survey

    lines, blocked, advised = survey(cfg, [(stage, load_stage(STAGES[stage][0])) for stage in stages])
    prefix = "[dry-run] " if dry_run else "mathse: "
    for line in lines:
        print(prefix + line, file=sys.stdout if dry_run else sys.stderr)
    if advised and (dry_run or blocked):
        print(prefix + redo_hint(advised), file=sys.stdout if dry_run else sys.stderr)
    return bool(blocked) and not dry_run


def run_stage(stage: str, cfg: MathSEConfig, dry_run: bool, **options: object) -> int:
    """Run one stage; user-fixable errors become one line on stderr and an exit code."""
    module = load_stage(STAGES[stage][0])
    # Errors a user can fix (bad data, bad config for this stage) are one line, exit 2; a failed
    # training run is exit 1 with its log's tail. Anything else is a bug and keeps its traceback.
    from mathse.run.errors import USER_ERRORS, TrainingError
    from mathse.run.nodes import is_follower, node_rank

    try:
        if is_follower(cfg) and not dry_run:
            # Multi-node: node 0 pays for the API calls, generation and data; this node joins trainings.
            follow = getattr(module, "follow", None)
            if follow is None:
                print(f"{stage}: node_rank {node_rank(cfg)}: runs on node 0 only; nothing to do on this node")
                return 0
            return int(follow(cfg) or 0)
        return int(module.run(cfg, dry_run=dry_run, **options) or 0)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
