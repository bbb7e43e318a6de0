"""A served model's images as its training saw them: resized by LLaMA-Factory's own plugin.

LLaMA-Factory resizes an image before its processor sees it (`image_max_pixels`: scaled down by
sqrt(max / (w * h)), truncated to whole pixels; `image_min_pixels` up; plus the plugin's own rules,
e.g. Qwen2-VL's 28-px minimum side). A served engine's processor resizes by its own rule: vLLM's
Qwen2-VL `max_pixels` rounds to 28-px units and shrinks again where the rounding overshoots, so an
image larger than the limit got another number of vision tokens than in training (measured: a
1024x768 image at 262144 pixels, 336 vs 315 tokens; the tiny Qwen3-VL, 4 vs 2). So the pipeline
sends each image to the models it serves already resized by LLaMA-Factory's `_regularize_images`
(lossless PNG), and the engine gets no pixel limit of its own: both processors then start from the
same pixels. An image LLaMA-Factory would leave as it is goes as its file, byte for byte.
"""

from __future__ import annotations

import functools
import io
from typing import Any

from mathse.model.inputs import ModelInputs

__all__ = ["TrainingSizedImages"]


@functools.cache
def _plugin(template: str) -> Any:
    from llamafactory.data.template import TEMPLATES

    return TEMPLATES[template].mm_plugin


class TrainingSizedImages:
    """`ImagePrep` (mathse/api/messages.py) for a model trained with `inputs`."""

    def __init__(self, inputs: ModelInputs) -> None:
        self.inputs = inputs
        self.key = f"llamafactory:{inputs.template}:{inputs.max_pixels}:{inputs.min_pixels}"

    def encode(self, path: str) -> tuple[str, bytes] | None:
        from PIL import Image

        with Image.open(path) as original:
            size, mode = original.size, original.mode
            image = _plugin(self.inputs.template)._regularize_images(
                [original], image_max_pixels=self.inputs.max_pixels, image_min_pixels=self.inputs.min_pixels
            )["images"][0]
            if image.size == size and mode == "RGB":
                return None  # what LLaMA-Factory's processor gets is the file's own pixels
            out = io.BytesIO()
            image.save(out, format="PNG")
        return "image/png", out.getvalue()
