"""Managed servers (mathse/model/servers.py) and the served backend (mathse/model/generation.py) on the tiny model.

`llamafactory-cli api` serving the tiny Qwen2-VL stands in for vLLM: the same OpenAI protocol, real
HTTP on 127.0.0.1, real processes to start, kill and find afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mathse.model.generation import ServedGenerator
from mathse.model.generation_items import make_items
from mathse.model.inference import Generator, chat_model_args
from mathse.model.inputs import ModelInputs
from mathse.model.servers import VLLM_CPU_ARGS, ServedModel, ServeError, serve_model, server_command
from mathse.run.config import ConfigError, InferenceConfig, ServeConfig
from mathse.run.config_loading import load_config
from mathse.run.records import read_problems
from mathse.run.storage import Journal, iter_jsonl
from tests.conftest import PROJECT_ROOT, sigint_as_from_a_terminal

GREEDY = InferenceConfig(backend="served", temperature=0, max_new_tokens=24, concurrency=2)


QWEN2_VL = ModelInputs("qwen2_vl")  # the tiny model's input settings, LLaMA-Factory's defaults


def spec_for(model: Path, inf: InferenceConfig = GREEDY) -> ServedModel:
    args = chat_model_args(str(model), None, QWEN2_VL, inf)
    return ServedModel(name="tiny", model=str(model), llamafactory_args=args)


def server_pids(fragment: str) -> list[int]:
    """Processes whose command line mentions `fragment` (the run folder holding the server args)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().split(") ")[-1][:1]
        except OSError:
            continue
        if fragment in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_gone(fragment: str, timeout_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := server_pids(fragment)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def posts_since_last_start(log: Path) -> int:
    """Chat requests a server answered since it was last started (its access log)."""
    text = log.read_text(errors="replace")
    return text[max(0, text.rfind("\n$ ")) :].count("POST /v1/chat/completions")


def journal_keys(path: Path) -> list[str]:
    return [row["key"] for row in iter_jsonl(path)]


# ---------------------------------------------------------------------------------------------
# Commands and config (no server)


def test_vllm_command_carries_data_parallelism_image_size_and_adapter(tmp_path: Path) -> None:
    serve = ServeConfig(engine="vllm", python="/opt/vllm/bin/python", gpus_per_replica=4, data_parallel_size=4,
                        extra_args=["--enforce-eager"])
    spec = ServedModel(name="m", model="/ckpt", adapter="/lora", inputs=ModelInputs("qwen2_vl", 262144), seed=7)
    argv, env = server_command(serve, spec, "127.0.0.1", 8123, tmp_path / "a.yaml")
    assert argv[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    assert "--data-parallel-size 4" in joined and "--tensor-parallel-size" not in joined
    # Images arrive resized as in training (served_images.py): no pixel limit of vLLM's own, and the
    # checkpoint's chat template where it renders LLaMA-Factory's prompt (Qwen).
    assert "--mm-processor-kwargs" not in joined and "--chat-template" not in joined
    assert "--lora-modules m=/lora" in joined and "--port 8123" in joined and argv[-1] == "--enforce-eager"
    assert "API_PORT" not in env  # llamafactory's variables are for its own server only
    assert "--no-enable-chunked-prefill" not in argv
    cpu, _ = server_command(serve.model_copy(update={"vllm_cpu": True}), spec, "127.0.0.1", 8123, tmp_path / "a.yaml")
    assert " ".join(VLLM_CPU_ARGS) in " ".join(cpu)  # vLLM's CPU build: float32, eager, no chunked prefill
    templated, _ = server_command(serve, spec, "127.0.0.1", 8123, tmp_path / "a.yaml", tmp_path / "t.jinja")
    assert f"--chat-template {tmp_path / 't.jinja'}" in " ".join(templated)


def test_command_engine_fills_placeholders_and_names_a_bad_one(tmp_path: Path) -> None:
    serve = ServeConfig(engine="command", command=["{python}", "-m", "srv", "--model={model}", "--port={port}"])
    argv, _ = server_command(serve, ServedModel(name="m", model="/ckpt"), "127.0.0.1", 9, tmp_path / "a.yaml")
    assert argv[1:] == ["-m", "srv", "--model=/ckpt", "--port=9"]
    bad = ServeConfig(engine="command", command=["srv", "--gpu={gpu_id}"])
    with pytest.raises(ServeError, match="gpu_id"):
        server_command(bad, ServedModel(name="m", model="/ckpt"), "127.0.0.1", 9, tmp_path / "a.yaml")


def test_config_serve_and_ray_blocks(tmp_path: Path) -> None:
    base = "model: {base: Qwen/Qwen2-VL-7B-Instruct}\n"
    path = tmp_path / "c.yaml"
    path.write_text(base + "inference: {backend: served}\nserve: {engine: vllm, replicas: 2}\nray: {num_gpus: 1}\n")
    cfg = load_config(path)
    assert cfg.serve.replicas == 2 and cfg.ray is not None and cfg.ray.address == "auto"
    path.write_text(base + "serve: {engine: command, replicass: 2}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "serve.replicass: unknown key (did you mean 'replicas'?)" in str(err.value)
    # A number for an environment variable is its text (YAML `1`, or --set serve.env.X=1).
    path.write_text(base + "serve: {engine: vllm, env: {VLLM_CPU_KVCACHE_SPACE: 1, OMP_NUM_THREADS: '2'}}\n")
    assert load_config(path).serve.env == {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2"}
    path.write_text(base + "serve: {engine: command}\n")
    with pytest.raises(ConfigError, match=r"serve: serve.engine is 'command' but serve.command"):
        load_config(path)


def test_a_server_that_dies_at_startup_is_a_clear_error_and_nothing_is_left(tmp_path: Path) -> None:
    serve = ServeConfig(engine="command", command=[sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    with pytest.raises(ServeError, match=r"(?s)exited with 3.*boom"), \
            serve_model(serve, ServedModel(name="x", model="/none"), tmp_path / "srv"):
        pass


# ---------------------------------------------------------------------------------------------
# Managed replicas generating a round


@pytest.fixture(scope="module")
def problems(demo_data):
    return read_problems(demo_data[1])


def test_two_replicas_generate_a_round_once_each_and_equal_in_process(tiny_model, problems, tmp_path) -> None:
    items = make_items(problems, 2)
    server_dir = tmp_path / "servers"
    with ServedGenerator(spec_for(tiny_model), GREEDY, ServeConfig(replicas=2), None, server_dir) as gen, \
            Journal(tmp_path / "served.jsonl") as journal:
        stats = gen.generate(items, journal)
        pids = [p.pid for p in gen.servers.processes]
    assert stats.done == len(items) and stats.failed == 0
    keys = journal_keys(tmp_path / "served.jsonl")
    assert sorted(keys) == sorted(i.key for i in items)  # every item, exactly once
    logs = sorted(server_dir.glob("tiny.replica-*.log"))
    assert len(logs) == 2 and all(posts_since_last_start(log) > 0 for log in logs)  # both replicas worked
    # Greedy paths of one problem are one request body: ChatClient asks it once and copies the answer.
    assert sum(posts_since_last_start(log) for log in logs) == len(problems)

    inproc = InferenceConfig(backend="huggingface", temperature=0, max_new_tokens=24, concurrency=1)
    with Generator(tiny_model, None, QWEN2_VL, inproc) as local, Journal(tmp_path / "local.jsonl") as journal:
        local.generate(items, journal)
    served = {r["key"]: r["response"] for r in iter_jsonl(tmp_path / "served.jsonl")}
    expected = {r["key"]: r["response"] for r in iter_jsonl(tmp_path / "local.jsonl")}
    assert served == expected
    assert not wait_gone(str(server_dir)) and not any(Path(f"/proc/{p}").exists() for p in pids)


@pytest.mark.slow
def test_one_server_answers_greedy_and_sampled_calls(tiny_model, problems, tmp_path) -> None:
    """eval.samples' use: the greedy pass and k samples per problem (a per-call temperature) from the same
    servers; the samples go out as one request of n = k per problem, each key journaled once."""
    server_dir = tmp_path / "servers"
    few = problems[:3]
    with ServedGenerator(spec_for(tiny_model), GREEDY, ServeConfig(replicas=1), None, server_dir, seed=0) as gen:
        with Journal(tmp_path / "greedy.jsonl") as journal:
            gen.generate(make_items(few, 1), journal)
        log = gen.servers.processes[0].log_path
        greedy_posts = posts_since_last_start(log)
        with Journal(tmp_path / "sampled.jsonl") as journal:
            stats = gen.generate(make_items(few, 4), journal, temperature=1.0)
        sampled_posts = posts_since_last_start(log) - greedy_posts
    assert (greedy_posts, sampled_posts, stats.done) == (3, 3, 12)
    rows = list(iter_jsonl(tmp_path / "sampled.jsonl"))
    assert len({r["key"] for r in rows}) == 12
    # Sampled at temperature 1: a problem's four answers are not all the same (greedy ones would be).
    assert any(len({r["response"] for r in rows if r["id"] == p.id}) > 1 for p in few)


def kill_when(journal_path: Path, rows: int, kill) -> threading.Thread:
    """In the background: once the journal holds `rows` rows, call kill()."""

    def watch() -> None:
        while not journal_path.exists() or journal_path.read_text().count("\n") < rows:
            time.sleep(0.05)
        kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_killing_one_replica_mid_round_loses_and_duplicates_nothing(tiny_model, problems, tmp_path) -> None:
    items = make_items(problems, 3)
    server_dir = tmp_path / "servers"
    path = tmp_path / "gen.jsonl"
    with ServedGenerator(spec_for(tiny_model), GREEDY, ServeConfig(replicas=2), None, server_dir) as gen:
        gen._ensure_servers()
        victim = gen.servers.processes[0]
        watcher = kill_when(path, 6, lambda: os.killpg(victim.pid, signal.SIGKILL))
        with Journal(path) as journal:
            stats = gen.generate(items, journal)
        watcher.join(timeout=5)
        assert not victim.alive()
        # Requests in flight on the killed replica (or sent to it before it was seen down) went to the other.
        assert gen._router.failovers >= 1
    assert stats.done == len(items) and stats.retry_later == 0
    keys = journal_keys(path)
    assert len(keys) == len(set(keys)) == len(items)
    assert not wait_gone(str(server_dir))


DRIVER = """
import sys
from pathlib import Path
from mathse.run.config import InferenceConfig, ServeConfig
from mathse.model.inference import chat_model_args
from mathse.model.generation_items import make_items
from mathse.model.inputs import ModelInputs
from mathse.run.records import read_problems
from mathse.model.generation import ServedGenerator
from mathse.model.servers import ServedModel
from mathse.run.storage import Journal
model, pool, out = sys.argv[1:4]
inf = InferenceConfig(backend="served", temperature=0, max_new_tokens=24, concurrency=1)
args = chat_model_args(model, None, ModelInputs("qwen2_vl"), inf)
spec = ServedModel(name="tiny", model=model, llamafactory_args=args)
items = make_items(read_problems(Path(pool)), 3)
with ServedGenerator(spec, inf, ServeConfig(replicas=2), None, Path(out) / "servers") as gen, \\
        Journal(Path(out) / "gen.jsonl") as journal:
    stats = gen.generate(items, journal)
print(stats.summary())
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_killing_the_driver_leaves_no_server_and_the_rerun_sends_only_missing(
    tiny_model, demo_data, problems, tmp_path, sig
) -> None:
    path = tmp_path / "gen.jsonl"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tiny_model), str(demo_data[1]), str(tmp_path)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=sigint_as_from_a_terminal)
    try:
        deadline = time.monotonic() + 300
        while (not path.exists() or path.read_text().count("\n") < 4) and driver.poll() is None:
            assert time.monotonic() < deadline, "the driver produced nothing"
            time.sleep(0.05)
        assert driver.poll() is None, "the driver finished before it could be killed"
        driver.send_signal(sig)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    server_dir = tmp_path / "servers"
    assert not wait_gone(str(server_dir)), "a server outlived the killed driver"
    if sig != signal.SIGKILL:
        return  # the resume below reads the same journal whichever way the driver died: run once

    with Journal(path) as journal:
        before = set(journal.keys())
    items = make_items(problems, 3)
    missing = len(items) - len(before)
    assert 0 < missing < len(items)
    # Greedy paths of one problem are one request body, asked once (see the two-replica test).
    missing_problems = {i.problem.id for i in items if i.key not in before}
    inf = InferenceConfig(backend="served", temperature=0, max_new_tokens=24, concurrency=1)
    with ServedGenerator(spec_for(tiny_model, inf), inf, ServeConfig(replicas=2), None, server_dir) as gen, \
            Journal(path) as journal:
        stats = gen.generate(items, journal)
        sent = sum(posts_since_last_start(p.log_path) for p in gen.servers.processes)
    assert stats.skipped_existing == len(before) and stats.done == missing
    assert sent == len(missing_problems)  # the servers were asked only for what the journal lacked
    keys = journal_keys(path)
    assert len(keys) == len(set(keys)) == len(items)
    assert not wait_gone(str(server_dir))


# ---------------------------------------------------------------------------------------------
# Ray


def test_ray_places_replicas_restarts_a_killed_one_and_the_round_completes(tiny_model, problems, tmp_path) -> None:
    import ray

    from mathse.run.config import RayConfig

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}})
    try:
        items = make_items(problems, 3)
        server_dir = tmp_path / "servers"
        path = tmp_path / "gen.jsonl"
        ray_cfg = RayConfig(address=None, num_cpus=1, max_restarts=2)
        with ServedGenerator(spec_for(tiny_model), GREEDY, ServeConfig(replicas=2), ray_cfg, server_dir) as gen:
            gen._ensure_servers()
            actors = gen.servers.actors
            assert len(actors) == 2 and all(url.startswith("http://") for url in gen.servers.base_urls)
            watcher = kill_when(path, 6, lambda: ray.kill(actors[0], no_restart=False))
            with Journal(path) as journal:
                stats = gen.generate(items, journal)
            watcher.join(timeout=5)
            # Ray restarted the killed replica: it answers again (at the URL it has now).
            restarted = ray.get(actors[0].base_url.remote(), timeout=300)
            assert restarted.startswith("http://")
        assert stats.done == len(items) and stats.retry_later == 0
        keys = journal_keys(path)
        assert len(keys) == len(set(keys)) == len(items)
        assert not wait_gone(str(server_dir), timeout_s=60)
    finally:
        ray.shutdown()



# ---------------------------------------------------------------------------------------------
# The whole pipeline, unattended, serving each checkpoint


def pipeline_teacher(body: dict) -> str:
    """Distill: a one-step solution; reflect: a reflection plus a corrected solution."""
    from mathse.testing.openai_server import last_user_text

    if "Student's solution" in last_user_text(body):
        return ("Reflection: The student misread the figure.\n\n"
                "Corrected solution:\nStep 1: Read the figure again.\nThe final answer is \\boxed{1}")
    return "Step 1: Read the figure.\nThe final answer is \\boxed{1}"


@pytest.mark.slow
def test_stage_all_two_rounds_serves_each_checkpoint_and_leaves_no_server(run_config) -> None:
    from mathse.cli import main
    from mathse.testing.openai_server import FakeOpenAIServer

    # An ORM that accepts every path, so each round has new data and retrains (a round that accepts
    # nothing keeps its model and the next round would serve the same checkpoint again).
    accept = '{"correct": true, "error_step": null, "analysis": "fine"}'
    with FakeOpenAIServer(replies=pipeline_teacher) as teacher, FakeOpenAIServer(replies=accept) as orm:
        config = run_config(
            teacher={"base_url": teacher.base_url, "model": "teacher", "filter_by_answer": False, "max_retries": 1},
            orm={"backend": "api", "policy": "orm", "logprobs": False,
                 "api": {"base_url": orm.base_url, "model": "orm", "max_retries": 1}},
            inference={"backend": "served", "temperature": 0, "n_paths": 2, "max_new_tokens": 16, "concurrency": 2},
            serve={"engine": "llamafactory", "replicas": 2},
            evolve={"rounds": 2, "batch_size": 4, "retrain": True, "retrain_from": "previous"},
        )
        assert main(["--stage", "all", "--config", str(config)]) == 0
    out = config.parent / "output"
    served = {}
    for r in (1, 2):
        logs = sorted((out / "evolve" / f"round_{r}" / "servers").glob("*.replica-*.log"))
        assert len(logs) == 2, logs
        served[r] = {log.name.split(".replica-")[0] for log in logs}
        assert sum(posts_since_last_start(log) for log in logs) > 0
        assert len(journal_keys(out / "evolve" / f"round_{r}" / "generations.shard-0-of-1.jsonl")) == 8
    # Round 1 served M0, round 2 the model retrained in round 1: a new server for the new checkpoint.
    assert served[1] != served[2]
    assert next(iter(served[1])).startswith("sft_model_stage0-")
    assert next(iter(served[2])).startswith("sft_model_round_1-")
    assert not wait_gone(str(out))
