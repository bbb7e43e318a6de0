"""Offline demo assets in one command: the tiny Qwen2-VL (`mathse.demo.tiny_model`) and synthetic
problems (`mathse.demo.problems`); the names below are re-exported for older callers.

CLI: python -m mathse.demo.assets --model-dir DIR --data-dir DIR [--n-seed 16 --n-pool 24]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mathse.demo.problems import (
    BAR_COLOR,
    BAR_UNIT_PX,
    DOT_COLOR,
    PROBLEM_KINDS,
    ProblemSpec,
    make_synthetic_problems,
    render_problem_image,
    sample_problem_specs,
    write_demo_dataset,
)
from mathse.demo.tiny_model import (
    COMPLETE_MARKER,
    DEMO_SIZE,
    QWEN2VL_CHAT_TEMPLATE,
    QWEN2VL_SPECIAL_TOKENS,
    TEST_SIZE,
    build_tiny_qwen2vl,
    is_complete_model_dir,
)

__all__ = [
    "BAR_COLOR",
    "BAR_UNIT_PX",
    "COMPLETE_MARKER",
    "DOT_COLOR",
    "PROBLEM_KINDS",
    "QWEN2VL_CHAT_TEMPLATE",
    "QWEN2VL_SPECIAL_TOKENS",
    "ProblemSpec",
    "build_tiny_qwen2vl",
    "is_complete_model_dir",
    "main",
    "make_synthetic_problems",
    "render_problem_image",
    "sample_problem_specs",
    "write_demo_dataset",
]


def main(argv: list[str] | None = None) -> int:
    """CLI: build the tiny model and the demo dataset, print their paths."""
    parser = argparse.ArgumentParser(prog="python -m mathse.demo.assets", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="where the tiny Qwen2-VL goes")
    parser.add_argument("--data-dir", type=Path, required=True, help="where seed.jsonl, pool.jsonl and images go")
    parser.add_argument("--n-seed", type=int, default=16, help="problems in seed.jsonl")
    parser.add_argument("--n-pool", type=int, default=24, help="problems in pool.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights and problems")
    parser.add_argument("--demo-size", action="store_true", help="the demo's model size (default: the test size)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    size = DEMO_SIZE if args.demo_size else TEST_SIZE
    model_dir = build_tiny_qwen2vl(args.model_dir, seed=args.seed, size=size)
    seed_path, pool_path = write_demo_dataset(args.data_dir, args.n_seed, args.n_pool, seed=args.seed)
    print(f"model: {model_dir}")
    print(f"seed:  {seed_path}")
    print(f"pool:  {pool_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
