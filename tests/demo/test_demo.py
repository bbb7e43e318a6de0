"""The demo's method visibly works: one self-training round beats M0 on held-out problems.

A smaller version of `make demo` (one round, a smaller pool): the scripted teacher writes half the
seed solutions over real HTTP, `llamafactory-cli train` trains M0 and M1 on the DEMO_SIZE tiny
model, ChatModel samples and evaluates. A wrong chat template, a masked-out response or harvested
paths in the wrong format would all show up here as "no improvement".
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from mathse import cli
from mathse.demo.problems import write_countdown_dataset
from mathse.demo.run import DEMO_SPLITS
from mathse.demo.tiny_model import DEMO_SIZE, build_tiny_qwen2vl
from mathse.testing.scripted_teacher import serve_scripted_teacher
from tests.conftest import PROJECT_ROOT


def accuracy(out: Path) -> dict[str, float]:
    with (out / "eval" / "results.csv").open(encoding="utf-8") as handle:
        return {row["checkpoint"]: float(row["demo-test"]) for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_one_retrained_round_beats_m0(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # Seed 0 and the demo's own splits (`make demo`'s M0), measured on the first half of the test set (a
    # shorter test): with this step-checking judge round 1 gave 50.7% -> 78.7% here (on the corrected
    # engine, issue 24; 19.3% -> 32.0% on the whole test set before).
    model = build_tiny_qwen2vl(tmp_path / "model", seed=0, size=DEMO_SIZE)
    data = write_countdown_dataset(tmp_path / "data", DEMO_SPLITS, seed=0, solution_every={"seed": 2})
    test_half = tmp_path / "data" / "test_half.jsonl"
    test_half.write_text("".join(data["test"].read_text().splitlines(keepends=True)[: DEMO_SPLITS["test"] // 2]))
    cfg = yaml.safe_load((PROJECT_ROOT / "demo" / "config.yaml").read_text())
    cfg["run"] = {"output_dir": str(tmp_path / "output"), "seed": 0}
    cfg["model"]["base"] = str(model)
    cfg["data"] = {"seed_file": str(data["seed"]), "pool_file": str(data["pool"])}
    cfg["llama_factory"]["recipe"] = str(PROJECT_ROOT / "configs" / "llama_factory" / "sft_full.yaml")
    cfg["evolve"].update({"rounds": 1, "batch_size": 125})  # half the pool: a smaller round, a shorter test
    # One request at a time: each request's sampling is seeded from (run.seed, its key), so the test
    # does not hang on how two generate threads interleave torch's global RNG (it once failed 10% -> 4%).
    cfg["inference"]["concurrency"] = 1
    # The demo trains and serves its own ORM (`--stage orm`, ~3 min more); here the scripted
    # teacher judges step by step over the same OpenAI protocol, to stay within a few minutes.
    cfg["orm"] = {"backend": "api", "policy": "both", "logprobs": False,
                  "api": {"base_url": "http://127.0.0.1:1/v1", "model": "scripted-judge", "max_tokens": 512}}
    cfg["eval"].update({"checkpoints": ["stage0", "round_1"],
                        "benchmarks": [{"name": "demo-test", "format": "jsonl", "path": str(test_half)}]})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    with serve_scripted_teacher(error_rate=0.2, seed=0) as (server, teacher):
        for stage in ("distill", "evolve", "eval"):
            urls = [f"--set=teacher.base_url={server.base_url}", f"--set=orm.api.base_url={server.base_url}"]
            argv = ["--stage", stage, "--config", str(config), *urls]
            assert cli.main(argv) == 0, stage
    assert not teacher.unreadable
    assert teacher.counts["distill"] == DEMO_SPLITS["seed"] // 2
    printed, errors = capfd.readouterr()
    assert "teacher solutions kept" in printed
    # LLaMA-Factory's own log (training, ChatModel loading) is in the stages' logs, not on the console.
    console = printed + errors
    assert "[INFO|" not in console and "loading configuration file" not in console, console[-2000:]
    assert "train_m0: train" in errors  # the step bar
    assert "loading configuration file" in (tmp_path / "output" / "distill" / "train_m0.log").read_text()

    acc = accuracy(tmp_path / "output")
    print(f"held-out accuracy: {acc}")
    assert acc["round_1"] > acc["stage0"], acc
