"""Models served over OpenAI's protocol by servers the pipeline starts and stops itself.

One mechanism for every served model (the student per checkpoint, the trained ORM, eval):

    with serve_model(cfg.serve, model, run_dir, ray_cfg=cfg.ray) as servers:
        client = ChatClient(servers.api_config(...), cache_dir, transport=servers.transport(concurrency))
        ...

`serve_model` starts `serve.replicas` servers (`llamafactory-cli api` on CPU, `vllm serve` with data
parallelism on GPU nodes, SGLang, or any command), each on a free port, waits until every one
answers `GET /v1/models`, yields them, and stops them (the whole process group: vLLM runs engine
processes of its own) however the block ends: success, an exception, Ctrl-C, or SIGTERM (turned into
SystemExit for the block's duration). A server is also killed by the kernel when the process that
started it dies, even by SIGKILL (PR_SET_PDEATHSIG), so no server outlives a killed driver.

With a `ray` block the servers are Ray actors instead: Ray places each on a node with the requested
GPUs (placement is Ray's, not ours), restarts it when its node or process dies (`max_restarts`), and
the driver reaches it over HTTP at that node's address. An actor whose server process exits kills
itself so that Ray restarts it.

Requests go through `ReplicaRouter`, an httpx transport under the project's ChatClient: each request
goes to the live replica with the fewest requests in flight, and a request whose replica refuses
or drops the connection is sent again to another replica at once (that replica is skipped for
`recheck_s`, then tried again, at its new address if Ray restarted it elsewhere).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mathse.model import llamafactory_qwen_vl_positions
from mathse.model.chat_templates import needs_training_template, served_chat_template
from mathse.model.inference import chat_model_args
from mathse.model.inputs import ModelInputs
from mathse.model.processes import die_with_parent, free_port
from mathse.model.replica_router import ReplicaRouter
from mathse.model.served_images import TrainingSizedImages
from mathse.run.config import ApiConfig, InferenceConfig, RayConfig, ServeConfig
from mathse.run.errors import StageError
from mathse.run.storage import atomic_write_text

__all__ = [
    "VLLM_CPU_ARGS",
    "ReplicaRouter",
    "ServeError",
    "ServedModel",
    "Servers",
    "serve_model",
    "server_command",
]

STOP_GRACE_S = 15.0  # SIGTERM, then SIGKILL to the server's process group

# serve.vllm_cpu: what vLLM 0.32's CPU build needs (each measured on this project's checkpoints):
# - float32: for a float32 checkpoint vLLM picks the platform's preferred dtype, bfloat16 on CPU, not
#   the precision of the other engines (in float32 its greedy texts equal theirs);
# - eager: no torch.compile warm-up (a server is up in ~25 s instead of ~60 s; the same texts);
# - no chunked prefill: the CPU worker dies ("CPU Generator does not use offset", every request then
#   a 500) when a request with a `seed` (we send one per request) has its prefill cut over two steps,
#   which happens as soon as the prompts in flight exceed 2,048 tokens.
VLLM_CPU_ARGS = ("--dtype", "float32", "--enforce-eager", "--no-enable-chunked-prefill")


class ServeError(StageError):
    """A server did not start or stopped answering; the message names its log."""


@dataclass(frozen=True)
class ServedModel:
    """What to serve: a model (plus LoRA adapter), under which name, with what LLaMA-Factory args.

    `inputs` are the model's input settings from its training (template, image size);
    `llamafactory_args` the ChatModel arguments for `llamafactory-cli api`, built from the same
    settings by `served_model`; the other engines get the same facts as flags.
    """

    name: str  # the served model name requests carry; also names the log files
    model: str
    adapter: str | None = None
    inputs: ModelInputs = field(default_factory=lambda: ModelInputs("qwen2_vl"))
    llamafactory_args: dict[str, Any] = field(default_factory=dict)
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.9
    seed: int | None = None
    concurrency: int = 1  # requests the client keeps in flight per replica


def served_model(
    name: str, model_path: str, adapter_path: str | None, inputs: ModelInputs, inf: InferenceConfig, seed: int | None
) -> ServedModel:
    """A checkpoint as a ServedModel: its input settings from training, `inf`'s sampling and engine sizes."""
    return ServedModel(
        name=name, model=model_path, adapter=adapter_path, inputs=inputs,
        llamafactory_args=chat_model_args(model_path, adapter_path, inputs, inf), max_model_len=inf.vllm_maxlen,
        gpu_memory_utilization=inf.vllm_gpu_util, seed=seed, concurrency=inf.concurrency,
    )


# ---------------------------------------------------------------------------------------------
# The server command, per engine


def server_command(
    serve: ServeConfig, spec: ServedModel, host: str, port: int, args_file: Path, chat_template: Path | None = None
) -> tuple[list[str], dict[str, str]]:
    """(argv, extra environment) that starts one server for `spec` on host:port; `chat_template`: a
    Jinja file vLLM renders instead of the checkpoint's (see mathse/model/chat_templates.py)."""
    python = serve.python or sys.executable
    env = {"PYTHONUNBUFFERED": "1", **serve.env}  # the log is current while the server runs
    gpus = max(1, serve.gpus_per_replica)
    if serve.engine == "llamafactory":
        # `llamafactory-cli api` through the Qwen-VL positions adapter (llamafactory_qwen_vl_positions.py;
        # without it the server decodes the Qwen2-VL family wrongly), run as a file so that any
        # environment with LLaMA-Factory can run it, with no shell shim between us and the server.
        argv = [python, llamafactory_qwen_vl_positions.__file__, "api", str(args_file)]
        env.update({"API_HOST": host, "API_PORT": str(port), "API_MODEL_NAME": spec.name,
                    # The huggingface engine runs at most MAX_CONCURRENT requests at once (default 1).
                    "MAX_CONCURRENT": str(spec.concurrency)})
    elif serve.engine == "vllm":
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", spec.model, "--host", host,
                "--port", str(port), "--max-model-len", str(spec.max_model_len),
                "--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
        if spec.inputs.trust_remote_code:
            argv.append("--trust-remote-code")
        if spec.seed is not None:
            argv += ["--seed", str(spec.seed)]
        if serve.data_parallel_size > 1:
            argv += ["--data-parallel-size", str(serve.data_parallel_size)]
        if gpus // serve.data_parallel_size > 1:
            argv += ["--tensor-parallel-size", str(gpus // serve.data_parallel_size)]
        if image_kwargs := spec.inputs.served_image_kwargs():  # as many vision tokens as in training
            argv += ["--mm-processor-kwargs", json.dumps(image_kwargs)]
        if chat_template is not None:  # the prompt LLaMA-Factory's template builds, not the checkpoint's
            argv += ["--chat-template", str(chat_template)]
        if serve.vllm_cpu:
            argv += list(VLLM_CPU_ARGS)
        if spec.adapter is not None:  # requests name the LoRA module; the base gets another name
            argv += ["--served-model-name", f"{spec.name}-base", "--enable-lora",
                     "--lora-modules", f"{spec.name}={spec.adapter}"]
        else:
            argv += ["--served-model-name", spec.name]
    elif serve.engine == "sglang":
        argv = [python, "-m", "sglang.launch_server", "--model-path", spec.model, "--host", host, "--port",
                str(port), "--served-model-name", spec.name, "--context-length", str(spec.max_model_len),
                "--mem-fraction-static", str(spec.gpu_memory_utilization),
                "--tp", str(max(1, gpus // serve.data_parallel_size)), "--dp", str(serve.data_parallel_size)]
        if spec.inputs.trust_remote_code:
            argv.append("--trust-remote-code")
        if spec.adapter is not None:
            argv += ["--lora-paths", f"{spec.name}={spec.adapter}"]
    else:  # "command"
        values = {"python": python, "model": spec.model, "adapter": spec.adapter or "", "host": host,
                  "port": str(port), "served_name": spec.name, "template": spec.inputs.template,
                  "args_file": str(args_file), "max_model_len": str(spec.max_model_len), "gpus": str(gpus)}
        try:
            argv = [part.format(**values) for part in serve.command or []]
        except (KeyError, IndexError, ValueError) as exc:
            raise ServeError(f"serve.command: bad placeholder {exc} (known: {', '.join(sorted(values))})") from None
    return argv + list(serve.extra_args), env


# ---------------------------------------------------------------------------------------------
# One server process


class ServerProcess:
    """One server subprocess in its own process group, its output in `log_path`."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, base_url: str) -> None:
        self.argv, self.log_path, self.base_url = argv, log_path, base_url
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            try:
                self.proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env},
                    start_new_session=True,  # its own process group: stop() reaches the engine's children
                    preexec_fn=die_with_parent,
                )
            except FileNotFoundError:
                raise ServeError(f"server command not found: {argv[0]} (serve.python / serve.command)") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ready(self) -> bool:
        """Whether the server answers GET /v1/models; raises ServeError when it has exited."""
        if not self.alive():
            raise ServeError(
                f"server exited with {self.proc.returncode} ({self.base_url}); log: {self.log_path}\n{self.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after STOP_GRACE_S; idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_GRACE_S)
        # Children of the server (vLLM's engine cores) may outlive it: the group goes in any case.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_GRACE_S)


def _write_args_file(spec: ServedModel, run_dir: Path, tag: str) -> Path:
    path = run_dir / f"{tag}.yaml"
    atomic_write_text(path, yaml.safe_dump(spec.llamafactory_args, sort_keys=False, allow_unicode=True))
    return path


def chat_template_path(serve: ServeConfig, spec: ServedModel, run_dir: Path, tag: str) -> Path | None:
    """Where a server's chat template goes when the engine must render LLaMA-Factory's (vLLM, for the
    families of `chat_templates.needs_training_template`), else None: the checkpoint's own is used."""
    return run_dir / f"{tag}.jinja" if serve.engine == "vllm" and needs_training_template(spec.inputs) else None


def _launch(serve: ServeConfig, spec: ServedModel, run_dir: Path, index: int, host: str,
            gpu_ids: list[int] | None) -> ServerProcess:
    port = free_port()
    tag = f"{spec.name}.replica-{index}"
    chat_template = chat_template_path(serve, spec, run_dir, tag)
    if chat_template is not None:
        atomic_write_text(chat_template, served_chat_template(spec.model, spec.inputs) or "")
    argv, env = server_command(serve, spec, host, port, _write_args_file(spec, run_dir, tag), chat_template)
    if gpu_ids is not None and "CUDA_VISIBLE_DEVICES" not in serve.env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_ids))
    reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return ServerProcess(argv, env, run_dir / f"{tag}.log", f"http://{reach}:{port}/v1")


def _wait_all_ready(servers: list[ServerProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = list(servers)
    while waiting:
        waiting = [s for s in waiting if not s.ready()]
        if not waiting:
            return
        if time.monotonic() > deadline:
            s = waiting[0]
            raise ServeError(f"server {s.base_url} did not answer within {timeout_s:.0f}s "
                             f"(serve.startup_timeout_s); log: {s.log_path}\n{s.log_tail()}")
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# The replicas, local or on Ray


class Servers:
    """The running replicas of one served model: their URLs, and how to find them again."""

    def __init__(self, spec: ServedModel, serve: ServeConfig, urls: list[str],
                 resolve: Callable[[int], str] | None = None) -> None:
        self.spec, self.serve = spec, serve
        self.base_urls = urls
        self._resolve = resolve
        self.processes: list[ServerProcess] = []  # local replicas (tests kill one to simulate a failure)
        self.actors: list[Any] = []  # Ray replicas

    def resolve(self, index: int) -> str:
        """Replica `index`'s current URL (a restarted Ray actor listens elsewhere)."""
        if self._resolve is not None:
            self.base_urls[index] = self._resolve(index)
        return self.base_urls[index]

    def api_config(self, concurrency: int, **settings: Any) -> ApiConfig:
        """An ApiConfig for ChatClient: the served name, timeouts and retries of `serve`."""
        return ApiConfig(base_url=self.base_urls[0], model=self.spec.name, concurrency=concurrency,
                         timeout_s=self.serve.request_timeout_s, max_retries=self.serve.max_retries,
                         backoff_max_s=10.0, **settings)

    def images(self) -> TrainingSizedImages | None:
        """How requests must carry images: resized as in training, unless the engine is LLaMA-Factory's
        own (it resizes as in training itself). See mathse/model/served_images.py."""
        return None if self.serve.engine == "llamafactory" else TrainingSizedImages(self.spec.inputs)

    def transport(self, concurrency: int, recheck_s: float = 5.0) -> Any:
        """An httpx transport spreading requests over the replicas (see ReplicaRouter)."""
        return ReplicaRouter(self, self.spec.name, concurrency, recheck_s)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """Within the block SIGTERM raises SystemExit, so `finally` clauses stop the servers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def serve_model(
    serve: ServeConfig, spec: ServedModel, run_dir: Path, ray_cfg: RayConfig | None = None
) -> Iterator[Servers]:
    """Start `serve.replicas` servers of `spec`, wait until each answers, yield them, stop them."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with _sigterm_as_exit():
        if ray_cfg is not None:
            with _serve_on_ray(serve, spec, run_dir, ray_cfg) as servers:
                yield servers
            return
        processes: list[ServerProcess] = []
        try:
            for i in range(serve.replicas):
                g = serve.gpus_per_replica
                gpu_ids = list(range(i * g, (i + 1) * g)) if g else None
                processes.append(_launch(serve, spec, run_dir, i, serve.host, gpu_ids))
            print(f"serve: starting {len(processes)} {serve.engine} server(s) for {spec.name} "
                  f"(logs in {run_dir}) ...", flush=True)
            _wait_all_ready(processes, serve.startup_timeout_s)
            servers = Servers(spec, serve, [p.base_url for p in processes])
            servers.processes = processes
            yield servers
        finally:
            for p in processes:
                p.stop()


# -- Ray ---------------------------------------------------------------------------------------


class _ReplicaActor:
    """A Ray actor owning one server process on its node; it dies with the server so Ray restarts it."""

    def __init__(self, serve: ServeConfig, spec: ServedModel, run_dir: str, index: int) -> None:
        import ray

        host = ray.util.get_node_ip_address()
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPUs; the server inherits it (gpu_ids None).
        self.server = _launch(serve, spec, Path(run_dir), index, host, None)
        self.timeout_s = serve.startup_timeout_s
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        self.server.proc.wait()
        if not getattr(self, "stopping", False):
            os._exit(1)  # the server died: so does the actor, and Ray restarts both

    def base_url(self) -> str:
        """The URL once the server answers (blocks while it starts)."""
        _wait_all_ready([self.server], self.timeout_s)
        return self.server.base_url

    def pid(self) -> int:
        return self.server.pid

    def stop(self) -> None:
        self.stopping = True
        self.server.stop()


@contextlib.contextmanager
def _serve_on_ray(serve: ServeConfig, spec: ServedModel, run_dir: Path, ray_cfg: RayConfig) -> Iterator[Servers]:
    try:
        import ray
    except ImportError:
        raise ServeError("the `ray` block needs Ray: pip install -r requirements.txt") from None
    started_here = not ray.is_initialized()
    if started_here:
        kwargs = dict(ray_cfg.init_kwargs)
        if ray_cfg.address is not None:
            kwargs.setdefault("address", ray_cfg.address)
        kwargs.setdefault("log_to_driver", False)
        try:
            ray.init(**kwargs)
        except ConnectionError as exc:
            raise ServeError(f"ray.address {ray_cfg.address!r}: no Ray cluster to join ({exc}); "
                             "start one with `ray start --head`, or set ray.address: null for a local one") from None
    actors: list[Any] = []
    try:
        num_gpus = ray_cfg.num_gpus or float(serve.gpus_per_replica)
        actor_cls = ray.remote(_ReplicaActor).options(
            num_gpus=num_gpus, num_cpus=ray_cfg.num_cpus, max_restarts=ray_cfg.max_restarts,
            max_task_retries=-1,  # a call made while the actor restarts waits for the new one
        )
        actors = [actor_cls.remote(serve, spec, str(run_dir), i) for i in range(serve.replicas)]
        print(f"serve: placing {len(actors)} {serve.engine} server(s) for {spec.name} on Ray "
              f"({num_gpus:g} GPU each; logs in {run_dir}) ...", flush=True)
        try:
            urls = ray.get([a.base_url.remote() for a in actors], timeout=serve.startup_timeout_s + 60)
        except ray.exceptions.GetTimeoutError:
            raise ServeError(f"Ray did not place and start {len(actors)} server(s) within "
                             f"{serve.startup_timeout_s:.0f}s: are {num_gpus:g} GPU(s) per replica free? "
                             f"(ray status; logs in {run_dir})") from None
        except ray.exceptions.RayActorError as exc:
            raise ServeError(f"a server replica failed to start on Ray; logs in {run_dir}: {exc}") from None

        def resolve(i: int) -> str:
            return str(ray.get(actors[i].base_url.remote(), timeout=serve.startup_timeout_s))

        servers = Servers(spec, serve, list(urls), resolve)
        servers.actors = actors
        yield servers
    finally:
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=STOP_GRACE_S * 2)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------
# One `llamafactory-cli api` server


@contextlib.contextmanager
def serve_api(
    args: dict[str, Any], run_dir: Path, startup_timeout_s: float = 180.0, name: str | None = None
) -> Iterator[str]:
    """Serve a model with `llamafactory-cli api` on a free 127.0.0.1 port; yields its OpenAI base URL.

    A one-replica `serve_model` (stopped however the block ends; log in `run_dir`).
    """
    model = str(args["model_name_or_path"])
    spec = ServedModel(name=name or Path(model).name or "model", model=model, llamafactory_args=args)
    with serve_model(ServeConfig(engine="llamafactory", startup_timeout_s=startup_timeout_s), spec, run_dir) as servers:
        yield servers.base_urls[0]
