"""One checkpoint, every engine, the same answers (issue 24).

A count-down checkpoint trained by `llamafactory-cli train` is evaluated as a run's M0 (`--stage eval`,
greedy, 24 image problems) through each engine the pipeline can run: the in-process ChatModel, and
`llamafactory-cli api` and vLLM servers the pipeline starts and stops. The texts must be the same
(>= 95% of items) and the accuracies equal within one item.

This is the test that would have caught LLaMA-Factory 0.9.5 decoding the Qwen2-VL family with
the image's rope positions missing (mathse/model/llamafactory_qwen_vl_positions.py): the in-process
engine and `llamafactory-cli api` then wrote other texts than vLLM for most items (measured: 0 of
20 identical). The last part shows the test can still see that: without the adapter, the in-process
engine disagrees again. Keep it when versions move.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mathse.cli import main
from mathse.run.config_loading import load_config
from mathse.run.records import read_problems
from mathse.run.storage import iter_jsonl, mark_done
from mathse.testing.shipped_chat_model import shipped_greedy_texts
from tests.conftest import VLLM_CPU_SERVE, vllm_python, write_run_config
from tests.model.test_servers import wait_gone

# One xdist worker runs every vLLM test: their checks that no vLLM process is left look at all of them.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]

MAX_NEW_TOKENS = 120  # the longest count-down solution (b = 9) is ~100 tokens


ENGINES: dict[str, dict[str, Any]] = {
    "in-process": {"inference": {"backend": "huggingface"}},
    "llamafactory-cli api": {"inference": {"backend": "served"}, "serve": {"engine": "llamafactory"}},
    "vllm": {"inference": {"backend": "served"}, "serve": VLLM_CPU_SERVE},
}


def evaluate(root: Path, model: Path, data: dict[str, Path], engine: str) -> dict[str, dict[str, Any]]:
    """`--stage eval` of `model` as M0 on the test split through `engine`; id -> prediction row."""
    root.mkdir()
    sections = {name: dict(values) for name, values in ENGINES[engine].items()}
    sections["inference"].update({"temperature": 0, "n_paths": 1, "concurrency": 4})
    if sections.get("serve", {}).get("engine") == "vllm":
        sections["serve"]["python"] = vllm_python()
    sections["eval"] = {"checkpoints": ["stage0"], "max_new_tokens": MAX_NEW_TOKENS,
                        "benchmarks": [{"name": "countdown", "format": "jsonl", "path": str(data["test"])}]}
    config = write_run_config(root, model, data["train"], data["test"], **sections)
    cfg = load_config(config)
    shutil.copytree(model, cfg.model_path("sft_model_stage0"))
    mark_done(cfg.model_path("sft_model_stage0"), {"job": "the count-down checkpoint is this run's M0"})
    assert main(["--stage", "eval", "--config", str(config)]) == 0
    # A served engine's processes are gone after the stage (vLLM's engine cores too).
    assert not wait_gone(str(cfg.output_dir)) and not wait_gone(vllm_python())
    rows = iter_jsonl(cfg.output_dir / "eval" / "stage0" / "countdown" / "predictions.jsonl")
    return {row["id"]: row for row in rows}


def test_in_process_llamafactory_api_and_vllm_write_the_same_greedy_answers(
    countdown_model: Path, countdown_data: dict[str, Path], tmp_path: Path
) -> None:
    problems = read_problems(countdown_data["test"])
    assert len(problems) >= 20 and all(p.images for p in problems)
    predictions = {engine: evaluate(tmp_path / engine.replace(" ", "_"), countdown_model, countdown_data, engine)
                   for engine in ENGINES}
    texts = {engine: {i: row["response"] for i, row in rows.items()} for engine, rows in predictions.items()}
    reference = texts["in-process"]
    n = len(problems)
    assert sorted(reference) == sorted(p.id for p in problems)
    summary = {engine: {"identical_to_in_process": sum(t[k] == reference[k] for k in reference),
                        "correct": sum(bool(row["correct"]) for row in predictions[engine].values())}
               for engine, t in texts.items()}
    print(json.dumps(summary))
    for engine, row in summary.items():
        differs = _first_difference(reference, texts[engine])
        assert row["identical_to_in_process"] >= 0.95 * n, (engine, summary, differs)
        assert abs(row["correct"] - summary["in-process"]["correct"]) <= 1, summary
    # The checkpoint learned its task (measured: 8 of 24 right; a random model gets none): its answers
    # depend on the image and the question, so engines that build different inputs would disagree.
    assert summary["in-process"]["correct"] >= n // 6, summary

    # Without the adapter the in-process engine writes other texts: the comparison above can fail.
    unpatched = shipped_greedy_texts(countdown_model, problems[:6], MAX_NEW_TOKENS)
    assert sum(unpatched[p.id] != reference[p.id] for p in problems[:6]) >= 3, unpatched


def _first_difference(a: dict[str, str], b: dict[str, str]) -> tuple[str, str, str] | None:
    for key in a:
        if a[key] != b.get(key):
            return key, a[key], b.get(key, "<missing>")
    return None
