"""Tiny random Qwen2.5-VL, Qwen3-VL, InternVL (HF format) and GLM-4.1V, built offline in seconds.

The companions of `tiny_model.build_tiny_qwen2vl` for the other backbones the pipeline trains: each is
the real architecture (transformers' own config and model classes, a few hundred K parameters) with
the files LLaMA-Factory and vLLM load it by: tokenizer with the family's special tokens, a chat
template shaped like the released checkpoint's, processor and generation config. Nothing touches a
model hub. `TINY_FAMILIES` maps each family to the LLaMA-Factory template it trains with.

    path = build_tiny("qwen3_vl", Path("/tmp/tiny_qwen3vl"))   # then template: qwen3_vl_nothink

All share one text shape (hidden 64, 2 layers, 2 heads of 32, the smallest head vLLM's CPU
attention takes) and one vision shape (width 32, 2 layers); images become few vision tokens
(processor pixel limits of ~112x112, InternVL tiles of 112x112 -> 16 tokens each).

The chat templates follow the released checkpoints, not LLaMA-Factory, on purpose: where they differ
an engine that renders the checkpoint's template (vLLM) sees another prompt than LLaMA-Factory did.
InternVL: LLaMA-Factory adds its default system message and no "\\n" after the image; GLM-4.1V: its
generation prompt ends "<|assistant|>" where the checkpoint's ends "<|assistant|>\\n". InternVL's
processor tiles images (`crop_to_patches`) by default; LLaMA-Factory does only with `crop_to_patches: true`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathse.demo.tiny_model import (
    _TOKENIZER_CORPUS,
    COMPLETE_MARKER,
    QWEN2VL_CHAT_TEMPLATE,
    QWEN2VL_SPECIAL_TOKENS,
    bpe_backend,
    build_atomically,
    is_complete_model_dir,
)

__all__ = ["TINY_FAMILIES", "build_tiny"]

ASSET_VERSION = 1

# family -> the LLaMA-Factory 0.9.5 template its checkpoints train and chat with.
TINY_FAMILIES: dict[str, str] = {
    "qwen2_5_vl": "qwen2_vl",
    "qwen3_vl": "qwen3_vl_nothink",
    "intern_vl": "intern_vl",
    "glm4v": "glm4v",
}


# Shared shapes: text hidden 64 = 2 heads x 32 (vLLM CPU attention's smallest head size), vision width 32.
_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "max_position_embeddings": 4096}
_VOCAB = 400
_ROPE = {"rope_type": "default", "rope_theta": 10000.0}

# Qwen3-VL Instruct: the Qwen2-VL template without the default system message.
_QWEN2VL_DEFAULT_SYSTEM = (
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
)
if _QWEN2VL_DEFAULT_SYSTEM not in QWEN2VL_CHAT_TEMPLATE:  # tiny_model's template changed shape
    raise RuntimeError("QWEN2VL_CHAT_TEMPLATE no longer holds the default system message")
QWEN3VL_CHAT_TEMPLATE = QWEN2VL_CHAT_TEMPLATE.replace(_QWEN2VL_DEFAULT_SYSTEM, "")

# InternVL -hf (transformers' convert_internvl_weights_to_hf.py): no default system, "<IMG_CONTEXT>\n".
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

# GLM-4.1V (zai-org/GLM-4.1V-9B-*): "[gMASK]<sop>", role tags, image as begin/image/end.
GLM4V_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for msg in messages %}"
    "{% if msg['role'] == 'system' %}<|system|>\n{{ msg['content'] }}"
    "{% elif msg['role'] == 'user' %}<|user|>\n"
    "{% if msg['content'] is string %}{{ msg['content'] }}{% else %}{% for item in msg['content'] %}"
    "{% if item['type'] == 'video' or 'video' in item %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif item['type'] == 'image' or 'image' in item or 'image_url' in item %}"
    "<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% elif msg['role'] == 'assistant' %}<|assistant|>\n{{ msg['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

INTERNVL_NAMED_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
GLM4V_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>", "<|image|>", "<|video|>",
)


@dataclass(frozen=True)
class _TokenizerSpec:
    specials: tuple[str, ...]
    eos: str
    pad: str
    chat_template: str
    added: tuple[str, ...] = ()  # plain (not special) added tokens, e.g. <think>
    named: dict[str, str] = field(default_factory=dict)  # model-specific named special tokens


_TOKENIZERS: dict[str, _TokenizerSpec] = {
    "qwen2_5_vl": _TokenizerSpec(QWEN2VL_SPECIAL_TOKENS, "<|im_end|>", "<|endoftext|>", QWEN2VL_CHAT_TEMPLATE),
    "qwen3_vl": _TokenizerSpec(QWEN2VL_SPECIAL_TOKENS, "<|im_end|>", "<|endoftext|>", QWEN3VL_CHAT_TEMPLATE,
                               added=("<think>", "</think>", "<tool_call>", "</tool_call>")),
    "intern_vl": _TokenizerSpec(
        (*QWEN2VL_SPECIAL_TOKENS, *INTERNVL_NAMED_TOKENS.values()), "<|im_end|>", "<|endoftext|>",
        INTERNVL_CHAT_TEMPLATE, named=INTERNVL_NAMED_TOKENS),
    "glm4v": _TokenizerSpec(GLM4V_SPECIAL_TOKENS, "<|endoftext|>", "<|endoftext|>", GLM4V_CHAT_TEMPLATE,
                            added=("<think>", "</think>", "<answer>", "</answer>")),
}


def build_tiny(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random `family` model (model, tokenizer, processor, generation config) offline.

    Like `build_tiny_qwen2vl`: written into a temp folder next to `out_dir` and renamed into place,
    the `.complete` marker last; an already complete `out_dir` of the same family is returned as is.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(TINY_FAMILIES)})")
    out_dir = Path(out_dir)
    kind = f"tiny-{family}"
    if is_complete_model_dir(out_dir):
        found = json.loads((out_dir / COMPLETE_MARKER).read_text(encoding="utf-8")).get("kind")
        if found != kind:
            raise ValueError(f"{out_dir} already holds a {found}, not a {kind}")
        return out_dir
    marker = {"version": ASSET_VERSION, "seed": seed, "kind": kind, "template": TINY_FAMILIES[family]}
    return build_atomically(out_dir, lambda folder: _write(family, folder, seed), marker)


def _tokenizer(spec: _TokenizerSpec) -> Any:
    """`tiny_model.bpe_backend` with the family's special tokens, as a transformers tokenizer."""
    from transformers import PreTrainedTokenizerFast

    backend = bpe_backend(spec.specials, _VOCAB, _TOKENIZER_CORPUS)
    named = set(spec.named.values()) | {spec.eos, spec.pad}
    extra: dict[str, str] | list[str] = dict(spec.named) or [t for t in spec.specials if t not in named]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=spec.eos, pad_token=spec.pad, unk_token=None, bos_token=None,
        extra_special_tokens=extra, chat_template=spec.chat_template, model_max_length=4096,
        padding_side="right", clean_up_tokenization_spaces=False, split_special_tokens=False,
    )
    if spec.added:
        tokenizer.add_tokens(list(spec.added))
    return tokenizer


def _text(tokenizer: Any, **extra: Any) -> dict[str, Any]:
    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    pad = tokenizer.convert_tokens_to_ids(tokenizer.pad_token)
    return {**_TEXT, "vocab_size": len(tokenizer), "bos_token_id": None, "eos_token_id": eos,
            "pad_token_id": pad, **extra}


def _qwen_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {"image_token_id": ids("<|image_pad|>"), "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"), "vision_end_token_id": ids("<|vision_end|>")}


def _qwen2_5_vl(tok: Any) -> tuple[Any, Any, Any]:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    config = Qwen2_5_VLConfig(
        text_config=_text(tok, rope_parameters={**_ROPE, "mrope_section": [4, 6, 6]}),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": _TEXT["hidden_size"], "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [1],
                       "tokens_per_second": 2},
        tie_word_embeddings=False, **_qwen_ids(tok),
    )
    size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(size=size), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(size=size),
                                    chat_template=tok.chat_template)
    return config, Qwen2_5_VLForConditionalGeneration, processor


def _qwen3_vl(tok: Any) -> tuple[Any, Any, Any]:
    from transformers import (
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    # Interleaved M-RoPE over head_dim/2 = 16 frequencies: t 6, h 5, w 5 (as 24/20/20 of 64).
    rope = {**_ROPE, "mrope_section": [6, 5, 5], "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config=_text(tok, head_dim=32, rope_parameters=rope),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": _TEXT["hidden_size"], "patch_size": 16, "spatial_merge_size": 2,
                       "temporal_patch_size": 2, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]},
        tie_word_embeddings=False, **_qwen_ids(tok),
    )
    norm = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "patch_size": 16, "merge_size": 2}
    size = {"shortest_edge": 64 * 64, "longest_edge": 128 * 128}
    processor = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(size=size, **norm), tokenizer=tok,
                                 video_processor=Qwen3VLVideoProcessor(size=size, **norm),
                                 chat_template=tok.chat_template)
    return config, Qwen3VLForConditionalGeneration, processor


_INTERNVL_TILE = 112  # vision image_size; (112/14)^2 patches * 0.5^2 (pixel shuffle) = 16 tokens per tile


def _intern_vl(tok: Any) -> tuple[Any, Any, Any]:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
    )

    seq = (_INTERNVL_TILE // 14) ** 2 // 4
    config = InternVLConfig(
        vision_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                       "image_size": [_INTERNVL_TILE, _INTERNVL_TILE], "patch_size": [14, 14]},
        text_config={"model_type": "qwen2", **_text(tok, rope_parameters=dict(_ROPE)), "tie_word_embeddings": False},
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=seq, downsample_ratio=0.5,
        projector_hidden_act="gelu", vision_feature_layer=-1, vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    size = {"height": _INTERNVL_TILE, "width": _INTERNVL_TILE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False, min_patches=1, max_patches=12),
        tokenizer=tok, video_processor=InternVLVideoProcessor(size=size), image_seq_length=seq,
        chat_template=tok.chat_template,
    )
    return config, InternVLForConditionalGeneration, processor


def _glm4v(tok: Any) -> tuple[Any, Any, Any]:
    from transformers import (
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Glm4vImageProcessor,
        Glm4vProcessor,
        Glm4vVideoProcessor,
    )

    ids = tok.convert_tokens_to_ids
    # Half of each 32-wide head rotates (partial_rotary_factor 0.5): 8 frequencies as t 2, h 3, w 3.
    rope = {**_ROPE, "mrope_section": [2, 3, 3], "partial_rotary_factor": 0.5}
    config = Glm4vConfig(
        text_config=_text(tok, rope_parameters=rope),
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "out_hidden_size": _TEXT["hidden_size"], "image_size": 112, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids("<|image|>"), video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"), image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"), video_end_token_id=ids("<|end_of_video|>"),
        tie_word_embeddings=False,
    )
    # GLM's smart_resize counts 2 (temporal) x h x w against longest_edge: 2 x 112 x 112 caps at 112x112.
    size = {"shortest_edge": 2 * 56 * 56, "longest_edge": 2 * 112 * 112}
    processor = Glm4vProcessor(image_processor=Glm4vImageProcessor(size=size), tokenizer=tok,
                               video_processor=Glm4vVideoProcessor(size=size), chat_template=tok.chat_template)
    return config, Glm4vForConditionalGeneration, processor


_BUILDERS: dict[str, Callable[[Any], tuple[Any, Any, Any]]] = {
    "qwen2_5_vl": _qwen2_5_vl, "qwen3_vl": _qwen3_vl, "intern_vl": _intern_vl, "glm4v": _glm4v,
}


def _write(family: str, out_dir: Path, seed: int) -> None:
    import torch
    from transformers import GenerationConfig

    tokenizer = _tokenizer(_TOKENIZERS[family])
    config, model_class, processor = _BUILDERS[family](tokenizer)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = model_class(config).eval()
    ids = tokenizer.convert_tokens_to_ids
    stop = {"glm4v": ["<|endoftext|>", "<|user|>", "<|observation|>"]}.get(family, ["<|im_end|>", "<|endoftext|>"])
    model.generation_config = GenerationConfig(eos_token_id=[ids(t) for t in stop],
                                               pad_token_id=ids(tokenizer.pad_token), do_sample=False,
                                               max_new_tokens=32)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
