"""The served vLLM path end to end (issue 24): vLLM's CPU build, started and stopped by the pipeline.

An evolve round whose paths come from two vLLM replicas of M0, judged by a trained ORM that vLLM
serves with token log-probabilities, so `orm.score` and `orm.score_threshold` act on real numbers;
a server that cannot start; and Ctrl-C while the replicas run. After each, no vLLM process (server
or engine core) is left. Eval through vLLM is in tests/model/test_engine_agreement.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mathse.cli import main
from mathse.demo.problems import countdown_solution
from mathse.demo.tiny_model import DEMO_SIZE, build_tiny_qwen2vl
from mathse.judging.orm_data import LabelledPath
from mathse.judging.orm_endpoint import SERVED_MODEL_NAME
from mathse.model.servers import ServedModel, ServeError, serve_model
from mathse.model.training import compose_train_job, run_train_job
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run.config import ServeConfig
from mathse.run.config_loading import load_config
from mathse.run.records import Problem, read_problems
from mathse.run.storage import iter_jsonl, mark_done, read_json
from tests.conftest import PROJECT_ROOT, VLLM_CPU_SERVE, sigint_as_from_a_terminal, vllm_python, write_run_config
from tests.model.test_servers import posts_since_last_start, server_pids, wait_gone

# One xdist worker runs every vLLM test: their checks that no vLLM process is left look at all of them.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("vllm")]

THRESHOLD = 0.99  # P(correct) a "correct" verdict needs; a 40-step tiny ORM is rarely that sure


def labelled(problem: Problem, correct: bool) -> LabelledPath:
    a, b = (int(x) for x in problem.question[len("What is "):-1].split(" + "))
    path = countdown_solution(a, b)
    if not correct:  # the last step slips by one
        path = path.replace(f"\\boxed{{{a + b}}}", f"\\boxed{{{a + b + 1}}}")
    return LabelledPath(id=f"{problem.id}-{int(correct)}", question=problem.question, images=problem.images,
                        answer=problem.answer, path=path, correct=correct,
                        error_step=None if correct else len(path.splitlines()),
                        analysis="Every step is right." if correct else "The final answer is off by one.")


@pytest.fixture(scope="module")
def vllm_orm(tmp_path_factory: pytest.TempPathFactory, countdown_data: dict[str, Path]) -> Path:
    """A demo-size ORM trained on labelled count-down paths (2 correct : 1 incorrect), 40 steps: it
    writes the verdict JSON, so vLLM's log-probabilities of its "correct" value give a score."""
    root = tmp_path_factory.mktemp("vllm_orm")
    base = build_tiny_qwen2vl(root / "base", seed=1, size=DEMO_SIZE)
    problems = read_problems(countdown_data["train"])[:36]
    rows = [labelled(p, correct=i % 3 != 2) for i, p in enumerate(problems)]
    write_sharegpt_dataset((row.example() for row in rows), root / "data", "orm")
    settings = {"per_device_train_batch_size": 4, "learning_rate": 3.0e-3, "max_steps": 40, "save_steps": 1000,
                "cutoff_len": 768}
    cfg = load_config(write_run_config(root, base, countdown_data["train"], countdown_data["test"],
                                       llama_factory=settings))
    job = compose_train_job(cfg, name="orm", datasets=["orm"], dataset_dir=root / "data", output_dir=root / "model",
                            run_dir=root / "run")
    return run_train_job(job)


def evolve_config(tmp_path: Path, m0: Path, orm: Path, data: dict[str, Path]) -> Path:
    """One round over the 24 test problems x 4 sampled paths: student and ORM each served by 2 vLLM
    replicas, 16 seeded requests in flight per replica: more prompt tokens at once than vLLM schedules
    in a step (2,048), so it would chunk a prefill, which crashed its CPU worker before
    serve.vllm_cpu turned chunking off."""
    config = write_run_config(
        tmp_path, m0, data["train"], data["test"],
        inference={"backend": "served", "temperature": 1.0, "top_p": 1.0, "n_paths": 4, "max_new_tokens": 64,
                   "concurrency": 16},
        serve={**VLLM_CPU_SERVE, "python": vllm_python(), "replicas": 2},
        orm={"backend": "trained", "policy": "orm", "logprobs": True, "score_threshold": THRESHOLD,
             "max_new_tokens": 24, "serve_timeout_s": 300},
        evolve={"rounds": 1, "batch_size": 24, "retrain": False},
    )
    cfg = load_config(config)
    for name, model in (("sft_model_stage0", m0), ("orm_model", orm)):
        shutil.copytree(model, cfg.model_path(name))
        mark_done(cfg.model_path(name), {"job": f"a checkpoint trained by the test stands in for {name}"})
    d_sft = cfg.output_dir / "distill" / "d_sft.jsonl"
    d_sft.parent.mkdir(parents=True)
    d_sft.write_text(json.dumps({"id": "s", "prompt": "q", "images": [], "answer": "1", "response": "r",
                                 "origin": "seed"}) + "\n")
    return config


def test_an_evolve_round_served_and_judged_by_vllm(
    countdown_model: Path, vllm_orm: Path, countdown_data: dict[str, Path], tmp_path: Path
) -> None:
    config = evolve_config(tmp_path, countdown_model, vllm_orm, countdown_data)
    cfg = load_config(config)
    assert main(["--stage", "evolve", "--config", str(config)]) == 0
    assert not wait_gone(vllm_python())  # servers and their engine-core processes are gone

    rd = cfg.output_dir / "evolve" / "round_1"
    stats = read_json(rd / "stats.json")
    assert stats["paths"] == 96
    rows = list(iter_jsonl(rd / "generations.shard-0-of-1.jsonl"))
    assert len({row["key"] for row in rows}) == len(rows) == 96 and not any(row.get("error") for row in rows)
    # The paths came from two vLLM replicas of M0, each answering some of them.
    student = sorted((rd / "servers").glob("sft_model_stage0-*.replica-*.log"))
    assert len(student) == 2 and all(posts_since_last_start(log) > 0 for log in student)
    assert all("vllm.entrypoints.openai.api_server" in log.read_text().splitlines()[0] for log in student)
    # The ORM was served by vLLM too, and its log-probabilities scored every verdict it wrote.
    orm_logs = sorted((rd / "servers").glob(f"{SERVED_MODEL_NAME}.replica-*.log"))
    assert len(orm_logs) == 2 and sum(posts_since_last_start(log) for log in orm_logs) > 0
    (journal,) = (cfg.output_dir / "orm_reflections").glob("evolve_round_1.*.jsonl")
    verdicts = list(iter_jsonl(journal))
    assert len(verdicts) == 96
    parsed = [v for v in verdicts if v["orm"]["parsed"]]
    assert parsed, [v["orm"]["raw"] for v in verdicts]
    assert all(v["orm"]["score_source"] == "logprobs" and 0.0 <= v["orm"]["score"] <= 1.0 for v in parsed)
    # orm.score_threshold: a "correct" below it is rejected, at or above it accepted (policy orm).
    for v in parsed:
        if v["orm"]["correct"] is True:
            assert v["final"]["correct"] is (v["orm"]["score"] >= THRESHOLD), v
    assert any(v["orm"]["correct"] is True and v["final"]["correct"] is False for v in parsed), verdicts
    assert stats["accepted"] == sum(v["final"]["correct"] is True for v in verdicts)


def test_a_vllm_server_that_cannot_start_is_a_clear_error_and_leaves_nothing(tmp_path: Path) -> None:
    serve = ServeConfig(**{**VLLM_CPU_SERVE, "python": vllm_python(), "startup_timeout_s": 120})
    with pytest.raises(ServeError, match=r"exited with") as err, \
            serve_model(serve, ServedModel(name="missing", model=str(tmp_path / "no-such-model")), tmp_path / "srv"):
        pass
    assert "missing.replica-0.log" in str(err.value)
    assert not wait_gone(vllm_python())


def test_ctrl_c_while_vllm_replicas_serve_stops_every_process(
    countdown_model: Path, vllm_orm: Path, countdown_data: dict[str, Path], tmp_path: Path
) -> None:
    config = evolve_config(tmp_path, countdown_model, vllm_orm, countdown_data)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    log_path = tmp_path / "main.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "main.py"), "--stage", "evolve", "--config",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=sigint_as_from_a_terminal)
        deadline = time.monotonic() + 240
        running: list[int] = []
        while len(running) < 2 and time.monotonic() < deadline and proc.poll() is None:
            running = server_pids(vllm_python())
            time.sleep(0.5)
        assert running, log_path.read_text()[-2000:]
        time.sleep(5)  # the replicas are starting (their engine cores spawning) or serving
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log_path.read_text()[-2000:]
    leftover: list[Any] = wait_gone(vllm_python())
    assert not leftover, leftover
    assert "interrupted: rerun the same command to resume" in log_path.read_text()
