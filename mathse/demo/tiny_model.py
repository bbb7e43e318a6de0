"""A tiny random Qwen2-VL built offline: real architecture, tokenizer specials, chat template, processor.

Nothing here touches a model hub. The weights are random, but the model is a real Qwen2-VL, so
LLaMA-Factory trains and serves it on CPU in seconds. Two sizes: `TEST_SIZE` (the default, for
the test suite: fast, learns nothing useful) and `DEMO_SIZE` (~0.5M parameters, big enough to
learn the demo's count-down addition in a few hundred steps; see issue 12's measurements).

The tokenizer is a byte-level BPE (any text tokenizes) whose pre-tokenizer splits every digit
into its own token: with multi-digit tokens a tiny model has to memorise each number's spelling,
with single digits "the next number" is a local rule it can learn from 30 examples.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "COMPLETE_MARKER",
    "DEMO_SIZE",
    "QWEN2VL_CHAT_TEMPLATE",
    "QWEN2VL_SPECIAL_TOKENS",
    "TEST_SIZE",
    "ModelSize",
    "build_tiny_qwen2vl",
    "is_complete_model_dir",
]

COMPLETE_MARKER = ".complete"
ASSET_VERSION = 3  # 2: digit-split tokenizer, sizes; 3: the demo's tokenizer also learns the project's prompts

QWEN2VL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The chat template shipped with Qwen/Qwen2-VL-*-Instruct.
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TOKENIZER_CORPUS = (
    "What is 2 + 3? The final answer is \\boxed{5}.",
    "7 + 4:\n7 (4)\n8 (3)\n9 (2)\n10 (1)\n11 (0)\nThe final answer is \\boxed{11}",
    "Solve the problem step by step, one step per line starting with 'Step k:'. "
    "End with the line 'The final answer is \\boxed{answer}'.",
    "How many dots are in the image? Count them one by one: 1, 2, 3, 4, 5, 6, 7, 8, 9.",
    "The legs of the right triangle are 3 and 4, so the hypotenuse is sqrt(3^2 + 4^2) = 5.",
    "The area of the triangle is (1/2) * 6 * 8 = 24. The final answer is \\boxed{24}",
    "Choose one option: (A) 12 (B) 15 (C) 18 (D) 21. The answer is (B).",
    "The bar is 7 units long, measured on the grid with unit marks from 0 to 10.",
    "Let x = 4 and y = 9; then x + y = 13 and x * y = 36, x - y = -5, y / x = 2.25.",
    "Step 1: read the numbers in the image. Step 2: add them. Step 3: check the sum.",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz 0123456789 {}[]()<>=+-*/^_.,;:!?$%&#@|~'\"",
    "\\frac{a}{b} \\sqrt{2} \\pi \\cdot \\times \\le \\ge \\neq \\angle \\triangle \\circ",
    "system user assistant You are a helpful assistant.\n\nPicture 1: Video 1:",
)


def _project_prompts() -> tuple[str, ...]:
    """The fixed texts the pipeline really sends (imported, not copied), for the demo's tokenizer.

    A BPE that has seen them spends ~1.4 tokens per word on them instead of ~4: the ORM's prompt
    (system rules + question + numbered path) drops from ~1,000 tokens to ~450 with a vocabulary of
    ~940, so the ORM's training steps are cheaper (benchmarks/RESULTS.md, issue 12).
    """
    from mathse.judging.orm_data import ANNOTATOR_SYSTEM_PROMPT, REASK_ANNOTATION, REASK_CHECK
    from mathse.judging.verdict import ORM_SYSTEM_PROMPT, Verdict, build_orm_prompt, format_orm_response
    from mathse.model.prompts import STUDENT_INSTRUCTION
    from mathse.run.config import OrmDataConfig, ReflectConfig, TeacherConfig

    orm_data, teacher = OrmDataConfig(), TeacherConfig.model_fields
    verdicts = (Verdict(correct=True, analysis=orm_data.correct_analysis),
                Verdict(correct=False, error_step=3, analysis="Step 3 is wrong."))
    return (
        ORM_SYSTEM_PROMPT,
        build_orm_prompt("What is 7 + 4?", ["7 + 4:", "7 (4)", "8 (3)"], "11"),
        *(format_orm_response(v) for v in verdicts),
        orm_data.annotate_prompt, orm_data.verify_prompt, orm_data.correct_analysis,
        ANNOTATOR_SYSTEM_PROMPT, REASK_ANNOTATION, REASK_CHECK, STUDENT_INSTRUCTION,
        teacher["system_prompt"].default, teacher["distill_prompt"].default,
        ReflectConfig.model_fields["prompt"].default,
    )


@dataclass(frozen=True)
class ModelSize:
    """The tiny model's shape. head_dim = hidden / heads; the M-RoPE sections sum to head_dim / 2."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    mrope_section: tuple[int, int, int]
    vision_depth: int = 2
    vision_embed: int = 32
    vision_heads: int = 2
    # The byte-level BPE's vocabulary (an upper bound: training stops when no merge is left) and
    # whether its corpus also holds the project's own prompts (`_project_prompts`).
    vocab: int = 400
    learn_prompts: bool = False

    def __post_init__(self) -> None:
        if sum(self.mrope_section) * 2 != self.hidden // self.heads:
            half = self.hidden // self.heads // 2
            raise ValueError(f"mrope_section {self.mrope_section} must sum to head_dim/2 = {half}")


TEST_SIZE = ModelSize(hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, mrope_section=(2, 3, 3))
# Issue 12's measured configuration: learns count-down addition (26% -> 68% in 3 rounds). Its
# tokenizer knows the project's prompts (~930 tokens once every merge of the corpus is taken).
DEMO_SIZE = ModelSize(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, mrope_section=(4, 6, 6),
                      vocab=1024, learn_prompts=True)


def is_complete_model_dir(model_dir: Path) -> bool:
    """Whether `model_dir` holds a finished build (its `.complete` marker exists)."""
    return (model_dir / COMPLETE_MARKER).is_file()


def build_tiny_qwen2vl(out_dir: Path, seed: int = 0, size: ModelSize = TEST_SIZE) -> Path:
    """Build a tiny random Qwen2-VL (model, tokenizer, processor, generation config) offline.

    If `out_dir` is already complete this returns at once without touching it (the seed is not
    re-checked; the marker records the one used). Takes a few seconds on CPU; the weights are
    0.5-2 MB. Written by `build_atomically`: `out_dir` is either absent or complete.
    """
    out_dir = Path(out_dir)
    if is_complete_model_dir(out_dir):
        return out_dir
    marker = {"version": ASSET_VERSION, "seed": seed, "kind": "tiny-qwen2-vl", "size": asdict(size)}
    return build_atomically(out_dir, lambda folder: _write_tiny_qwen2vl(folder, seed, size), marker)


def build_atomically(out_dir: Path, write: Callable[[Path], None], marker: dict[str, Any]) -> Path:
    """`write` the model into a temp folder next to `out_dir`, the `.complete` marker (`marker`)
    last, and rename the folder into place: `out_dir` is either absent or complete, and of two
    processes building it at once the second keeps the first one's."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private; the finished model is not
        write(tmp_dir)
        (tmp_dir / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
        if out_dir.exists():
            if is_complete_model_dir(out_dir):  # another process finished first
                shutil.rmtree(tmp_dir, ignore_errors=True)
                return out_dir
            shutil.rmtree(out_dir)  # a leftover without a marker: not ours to trust
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if not is_complete_model_dir(out_dir):
                raise
            shutil.rmtree(tmp_dir, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return out_dir


def bpe_backend(specials: Sequence[str], vocab: int, corpus: Sequence[str]) -> Any:
    """A byte-level BPE (so any text tokenizes), one token per digit, `specials` first, trained on `corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(list(corpus), trainer=trainer)
    return backend


def _train_tokenizer(size: ModelSize) -> Any:
    """The Qwen2-VL tokenizer: `bpe_backend` with its special tokens (and the project's prompts when asked)."""
    from transformers import PreTrainedTokenizerFast

    corpus = [*_TOKENIZER_CORPUS, *(_project_prompts() if size.learn_prompts else ())]
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe_backend(QWEN2VL_SPECIAL_TOKENS, size.vocab, corpus),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[t for t in QWEN2VL_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        chat_template=QWEN2VL_CHAT_TEMPLATE,
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )


def _write_tiny_qwen2vl(out_dir: Path, seed: int, size: ModelSize) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _train_tokenizer(size)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN2VL_SPECIAL_TOKENS}
    vocab_size = len(tokenizer)
    eos_id, pad_id = ids["<|im_end|>"], ids["<|endoftext|>"]

    config = Qwen2VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": size.hidden,
            "intermediate_size": size.intermediate,
            "num_hidden_layers": size.layers,
            "num_attention_heads": size.heads,
            "num_key_value_heads": size.kv_heads,
            "max_position_embeddings": 4096,
            # The three M-RoPE sections (time, height, width) sum to head_dim / 2.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": list(size.mrope_section),
            },
            "bos_token_id": None,  # like the tokenizer; Qwen2 adds no BOS
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
        },
        vision_config={
            "depth": size.vision_depth,
            "embed_dim": size.vision_embed,
            "hidden_size": size.hidden,  # the merger projects straight into the text model
            "num_heads": size.vision_heads,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        do_sample=False,
        max_new_tokens=32,
    )
    model.save_pretrained(out_dir)

    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
