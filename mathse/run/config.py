"""The config's schema: typed, validated blocks, one per concern; `MathSEConfig` holds them all.

Everything else in MathSE receives a `MathSEConfig` (or the block it needs) and never touches raw
dicts. Reading config.yaml into it (overrides, aliases, env references, paths, errors reported
together with "did you mean") is `mathse.run.config_loading.load_config`.

The blocks are defined in `mathse.run.config_sections` and `mathse.run.config_training` and
re-exported here: `from mathse.run.config import ApiConfig` is the way to name one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from mathse.run.config_sections import (
    ABLATION_PRESETS,
    AblationVariant,
    ApiConfig,
    BatchConfig,
    BenchmarkSpec,
    DataCheckConfig,
    DataConfig,
    EvalConfig,
    EvolveConfig,
    InferenceConfig,
    LocalModelConfig,
    ModelConfig,
    OrmConfig,
    OrmDataConfig,
    PathsConfig,
    Price,
    RayConfig,
    ReflectConfig,
    RunConfig,
    ServeConfig,
    StrictModel,
    TeacherConfig,
)
from mathse.run.config_training import (
    TRAININGS,
    LauncherConfig,
    LlamaFactoryConfig,
    TrainingArgs,
    TrainingOverrides,
    TrainingsConfig,
)
from mathse.run.errors import ConfigError
from mathse.run.storage import atomic_write_text

__all__ = [
    "ABLATION_PRESETS",
    "TRAININGS",
    "AblationVariant",
    "ApiConfig",
    "BatchConfig",
    "BenchmarkSpec",
    "ConfigError",
    "DataCheckConfig",
    "DataConfig",
    "EvalConfig",
    "EvolveConfig",
    "InferenceConfig",
    "LauncherConfig",
    "LlamaFactoryConfig",
    "LocalModelConfig",
    "MathSEConfig",
    "ModelConfig",
    "OrmConfig",
    "OrmDataConfig",
    "PathsConfig",
    "Price",
    "RayConfig",
    "ReflectConfig",
    "RunConfig",
    "ServeConfig",
    "TeacherConfig",
    "TrainingArgs",
    "TrainingOverrides",
    "TrainingsConfig",
    "save_resolved_config",
]


class MathSEConfig(StrictModel):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    data_check: DataCheckConfig = Field(default_factory=DataCheckConfig)
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
    # Variants of this run for `--stage ablations` (README "Ablations"): presets and/or overrides.
    ablations: list[AblationVariant] = Field(default_factory=list)

    # Set by load_config: the folder relative paths were resolved against.
    config_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _unique_variant_names(self) -> MathSEConfig:
        names = [v.name for v in self.ablations]
        twice = sorted({n for n in names if names.count(n) > 1 and n is not None})
        if twice:
            raise ValueError(f"ablations: variant name(s) {twice} given more than once; name each variant")
        return self

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


def _mask_secrets(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: ("***" if k == "api_key" and v else _mask_secrets(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_secrets(v) for v in node]
    return node


def save_resolved_config(cfg: MathSEConfig, path: Path) -> None:
    """Save the resolved config (secrets masked) next to a stage's outputs."""
    atomic_write_text(path, yaml.safe_dump(cfg.to_safe_dict(), sort_keys=False, allow_unicode=True))
