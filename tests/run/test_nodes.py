"""Multi-node: node 0 pays for the API calls and writes the data; node 1 only joins the training.

Two `main.py` processes on this machine play the two nodes (torchrun with nnodes 2 over gloo),
sharing one output_dir as nodes share a filesystem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mathse.model.processes import free_port
from mathse.run.storage import is_done
from mathse.testing.openai_server import FakeOpenAIServer
from tests.conftest import PROJECT_ROOT, write_run_config
from tests.stages.test_distill import teacher_reply


def node_config(tmp_path: Path, tiny_model: Path, demo_data, rank: int, teacher: str, port: int, **extra: Any) -> Path:
    folder = tmp_path / f"node{rank}"
    folder.mkdir()
    launcher = {"nnodes": 2, "node_rank": rank, "nproc_per_node": 1, "master_addr": "127.0.0.1",
                "master_port": port, **extra}
    config = write_run_config(folder, tiny_model, *demo_data,
                              teacher={"base_url": teacher, "model": "gpt-4o", "max_retries": 1},
                              llama_factory={"launcher": launcher, "max_steps": 6, "save_steps": 3})
    raw = yaml.safe_load(config.read_text())
    raw["run"]["output_dir"] = str(tmp_path / "shared_output")  # one filesystem for both nodes
    config.write_text(yaml.safe_dump(raw))
    return config


@pytest.mark.slow
def test_rank_1_makes_no_api_call_and_joins_the_training(tmp_path: Path, tiny_model: Path, demo_data) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with FakeOpenAIServer(replies=teacher_reply) as node0_teacher, FakeOpenAIServer(replies=teacher_reply) as spy:
        configs = [node_config(tmp_path, tiny_model, demo_data, 0, node0_teacher.base_url, port),
                   node_config(tmp_path, tiny_model, demo_data, 1, spy.base_url, port)]
        # Node 1 starts first: it must wait for node 0's data, not make it.
        procs = [subprocess.Popen([sys.executable, "main.py", "--stage", "distill", "--config", str(configs[rank])],
                                  cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for rank in (1, 0)]
        outs = [p.communicate(timeout=900)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
        seeds = [json.loads(line) for line in demo_data[0].read_text().splitlines()]
        assert node0_teacher.chat_calls == sum(1 for s in seeds if not s.get("solution"))
        assert spy.calls == 0  # node 1 never called an API
    out = tmp_path / "shared_output"
    node1 = outs[0]
    assert "node_rank 1: waiting for node 0's D_SFT" in node1 and "this node's share of M0's training is done" in node1
    assert "Multi-node training enabled: num nodes: 2" in (out / "distill" / "train_m0.log").read_text()
    assert (out / "distill" / "train_m0.rank1.log").is_file()
    assert is_done(out / "sft_model_stage0") and (out / "sft_model_stage0" / "model.safetensors").is_file()


def test_rank_1_gives_up_with_a_clear_line(tmp_path: Path, tiny_model: Path, demo_data, capsys) -> None:
    from mathse.cli import main

    config = node_config(tmp_path, tiny_model, demo_data, 1, "http://127.0.0.1:9/v1", free_port(),
                         wait_timeout_s=0.5)
    assert main(["--stage", "distill", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: node_rank 1: waited 0s for node 0's D_SFT")
    assert not (tmp_path / "shared_output" / "distill" / "d_sft.jsonl").exists()
    assert main(["--stage", "reflect", "--config", str(config)]) == 0
    assert "reflect: node_rank 1: runs on node 0 only" in capsys.readouterr().out
