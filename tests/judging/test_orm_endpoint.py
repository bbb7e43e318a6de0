"""The pipeline serves the trained ORM itself (`serving.serve_model`, engine llamafactory here): started, used, stopped.

The "trained ORM" is the tiny model copied to paths.orm_model: it judges nonsense, which is what
an untrained-for-this model does; what is checked is the server's life cycle, that a stage really
talks to it, and that no process is left after success, after a failure, and after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from mathse.cli import main
from mathse.judging.judge import JudgeItem, PathJudge, open_journal
from mathse.judging.orm_endpoint import SERVED_MODEL_NAME, orm_endpoint, orm_serve_spec
from mathse.run.config_loading import load_config
from mathse.run.records import read_problems
from mathse.run.storage import mark_done, read_json
from tests.conftest import PROJECT_ROOT, sigint_as_from_a_terminal

pytestmark = pytest.mark.slow

PATH = "Step 1: Look at the figure.\nStep 2: Work it out.\nThe final answer is \\boxed{{{answer}}}"


def api_servers(root: psutil.Process) -> list[psutil.Process]:
    """`llamafactory-cli api` processes under `root`."""
    found = []
    for proc in root.children(recursive=True):
        try:
            if "api" in proc.cmdline() and any("llamafactory" in part for part in proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def trained_orm_config(run_config, tiny_model, demo_data, tmp_path: Path) -> Path:
    """backend trained with no orm.api: the pipeline must serve paths.orm_model itself."""
    heldout = tmp_path / "heldout.jsonl"
    rows = []
    for p in read_problems(demo_data[0])[:2]:
        base = {"id": p.id, "question": p.question, "images": list(p.images), "answer": p.answer}
        rows.append({**base, "path": PATH.format(answer=p.answer), "correct": True, "analysis": "ok"})
    heldout.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = run_config(orm={"backend": "trained", "policy": "orm", "max_new_tokens": 8, "logprobs": False,
                             "train_file": str(heldout), "heldout_file": str(heldout), "serve_timeout_s": 300})
    model_dir = load_config(config).model_path("orm_model")
    shutil.copytree(tiny_model, model_dir)
    mark_done(model_dir, {"job": "the tiny model stands in for a trained ORM"})
    return config


def test_stage_serves_the_orm_uses_it_and_stops_it(trained_orm_config: Path, capsys) -> None:
    cfg = load_config(trained_orm_config)
    spec = orm_serve_spec(cfg)
    args = spec.llamafactory_args
    # Served like it was trained: the run's template and image size, greedy.
    assert (args["template"], args["image_max_pixels"], args["do_sample"]) == ("qwen2_vl", 12544, False)
    assert (spec.name, spec.inputs.image_max_pixels) == (SERVED_MODEL_NAME, 12544)
    assert main(["--stage", "orm", "--config", str(trained_orm_config)]) == 0
    out = capsys.readouterr().out
    assert f"server(s) for {SERVED_MODEL_NAME}" in out and "held-out metrics on 2 paths" in out
    metrics = read_json(cfg.model_path("orm_model") / "orm_metrics.json")
    assert metrics["paths"] == 2 and 0.0 <= metrics["unparseable_rate"] <= 1.0
    logs = list((cfg.output_dir / "orm" / "servers").glob("*.log"))
    served = logs[0].read_text() if len(logs) == 1 else ""
    # The server's own log, in the stage folder: it answered our calls, then shut down cleanly.
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in served and "Finished server process" in served
    verdicts = [json.loads(x) for x in (cfg.output_dir / "orm" / "heldout_verdicts.jsonl").read_text().splitlines()]
    assert len({v["key"] for v in verdicts}) == 2 and all(isinstance(v["orm"]["raw"], str) for v in verdicts)
    assert api_servers(psutil.Process()) == []


def test_failure_inside_the_block_stops_the_server(trained_orm_config: Path) -> None:
    cfg = load_config(trained_orm_config)
    problem = read_problems(cfg.data.seed_file)[0]
    with pytest.raises(RuntimeError, match="boom"), orm_endpoint(cfg, cfg.output_dir / "serve") as endpoint:
        assert endpoint is not None and endpoint.api.base_url.startswith("http://127.0.0.1:")
        assert not endpoint.cache  # a retrained ORM has the same name: its verdicts are never cached
        (server,) = api_servers(psutil.Process())
        with open_journal(cfg, "serve-test") as journal:
            item = JudgeItem("k", problem, PATH.format(answer=1))
            stats = PathJudge(cfg, "serve-test", endpoint=endpoint).judge([item], journal)
        assert stats.failed == 0 and stats.judged == 1  # the served ORM answered
        raise RuntimeError("boom")
    assert gone(server) and api_servers(psutil.Process()) == []


def test_ctrl_c_stops_the_server(trained_orm_config: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    log = (tmp_path / "main.log").open("w")
    main_proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "main.py"), "--stage", "orm", "--config",
                                  str(trained_orm_config)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                 preexec_fn=sigint_as_from_a_terminal)
    parent = psutil.Process(main_proc.pid)
    deadline = time.monotonic() + 240
    servers: list[psutil.Process] = []
    while not servers and time.monotonic() < deadline and main_proc.poll() is None:
        servers = api_servers(parent)
        time.sleep(0.5)
    assert servers, (tmp_path / "main.log").read_text()[-2000:]
    time.sleep(3)  # the server is starting or serving: Ctrl-C must stop it either way
    main_proc.send_signal(signal.SIGINT)
    assert main_proc.wait(timeout=120) == 130
    for server in servers:
        with contextlib.suppress(psutil.NoSuchProcess):
            server.wait(timeout=30)  # reaped by the pipeline, or already gone
        assert gone(server)
    assert "interrupted: rerun the same command to resume" in (tmp_path / "main.log").read_text()


def test_evolve_judges_with_the_served_orm_and_keeps_unknown_apart(trained_orm_config: Path, tiny_model) -> None:
    """One evolve round judged by the pipeline-served ORM (policy orm): the tiny model's verdicts are
    mostly unreadable; those are unknown, not rejected, and the server is gone after the round."""
    raw = yaml.safe_load(trained_orm_config.read_text())
    raw["evolve"] = {"rounds": 1, "batch_size": 2, "retrain": False}
    raw["inference"].update({"n_paths": 1, "max_new_tokens": 8, "temperature": 0})
    trained_orm_config.write_text(yaml.safe_dump(raw))
    cfg = load_config(trained_orm_config)
    shutil.copytree(tiny_model, cfg.model_path("sft_model_stage0"))
    mark_done(cfg.model_path("sft_model_stage0"), {"job": "the tiny model stands in for M0"})
    d_sft = cfg.output_dir / "distill" / "d_sft.jsonl"
    d_sft.parent.mkdir(parents=True)
    d_sft.write_text(json.dumps({"id": "s", "prompt": "q", "images": [], "answer": "1", "response": "r",
                                 "origin": "seed"}) + "\n")
    assert main(["--stage", "evolve", "--config", str(trained_orm_config)]) == 0
    rd = cfg.output_dir / "evolve" / "round_1"
    stats = read_json(rd / "stats.json")
    assert stats["paths"] == 2 and stats["unknown"] + stats["rejected"] + stats["accepted"] == 2
    verdicts = [json.loads(x) for x in next((cfg.output_dir / "orm_reflections").glob("evolve_round_1.*.jsonl"))
                .read_text().splitlines()]
    unknown = {v["id"] for v in verdicts if v["final"]["correct"] is None}
    assert len(unknown) == stats["unknown"]
    rejected = [json.loads(x) for x in (rd / "rejected.jsonl").read_text().splitlines()]
    hard = [json.loads(x) for x in (rd / "hard.jsonl").read_text().splitlines()]
    assert not unknown & {r["id"] for r in rejected} and not unknown & {h["id"] for h in hard}
    assert unknown <= set(read_json(rd / "remain.json"))
    (log,) = (rd / "servers").glob(f"{SERVED_MODEL_NAME}*.log")
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in log.read_text()
    assert api_servers(psutil.Process()) == []
