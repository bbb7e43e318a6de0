"""Training through LLaMA-Factory: a training's layered arguments, its YAML, and `llamafactory-cli train`.

Training runs as a subprocess, exactly as a user would run it, so the same code path serves a
laptop CPU with a tiny model and a multi-node GPU job (via LLaMA-Factory's own torchrun launcher,
configured through the environment variables it reads).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from mathse.model.processes import die_with_parent
from mathse.run.config import MathSEConfig
from mathse.run.errors import TrainingError
from mathse.run.fingerprint import Inputs, Stale, check
from mathse.run.storage import atomic_open, atomic_write_text, is_done, mark_done, read_json


def llamafactory_command(*args: str) -> list[str]:
    """`llamafactory-cli <args>` as run by this very interpreter.

    Not looked up on PATH: `venv/bin/python main.py` without an activated venv would find no
    `llamafactory-cli`, or another environment's. `python -m llamafactory.cli` is what that
    console script runs.
    """
    return [sys.executable, "-m", "llamafactory.cli", *args]


def llamafactory_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a LLaMA-Factory subprocess: ours, plus `extra`, with this interpreter's
    bin folder first on PATH, because LLaMA-Factory's launcher starts `torchrun` by name."""
    env = {**os.environ, **(extra or {})}
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir)])
    return env


@dataclass
class TrainJob:
    """A fully composed training run: its YAML arguments, environment and command."""

    name: str
    args: dict[str, Any]
    run_dir: Path  # where train.yaml and train.log live
    env: dict[str, str] = field(default_factory=dict)
    # Where each argument's value came from: "recipe <file>", "llama_factory", "trainings.<t>", "stage".
    origins: dict[str, str] = field(default_factory=dict)
    # Things the user should know before hours of training (e.g. a shared value over a LoRA recipe's).
    notes: list[str] = field(default_factory=list)
    keep_checkpoints: bool = False  # else checkpoint-* folders are deleted once training finished

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
        return llamafactory_command("train", str(self.yaml_path))

    def yaml_text(self) -> str:
        return yaml.safe_dump(self.args, sort_keys=False, allow_unicode=True)

    def describe(self) -> str:
        """What would run: environment, command, notes and YAML with each value's origin (for --dry-run)."""
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        # Shown as the familiar console script; it runs as `<this python> -m llamafactory.cli`.
        lines = [
            f"$ {env + ' ' if env else ''}llamafactory-cli train {self.yaml_path}",
            f"# (run as {sys.executable} -m llamafactory.cli train ...)",
            *(f"# note: {note}" for note in self.notes),
            f"--- {self.yaml_path}",
        ]
        for key, value in self.args.items():
            text = yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True).rstrip("\n")
            origin = f"# from {self.origins.get(key, 'stage')}"
            lines.append(f"{text}  {origin}" if "\n" not in text else f"{origin}\n{text}")
        return "\n".join(lines) + "\n"


def training_layers(
    cfg: MathSEConfig, training: str | None, recipe_path: Path | None = None
) -> tuple[Path, list[tuple[str, dict[str, Any]]]]:
    """(recipe file, [(origin, args)] from the bottom up): recipe < llama_factory < trainings.<training>.

    The one place a training's arguments are layered, for its YAML and for counting its tokens.
    """
    own = getattr(cfg.trainings, training) if training is not None else None
    if training == "final" and recipe_path is None:
        recipe_path = cfg.reflect.final_recipe
    recipe_file = (own.recipe if own is not None else None) or recipe_path or cfg.llama_factory.recipe
    recipe = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) or {}
    return recipe_file, [
        (f"recipe {recipe_file.name}", dict(recipe)),
        ("llama_factory", cfg.llama_factory.overrides()),
        (f"trainings.{training}", own.overrides() if own is not None else {}),
    ]


def training_args(cfg: MathSEConfig, training: str | None) -> dict[str, Any]:
    """The training's LLaMA-Factory arguments before the stage specifics (model, data, output)."""
    args: dict[str, Any] = {}
    for _, values in training_layers(cfg, training)[1]:
        args.update(values)
    return args


def compose_train_job(
    cfg: MathSEConfig,
    *,
    name: str,
    datasets: list[str],
    output_dir: Path,
    run_dir: Path,
    model_path: str | None = None,
    dataset_dir: Path | None = None,
    extra: dict[str, Any] | None = None,
    recipe_path: Path | None = None,
    training: str | None = None,
) -> TrainJob:
    """Recipe template < shared `llama_factory` block < `trainings.<training>` < stage specifics (< `extra`).

    `training` names the per-training overrides ("m0", "rounds", "orm", "final"; None: none).
    Its `recipe`, else `recipe_path` (e.g. reflect.final_recipe), replaces `llama_factory.recipe`.
    """
    model_path = model_path or cfg.model.base
    dataset_dir = dataset_dir or cfg.dataset_dir
    recipe_file, layers = training_layers(cfg, training, recipe_path)
    recipe = layers[0][1]
    stage = {
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
        **(extra or {}),
    }
    layers.append(("stage", stage))
    args: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for origin, values in layers:
        for key, value in values.items():
            args[key] = value
            origins[key] = origin
    for key, value in (("stage", "sft"), ("do_train", True)):
        if key not in args:
            args[key], origins[key] = value, "stage"
    notes = []
    if recipe_file != cfg.llama_factory.recipe:
        # This training has its own recipe (e.g. LoRA): shared values that beat it are worth a word.
        shared = cfg.llama_factory.overrides()
        for key, value in recipe.items():
            if origins.get(key) == "llama_factory" and shared[key] != value:
                notes.append(
                    f"{key}: {shared[key]!r} from llama_factory.{key} replaces {value!r} of {recipe_file.name} "
                    f"(set trainings.{training or '<training>'}.{key} to choose)"
                )
    return TrainJob(
        name=name,
        args=args,
        run_dir=run_dir,
        env=launcher_env(cfg),
        origins=origins,
        notes=notes,
        keep_checkpoints=cfg.llama_factory.keep_checkpoints,
    )


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
    if launch.use_ray:
        env["USE_RAY"] = "1"
    return env


# LLaMA-Factory arguments that do not change the trained weights (logging, saving, placement of
# files, parallelism): changing one does not make a trained model stale.
VOLATILE_ARGS = frozenset({
    "output_dir", "dataset_dir", "media_dir", "logging_steps", "save_steps", "save_total_limit", "report_to",
    "preprocessing_num_workers", "dataloader_num_workers", "overwrite_cache", "overwrite_output_dir", "plot_loss",
    "run_name", "ddp_timeout", "deepspeed", "resume_from_checkpoint", "save_only_model",
})


def training_inputs(job: TrainJob) -> Inputs:
    """What a training consumes: its arguments (minus the volatile ones), its dataset files and,
    for a start model this run trained, that model's completion marker."""
    args = {k: v for k, v in job.args.items() if k not in VOLATILE_ARGS}
    inputs = Inputs()
    for key in ("model_name_or_path", "adapter_name_or_path"):
        if key in args and is_done(Path(str(args[key]))):
            inputs.marker(key, Path(str(args.pop(key))))  # its marker says which training made it
    datasets = str(job.args.get("dataset") or "")
    for name in filter(None, datasets.split(",")):
        inputs.file(f"dataset {name}", Path(job.args["dataset_dir"]) / f"{name}.json")
    return inputs.value("training", args)


def training_stale(job: TrainJob, unit: str, discard: tuple[Path, ...] = ()) -> Stale | None:
    """The finished training `job`, if its arguments, data or start model changed since (it would
    be redone in full: the output folder goes, with `discard`)."""
    return check(unit, job.output_dir, training_inputs(job), discard=(job.output_dir, *discard))


def run_train_job(job: TrainJob, tail_lines: int = 30) -> Path:
    """Run `llamafactory-cli train`, its output in the job's log, a step progress bar on the console.

    LLaMA-Factory's own chatter (configs, tokenizer, tqdm lines) goes to `job.log_path` only; the
    console gets one line naming the log, a bar of the optimizer steps (with the last logged loss)
    and one line with the result; a failure shows the log's tail.

    Resumable: a finished job (marker in its output dir) is skipped; an interrupted one resumes
    from its last `checkpoint-*` (LLaMA-Factory does so when output_dir holds one), and one killed
    before its first checkpoint starts over in a cleared directory.
    """
    out = job.output_dir
    if is_done(out):
        return out
    inputs = training_inputs(job)  # before a resume swaps the start model for the checkpoint
    if job.env.get("NODE_RANK", "0") != "0":
        return _join_train_job(job)
    job.yaml_path.unlink(missing_ok=True)  # nodes > 0 start from the YAML node 0 writes below
    if out.exists():
        if (out / "trainer_state.json").is_file():
            # Training finished (LLaMA-Factory saves the model, its metrics, then trainer_state.json
            # last) and the kill came before the marker: resuming would train a step past max_steps.
            _finish(job, inputs)
            return out
        # A checkpoint is complete once trainer_state.json exists (the Trainer writes it last);
        # one cut short by the kill would make the resume fail, so it goes.
        for ckpt in out.glob("checkpoint-*"):
            if not (ckpt / "trainer_state.json").is_file():
                shutil.rmtree(ckpt)
        if not any(out.glob("checkpoint-*")):
            shutil.rmtree(out)  # partial output with nothing to resume from
        elif _adopt_last_checkpoint(out, Path(str(job.args.get("model_name_or_path", "")))):
            # The kill fell between the checkpoint of the last step and the final save: resumed from
            # there, the Trainer would run one step past max_steps (its loop only stops after a step).
            _finish(job, inputs)
            return out
    resume = _resume_weights(out)
    if resume is not None:
        # transformers' Trainer restores a full checkpoint's weights with load_state_dict(strict=False)
        # on the keys as saved; Qwen2-VL saves them in its legacy layout, which (transformers 5.x)
        # matches none of the model's parameter names, so the resumed run would silently go on from the
        # start model's weights. Loading the model from the checkpoint itself (from_pretrained maps the
        # keys) makes the resume exact; optimizer, scheduler, RNG state and step still come from it.
        _complete_processor_files(resume, Path(str(job.args.get("model_name_or_path", ""))))
        job = replace(job, args={**job.args, "model_name_or_path": str(resume)})
    job.run_dir.mkdir(parents=True, exist_ok=True)
    for note in job.notes:
        print(f"{job.name}: note: {note}", flush=True)
    atomic_write_text(job.yaml_path, job.yaml_text())
    print(f"{job.name}: llamafactory-cli train -> {out} (log: {job.log_path})", flush=True)
    env = llamafactory_env(job.env)
    started = time.perf_counter()
    code, tail = _run_logged(job.command(), env, job.log_path, f"{job.name}: train", tail_lines)
    if code != 0:
        raise TrainingError(f"llamafactory-cli train failed (exit {code}); log: {job.log_path}\n{tail}")
    _finish(job, inputs)
    print(f"{job.name}: trained in {time.perf_counter() - started:.0f} s{_train_result_text(out)}", flush=True)
    return out


# The Trainer's step bar (" 40%|####      | 80/200 [00:15<00:18, ...]") and its loss logs
# ("{'loss': '0.5376', ...}"); other bars (dataset conversion, tokenizer) carry a description first.
_STEP_BAR = re.compile(r"^\s*\d+%\|[^|]*\|\s*(\d+)/(\d+)\s*\[")
_LOSS = re.compile(r"^\{'loss': '?([0-9.eE+-]+)'?")


def _run_logged(command: list[str], env: dict[str, str], log_path: Path, desc: str, tail_lines: int) -> tuple[int, str]:
    """Run `command` with all its output appended to `log_path`; a step bar on the console.

    Returns (exit code, the last `tail_lines` lines of the output).
    """
    from tqdm import tqdm

    last: deque[str] = deque(maxlen=tail_lines)
    with log_path.open("a", encoding="utf-8") as log, tqdm(desc=desc, unit="step", total=None) as bar:
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                text=True,  # universal newlines: every tqdm refresh ("\r") arrives as a line
                bufsize=1,
                errors="replace",
                preexec_fn=die_with_parent,
            )
        except FileNotFoundError:  # only if the interpreter itself vanished
            raise TrainingError(f"cannot run {sys.executable}: pip install -r requirements.txt") from None
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                last.append(line.rstrip("\n"))
                if step := _STEP_BAR.match(line):
                    done, total = int(step.group(1)), int(step.group(2))
                    if bar.total != total:
                        bar.reset(total=total)
                    bar.update(done - bar.n)
                elif loss := _LOSS.match(line):
                    bar.set_postfix(loss=loss.group(1), refresh=False)
        finally:
            code = proc.wait()
    return code, "\n".join(last)


def _train_result_text(out: Path) -> str:
    """", train loss 0.123 (200 steps)" from the Trainer's train_results.json, if it wrote one."""
    path = out / "train_results.json"
    try:
        results = read_json(path)
        return f", train loss {float(results['train_loss']):.4g}"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _join_train_job(job: TrainJob, poll_s: float = 1.0) -> Path:
    """A node_rank > 0 joins node 0's training: the same YAML (node 0 decided resume and cleanup),
    its own log; node 0 prunes and marks the output (the output_dir is on a shared filesystem)."""
    rank = job.env["NODE_RANK"]
    while not job.yaml_path.is_file():
        if is_done(job.output_dir):
            # Node 0 found the training already finished (or its last step's checkpoint complete)
            # and marked it without launching: there is nothing to join.
            return job.output_dir
        time.sleep(poll_s)  # node 0 writes it right before it launches; the launcher's rendezvous times out
    log_path = job.run_dir / f"{job.name}.rank{rank}.log"
    print(f"{job.name}: node_rank {rank} joins llamafactory-cli train (log: {log_path})", flush=True)
    code, tail = _run_logged(job.command(), llamafactory_env(job.env), log_path, f"{job.name}: train", 30)
    if code != 0:
        raise TrainingError(f"llamafactory-cli train (node_rank {rank}) failed (exit {code}); log: {log_path}\n{tail}")
    return job.output_dir


def _finish(job: TrainJob, inputs: Inputs) -> None:
    """Prune the finished training's intermediate checkpoints (unless kept), then mark it done.

    Each checkpoint-* holds a full model plus optimizer state (3x the model for full fine-tuning):
    at 7B that is ~100 GB per checkpoint, per training, for resumes that can no longer happen.
    The marker comes last, so a kill mid-prune is finished by the rerun.
    """
    out = job.output_dir
    pruned = 0
    if not job.keep_checkpoints:
        for ckpt in sorted(out.glob("checkpoint-*")):
            if ckpt.is_dir():
                shutil.rmtree(ckpt)
                pruned += 1
    mark_done(out, {"job": job.name, "yaml": str(job.yaml_path), "checkpoints_pruned": pruned,
                    "consumed": inputs.record()})


# What only a resume needs; the rest of a checkpoint is what the final save writes too.
_RESUME_ONLY_FILE = re.compile(r"optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth")


def _adopt_last_checkpoint(out: Path, start_model: Path) -> bool:
    """If the latest checkpoint is of the training's last step, make its files the output; else False.

    trainer_state.json goes last: once it is in `out`, a rerun takes the training as finished.
    The Trainer's train_results.json and loss plot are not in a checkpoint, so they stay missing.
    """
    latest = _latest_checkpoint(out)
    if latest is None:
        return False
    state = read_json(latest / "trainer_state.json")
    if not 0 < int(state.get("max_steps") or 0) <= int(state.get("global_step") or 0):
        return False
    if not _has_weights(latest):
        return False  # e.g. DeepSpeed ZeRO-3 shards only: resuming is the way to a saved model
    _complete_processor_files(latest, start_model)
    files = sorted(p for p in latest.iterdir() if p.is_file() and not _RESUME_ONLY_FILE.fullmatch(p.name))
    for src in sorted(files, key=lambda p: p.name == "trainer_state.json"):
        with src.open("rb") as source, atomic_open(out / src.name, binary=True) as target:
            shutil.copyfileobj(source, target)
    print(f"{out.name}: the kill came after {latest.name}, the last step's checkpoint: it is the result", flush=True)
    return True


def _latest_checkpoint(out: Path) -> Path | None:
    """The `checkpoint-N` with the highest N (LLaMA-Factory resumes from it), if any."""
    steps = [(int(m.group(1)), p) for p in out.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return max(steps)[1] if steps else None


def _resume_weights(out: Path) -> Path | None:
    """The checkpoint LLaMA-Factory will resume from (the highest step), when it holds full model weights."""
    ckpt = _latest_checkpoint(out)
    if ckpt is None:
        return None
    if (ckpt / "adapter_config.json").is_file():
        return None  # LoRA: the Trainer loads adapters through PEFT, which maps the keys itself
    return ckpt if _has_weights(ckpt) else None


def _has_weights(ckpt: Path) -> bool:
    """Whether `ckpt` holds loadable model (or LoRA adapter) weights, not only optimizer shards."""
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
               "adapter_model.safetensors", "adapter_model.bin")
    return any((ckpt / name).is_file() for name in weights)


# What a processor/tokenizer save writes (never weights, config or trainer state).
_PROCESSOR_FILE = re.compile(
    r"tokenizer.*|special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt|"
    r"(video_)?preprocessor_config\.json|processor_config\.json|chat_template\.(json|jinja)"
)


def _complete_processor_files(ckpt: Path, start_model: Path) -> None:
    """Give `ckpt` the tokenizer/processor files of the model training started from.

    LLaMA-Factory saves the processor into a checkpoint from an `on_save` callback, after the Trainer
    wrote trainer_state.json: a kill in between leaves a checkpoint whose weights resume but whose
    processor files are missing or cut short ("Processor was not found", or an empty
    tokenizer_config.json). Those files never change during training, so the start model's are put
    in place of whatever the checkpoint has.
    """
    if not start_model.is_dir():
        return
    for src in start_model.iterdir():
        if src.is_file() and _PROCESSOR_FILE.fullmatch(src.name):
            shutil.copy2(src, ckpt / src.name)


