"""The LLaMA-Factory bridge: sharegpt datasets, composed YAML, and a real `llamafactory-cli train`."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
import yaml

from mathse.model.processes import free_port
from mathse.model.servers import serve_api
from mathse.model.training import TrainingError, TrainJob, compose_train_job, launcher_env, run_train_job
from mathse.model.training_data import write_sharegpt_dataset
from mathse.run.config_loading import load_config
from mathse.run.records import SftExample, read_problems
from mathse.run.storage import is_done, read_marker


def test_sharegpt_dataset_and_registration(tmp_path: Path) -> None:
    examples = [SftExample(prompt=f"q{i}", response=f"a{i}", images=("/x/a.png",) * (i % 3)) for i in range(5)]
    assert write_sharegpt_dataset(iter(examples), tmp_path, "ds1") == 5
    write_sharegpt_dataset([SftExample(prompt="p", response="r")], tmp_path, "ds2")
    rows = json.loads((tmp_path / "ds1.json").read_text())
    assert rows[2] == {
        "messages": [{"role": "user", "content": "<image><image>q2"}, {"role": "assistant", "content": "a2"}],
        "images": ["/x/a.png", "/x/a.png"],
    }
    assert "images" not in rows[0]
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert set(info) == {"ds1", "ds2"} and info["ds1"]["file_name"] == "ds1.json"
    assert info["ds1"]["formatting"] == "sharegpt" and info["ds1"]["columns"]["images"] == "images"


def test_compose_layers_recipe_config_and_stage(run_config) -> None:
    cfg = load_config(run_config(llama_factory={"learning_rate": 3e-4, "extra": {"weight_decay": 0.1}}))
    job = compose_train_job(
        cfg,
        name="t",
        model_path="/m",
        datasets=["a", "b"],
        dataset_dir=Path("/d"),
        output_dir=Path("/o"),
        run_dir=Path("/r"),
    )
    assert job.args["stage"] == "sft" and job.args["freeze_vision_tower"] is True  # from the recipe
    assert job.args["learning_rate"] == 3e-4 and job.args["weight_decay"] == 0.1  # from config
    assert job.args["bf16"] is False  # config overrides the recipe's bf16: true
    assert job.args["dataset"] == "a,b" and job.args["output_dir"] == "/o" and job.args["model_name_or_path"] == "/m"
    described = job.describe()
    assert "llamafactory-cli train /r/t.yaml" in described
    assert yaml.safe_load(described.split("--- /r/t.yaml\n", 1)[1])["learning_rate"] == 3e-4


def test_launcher_env_for_multi_node(run_config) -> None:
    launcher = {"nnodes": 2, "node_rank": 1, "master_addr": "10.0.0.1", "master_port": 29500, "nproc_per_node": 8}
    cfg = load_config(run_config(llama_factory={"launcher": launcher}))
    assert launcher_env(cfg) == {
        "FORCE_TORCHRUN": "1",
        "NNODES": "2",
        "NODE_RANK": "1",
        "NPROC_PER_NODE": "8",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
    }
    assert launcher_env(load_config(run_config())) == {}
    ray = load_config(run_config(llama_factory={"launcher": {"use_ray": True}, "extra": {"ray_num_workers": 4}}))
    assert launcher_env(ray) == {"USE_RAY": "1"}


@pytest.mark.slow
def test_real_training_writes_a_loadable_checkpoint(
    run_config, demo_data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llamafactory.chat import ChatModel
    from PIL import Image

    # As `venv/bin/python main.py` without an activated venv: neither llamafactory-cli nor the
    # torchrun its launcher starts is on PATH; both must come from the running interpreter.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("llamafactory-cli") is None and shutil.which("torchrun") is None
    launcher = {"force_torchrun": True, "nproc_per_node": 1, "master_port": free_port()}
    cfg = load_config(run_config(llama_factory={"launcher": launcher}))
    problems = read_problems(demo_data[0])
    examples = [SftExample(prompt=p.question, response=p.solution or p.answer, images=p.images) for p in problems]
    write_sharegpt_dataset(examples, tmp_path / "data", "train")
    job = compose_train_job(
        cfg,
        name="t",
        model_path=cfg.model.base,
        datasets=["train"],
        dataset_dir=tmp_path / "data",
        output_dir=tmp_path / "model",
        run_dir=tmp_path / "run",
    )
    out = run_train_job(job)
    assert is_done(out) and (out / "model.safetensors").is_file()
    log = (tmp_path / "run" / "t.log").read_text()
    assert "train_loss" in log and f"{sys.executable} -m llamafactory.cli train" in log
    assert "Initializing 1 distributed tasks" in log  # it went through torchrun
    # save_steps 20 of max_steps 40 wrote checkpoints; once finished they are pruned.
    assert "checkpoint-20" in log or "checkpoint-40" in log
    assert not list(out.glob("checkpoint-*")) and read_marker(out)["checkpoints_pruned"] >= 1
    chat = ChatModel(
        dict(
            model_name_or_path=str(out),
            template="qwen2_vl",
            infer_backend="huggingface",
            max_new_tokens=8,
            do_sample=False,
        )
    )
    reply = chat.chat(
        [{"role": "user", "content": "<image>How many dots?"}], images=[Image.open(problems[0].images[0])]
    )
    assert isinstance(reply[0].response_text, str)
    # A finished job is skipped, not retrained.
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert run_train_job(job) == out and (out / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_failed_training_raises_with_log_tail(run_config, tmp_path: Path) -> None:
    cfg = load_config(run_config())
    job = compose_train_job(
        cfg,
        name="bad",
        model_path=cfg.model.base,
        datasets=["missing"],
        dataset_dir=tmp_path / "nodata",
        output_dir=tmp_path / "model",
        run_dir=tmp_path / "run",
    )
    (tmp_path / "nodata").mkdir()
    with pytest.raises(TrainingError) as err:
        run_train_job(job)
    assert "exit" in str(err.value) and str(job.log_path) in str(err.value)
    assert not is_done(tmp_path / "model")


@pytest.mark.slow
def test_api_server_runs_without_llamafactory_cli_on_path(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve_api` starts the running interpreter's LLaMA-Factory, answers, and is gone after."""
    import openai

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    args = {"model_name_or_path": str(tiny_model), "template": "qwen2_vl", "infer_backend": "huggingface",
            "max_new_tokens": 4}
    with serve_api(args, tmp_path / "api") as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="x")
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
        assert isinstance(reply.choices[0].message.content, str)
        running = [p for p in os.listdir("/proc") if p.isdigit() and _is_api_server(p, tmp_path)]
        assert running  # the server we started is running
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_api_server(p, tmp_path)]


def _is_api_server(pid: str, tmp_path: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # `llamafactory-cli api` through the Qwen-VL positions adapter (mathse/model/llamafactory_qwen_vl_positions.py)
    return any(part.endswith(b"llamafactory_qwen_vl_positions.py") for part in cmdline) and b"api" in cmdline and any(
        str(tmp_path).encode() in part for part in cmdline)


@pytest.mark.parametrize("keep", [False, True])
def test_finished_training_prunes_checkpoints_unless_kept(run_config, tmp_path: Path, keep: bool) -> None:
    """A training that finished before its marker (killed then) is marked done, its checkpoints pruned."""
    cfg = load_config(run_config(llama_factory={"keep_checkpoints": keep}))
    job = compose_train_job(cfg, name="t", model_path=cfg.model.base, datasets=["d"], dataset_dir=tmp_path,
                            output_dir=tmp_path / "model", run_dir=tmp_path / "run")
    out = tmp_path / "model"
    for step in (20, 40):
        (out / f"checkpoint-{step}").mkdir(parents=True)
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (out / "model.safetensors").write_text("weights")
    (out / "trainer_state.json").write_text("{}")
    assert run_train_job(job) == out and is_done(out)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == (["checkpoint-20", "checkpoint-40"] if keep else [])
    assert (out / "model.safetensors").is_file()


def test_training_output_goes_to_the_log_and_a_step_bar_to_the_console(tmp_path: Path, capfd) -> None:
    """LLaMA-Factory's chatter lands in the log only; the console shows the steps and the last loss."""
    from mathse.model.training import _run_logged

    script = (
        "import sys\n"
        "print('[INFO|configuration_utils.py:769] >> loading configuration file config.json')\n"
        "print('Running tokenizer on dataset: 100%|##########| 53/53 [00:00<00:00, 473.29 examples/s]')\n"
        "for i in range(1, 5):\n"
        "    sys.stderr.write(f' {25 * i}%|##  | {i}/4 [00:01<00:03,  1.00it/s]\\r')\n"
        "print(\"{'loss': '0.5376', 'grad_norm': '1.5', 'epoch': '2'}\")\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    log = tmp_path / "train.log"
    code, tail = _run_logged([sys.executable, "-c", script, "0"], dict(os.environ), log, "t: train", 30)
    out, err = capfd.readouterr()
    text = log.read_text()
    assert code == 0 and "loading configuration file" in text and "4/4" in text and "'loss'" in text
    assert "loading configuration file" not in out + err and "Running tokenizer" not in out + err
    assert "t: train" in err and "4/4" in err and "loss=0.5376" in err  # the bar, with its loss
    code, tail = _run_logged([sys.executable, "-c", script, "3"], dict(os.environ), log, "t: train", 2)
    assert code == 3 and tail.splitlines()[-1].startswith("{'loss'") and len(tail.splitlines()) == 2


def test_library_logs_survive_a_console_stream_closed_meanwhile(tmp_path: Path) -> None:
    """A library handler left on a closed stream (a test runner's released capture) does not break the switch."""
    import logging

    from llamafactory.extras import logging as lf_logging

    from mathse.model.library_logs import library_logs_to

    [handler] = [h for h in lf_logging.get_logger().handlers if type(h) is logging.StreamHandler]
    original = handler.stream
    closed = (tmp_path / "console").open("w")
    closed.close()
    handler.stream = closed
    try:
        with library_logs_to(tmp_path / "lf.log"):
            logging.getLogger("llamafactory.x").warning("into the file")
        assert handler.stream is closed and "into the file" in (tmp_path / "lf.log").read_text()
    finally:
        handler.stream = original


@pytest.mark.slow
def test_killed_after_the_last_checkpoint_ends_at_max_steps_with_its_weights(
    run_config, demo_data, tmp_path: Path
) -> None:
    """A kill after the checkpoint of the last step but before the final save: the Trainer, resumed from
    that checkpoint, would run one step past max_steps; the rerun takes the checkpoint as the result."""
    from safetensors.torch import load_file

    cfg = load_config(run_config(llama_factory={"max_steps": 4, "save_steps": 2, "keep_checkpoints": True}))
    problems = read_problems(demo_data[0])
    examples = [SftExample(prompt=p.question, response=p.solution or p.answer, images=p.images) for p in problems]
    write_sharegpt_dataset(examples * 4, tmp_path / "data", "train")  # more batches than steps: no epoch ends
    job = compose_train_job(cfg, name="t", model_path=cfg.model.base, datasets=["train"],
                            dataset_dir=tmp_path / "data", output_dir=tmp_path / "model", run_dir=tmp_path / "run")
    out = run_train_job(job)
    last = out / "checkpoint-4"
    assert json.loads((last / "trainer_state.json").read_text())["global_step"] == 4
    want = load_file(out / "model.safetensors")
    # What the kill leaves: every checkpoint, no final model, no trainer_state.json, no marker.
    for path in out.iterdir():
        if not path.name.startswith("checkpoint-"):
            path.unlink() if path.is_file() else shutil.rmtree(path)
    assert run_train_job(job) == out and is_done(out)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
    got = load_file(out / "model.safetensors")
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in want)


def test_a_joining_node_returns_when_node_0_finishes_without_launching(tmp_path: Path) -> None:
    """node_rank > 0 waits for node 0's YAML; when node 0 instead marks the training done (it had
    finished before a kill), the joining node returns instead of waiting for ever."""
    import threading

    from mathse.run.storage import mark_done

    out = tmp_path / "model"
    job = TrainJob(name="t", args={"output_dir": str(out)}, run_dir=tmp_path / "run", env={"NODE_RANK": "1"})

    def node_0() -> None:
        out.mkdir()
        mark_done(out, {"job": "t"})

    returned: list[Path] = []
    joining = threading.Thread(target=lambda: returned.append(run_train_job(job)), daemon=True)
    joining.start()
    time.sleep(0.3)
    node_0()
    joining.join(timeout=10)
    assert returned == [out], "the joining node still waits for a YAML node 0 will never write"
    assert not job.yaml_path.exists() and not job.log_path.exists()  # nothing was launched
