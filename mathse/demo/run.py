"""The bundled offline demo (the README's first command): `python -m mathse.demo`.

Builds a tiny random Qwen2-VL (`mathse.demo.tiny_model.DEMO_SIZE`) and the count-down addition task
(`mathse.demo.problems`: disjoint seed / pool / test sets, half the seed problems with reference
solutions), serves a *scripted teacher* on 127.0.0.1 (`mathse.testing.scripted_teacher`: a stand-in
for GPT-4o that writes count-down solutions with some slips, annotates and reflects) and runs every
pipeline stage with demo/config.yaml: real `llamafactory-cli train`, real ChatModel generation,
real OpenAI-protocol calls. A rerun skips finished work and repeats no API call.

The demo fails if the teacher could not read a prompt the pipeline sent: a template change that
breaks the prompt contract must not pass quietly.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mathse import cli
from mathse.answers.eval_results import accuracy_table
from mathse.demo.problems import write_countdown_dataset
from mathse.demo.tiny_model import DEMO_SIZE, build_tiny_qwen2vl
from mathse.run import layout
from mathse.run.config import ConfigError, MathSEConfig
from mathse.run.config_loading import PROJECT_ROOT, load_config
from mathse.run.storage import is_done, read_json, read_marker
from mathse.testing.scripted_teacher import serve_scripted_teacher

DEMO_CONFIG = PROJECT_ROOT / "demo" / "config.yaml"
# 460 of the 500 distinct count-down problems: seed (half with solutions) / pool / held-out test. A pool
# this size gives the rounds more paths to learn from and 150 test problems measure a checkpoint more
# closely than 50 (issue 12: seeds 0 and 1 met the learning targets, seeds 2 and 3 did not).
DEMO_SPLITS = {"seed": 60, "pool": 250, "test": 150}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathse.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--stage", default="all", choices=["all", "ablations"],
                        help="all: the pipeline (default); ablations: the config's ablations, after the pipeline")
    parser.add_argument("--asset-seed", type=int, default=0, help="seed of the tiny model's weights and the data split")
    parser.add_argument("--teacher-error-rate", type=float, default=0.2,
                        help="share of the scripted teacher's solutions that slip (filtered by answer)")
    args = parser.parse_args(argv)
    started = time.monotonic()

    prepare_assets(args.config.resolve().parent / "work", args.asset_seed)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2

    stage_args = ["--stage", args.stage, "--config", str(args.config), *(f"--set={o}" for o in args.overrides)]
    # Real runs point teacher.base_url at GPT-4o; the demo serves a scripted stand-in of its own.
    # The ORM is the one the run trains (orm.backend: trained), served by the pipeline itself.
    with serve_scripted_teacher(error_rate=args.teacher_error_rate, seed=args.asset_seed) as (server, teacher):
        print(f"demo: scripted teacher (a stand-in for GPT-4o) at {server.base_url}", flush=True)
        code = cli.main([*stage_args, f"--set=teacher.base_url={server.base_url}"])
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(teacher.counts.items())) or "none (all cached)"
    print(f"demo: scripted teacher answered: {counts}", flush=True)
    if teacher.unreadable:
        print(f"demo: FAILED: the scripted teacher could not read {len(teacher.unreadable)} prompt(s); "
              f"the prompt templates no longer match the teacher's contract:", file=sys.stderr)
        for reason in teacher.unreadable[:5]:
            print(f"  {reason}", file=sys.stderr)
        return 1
    if code == 0 and args.stage == "all":
        print_summary(cfg, time.monotonic() - started)
    elif code == 0:
        table = layout.ablation_results_path(cfg, "md")
        print(f"demo: ablations finished in {time.monotonic() - started:.0f}s: {table}")
    return code


def prepare_assets(work: Path, seed: int = 0) -> dict[str, Path]:
    """The tiny model and the three problem files under `work` (skipped when already there)."""
    build_tiny_qwen2vl(work / "tiny_model", seed=seed, size=DEMO_SIZE)
    return write_countdown_dataset(work / "data", DEMO_SPLITS, seed=seed, solution_every={"seed": 2})


def print_summary(cfg: MathSEConfig, seconds: float) -> None:
    """The accuracy table, the ORM's and reflection's key numbers, and where to look next."""
    table = layout.eval_results_path(cfg, "md")
    if table.is_file():
        rows = accuracy_table(table.read_text(encoding="utf-8"))
        print("\ndemo: held-out accuracy % (correct/total) of each checkpoint:\n" + "\n".join(rows))
    metrics = layout.orm_metrics_path(cfg)
    if metrics.is_file():
        m = read_json(metrics)
        step = "n/a" if m["error_step_exact"] is None else f"{100 * m['error_step_exact']:.0f}%"
        print(f"demo: trained ORM on {m['paths']} held-out paths: accuracy {100 * m['accuracy']:.0f}%, "
              f"first wrong step named exactly {step}")
    reflect = layout.stage_dir(cfg, layout.REFLECT)
    if is_done(reflect):
        stats = read_marker(reflect)
        print(f"demo: reflection: {stats['kept']} of {stats['sent']} corrected paths kept for the final SFT")
    report = layout.stage_dir(cfg, layout.REPORT) / "report.md"
    print(f"demo: finished in {seconds:.0f}s. Report (tables, Figure 2 transitions, charts): {report}")
    print(f"demo: every output is under {cfg.output_dir}; each stage's log (LLaMA-Factory's own output) is "
          "in its folder; `python -m mathse.demo` again reruns nothing that is done")


if __name__ == "__main__":
    sys.exit(main())
