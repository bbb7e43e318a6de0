"""Stage 2 end to end on the tiny model: two rounds with retraining, kills, shards.

The ORM is a real HTTP server whose scripted verdict depends only on the prompt (question and
path), so the outcome of a run is a function of its inputs; generation is greedy, so an
interrupted run and an uninterrupted one must produce the same buffers, datasets and stats.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from mathse.cli import main
from mathse.run import layout
from mathse.run.config_loading import load_config
from mathse.run.storage import is_done, iter_jsonl
from mathse.testing.openai_server import FakeOpenAIServer, last_user_text
from tests.conftest import PROJECT_ROOT, write_run_config

pytestmark = pytest.mark.slow

ROUNDS = 2


def orm_reply(body: dict[str, Any]) -> str:
    """A deterministic judge: about half the paths are correct, by a hash of the prompt."""
    text = last_user_text(body)
    if zlib.crc32(text.encode()) % 2 == 0:
        return '{"correct": true, "error_step": null, "analysis": "All steps hold."}'
    return '{"correct": false, "error_step": 1, "analysis": "Step 1 misreads the figure."}'


def teacher_reply(body: dict[str, Any]) -> str:
    return "Step 1: Read the figure.\nThe final answer is \\boxed{1}"


@pytest.fixture(scope="module")
def servers():
    with FakeOpenAIServer(replies=orm_reply) as orm, FakeOpenAIServer(replies=teacher_reply) as teacher:
        yield orm, teacher


def evolve_sections(servers) -> dict[str, Any]:
    orm, teacher = servers
    return {
        "teacher": {"base_url": teacher.base_url, "model": "teacher", "filter_by_answer": False},
        "orm": {"backend": "api", "policy": "orm", "api": {"base_url": orm.base_url, "model": "orm", "max_retries": 1}},
        "inference": {"temperature": 0, "n_paths": 2, "max_new_tokens": 16, "concurrency": 4},
        "evolve": {"rounds": ROUNDS, "batch_size": 5, "retrain": True, "retrain_from": "previous"},
    }


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_model, demo_data, servers) -> Path:
    """A run directory with Stage 1 finished (M0 trained), copied by each test."""
    root = tmp_path_factory.mktemp("distilled")
    config = write_run_config(root, tiny_model, *demo_data, **evolve_sections(servers))
    assert main(["--stage", "distill", "--config", str(config)]) == 0
    return root


def fresh_run(distilled: Path, tmp_path: Path, tiny_model, demo_data, servers) -> Path:
    shutil.copytree(distilled / "output", tmp_path / "output", symlinks=True)
    return write_run_config(tmp_path, tiny_model, *demo_data, **evolve_sections(servers))


@pytest.fixture(scope="module")
def baseline(distilled, tmp_path_factory, tiny_model, demo_data, servers) -> Path:
    """An uninterrupted, unsharded two-round run: the reference outputs."""
    tmp_path = tmp_path_factory.mktemp("baseline")
    config = fresh_run(distilled, tmp_path, tiny_model, demo_data, servers)
    assert main(["--stage", "evolve", "--config", str(config)]) == 0
    return tmp_path / "output"


TIMING = {"gen_seconds", "paths_per_s", "shards", "model", "gen_s", "latency_s"}


def outputs(out: Path) -> dict[str, Any]:
    """Everything a run decided, minus timings and absolute run paths."""
    ev = out / "evolve"
    found: dict[str, Any] = {}
    for name in ("sft_chosen", "sft_rejected", "hard_problems", "history", "d_sft"):
        found[name] = list(iter_jsonl(ev / f"{name}.jsonl"))
    for r in range(1, ROUNDS + 1):
        rd = ev / f"round_{r}"
        found[f"batch_{r}"] = json.loads((rd / "batch.json").read_text())
        found[f"remain_{r}"] = json.loads((rd / "remain.json").read_text())
        stats = json.loads((rd / "stats.json").read_text())
        found[f"stats_{r}"] = {k: v for k, v in stats.items() if k not in TIMING}
    found["dataset"] = json.loads((out / "data" / "mathse_stage_final.json").read_text())
    return found


def test_two_rounds_are_consistent(baseline: Path, demo_data) -> None:
    ev = baseline / "evolve"
    pool = [json.loads(line)["id"] for line in demo_data[1].read_text().splitlines()]
    remain_before = pool
    chosen = list(iter_jsonl(ev / "sft_chosen.jsonl"))
    rejected = list(iter_jsonl(ev / "sft_rejected.jsonl"))
    assert chosen and rejected, "the scripted ORM accepts some paths and rejects others"
    for r in range(1, ROUNDS + 1):
        rd = ev / f"round_{r}"
        assert is_done(rd) and is_done(baseline / f"sft_model_round_{r}")
        batch = json.loads((rd / "batch.json").read_text())
        remain = json.loads((rd / "remain.json").read_text())
        solved = {c["id"] for c in chosen if c["round"] == r}
        assert set(batch) <= set(remain_before) and len(batch) == 5
        # every attempted problem is in exactly one of chosen / remaining
        for pid in batch:
            assert (pid in solved) != (pid in remain), pid
        assert set(remain) == set(remain_before) - solved
        # every path judged exactly once, generations and verdicts line up
        generations = list(iter_jsonl(rd / "generations.shard-0-of-1.jsonl"))
        verdicts = list(iter_jsonl(baseline / "orm_reflections" / f"evolve_round_{r}.shard-0-of-1.jsonl"))
        assert sorted(g["key"] for g in generations) == sorted(f"{p}#{k}" for p in batch for k in range(2))
        assert sorted(v["key"] for v in verdicts) == sorted(g["key"] for g in generations)
        stats = json.loads((rd / "stats.json").read_text())
        round_chosen = [c for c in chosen if c["round"] == r]
        round_rejected = [x for x in rejected if x["round"] == r]
        assert stats["accepted"] == len(round_chosen) and stats["rejected"] == len(round_rejected)
        assert stats["accepted"] + stats["rejected"] == stats["paths"] == 10
        assert stats["pool_left"] == len(remain)
        remain_before = remain
    hard = list(iter_jsonl(ev / "hard_problems.jsonl"))
    assert {(h["id"], h["round"]) for h in hard} == {(x["id"], x["round"]) for x in rejected} - {
        (c["id"], c["round"]) for c in chosen
    }
    assert all(p["error_step"] == 1 and "misreads" in p["analysis"] for h in hard for p in h["paths"])
    history = list(iter_jsonl(ev / "history.jsonl"))
    assert len(history) == 5 * ROUNDS and all(len(h["verdicts"]) == 2 for h in history)
    d_sft = list(iter_jsonl(ev / "d_sft.jsonl"))
    distilled_rows = list(iter_jsonl(baseline / "distill" / "d_sft.jsonl"))
    assert len(d_sft) == len(distilled_rows) + len(chosen)
    assert len(json.loads((baseline / "data" / "mathse_stage_final.json").read_text())) == len(d_sft)
    final = baseline / "sft_model_final"
    assert final.is_symlink() and final.resolve() == (baseline / f"sft_model_round_{ROUNDS}").resolve()


def test_rerun_of_finished_stage_does_no_work(baseline: Path, servers) -> None:
    config = baseline.parent / "config.yaml"
    calls = servers[0].chat_calls
    before = outputs(baseline)
    assert main(["--stage", "evolve", "--config", str(config)]) == 0
    assert servers[0].chat_calls == calls
    assert outputs(baseline) == before


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before the kill point")
        time.sleep(0.05)
    raise AssertionError("kill point never reached")


def start(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MAX_CONCURRENT": "1"}
    return subprocess.Popen(
        [sys.executable, "main.py", "--stage", "evolve", "--config", str(config)],
        cwd=PROJECT_ROOT, stdout=log.open("a"), stderr=subprocess.STDOUT, env=env,
    )


def test_sigkill_mid_generation_and_mid_training_then_rerun_equals_uninterrupted(
    baseline, distilled, tmp_path, tiny_model, demo_data, servers
) -> None:
    config = fresh_run(distilled, tmp_path, tiny_model, demo_data, servers)
    out = tmp_path / "output"
    log = tmp_path / "runs.log"
    generations = out / "evolve" / "round_1" / "generations.shard-0-of-1.jsonl"

    proc = start(config, log)
    wait_for(lambda: generations.is_file() and len(generations.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not is_done(out / "evolve" / "round_1")

    proc = start(config, log)
    model_dir = out / "sft_model_round_1"
    wait_for(lambda: model_dir.is_dir() and any(model_dir.glob("checkpoint-*")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # the trainer child dies with its parent (PR_SET_PDEATHSIG)
    assert not is_done(model_dir)

    proc = start(config, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert outputs(out) == outputs(baseline)
    # the resumed runs generated no key twice
    rows = list(iter_jsonl(generations))
    assert len(rows) == len({r["key"] for r in rows}) == 10


def test_two_shards_plus_merge_equal_one_unsharded_run(baseline, distilled, tmp_path, tiny_model, demo_data, servers):
    config = fresh_run(distilled, tmp_path, tiny_model, demo_data, servers)
    out = tmp_path / "output"
    for r in range(1, ROUNDS + 1):
        assert main(["--stage", "evolve", "--config", str(config), "--shard", "1/2"]) == 0
        # merging before every shard is done is refused, and changes nothing
        assert main(["--stage", "evolve", "--config", str(config), "--merge"]) == 2
        assert main(["--stage", "evolve", "--config", str(config), "--shard", "0/2"]) == 0
        assert main(["--stage", "evolve", "--config", str(config), "--merge"]) == 0
        assert is_done(out / "evolve" / f"round_{r}")
    assert outputs(out) == outputs(baseline)
    assert json.loads((out / "evolve" / "round_1" / "stats.json").read_text())["shards"] == 2


def test_round_that_accepts_nothing_does_not_retrain(distilled, tmp_path, tiny_model, demo_data, servers, capsys):
    """No new path means the same D_SFT: no training; the chain stays on the previous model (M0)."""
    rejecting = '{"correct": false, "error_step": 1, "analysis": "Step 1 is wrong."}'
    with FakeOpenAIServer(replies=rejecting) as orm:
        config = fresh_run(distilled, tmp_path, tiny_model, demo_data, (orm, servers[1]))
        assert main(["--stage", "evolve", "--config", str(config)]) == 0
    out = tmp_path / "output"
    m0 = out / "sft_model_stage0"
    printed = capsys.readouterr().out
    for r in range(1, ROUNDS + 1):
        marker = json.loads((out / "evolve" / f"round_{r}" / ".mathse_done.json").read_text())
        assert marker["accepted"] == 0 and marker["paths"] > 0
        assert not (out / f"sft_model_round_{r}").exists()
        assert f"round {r} accepted no new path; not retraining" in printed
    assert (out / "sft_model_final").resolve() == m0.resolve()
    assert not list((out / "evolve").rglob("train_round_*.log"))
    # Eval (and the next round) take each round's checkpoint to be the model it kept: M0.
    cfg = load_config(config)
    assert all(layout.round_model(cfg, r).resolve() == m0.resolve() for r in range(1, ROUNDS + 1))
