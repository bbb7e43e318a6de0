"""Does a training example fit `cutoff_len` with its image tokens intact? Counted as training counts.

LLaMA-Factory truncates an over-long example to `cutoff_len`, prompt side first once the response
is long; when the cut reaches the image tokens, training dies hours in with "Image features and
image tokens do not match". So every example is counted before its dataset is written, with
LLaMA-Factory's own pieces: the training's tokenizer and processor (loaded as training loads them,
at the training's `image_max_pixels`), its template's multimodal plugin (which expands each
`<image>` into the processor's image tokens), its chat template and its truncation rule.

The only thing not done by LLaMA-Factory itself is decoding the images: for the Qwen2-VL family
the number of image tokens follows from the image size alone (LLaMA-Factory's resize to
`image_max_pixels`, then the processor's `smart_resize`: tokens = (h/14/2) * (w/14/2)), read from
the file header and cached by path. tests/model/test_token_budget.py checks it against the full image
processing. Other model families go through the full processing.

    budget = TokenBudget.for_training(cfg, "m0")
    needed = budget.needed(example)  # None when it fits, else the cutoff_len it would need
"""

from __future__ import annotations

import copy
import functools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mathse.model.inputs import DEFAULT_IMAGE_MAX_PIXELS, DEFAULT_IMAGE_MIN_PIXELS, ModelInputs, model_inputs
from mathse.run.errors import DataError

if TYPE_CHECKING:
    from mathse.run.config import MathSEConfig
    from mathse.run.records import SftExample

__all__ = ["TokenBudget"]

@dataclass
class TokenBudget:
    """Counts an example's tokens the way `llamafactory-cli train` will for one training."""

    model_path: str
    inputs: ModelInputs
    policy: str = "drop"  # llama_factory.too_long: "drop" (leave out, list) or "stop"

    @classmethod
    def for_training(cls, cfg: MathSEConfig, training: str) -> TokenBudget:
        """The budget of one training ("m0", "rounds", "orm", "final") with its layered arguments."""
        return cls(model_path=cfg.model.base, inputs=model_inputs(cfg, training), policy=cfg.llama_factory.too_long)

    @property
    def cutoff_len(self) -> int:
        return self.inputs.cutoff_len

    def settings(self) -> dict[str, Any]:
        """What decides which examples fit, as a dataset's marker records it (the same keys since the
        first release, so a run resumed across versions does not see a changed budget)."""
        found: dict[str, Any] = {
            "model_path": self.model_path,
            "template": self.inputs.template,
            "cutoff_len": self.cutoff_len,
            "image_max_pixels": self.inputs.max_pixels,
            "image_min_pixels": self.inputs.min_pixels,
            "policy": self.policy,
        }
        if self.inputs.crop_to_patches:
            found["crop_to_patches"] = True
        return found

    @property
    def where(self) -> str:
        """The config key that sets this budget's cutoff_len, to name in messages."""
        return self.inputs.cutoff_key

    # -- loading ---------------------------------------------------------------------------------

    @functools.cached_property
    def _parts(self) -> tuple[Any, Any, Any, Any]:
        """(tokenizer, processor, template, plugin): loaded on first use, as training loads them."""
        from llamafactory.data import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments, ModelArguments
        from llamafactory.model import load_tokenizer

        model_args = ModelArguments(
            model_name_or_path=self.model_path,
            image_max_pixels=self.inputs.max_pixels,
            image_min_pixels=self.inputs.min_pixels,
            trust_remote_code=self.inputs.trust_remote_code,
            crop_to_patches=self.inputs.crop_to_patches,
        )
        module = load_tokenizer(model_args)
        tokenizer, processor = module["tokenizer"], module["processor"]
        template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=self.inputs.template))
        plugin = template.mm_plugin
        if _header_grids_apply(plugin, processor):
            # The same plugin, told the image grids from the file headers instead of decoding.
            plugin = copy.copy(plugin)
            plugin._get_mm_token_metadata = functools.partial(_qwen_grids, plugin)
        return tokenizer, processor, template, plugin

    # -- counting --------------------------------------------------------------------------------

    def lengths(self, example: SftExample) -> tuple[int, int, int]:
        """(prompt tokens, response tokens, index after the last image token or 0) before truncation."""
        tokenizer, processor, template, plugin = self._parts
        from llamafactory.extras.constants import IMAGE_PLACEHOLDER

        prompt = IMAGE_PLACEHOLDER * len(example.images) + example.prompt
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": example.response}]
        images = list(example.images)
        messages = plugin.process_messages(messages, images, [], [], processor)
        prefix, _ = plugin.process_token_ids([], [], images, [], [], tokenizer, processor)
        [(source, target)] = template.encode_multiturn(tokenizer, messages, example.system, None)
        source = [*prefix, *source]
        image_end = 0
        if images:
            image_id = image_token_id(tokenizer, processor, plugin)
            image_end = max((i + 1 for i, token in enumerate(source) if token == image_id), default=0)
            if image_end == 0:  # counting would say "fits" while training dies on the mismatch
                raise DataError(
                    f"token budget: example {example.id or '(no id)'}: {len(images)} image(s) but no image token "
                    f"(id {image_id}) in its {len(source)} prompt tokens: template {self.inputs.template!r} does "
                    f"not expand images for the model at {self.model_path}"
                )
        return len(source) + (1 if template.efficient_eos else 0), len(target), image_end

    def needed(self, example: SftExample) -> int | None:
        """None when the example trains with its image tokens intact, else its untruncated length."""
        if not example.images:
            return None  # text alone is truncated harmlessly
        from llamafactory.data.processor.processor_utils import infer_seqlen

        source, target, image_end = self.lengths(example)
        kept_source, _ = infer_seqlen(source, target, self.cutoff_len)
        return None if kept_source >= image_end else source + target


def image_token_id(tokenizer: Any, processor: Any, plugin: Any) -> int | None:
    """The id of the token the model sees once per vision feature: the processor's own image token
    (InternVL's `<IMG_CONTEXT>`; its template's `<image>` is a placeholder the plugin expands), else
    the template plugin's."""
    token_id = getattr(processor, "image_token_id", None)
    if isinstance(token_id, int):
        return token_id
    for token in (getattr(processor, "image_token", None), plugin.image_token):
        if isinstance(token, str):
            found = tokenizer.convert_tokens_to_ids(token)
            if isinstance(found, int) and found != tokenizer.unk_token_id:
                return found
    return None


def _header_grids_apply(plugin: Any, processor: Any) -> bool:
    """Image grids can come from file headers: Qwen2VLPlugin's own token metadata (not a subclass's
    override) over a Qwen2-VL-style image processor (smart_resize). Other families: full processing."""
    if processor is None:
        return False
    qwen = next((k for k in type(plugin).__mro__ if k.__name__ == "Qwen2VLPlugin"), None)
    return (
        qwen is not None
        and type(plugin)._get_mm_token_metadata is qwen._get_mm_token_metadata
        and type(processor.image_processor).__name__.startswith("Qwen2VLImageProcessor")
    )


def _qwen_grids(plugin: Any, images: list[Any], videos: list[Any], audios: list[Any], processor: Any) -> Any:
    """Qwen2VLPlugin._get_mm_token_metadata without decoding images: grids from header sizes."""
    if videos or audios or not all(isinstance(i, str) and os.path.isfile(i) for i in images):
        return type(plugin)._get_mm_token_metadata(plugin, images, videos, audios, processor)
    import torch

    image_processor = processor.image_processor
    size = image_processor.size
    get = size.get if isinstance(size, dict) else lambda key: getattr(size, key, None)
    min_pixels = get("shortest_edge") or getattr(image_processor, "min_pixels", None)
    max_pixels = get("longest_edge") or getattr(image_processor, "max_pixels", None)
    grids = [
        _qwen_grid(
            path,
            os.stat(path).st_mtime_ns,
            getattr(processor, "image_max_pixels", DEFAULT_IMAGE_MAX_PIXELS),
            getattr(processor, "image_min_pixels", DEFAULT_IMAGE_MIN_PIXELS),
            image_processor.patch_size,
            image_processor.merge_size,
            min_pixels,
            max_pixels,
        )
        for path in images
    ]
    return {"image_grid_thw": torch.tensor(grids, dtype=torch.long)}


@functools.lru_cache(maxsize=65536)  # a few hundred bytes an entry; images recur over rounds and samples
def _qwen_grid(
    path: str, mtime_ns: int, max_px: int, min_px: int, patch: int, merge: int, min_pixels: int, max_pixels: int
) -> tuple[int, int, int]:
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    with Image.open(path) as image:  # reads the header only
        width, height = image.size
    width, height = _regularized_size(width, height, max_px, min_px)
    h, w = smart_resize(height, width, factor=patch * merge, min_pixels=min_pixels, max_pixels=max_pixels)
    return 1, h // patch, w // patch


def _regularized_size(width: int, height: int, max_px: int, min_px: int) -> tuple[int, int]:
    """The size LLaMA-Factory's Qwen2VLPlugin._preprocess_image gives an image (0.9.5)."""
    if width * height > max_px:
        factor = math.sqrt(max_px / (width * height))
        width, height = int(width * factor), int(height * factor)
    if width * height < min_px:
        factor = math.sqrt(min_px / (width * height))
        width, height = int(width * factor), int(height * factor)
    if min(width, height) < 28:
        width, height = max(width, 28), max(height, 28)
    if width / height > 200:
        width, height = height * 180, height
    if height / width > 200:
        width, height = width, width * 180
    return width, height
