"""The bridge to LLaMA-Factory: sharegpt datasets, training YAML, and `llamafactory-cli train`.

Training runs as a subprocess, exactly as a user would run it, so the same code path serves a
laptop CPU with a tiny model and a multi-node GPU job (via LLaMA-Factory's own torchrun launcher,
configured through the environment variables it reads).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mathse.config import MathSEConfig
from mathse.storage import atomic_open, atomic_write_json, atomic_write_text, is_done, mark_done, read_json

DATASET_INFO = "dataset_info.json"
IMAGE_TOKEN = "<image>"


class TrainingError(Exception):
    """`llamafactory-cli train` failed; the message ends with the log's last lines."""


@dataclass(frozen=True)
class SftExample:
    """One supervised example: a user prompt (with images) and the target response."""

    prompt: str
    response: str
    images: tuple[str, ...] = ()
    system: str | None = None
    # Earlier (user, assistant) turns before `prompt`: a multi-turn sample. Trained on only with
    # LLaMA-Factory's default; `mask_history: true` keeps the loss on the last response alone.
    history: tuple[tuple[str, str], ...] = ()


def to_sharegpt(example: SftExample) -> dict[str, Any]:
    """The sharegpt row LLaMA-Factory expects: one `<image>` tag per image in the first user turn."""
    messages: list[dict[str, str]] = []
    if example.system:
        messages.append({"role": "system", "content": example.system})
    tags = IMAGE_TOKEN * len(example.images)
    for user, assistant in example.history:
        messages.append({"role": "user", "content": tags + user})
        messages.append({"role": "assistant", "content": assistant})
        tags = ""
    messages.append({"role": "user", "content": tags + example.prompt})
    messages.append({"role": "assistant", "content": example.response})
    row: dict[str, Any] = {"messages": messages}
    if example.images:
        row["images"] = list(example.images)
    return row


def write_sharegpt_dataset(examples: Iterable[SftExample], dataset_dir: Path, name: str) -> int:
    """Stream `examples` into `<dataset_dir>/<name>.json` (a JSON array) and register it.

    Streaming keeps memory flat for hundreds of thousands of rows; the file is written to a temp
    name and renamed, and registered in dataset_info.json only after, so a kill leaves either the
    previous dataset or the new one.
    """
    file_name = f"{name}.json"
    count = 0
    with atomic_open(dataset_dir / file_name) as handle:
        handle.write("[")
        for example in examples:
            handle.write(",\n" if count else "\n")
            handle.write(json.dumps(to_sharegpt(example), ensure_ascii=False))
            count += 1
        handle.write("\n]\n")
    register_dataset(dataset_dir, name, file_name)
    return count


def register_dataset(dataset_dir: Path, name: str, file_name: str) -> None:
    """Add or update the dataset's entry in dataset_info.json, keeping other entries."""
    info_path = dataset_dir / DATASET_INFO
    info = read_json(info_path) if info_path.exists() else {}
    info[name] = {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }
    atomic_write_json(info_path, info)


@dataclass
class TrainJob:
    """A fully composed training run: its YAML arguments, environment and command."""

    name: str
    args: dict[str, Any]
    run_dir: Path  # where train.yaml and train.log live
    env: dict[str, str] = field(default_factory=dict)

    @property
    def output_dir(self) -> Path:
        return Path(self.args["output_dir"])

    @property
    def yaml_path(self) -> Path:
        return self.run_dir / f"{self.name}.yaml"

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        return ["llamafactory-cli", "train", str(self.yaml_path)]

    def yaml_text(self) -> str:
        return yaml.safe_dump(self.args, sort_keys=False, allow_unicode=True)

    def describe(self) -> str:
        """What would run: environment, command and YAML (for --dry-run)."""
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        lines = [f"$ {env + ' ' if env else ''}{' '.join(self.command())}", f"--- {self.yaml_path}", self.yaml_text()]
        return "\n".join(lines)


def compose_train_job(
    cfg: MathSEConfig,
    *,
    name: str,
    model_path: str,
    datasets: list[str],
    dataset_dir: Path,
    output_dir: Path,
    run_dir: Path,
    extra: dict[str, Any] | None = None,
    recipe_path: Path | None = None,
) -> TrainJob:
    """Recipe template < config's llama_factory block < stage specifics (< `extra`).

    `recipe_path` replaces `llama_factory.recipe` for one stage (e.g. a LoRA final SFT).
    """
    recipe_file = recipe_path or cfg.llama_factory.recipe
    recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}
    args: dict[str, Any] = dict(recipe)
    args.update(cfg.llama_factory.overrides())
    args.update(
        {
            "model_name_or_path": model_path,
            "template": cfg.model.template,
            "trust_remote_code": cfg.model.trust_remote_code,
            "dataset": ",".join(datasets),
            "dataset_dir": str(dataset_dir),
            # Images are stored as absolute paths, so media_dir only matters for relative ones.
            "media_dir": str(dataset_dir),
            "output_dir": str(output_dir),
            "seed": cfg.run.seed,
            "data_seed": cfg.run.seed,
        }
    )
    args.update(extra or {})
    args.setdefault("stage", "sft")
    args.setdefault("do_train", True)
    return TrainJob(name=name, args=args, run_dir=run_dir, env=launcher_env(cfg))


def launcher_env(cfg: MathSEConfig) -> dict[str, str]:
    """The variables LLaMA-Factory's launcher reads for multi-GPU / multi-node torchrun."""
    launch = cfg.llama_factory.launcher
    env: dict[str, str] = {}
    if launch.force_torchrun or launch.nnodes > 1:
        env["FORCE_TORCHRUN"] = "1"
    if launch.nnodes > 1:
        env["NNODES"] = str(launch.nnodes)
        env["NODE_RANK"] = str(launch.node_rank)
    if launch.nproc_per_node is not None:
        env["NPROC_PER_NODE"] = str(launch.nproc_per_node)
    if launch.master_addr is not None:
        env["MASTER_ADDR"] = launch.master_addr
    if launch.master_port is not None:
        env["MASTER_PORT"] = str(launch.master_port)
    return env


def run_train_job(job: TrainJob, tail_lines: int = 30) -> Path:
    """Run `llamafactory-cli train`, streaming its output to the console and the log.

    Resumable: a finished job (marker in its output dir) is skipped; an interrupted one resumes
    from its last `checkpoint-*` (LLaMA-Factory does so when output_dir holds one), and one killed
    before its first checkpoint starts over in a cleared directory.
    """
    out = job.output_dir
    if is_done(out):
        return out
    if out.exists():
        if (out / "trainer_state.json").is_file():
            # Training finished (LLaMA-Factory saves the model, its metrics, then trainer_state.json
            # last) and the kill came before the marker: resuming would train a step past max_steps.
            mark_done(out, {"job": job.name, "yaml": str(job.yaml_path)})
            return out
        # A checkpoint is complete once trainer_state.json exists (the Trainer writes it last);
        # one cut short by the kill would make the resume fail, so it goes.
        for ckpt in out.glob("checkpoint-*"):
            if not (ckpt / "trainer_state.json").is_file():
                shutil.rmtree(ckpt)
        if not any(out.glob("checkpoint-*")):
            shutil.rmtree(out)  # partial output with nothing to resume from
    resume = _resume_weights(out)
    if resume is not None:
        # transformers' Trainer restores a full checkpoint's weights with load_state_dict(strict=False)
        # on the keys as saved; Qwen2-VL saves them in its legacy layout, which (transformers 5.x)
        # matches none of the model's parameter names, so the resumed run would silently go on from the
        # start model's weights. Loading the model from the checkpoint itself (from_pretrained maps the
        # keys) makes the resume exact; optimizer, scheduler, RNG state and step still come from it.
        job = replace(job, args={**job.args, "model_name_or_path": str(resume)})
    job.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.yaml_path, job.yaml_text())
    env = {**os.environ, **job.env}
    last: deque[str] = deque(maxlen=tail_lines)
    with job.log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(job.command())}\n")
        try:
            proc = subprocess.Popen(
                job.command(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,
                bufsize=1,
                errors="replace",
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError:
            raise TrainingError("llamafactory-cli not found on PATH: pip install -r requirements.txt") from None
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                last.append(line.rstrip("\n"))
                sys.stdout.write(line)
        finally:
            code = proc.wait()
    if code != 0:
        tail = "\n".join(last)
        raise TrainingError(f"llamafactory-cli train failed (exit {code}); log: {job.log_path}\n{tail}")
    mark_done(out, {"job": job.name, "yaml": str(job.yaml_path)})
    return out


def _resume_weights(out: Path) -> Path | None:
    """The checkpoint LLaMA-Factory will resume from (the highest step), when it holds full model weights."""
    steps = [(int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    if not steps:
        return None
    ckpt = max(steps)[1]
    if (ckpt / "adapter_config.json").is_file():
        return None  # LoRA: the Trainer loads adapters through PEFT, which maps the keys itself
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
    return ckpt if any((ckpt / name).is_file() for name in weights) else None


def _die_with_parent() -> None:
    """In the child: get SIGKILL when MathSE dies, even by SIGKILL, so a killed stage never
    leaves a trainer writing into the output dir its rerun is about to use (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_api(
    args: dict[str, Any], run_dir: Path, port: int | None = None, startup_timeout_s: float = 180.0
) -> Iterator[str]:
    """Serve a model with `llamafactory-cli api` on 127.0.0.1; yields its OpenAI base URL.

    The server's output goes to `run_dir/api_<port>.log`; it is stopped (SIGTERM, then SIGKILL)
    when the block ends, however it ends.
    """
    port = port or free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    yaml_path = run_dir / f"api_{port}.yaml"
    atomic_write_text(yaml_path, yaml.safe_dump(args, sort_keys=False))
    env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port)}
    base_url = f"http://127.0.0.1:{port}/v1"
    with (run_dir / f"api_{port}.log").open("w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            ["llamafactory-cli", "api", str(yaml_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )
        try:
            _wait_until_serving(proc, base_url, startup_timeout_s, run_dir / f"api_{port}.log")
            yield base_url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until_serving(proc: subprocess.Popen[bytes], base_url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            raise TrainingError(f"llamafactory-cli api exited with {proc.returncode}; log: {log_path}\n{tail}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TrainingError(f"llamafactory-cli api did not start within {timeout_s:.0f}s; log: {log_path}")
