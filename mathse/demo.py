"""The bundled offline demo (the README's first command): `python -m mathse.demo`.

Builds a tiny random Qwen2-VL and synthetic image problems, serves the tiny model as the
teacher with `llamafactory-cli api` on 127.0.0.1, and runs every pipeline stage with
demo/config.yaml. Everything is real and small; a rerun skips finished work.
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
from mathse.demo_assets import build_tiny_qwen2vl, write_demo_dataset
from mathse.llamafactory_bridge import serve_api

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
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return 2

    stage_args = ["--stage", "all", "--config", str(args.config), *(f"--set={o}" for o in args.overrides)]
    if all_finished(cfg):
        code = cli.main(stage_args)
    else:
        # The tiny model doubles as the teacher; real runs point teacher.base_url at GPT-4o.
        teacher = {"model_name_or_path": cfg.model.base, "template": cfg.model.template,
                   "infer_backend": "huggingface", "max_new_tokens": 48}
        print("demo: starting the local teacher (llamafactory-cli api) ...", flush=True)
        with serve_api(teacher, cfg.output_dir / "teacher_api") as base_url:
            code = cli.main([*stage_args, f"--set=teacher.base_url={base_url}"])
    if code == 0:
        print_artifacts(cfg, time.monotonic() - started)
    return code


def stage_modules() -> list[object]:
    return [importlib.import_module(f"mathse.stages.{cli.STAGES[s][0]}") for s in cli.pipeline()]


def all_finished(cfg: MathSEConfig) -> bool:
    return all(module.finished(cfg) for module in stage_modules())


def print_artifacts(cfg: MathSEConfig, seconds: float) -> None:
    print(f"\ndemo: finished in {seconds:.0f}s; artifacts:")
    for module in stage_modules():
        for label, path in module.artifacts(cfg).items():
            print(f"  {label:<28} {path}")


if __name__ == "__main__":
    sys.exit(main())
