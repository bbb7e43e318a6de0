"""The bundled offline demo (the README's first command): `python -m mathse.demo`.

Builds a tiny random Qwen2-VL and synthetic image problems, trains a tiny *teacher* on the
seed solutions (so it speaks the teacher's two reply formats: a solution, and a reflection with a
corrected solution), serves it with `llamafactory-cli api` on 127.0.0.1, and runs every pipeline
stage with demo/config.yaml. Everything is real and small; a rerun skips finished work.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mathse import cli
from mathse.config import PROJECT_ROOT, ConfigError, MathSEConfig, load_config
from mathse.demo_assets import build_tiny_qwen2vl, make_synthetic_problems, write_demo_dataset
from mathse.llamafactory_bridge import SftExample, compose_train_job, run_train_job, serve_api, write_sharegpt_dataset
from mathse.prompts import fill_template, reflection_prompt, student_prompt
from mathse.records import JudgedPathRow, PathRow, read_problems
from mathse.storage import atomic_write_jsonl

DEMO_CONFIG = PROJECT_ROOT / "demo" / "config.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mathse.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    started = time.monotonic()

    work = args.config.resolve().parent / "work"
    build_tiny_qwen2vl(work / "tiny_model")
    write_demo_dataset(work / "data", n_seed=16, n_pool=24)
    write_test_set(work / "data" / "test.jsonl", n=12)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2

    stage_args = ["--stage", "all", "--config", str(args.config), *(f"--set={o}" for o in args.overrides)]
    if all_finished(cfg):
        code = cli.main(stage_args)
    else:
        # Real runs point teacher.base_url at GPT-4o; the demo serves a tiny teacher of its own.
        teacher_dir = train_demo_teacher(cfg, work / "teacher")
        teacher = {"model_name_or_path": str(teacher_dir), "template": cfg.model.template,
                   "infer_backend": "huggingface", "max_new_tokens": 256, "do_sample": False}
        print("demo: starting the local teacher (llamafactory-cli api) ...", flush=True)
        with serve_api(teacher, cfg.output_dir / "teacher_api") as base_url:
            code = cli.main([*stage_args, f"--set=teacher.base_url={base_url}"])
    if code == 0:
        print_artifacts(cfg, time.monotonic() - started)
    return code


def write_test_set(path: Path, n: int) -> None:
    """Held-out problems for `--stage eval` (project problem schema, seeded apart from seed/pool)."""
    if not path.is_file():
        atomic_write_jsonl(path, make_synthetic_problems(path.parent, n, seed=1000, id_prefix="test"))


def train_demo_teacher(cfg: MathSEConfig, folder: Path) -> Path:
    """Fine-tune the tiny model on the seed solutions in both teacher reply formats."""
    teacher = cfg.require("teacher")
    solved = [p for p in read_problems(cfg.require("data.seed_file"), cfg.data.image_root) if p.solution]
    examples: list[SftExample] = []
    for p in solved:
        distill = fill_template(teacher.distill_prompt, "teacher.distill_prompt", question=p.question, answer=p.answer)
        examples.append(SftExample(prompt=distill, response=p.solution or "", images=p.images,
                                   system=teacher.system_prompt))
        guess = "Step 1: Guess.\nThe final answer is \\boxed{0}"
        draft = JudgedPathRow(**PathRow.of(p, 1, 0, student_prompt(p), guess).to_json(), error_step=1,
                              analysis="The guess ignores the figure.")
        reply = f"Reflection: Read the figure.\nCorrected solution:\n{p.solution}"
        examples.append(SftExample(prompt=reflection_prompt(cfg, draft), response=reply, images=p.images))
    write_sharegpt_dataset(examples, folder / "data", "demo_teacher")
    job = compose_train_job(
        cfg, name="train_teacher", model_path=cfg.model.base, datasets=["demo_teacher"], dataset_dir=folder / "data",
        output_dir=folder / "model", run_dir=folder, extra={"max_steps": 150, "cutoff_len": 2048},
    )
    print(f"demo: training the tiny teacher on {len(examples)} examples ...", flush=True)
    return run_train_job(job)


def stage_modules(cfg: MathSEConfig) -> list[object]:
    return [importlib.import_module(f"mathse.stages.{cli.STAGES[s][0]}") for s in cli.pipeline(cfg)]


def all_finished(cfg: MathSEConfig) -> bool:
    return all(module.finished(cfg) for module in stage_modules(cfg))


def print_artifacts(cfg: MathSEConfig, seconds: float) -> None:
    print(f"\ndemo: finished in {seconds:.0f}s; artifacts:")
    for module in stage_modules(cfg):
        for label, path in module.artifacts(cfg).items():
            print(f"  {label:<28} {path}")


if __name__ == "__main__":
    sys.exit(main())
