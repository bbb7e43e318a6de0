"""The backbones MathSE trains, as data: one entry per model family, read by everything else.

What differs per family lives here and nowhere else: the LLaMA-Factory templates that fit it, the
`model_type` values of its checkpoints (to catch a template that does not match the model), its
thinking templates and their non-thinking variants, and the processor arguments a served engine
needs so that the same image becomes the same vision tokens as in training. A new family is one
entry in `BACKBONES`. The config is checked against this table when it is loaded
(`check_model`); the paper's CogVLM2 is refused there with the reason.

Supported and tested (tests/model/test_backbones.py, tiny models of each family): Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, InternVL (HF format, the `-hf` checkpoints), GLM-4.1V.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BACKBONES", "UNSUPPORTED", "Backbone", "backbone_of", "check_model", "llamafactory_templates"]


def _tiles(image_max_pixels: int | None, crop_to_patches: bool) -> dict[str, Any]:
    """InternVL: fixed 448-px tiles; the processor tiles by default, LLaMA-Factory only when asked (12 max)."""
    return {"crop_to_patches": True, "max_patches": 12} if crop_to_patches else {"crop_to_patches": False}


def _none(image_max_pixels: int | None, crop_to_patches: bool) -> dict[str, Any]:
    """No processor argument: the pipeline sends images already resized as LLaMA-Factory resized
    them in training (mathse/model/served_images.py), so the engine's processor must not resize
    them by a rule of its own (vLLM's Qwen `max_pixels` rounds differently: other token counts)."""
    return {}


@dataclass(frozen=True)
class Backbone:
    """One model family as MathSE needs to know it."""

    family: str
    templates: tuple[str, ...]  # LLaMA-Factory templates for it; the first is the default
    model_types: tuple[str, ...]  # config.json `model_type` of its checkpoints
    # The served engine's processor arguments (vLLM --mm-processor-kwargs) that give an image the
    # vision tokens it had in training, from the training's image_max_pixels and crop_to_patches.
    served_image_kwargs: Callable[[int | None, bool], dict[str, Any]] = _none
    # Thinking templates (LLaMA-Factory puts an empty <think> block, with loss, before every training
    # target) -> the advice: their non-thinking variant, or how to keep the block out.
    thinking: dict[str, str] = field(default_factory=dict)
    # Where the checkpoint's own chat template renders another prompt than LLaMA-Factory's: the text
    # the served engine's processor expands into an image's tokens. The served engine then gets
    # LLaMA-Factory's template (mathse/model/chat_templates.py); None: the checkpoint's template is the same.
    served_image_placeholder: str | None = None
    notes: str = ""


BACKBONES: dict[str, Backbone] = {
    b.family: b
    for b in (
        Backbone("qwen2_vl", ("qwen2_vl",), ("qwen2_vl", "qwen2_5_vl"),
                 notes="Qwen2-VL, Qwen2.5-VL: image_max_pixels decides the vision tokens (28-px units)"),
        Backbone("qwen3_vl", ("qwen3_vl_nothink", "qwen3_vl"), ("qwen3_vl", "qwen3_vl_moe"),
                 thinking={"qwen3_vl": "use 'qwen3_vl_nothink' unless that is meant"},
                 notes="Qwen3-VL: image_max_pixels decides the vision tokens (32-px units)"),
        Backbone("intern_vl", ("intern_vl",), ("internvl",), served_image_kwargs=_tiles,
                 served_image_placeholder="<IMG_CONTEXT>",
                 notes="InternVL (HF format, `-hf` checkpoints): 448-px tiles when crop_to_patches, else one; "
                       "image_max_pixels does not change the count"),
        Backbone("glm4v", ("glm4v",), ("glm4v",),
                 served_image_placeholder="<|begin_of_image|><|image|><|end_of_image|>",
                 thinking={"glm4v": "set llama_factory.extra.enable_thinking: false to leave it out of the targets"},
                 notes="GLM-4.1V: image_max_pixels decides the vision tokens (28-px units)"),
    )
}

# Families LLaMA-Factory 0.9.5 cannot train, with the reason and the nearest supported family.
UNSUPPORTED: dict[str, str] = {
    "cogvlm2": (
        "CogVLM2 (one of the paper's backbones) cannot be trained by LLaMA-Factory 0.9.5: it has no CogVLM2 "
        "template, multimodal plugin or model registration (the model is remote code only); the nearest "
        "supported family is GLM-4.1V (template glm4v, THUDM's successor), or qwen2_vl / intern_vl"
    ),
}
UNSUPPORTED["cogvlm"] = UNSUPPORTED["cogvlm2"]


@functools.cache
def llamafactory_templates() -> frozenset[str]:
    """The template names LLaMA-Factory registers, read from its source (importing it takes seconds)."""
    spec = importlib.util.find_spec("llamafactory")
    if spec is None or spec.origin is None:
        return frozenset()
    source = Path(spec.origin).parent / "data" / "template.py"
    names = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "register_template":
            names.update(k.value.value for k in node.keywords if k.arg == "name" and isinstance(k.value, ast.Constant))
    return frozenset(names)


def backbone_of(template: str) -> Backbone | None:
    """The family a template belongs to (None: a template this table does not know; it may still work)."""
    return next((b for b in BACKBONES.values() if template in b.templates), None)


def _model_type(base: str) -> str | None:
    """`model_type` of a local checkpoint folder's config.json (None: not local, or not readable)."""
    config = Path(base) / "config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def check_model(base: str, template: str, key: str = "model.template") -> tuple[list[str], list[str]]:
    """(errors, warnings) for training `base` with `template`: an unknown or unsupported template, a
    template of another family than the checkpoint's, a thinking template for non-thinking targets."""
    errors: list[str] = []
    warnings: list[str] = []
    model_type = _model_type(base)
    for name in (template.lower(), (model_type or "").lower()):
        if name in UNSUPPORTED:
            return [f"config error: {key}: {template!r}: {UNSUPPORTED[name]}"], []
    known = llamafactory_templates()
    if known and template not in known:
        near = difflib.get_close_matches(template, sorted(known), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
        return [f"config error: {key}: {template!r} is not a LLaMA-Factory template{hint}"], []
    family = backbone_of(template)
    if model_type is not None:
        owner = next((b for b in BACKBONES.values() if model_type in b.model_types), None)
        if owner is not None and family is not None and owner is not family:
            errors.append(
                f"config error: {key}: {template!r} is for {family.family} models, but model.base is a "
                f"{model_type!r} checkpoint ({Path(base) / 'config.json'}); use {owner.templates[0]!r}"
            )
    if family is not None and template in family.thinking:
        warnings.append(
            f"config warning: {key}: {template!r} is a thinking template: LLaMA-Factory puts an empty <think> "
            f"block before every training target, and MathSE's targets have none (an Instruct model learns "
            f"nothing from it, a Thinking model learns to skip thinking); {family.thinking[template]}"
        )
    return errors, warnings
