"""config.yaml -> typed, validated objects, once, at the edge.

Everything else in MathSE receives a `MathSEConfig` and never touches raw dicts. Errors from the
YAML, from ``--set`` overrides and from validation are collected and reported together, one line
each, naming the key (with a close-match suggestion for unknown keys).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from mathse.errors import ConfigError
from mathse.storage import atomic_write_text

__all__ = [
    "ApiConfig",
    "ConfigError",
    "MathSEConfig",
    "Price",
    "RayConfig",
    "ServeConfig",
    "TrainingOverrides",
    "load_config",
    "parse_overrides",
    "save_resolved_config",
]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(StrictModel):
    output_dir: Path = Path("output")
    seed: int = 42


class DataConfig(StrictModel):
    seed_file: Path | None = None  # seed problems for Stage 1 (distill)
    pool_file: Path | None = None  # D_remain at the start of Stage 2 (evolve)
    image_root: Path | None = None  # relative image paths resolve here; default: the JSONL's folder


class ModelConfig(StrictModel):
    base: str  # local path (or hub id on machines with a populated HF cache)
    template: str = "qwen2_vl"
    trust_remote_code: bool = True


class ApiConfig(StrictModel):
    """An OpenAI-compatible chat-completions endpoint (teacher, served ORM, LLM judge)."""

    base_url: str
    model: str
    api_key: SecretStr | None = None
    concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    temperature: float = Field(0.0, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(2048, ge=1)
    image_detail: Literal["auto", "low", "high"] = "auto"


class Price(StrictModel):
    """USD per million tokens, for the usage ledger's cost estimate."""

    prompt_per_1m: float = Field(0.0, ge=0)
    completion_per_1m: float = Field(0.0, ge=0)


class TeacherConfig(ApiConfig):
    # Keep only distilled solutions whose final answer matches the reference answer.
    filter_by_answer: bool = True
    system_prompt: str = (
        "You are an expert mathematics teacher. Solve the problem step by step, one step per "
        "line starting with 'Step k:', and end with the line 'The final answer is \\boxed{...}'."
    )
    # {question} and {answer} are filled in; the reference answer steers the teacher to it.
    distill_prompt: str = (
        "{question}\n\nThe reference answer is: {answer}\n"
        "Write a clear step-by-step solution that reaches this answer."
    )


class LocalModelConfig(StrictModel):
    """A LLaMA-Factory ChatModel loaded in-process."""

    model_name_or_path: str
    adapter_name_or_path: str | None = None
    template: str = "qwen2_vl"
    max_new_tokens: int = Field(512, ge=1)


class OrmDataConfig(StrictModel):
    """How `--stage orm` builds the ORM's training data the paper's way (when orm.train_file is unset)."""

    # Labelled problems to sample paths on: the seed set, the first problems of the pool, or a file.
    source: Literal["seed", "pool", "file"] = "seed"
    file: Path | None = None  # with source: file (the problem schema of data.seed_file)
    max_problems: int | None = Field(None, ge=1)  # only the first N problems of the source
    paths_per_problem: int = Field(4, ge=1)  # paths sampled from M0 per problem
    temperature: float = Field(1.0, ge=0)  # sampling temperature for those paths
    # Balance: correct paths kept per incorrect path (paper: 30K + 30K, i.e. 1.0); the larger class
    # is cut down (deterministically) to match. max_incorrect caps the incorrect class first.
    correct_per_incorrect: float = Field(1.0, gt=0)
    max_incorrect: int | None = Field(None, ge=1)
    # Share of the problems (all their paths) held out to measure the trained ORM.
    heldout_fraction: float = Field(0.1, ge=0, lt=1)
    # The teacher's annotation of an incorrect path; {question} {answer} {steps} {n_steps} are filled in.
    annotate_prompt: str = (
        "A student's solution to the problem below reaches a wrong final answer.\n\n"
        "Problem: {question}\n\nReference answer: {answer}\n\n"
        "Student's solution ({n_steps} numbered steps):\n{steps}\n\n"
        "Find the FIRST step that contains an error and explain what goes wrong there and how to fix it. "
        'Reply with exactly one JSON object: {{"correct": false, "error_step": <step number from 1 to {n_steps}>, '
        '"analysis": "<your analysis>"}}'
    )
    # The analysis written for correct paths (the teacher is asked only about incorrect ones).
    correct_analysis: str = "Every step is valid and the final answer matches the reference answer."
    # Also ask the teacher to check every path whose final answer is right (the paper labels by the
    # answer alone): one with a faulty step becomes an incorrect example naming that step. A small
    # model reaches the right answer through wrong steps often (the demo's M0: 30-65% of its right
    # answers), and an ORM taught those are correct passes them on to self-training.
    verify_correct: bool = False
    # The teacher's check of a right-answer path; {question} {answer} {steps} {n_steps} are filled in.
    verify_prompt: str = (
        "A student's solution to the problem below reaches the reference answer. Check every step.\n\n"
        "Problem: {question}\n\nReference answer: {answer}\n\n"
        "Student's solution ({n_steps} numbered steps):\n{steps}\n\n"
        "If every step is valid, reply with exactly one JSON object: "
        '{{"correct": true, "error_step": null, "analysis": "<why it is right>"}}. Otherwise name the FIRST '
        'step that contains an error: {{"correct": false, "error_step": <step number from 1 to {n_steps}>, '
        '"analysis": "<what goes wrong there and how to fix it>"}}'
    )

    @model_validator(mode="after")
    def _file_for_file_source(self) -> OrmDataConfig:
        if self.source == "file" and self.file is None:
            raise ValueError("orm.data.source is 'file' but orm.data.file is not set")
        return self


class OrmConfig(StrictModel):
    # trained: the ORM `--stage orm` trains (paths.orm_model), served by the pipeline itself with
    #          `llamafactory-cli api` for the stages that judge, unless orm.api points at a server;
    # api: an ORM served elsewhere (orm.api); local: loaded in-process (orm.local);
    # rule: no ORM, the final answer is checked against the reference (rejection sampling).
    backend: Literal["trained", "api", "local", "rule"] = "rule"
    # How the ORM verdict and the rule (math-verify vs reference) combine.
    policy: Literal["orm", "rule", "both", "either"] = "rule"
    # A positive ORM verdict whose P(correct) is below this becomes negative. P(correct) comes from
    # the token log-probabilities of the verdict when the server returns them (see mathse.verdict).
    score_threshold: float | None = Field(None, ge=0, le=1)
    # Ask the ORM server for token log-probabilities (OpenAI `logprobs`) to compute P(correct).
    logprobs: bool = True
    api: ApiConfig | None = None
    local: LocalModelConfig | None = None
    # Hand-made labelled paths (JSONL) to train on instead of building the data from M0 + teacher.
    train_file: Path | None = None
    # Labelled paths (same format) to measure a hand-trained ORM on; built data has its own held-out set.
    heldout_file: Path | None = None
    data: OrmDataConfig = Field(default_factory=OrmDataConfig)
    serve_timeout_s: float = Field(900.0, gt=0)  # how long the pipeline waits for its ORM server to answer
    max_new_tokens: int = Field(512, ge=1)  # verdict length limit of the ORM the pipeline serves

    @model_validator(mode="after")
    def _backend_has_settings(self) -> OrmConfig:
        if self.backend == "api" and self.api is None:
            raise ValueError("orm.backend is 'api' but orm.api (base_url, model) is not set")
        if self.backend == "local" and self.local is None:
            raise ValueError("orm.backend is 'local' but orm.local (model_name_or_path) is not set")
        if self.policy in ("orm", "both", "either") and self.backend == "rule":
            raise ValueError(f"orm.policy '{self.policy}' needs an ORM model: set orm.backend to trained, api or local")
        return self


class InferenceConfig(StrictModel):
    # huggingface / vllm / sglang: LLaMA-Factory's ChatModel in this process (LLaMA-Factory 0.9.5
    # accepts vllm>=0.4.3,<=0.11.0 only). served: OpenAI-compatible servers the pipeline starts per
    # checkpoint (see the `serve` block), one or many replicas, optionally placed by Ray (`ray`).
    backend: Literal["huggingface", "vllm", "sglang", "served"] = "huggingface"
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(1024, ge=1)
    n_paths: int = Field(1, ge=1)  # reasoning paths sampled per problem
    concurrency: int = Field(32, ge=1)  # generation requests in flight (vLLM batches them)
    vllm_gpu_util: float = Field(0.9, gt=0, le=1)
    vllm_maxlen: int = Field(4096, ge=64)
    # Passed verbatim to llamafactory.chat.ChatModel (any ModelArguments/GeneratingArguments key).
    extra: dict[str, Any] = Field(default_factory=dict)


class ServeConfig(StrictModel):
    """How the pipeline serves a model (student per checkpoint, ORM, eval) over OpenAI's protocol.

    The server runs as a subprocess, so its engine may live in its own environment: `python` is
    that environment's interpreter (e.g. /opt/vllm/bin/python), `env` extra variables for it.
    """

    engine: Literal["llamafactory", "vllm", "sglang", "command"] = "llamafactory"
    # engine "command": the server's argv; placeholders {python} {model} {adapter} {host} {port}
    # {served_name} {template} {args_file} {max_model_len} {gpus} are filled in.
    command: list[str] | None = None
    python: str | None = None  # interpreter that runs the engine (default: this one)
    env: dict[str, str] = Field(default_factory=dict)
    replicas: int = Field(1, ge=1)  # servers per model; requests are spread over them
    gpus_per_replica: int = Field(0, ge=0)  # local placement: replica i gets GPUs [i*g, (i+1)*g)
    # vLLM/SGLang: data parallelism inside one server (--data-parallel-size / --dp) over this many GPUs.
    data_parallel_size: int = Field(1, ge=1)
    host: str = "127.0.0.1"  # where servers listen (Ray: each node's own address is used)
    startup_timeout_s: float = Field(900.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(6, ge=0)  # per request, over all replicas
    extra_args: list[str] = Field(default_factory=list)  # appended to the server command verbatim

    @model_validator(mode="after")
    def _command_has_argv(self) -> ServeConfig:
        if self.engine == "command" and not self.command:
            raise ValueError("serve.engine is 'command' but serve.command (the server argv) is not set")
        return self


class RayConfig(StrictModel):
    """Place the `serve` replicas on a Ray cluster (actors that own the server processes)."""

    address: str | None = "auto"  # "auto": the cluster this node joined with `ray start`; None: a local one
    num_gpus: float = Field(0, ge=0)  # per replica actor (default: serve.gpus_per_replica)
    num_cpus: float = Field(1, ge=0)  # per replica actor
    max_restarts: int = Field(3, ge=-1)  # Ray restarts a dead replica (node loss) this often; -1: forever
    # Passed verbatim to ray.init (namespace, runtime_env, ...).
    init_kwargs: dict[str, Any] = Field(default_factory=dict)


class EvolveConfig(StrictModel):
    rounds: int = Field(3, ge=0)
    batch_size: int = Field(1000, ge=1)
    retrain: bool = True
    retrain_from: Literal["base", "previous"] = "base"


class ReflectConfig(StrictModel):
    # "corrected": the corrected path alone is the target;
    # "reflection": draft + reflection + corrected path (reflection-in-the-loop).
    format: Literal["corrected", "reflection"] = "corrected"
    # The teacher's instructions; {question} {answer} {draft} {steps} {error_step} {error_step_text}
    # {analysis} are filled in. The reply must hold a reflection and a corrected solution.
    prompt: str = (
        "A student solved the problem below and made a mistake.\n\n"
        "Problem: {question}\n\nStudent's solution (numbered steps):\n{steps}\n\n"
        "A reviewer found the first error at step {error_step}: {error_step_text}\n"
        "Reviewer's analysis: {analysis}\n\n"
        "Reply in two parts. After 'Reflection:', explain in a few sentences what went wrong and why. "
        "After 'Corrected solution:', write a complete corrected step-by-step solution, one step per line "
        "starting with 'Step k:', ending with 'The final answer is \\boxed{{...}}'."
    )
    # Keep only reflected paths the ORM (with orm.policy) judges correct.
    revalidate: bool = True
    max_drafts_per_question: int | None = Field(None, ge=1)
    # Final SFT recipe; default: llama_factory.recipe (e.g. configs/llama_factory/sft_lora.yaml).
    # The same as trainings.final.recipe, where its hyperparameters can be set too.
    final_recipe: Path | None = None
    # Start the final SFT from the Stage-2 checkpoint ("stage2") or from the base model ("base").
    final_from: Literal["stage2", "base"] = "stage2"


class BenchmarkSpec(StrictModel):
    """One evaluation set, read from local files in its published layout."""

    name: str
    format: Literal["mathvista", "mathverse", "mathvision", "mathvl", "jsonl"]
    path: Path  # a file (JSONL/JSON/parquet) or a folder holding the benchmark's files
    split: str | None = None  # e.g. testmini / test, where the layout has several
    image_root: Path | None = None  # where relative image paths resolve; default: next to `path`
    limit: int | None = Field(None, ge=1)  # evaluate only the first N records (smoke tests)


class EvalConfig(StrictModel):
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list)
    # Model dirs or names: "base", "stage0", "round_<r>", "stage2", "final"; None = every model the run produced.
    checkpoints: list[str] | None = None
    # Optional LLM judge for answers the rules cannot extract (reported separately).
    judge: ApiConfig | None = None
    max_new_tokens: int | None = Field(None, ge=1)  # default: inference.max_new_tokens
    temperature: float = Field(0.0, ge=0)


class LauncherConfig(StrictModel):
    """Multi-GPU / multi-node: exported to `llamafactory-cli` as its environment variables."""

    force_torchrun: bool = False
    nnodes: int = Field(1, ge=1)
    node_rank: int = Field(0, ge=0)
    nproc_per_node: int | None = Field(None, ge=1)
    master_addr: str | None = None
    master_port: int | None = Field(None, ge=1, le=65535)
    # nnodes > 1: how long a node_rank > 0 waits for node 0's data before giving up.
    wait_timeout_s: float = Field(24 * 3600.0, gt=0)
    # LLaMA-Factory's Ray trainer (USE_RAY=1): workers on the Ray cluster; set ray_num_workers,
    # resources_per_worker, ray_init_kwargs in llama_factory.extra.
    use_ray: bool = False


class TrainingArgs(StrictModel):
    """LLaMA-Factory training arguments MathSE knows by name; None means: not set at this layer."""

    deepspeed: Path | None = None
    finetuning_type: Literal["full", "lora", "freeze"] | None = None
    learning_rate: float | None = Field(None, gt=0)
    num_train_epochs: float | None = Field(None, gt=0)
    max_steps: int | None = None
    per_device_train_batch_size: int | None = Field(None, ge=1)
    gradient_accumulation_steps: int | None = Field(None, ge=1)
    lr_scheduler_type: str | None = None
    warmup_ratio: float | None = Field(None, ge=0, le=1)
    cutoff_len: int | None = Field(None, ge=16)
    image_max_pixels: int | None = Field(None, ge=28 * 28)
    bf16: bool | None = None
    fp16: bool | None = None
    gradient_checkpointing: bool | None = None
    logging_steps: int | None = Field(None, ge=1)
    save_steps: int | None = Field(None, ge=1)
    save_total_limit: int | None = Field(None, ge=1)
    lora_rank: int | None = Field(None, ge=1)
    lora_alpha: int | None = Field(None, ge=1)
    lora_target: str | None = None
    quantization_bit: int | None = None
    freeze_vision_tower: bool | None = None
    preprocessing_num_workers: int | None = Field(None, ge=1)
    report_to: str | None = None
    # Any other LLaMA-Factory argument, passed verbatim.
    extra: dict[str, Any] = Field(default_factory=dict)

    def overrides(self) -> dict[str, Any]:
        """The LLaMA-Factory keys set at this layer (None means: keep the layer below's value)."""
        names = set(TrainingArgs.model_fields) - {"extra", "deepspeed"}
        args = {k: v for k, v in self.model_dump(include=names).items() if v is not None}
        if self.deepspeed is not None:
            args["deepspeed"] = str(self.deepspeed)
        args.update(self.extra)
        return args


class LlamaFactoryConfig(TrainingArgs):
    """Settings shared by every training; merged over the recipe template, stage specifics last."""

    recipe: Path = Path("configs/llama_factory/sft_full.yaml")
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)
    # Intermediate checkpoint-* folders are deleted once a training has finished (they hold a full
    # model and optimizer state each); true keeps them.
    keep_checkpoints: bool = False
    # An example whose image tokens cannot fit the training's cutoff_len (LLaMA-Factory would cut
    # them and die): "drop" leaves it out of the dataset and lists it; "stop" stops before training.
    too_long: Literal["drop", "stop"] = "drop"


class TrainingOverrides(TrainingArgs):
    """One training's own settings, over the shared `llama_factory` block (same keys)."""

    recipe: Path | None = None  # default: llama_factory.recipe


TRAININGS = ("m0", "rounds", "orm", "final")


class TrainingsConfig(StrictModel):
    """Per training: M0 (distill), every evolve round, the ORM, the final SFT."""

    m0: TrainingOverrides = Field(default_factory=TrainingOverrides)
    rounds: TrainingOverrides = Field(default_factory=TrainingOverrides)
    orm: TrainingOverrides = Field(default_factory=TrainingOverrides)
    final: TrainingOverrides = Field(default_factory=TrainingOverrides)


class PathsConfig(StrictModel):
    """Where each stage's model lands, relative to run.output_dir unless absolute."""

    sft_model_stage0: Path = Path("sft_model_stage0")
    sft_model_final: Path = Path("sft_model_final")
    reflection_model_final: Path = Path("reflection_model_final")
    orm_model: Path = Path("orm_model")


class MathSEConfig(StrictModel):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig
    teacher: TeacherConfig | None = None
    orm: OrmConfig = Field(default_factory=OrmConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    ray: RayConfig | None = None  # set: serve replicas are Ray actors on the cluster
    evolve: EvolveConfig = Field(default_factory=EvolveConfig)
    reflect: ReflectConfig = Field(default_factory=ReflectConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    llama_factory: LlamaFactoryConfig = Field(default_factory=LlamaFactoryConfig)
    trainings: TrainingsConfig = Field(default_factory=TrainingsConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    pricing: dict[str, Price] = Field(default_factory=dict)

    # Set by load_config: the folder relative paths were resolved against.
    config_dir: Path = Field(default=Path("."), exclude=True)

    @property
    def output_dir(self) -> Path:
        return self.run.output_dir

    @property
    def dataset_dir(self) -> Path:
        """The run's one LLaMA-Factory dataset folder; its dataset_info.json lists every stage's data."""
        return self.output_dir / "data"

    @property
    def api_cache_dir(self) -> Path:
        """Answered teacher/ORM/judge calls, shared by every stage so no call is paid for twice."""
        return self.output_dir / "cache" / "api"

    def model_path(self, name: str) -> Path:
        """A stage model directory from `paths`, resolved under run.output_dir."""
        path: Path = getattr(self.paths, name)
        return path if path.is_absolute() else self.output_dir / path

    def require(self, dotted_key: str) -> Any:
        """The value at `dotted_key`, or a ConfigError naming it when it is unset."""
        value: Any = self
        for part in dotted_key.split("."):
            value = getattr(value, part, None)
            if value is None:
                raise ConfigError([f"config error: {dotted_key}: required for this stage but not set"])
        return value

    def to_safe_dict(self) -> dict[str, Any]:
        """The resolved config with every secret masked, for saving into run directories."""
        return _mask_secrets(self.model_dump(mode="json"))


# ---------------------------------------------------------------------------------------------
# Loading

PROJECT_ROOT = Path(__file__).resolve().parent.parent

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Config keys whose values are filesystem paths that must exist when set.
_INPUT_PATHS = (
    "data.seed_file",
    "data.pool_file",
    "data.image_root",
    "orm.train_file",
    "orm.heldout_file",
    "orm.data.file",
    "llama_factory.recipe",
    "llama_factory.deepspeed",
    *(f"trainings.{name}.{key}" for name in TRAININGS for key in ("recipe", "deepspeed")),
)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`a.b=c` strings -> a nested dict; values are parsed as YAML scalars (1e-5, true, [1,2])."""
    tree: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"config error: --set {item!r}: expected key=value, e.g. evolve.rounds=2"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"config error: --set {item!r}: {part} is set both as a value and a section"])
        node[parts[-1]] = value
    return tree


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path, overrides: list[str] | None = None) -> MathSEConfig:
    """Read, override, substitute `${ENV}` references, validate and resolve paths."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config error: config file not found: {path}"])
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config error: {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(getattr(exc, "problem", exc)).split())  # one line, whatever the parser says
        raise ConfigError([f"config error: {where}: invalid YAML ({problem})"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"config error: {path}: top level must be a mapping of sections"])
    _deep_merge(raw, parse_overrides(overrides or []))

    errors: list[str] = []
    _apply_aliases(raw, errors)
    try:
        raw = _substitute_env(raw, "", errors)
    except RecursionError:  # a self-referencing YAML anchor (`a: &a [*a]`)
        raise ConfigError([f"config error: {path}: nested too deeply (a recursive YAML anchor?)"]) from None
    if errors:
        raise ConfigError(errors)
    try:
        cfg = MathSEConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_errors(exc, raw)) from None

    try:
        errors = _resolve_and_check_paths(cfg, path.resolve().parent)
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long for the filesystem, ...
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:200]
        raise ConfigError([f"config error: {path}: unusable path in the config ({reason})"]) from None
    if errors:
        raise ConfigError(errors)
    return cfg


# Keys of the official MathSE README -> this project's keys (docs/config reference: "Aliases").
KEY_ALIASES: dict[str, str] = {
    "orm.endpoint": "orm.api.base_url",
    "orm.api_key": "orm.api.api_key",
    "gpt4o.api_key": "teacher.api_key",
}
# The model name sent to an ORM given only by `orm.endpoint` (servers that serve one model ignore it).
DEFAULT_ORM_API_MODEL = "mathse-orm"


def _apply_aliases(raw: dict[str, Any], errors: list[str]) -> None:
    """Move every alias key (KEY_ALIASES) to its project key; both given is an error."""
    for alias, target in KEY_ALIASES.items():
        section, _, key = alias.partition(".")
        holder = raw.get(section)
        if not isinstance(holder, dict) or key not in holder:
            continue
        value = holder.pop(key)
        if not holder and section not in ("orm", "teacher"):
            raw.pop(section)  # a section that only held aliases (gpt4o) is gone
        node = raw
        *parents, leaf = target.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                errors.append(f"config error: {alias}: alias of {target}, but {part} is not a section")
                break
        else:
            if leaf in node:
                errors.append(f"config error: {alias}: alias of {target}, which is also set; keep one")
            else:
                node[leaf] = value
        if target.startswith("orm.api.") and isinstance(raw.get("orm"), dict):
            api = raw["orm"].get("api")
            if isinstance(api, dict):
                api.setdefault("model", DEFAULT_ORM_API_MODEL)


def _resolve_and_check_paths(cfg: MathSEConfig, config_dir: Path) -> list[str]:
    """Resolve the config's paths against its folder; one error line per input path that is missing."""
    _resolve_paths(cfg, config_dir)
    errors = [
        f"config error: {key}: path not found: {_printable(str(value))}"
        for key in _INPUT_PATHS
        if (value := _get_dotted(cfg, key)) is not None and not Path(value).exists()
    ]
    base = Path(cfg.model.base)
    if _looks_local(cfg.model.base) and not base.exists():
        errors.append(f"config error: model.base: path not found: {base}")
    if cfg.reflect.final_recipe is not None and not cfg.reflect.final_recipe.exists():
        errors.append(f"config error: reflect.final_recipe: path not found: {cfg.reflect.final_recipe}")
    for i, bench in enumerate(cfg.eval.benchmarks):
        for key in ("path", "image_root"):
            value = getattr(bench, key)
            if value is not None and not value.exists():
                errors.append(f"config error: eval.benchmarks[{i}].{key}: path not found: {value}")
    if cfg.reflect.final_recipe is not None and cfg.trainings.final.recipe is not None:
        errors.append("config error: reflect.final_recipe: also set as trainings.final.recipe; keep one")
    recipes = {"llama_factory.recipe": cfg.llama_factory.recipe, "reflect.final_recipe": cfg.reflect.final_recipe}
    recipes |= {f"trainings.{name}.recipe": getattr(cfg.trainings, name).recipe for name in TRAININGS}
    for key, recipe in recipes.items():
        if recipe is not None and recipe.exists() and (problem := _recipe_problem(recipe)):
            errors.append(f"config error: {key}: {recipe}: {problem}")
    return errors


def _recipe_problem(path: Path) -> str | None:
    """Why a LLaMA-Factory recipe cannot be used (not a file, not UTF-8, not a YAML mapping), or None."""
    if not path.is_file():
        return "not a file"
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except yaml.YAMLError as exc:
        return f"invalid YAML ({' '.join(str(getattr(exc, 'problem', exc)).split())})"
    return None if recipe is None or isinstance(recipe, dict) else "must be a YAML mapping of LLaMA-Factory arguments"


def _deep_merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def _substitute_env(node: Any, where: str, errors: list[str]) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in strings; an unset VAR without default is an error."""
    if isinstance(node, dict):
        return {k: _substitute_env(v, f"{where}.{k}" if where else str(k), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, f"{where}[{i}]", errors) for i, v in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        errors.append(f"config error: {_printable(where)}: environment variable {name} is not set")
        return ""

    value = _ENV_REF.sub(replace, node)
    # An empty secret means "none": local OpenAI-compatible servers need no key.
    return None if value == "" and node != "" else value


def _format_validation_errors(exc: ValidationError, raw: dict[str, Any]) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = _printable(".".join(loc) or "<root>")
        if err["type"] == "extra_forbidden":
            parent = _section_fields(loc[:-1])
            hint = difflib.get_close_matches(loc[-1], parent, n=1, cutoff=0.6) if parent else []
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"config error: {key}: unknown key{suggestion}")
        elif err["type"] == "missing":
            lines.append(f"config error: {key}: required key is missing")
        else:
            got = err.get("input")
            text = repr(got)
            text = text if len(text) <= 200 else f"{text[:200]}... ({len(text):,} chars)"  # one readable line
            shown = "" if isinstance(got, dict) else f" (got {text})"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"config error: {key}: {msg}{shown}")
    return lines


def _printable(text: str) -> str:
    """`text`, or its repr when it holds a newline or another control character (one error = one line)."""
    return text if text.isprintable() else repr(text)


def _section_fields(loc: list[str]) -> list[str]:
    """Field names valid at a location in the schema, for close-match suggestions."""
    model: type[BaseModel] | None = MathSEConfig
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
    if model is None:
        return []
    return [name for name, f in model.model_fields.items() if not f.exclude]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _looks_local(ref: str, base: Path | None = None) -> bool:
    """A filesystem path rather than a hub id: explicit path syntax, or it exists."""
    if ref.startswith(("/", "./", "../", "~")) or Path(ref).exists():
        return True
    return base is not None and (base / ref).exists()


def _resolve(value: Path, base: Path) -> Path:
    value = value.expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def _resolve_shipped(value: Path, base: Path) -> Path:
    """Like _resolve, but falls back to the templates shipped in the project's configs/."""
    resolved = _resolve(value, base)
    shipped = _resolve(value, PROJECT_ROOT)
    return shipped if not resolved.exists() and shipped.exists() else resolved


def _resolve_paths(cfg: MathSEConfig, base: Path) -> None:
    """Relative paths in the config are relative to the config file's folder."""
    cfg.config_dir = base
    cfg.run.output_dir = _resolve(cfg.run.output_dir, base)
    for key in ("seed_file", "pool_file", "image_root"):
        value = getattr(cfg.data, key)
        if value is not None:
            setattr(cfg.data, key, _resolve(value, base))
    cfg.llama_factory.recipe = _resolve_shipped(cfg.llama_factory.recipe, base)
    if cfg.llama_factory.deepspeed is not None:
        cfg.llama_factory.deepspeed = _resolve_shipped(cfg.llama_factory.deepspeed, base)
    for name in TRAININGS:
        training = getattr(cfg.trainings, name)
        for key in ("recipe", "deepspeed"):
            if getattr(training, key) is not None:
                setattr(training, key, _resolve_shipped(getattr(training, key), base))
    for key in ("train_file", "heldout_file"):
        if getattr(cfg.orm, key) is not None:
            setattr(cfg.orm, key, _resolve(getattr(cfg.orm, key), base))
    if cfg.orm.data.file is not None:
        cfg.orm.data.file = _resolve(cfg.orm.data.file, base)
    if cfg.serve.python is not None and ("/" in cfg.serve.python or cfg.serve.python.startswith("~")):
        cfg.serve.python = str(_resolve(Path(cfg.serve.python), base))  # a path, not a name on PATH
    if cfg.reflect.final_recipe is not None:
        cfg.reflect.final_recipe = _resolve_shipped(cfg.reflect.final_recipe, base)
    for bench in cfg.eval.benchmarks:
        bench.path = _resolve(bench.path, base)
        if bench.image_root is not None:
            bench.image_root = _resolve(bench.image_root, base)
    if _looks_local(cfg.model.base, base):
        cfg.model.base = str(_resolve(Path(cfg.model.base), base))
    if cfg.orm.local is not None and _looks_local(cfg.orm.local.model_name_or_path, base):
        cfg.orm.local.model_name_or_path = str(_resolve(Path(cfg.orm.local.model_name_or_path), base))


def _get_dotted(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _mask_secrets(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: ("***" if k == "api_key" and v else _mask_secrets(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_secrets(v) for v in node]
    return node


def save_resolved_config(cfg: MathSEConfig, path: Path) -> None:
    """Save the resolved config (secrets masked) next to a stage's outputs."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_safe_dict(), sort_keys=False, allow_unicode=True))
