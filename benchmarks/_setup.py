"""Shared set-up for the pipeline benchmarks: the tiny model, demo problems, scripted servers."""

from __future__ import annotations

import os
import re
import sys
import zlib
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathse.demo.assets import build_tiny_qwen2vl, write_demo_dataset  # noqa: E402
from mathse.testing.openai_server import last_user_text  # noqa: E402

WORK = ROOT / "benchmarks" / "work"


def teacher_reply(body: dict[str, Any]) -> str:
    """Solutions that reach the reference answer when the prompt states it; reflections otherwise."""
    text = last_user_text(body)
    found = re.search(r"The reference answer is: (.+)", text)
    answer = found.group(1).strip() if found else "1"
    solution = f"Step 1: Read the figure.\nThe final answer is \\boxed{{{answer}}}"
    return f"Reflection: Recount.\nCorrected solution:\n{solution}"


def orm_reply(body: dict[str, Any]) -> str:
    """A deterministic judge: about half the paths are correct."""
    if zlib.crc32(last_user_text(body).encode()) % 2 == 0:
        return '{"correct": true, "error_step": null, "analysis": "ok"}'
    return '{"correct": false, "error_step": 1, "analysis": "Step 1 misreads the figure."}'


def write_config(run_dir: Path, teacher_url: str, orm_url: str, **sections: Any) -> Path:
    """The demo config on the tiny model, with API-backed teacher and ORM and `sections` merged."""
    model = build_tiny_qwen2vl(WORK / "tiny_model")
    seed, pool = write_demo_dataset(WORK / "data", n_seed=8, n_pool=12)
    cfg = yaml.safe_load((ROOT / "demo" / "config.yaml").read_text())
    cfg["run"]["output_dir"] = str(run_dir / "output")
    cfg["model"]["base"] = str(model)
    cfg["data"] = {"seed_file": str(seed), "pool_file": str(pool)}
    cfg["llama_factory"]["recipe"] = str(ROOT / "configs" / "llama_factory" / "sft_full.yaml")
    cfg["llama_factory"]["max_steps"] = 4
    cfg["eval"] = {"benchmarks": []}
    cfg["teacher"].update({"base_url": teacher_url, "model": "teacher", "filter_by_answer": True})
    cfg["orm"] = {"backend": "api", "policy": "orm", "api": {"base_url": orm_url, "model": "orm", "concurrency": 16}}
    cfg["inference"].update({"temperature": 0, "n_paths": 2, "max_new_tokens": 16, "concurrency": 4})
    cfg["evolve"] = {"rounds": 2, "batch_size": 5, "retrain": False}
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
