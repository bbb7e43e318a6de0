"""Shared fixtures: the offline tiny Qwen2-VL (built once per session), demo problems, configs."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

# Nothing may try the model hub: set before llamafactory/transformers import, and inherited by
# every `llamafactory-cli` subprocess the tests start.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Small, fast settings for tests, whatever demo/config.yaml uses to make the demo learn.
TEST_SECTIONS: dict[str, dict[str, Any]] = {
    "llama_factory": {"per_device_train_batch_size": 2, "learning_rate": 5.0e-3, "max_steps": 40,
                      "logging_steps": 5, "save_steps": 20, "lr_scheduler_type": None, "warmup_ratio": None},
    "inference": {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 48, "n_paths": 2, "concurrency": 8},
    "evolve": {"rounds": 2, "batch_size": 12, "retrain": True},
    "reflect": {"max_drafts_per_question": None},
    "serve": {"replicas": 1},  # the demo serves its ORM twice over; tests that want replicas set them
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mathse.demo.assets import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny_qwen2vl")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(seed.jsonl, pool.jsonl) of synthetic image problems; half the seeds have solutions."""
    from mathse.demo.assets import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("data"), n_seed=8, n_pool=12, seed=0)


def write_run_config(tmp_path: Path, model: Path, seed_file: Path, pool_file: Path, **sections: Any) -> Path:
    """The demo config pointed at test fixtures, with `sections` merged over it."""
    cfg = yaml.safe_load((PROJECT_ROOT / "demo" / "config.yaml").read_text())
    cfg["run"]["output_dir"] = str(tmp_path / "output")
    cfg["model"]["base"] = str(model)
    cfg["data"] = {"seed_file": str(seed_file), "pool_file": str(pool_file)}
    cfg["llama_factory"]["recipe"] = str(PROJECT_ROOT / "configs" / "llama_factory" / "sft_full.yaml")
    cfg["eval"] = {"benchmarks": []}  # the demo's test set is not a fixture; tests add their own
    cfg.pop("ablations", None)  # the demo's ablation variants: tests that want variants give their own
    for name, values in TEST_SECTIONS.items():
        cfg.setdefault(name, {}).update(values)
    cfg["orm"] = {"backend": "rule", "policy": "rule"}  # tests that need an ORM serve their own
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(name), dict):
            cfg[name].update(values)
        else:
            cfg[name] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def run_config(tmp_path: Path, tiny_model: Path, demo_data: tuple[Path, Path]):
    """Factory: `run_config(**sections)` writes a config for this test and returns its path."""

    def make(**sections: Any) -> Path:
        return write_run_config(tmp_path, tiny_model, *demo_data, **sections)

    return make


def sigint_as_from_a_terminal() -> None:
    """Popen preexec_fn for tests that press Ctrl-C: the child takes SIGINT as a terminal's program
    does, even when the test run itself was started in the background (`cmd &` in a script), whose
    processes inherit SIGINT ignored (POSIX) and would never see the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------
# A checkpoint that really uses its image positions, and the vLLM environment


@pytest.fixture(scope="session")
def countdown_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo's count-down task, small: `train` (every problem with its solution) and `test`."""
    from mathse.demo.problems import write_countdown_dataset

    return write_countdown_dataset(tmp_path_factory.mktemp("countdown"), {"train": 60, "test": 24}, seed=0,
                                   solution_every={"train": 1, "test": None})


@pytest.fixture(scope="session")
def countdown_model(tmp_path_factory: pytest.TempPathFactory, countdown_data: dict[str, Path]) -> Path:
    """The demo-size tiny Qwen2-VL trained on count-down solutions by a real `llamafactory-cli train`.

    Unlike the random `tiny_model`, its answers depend on where the image sits: a random model's
    attention is nearly uniform and decodes the same with wrong image positions (measured), so only a
    trained checkpoint shows whether two engines build the same inputs. Demo size, because vLLM's
    CPU attention supports head_dim >= 32 (the test size has 16). ~20 s.
    """
    from mathse.demo.tiny_model import DEMO_SIZE, build_tiny_qwen2vl
    from mathse.model.prompts import student_prompt
    from mathse.model.training import compose_train_job, run_train_job
    from mathse.model.training_data import write_sharegpt_dataset
    from mathse.run.config_loading import load_config
    from mathse.run.records import SftExample, read_problems

    root = tmp_path_factory.mktemp("countdown_model")
    base = build_tiny_qwen2vl(root / "base", seed=0, size=DEMO_SIZE)
    problems = read_problems(countdown_data["train"])
    examples = [SftExample(prompt=student_prompt(p), response=p.solution or "", images=p.images) for p in problems]
    write_sharegpt_dataset(examples, root / "data", "countdown")
    settings = {"per_device_train_batch_size": 8, "learning_rate": 3.0e-3, "max_steps": 200, "save_steps": 1000,
                "lr_scheduler_type": "cosine", "warmup_ratio": 0.05}
    cfg = load_config(write_run_config(root, base, countdown_data["train"], countdown_data["test"],
                                       llama_factory=settings))
    job = compose_train_job(cfg, name="m0", datasets=["countdown"], dataset_dir=root / "data",
                            output_dir=root / "model", run_dir=root / "run")
    return run_train_job(job)


def vllm_python() -> str:
    """The vLLM environment's interpreter: $MATHSE_VLLM_PYTHON, else `make vllm-env`'s .venv-vllm."""
    python = os.environ.get("MATHSE_VLLM_PYTHON") or str(PROJECT_ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(python).is_file():
        pytest.fail(f"no vLLM environment at {python}: run `make vllm-env` (the README's `make test` does)")
    return python


# vLLM's CPU build (serve.vllm_cpu: float32, eager, no chunked prefill) with a 1 GiB KV cache.
VLLM_CPU_SERVE: dict[str, Any] = {
    "engine": "vllm",
    "vllm_cpu": True,
    "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
    "startup_timeout_s": 300,
}
