"""The config's training blocks: LLaMA-Factory arguments, shared (`llama_factory`) and per training.

Every training (M0, each evolve round, the ORM, the final SFT) merges the recipe template, the
shared `llama_factory` block, and its own `trainings.<name>` overrides, in that order; a None
means "not set at this layer". `MathSEConfig` (`mathse.run.config`) holds these blocks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from mathse.run.config_sections import StrictModel

__all__ = [
    "TRAININGS",
    "LauncherConfig",
    "LlamaFactoryConfig",
    "TrainingArgs",
    "TrainingOverrides",
    "TrainingsConfig",
]


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
