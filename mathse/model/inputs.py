"""How a model's inputs are built, decided once per model and handed down.

A checkpoint must see its inputs at inference exactly as it saw them in training: the same chat
template, the same image size (the same image must become the same number of vision tokens), the
same `cutoff_len`. Those settings come from a training's layered arguments (recipe <
`llama_factory` < `trainings.<training>`), because the shipped recipes set `image_max_pixels`
(262144) where LLaMA-Factory's own default is 768*768. `model_inputs(cfg, training)` reads them
once; training, in-process inference, servers, the token budget and the judge take the result.
The student's checkpoints all come from the same recipe as the rounds ("rounds"); the ORM from "orm".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mathse.model.backbones import backbone_of
from mathse.model.training import training_args
from mathse.run.config import MathSEConfig

__all__ = ["DEFAULT_CUTOFF_LEN", "DEFAULT_IMAGE_MAX_PIXELS", "DEFAULT_IMAGE_MIN_PIXELS", "ModelInputs", "model_inputs"]

# LLaMA-Factory's defaults when neither the recipe nor the config sets them (DataArguments and
# ProcessorArguments of llamafactory 0.9.x).
DEFAULT_CUTOFF_LEN = 2048
DEFAULT_IMAGE_MAX_PIXELS = 768 * 768
DEFAULT_IMAGE_MIN_PIXELS = 32 * 32


@dataclass(frozen=True)
class ModelInputs:
    """One model's input settings: template, image size, token budget (LLaMA-Factory's defaults if unset)."""

    template: str
    image_max_pixels: int | None = None  # None: not set anywhere, LLaMA-Factory's default applies
    image_min_pixels: int | None = None
    cutoff_len: int = DEFAULT_CUTOFF_LEN
    cutoff_key: str = "llama_factory.cutoff_len"  # the config key that sets cutoff_len, for messages
    trust_remote_code: bool = True
    crop_to_patches: bool = False  # InternVL-style tiling (LLaMA-Factory's default: one tile)

    def chat_model_args(self) -> dict[str, Any]:
        """These settings as LLaMA-Factory model arguments (ChatModel, `llamafactory-cli api`)."""
        args: dict[str, Any] = {"template": self.template, "trust_remote_code": self.trust_remote_code}
        if self.image_max_pixels is not None:
            args["image_max_pixels"] = self.image_max_pixels
        if self.crop_to_patches:
            args["crop_to_patches"] = True
        return args

    def served_image_kwargs(self) -> dict[str, Any]:
        """The served engine's processor arguments that give an image the vision tokens it had in
        training (vLLM's --mm-processor-kwargs), from the backbone table; {} for unknown families."""
        backbone = backbone_of(self.template)
        return backbone.served_image_kwargs(self.image_max_pixels, self.crop_to_patches) if backbone else {}

    @property
    def max_pixels(self) -> int:
        return self.image_max_pixels or DEFAULT_IMAGE_MAX_PIXELS

    @property
    def min_pixels(self) -> int:
        return self.image_min_pixels or DEFAULT_IMAGE_MIN_PIXELS


def model_inputs(cfg: MathSEConfig, training: str) -> ModelInputs:
    """The input settings of the model one training ("m0", "rounds", "orm", "final") produces."""
    args = training_args(cfg, training)
    own = getattr(cfg.trainings, training)

    def pixels(key: str) -> int | None:
        return int(args[key]) if args.get(key) is not None else None

    return ModelInputs(
        template=cfg.model.template,
        image_max_pixels=pixels("image_max_pixels"),
        image_min_pixels=pixels("image_min_pixels"),
        cutoff_len=int(args.get("cutoff_len") or DEFAULT_CUTOFF_LEN),
        cutoff_key=f"trainings.{training}.cutoff_len" if own.cutoff_len is not None else "llama_factory.cutoff_len",
        trust_remote_code=cfg.model.trust_remote_code,
        crop_to_patches=bool(args.get("crop_to_patches", False)),
    )
