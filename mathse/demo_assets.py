"""Offline demo assets: a tiny random Qwen2-VL and synthetic image math problems.

Nothing here touches a model hub. The model is random (it writes gibberish) but has the real
Qwen2-VL architecture, tokenizer specials, chat template and processor, so LLaMA-Factory trains
and serves it on CPU in seconds. The problems are drawn with PIL and follow the project's
problem schema (`mathse.records.Problem`).

CLI: python -m mathse.demo_assets --model-dir DIR --data-dir DIR [--n-seed 16 --n-pool 24]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from mathse.storage import atomic_write_jsonl

__all__ = [
    "BAR_COLOR",
    "BAR_UNIT_PX",
    "COMPLETE_MARKER",
    "DOT_COLOR",
    "PROBLEM_KINDS",
    "QWEN2VL_CHAT_TEMPLATE",
    "QWEN2VL_SPECIAL_TOKENS",
    "ProblemSpec",
    "build_tiny_qwen2vl",
    "is_complete_model_dir",
    "main",
    "make_synthetic_problems",
    "render_problem_image",
    "sample_problem_specs",
    "write_demo_dataset",
]

COMPLETE_MARKER = ".complete"
ASSET_VERSION = 1

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
_TOKENIZER_VOCAB_SIZE = 512


def is_complete_model_dir(model_dir: Path) -> bool:
    """Whether `model_dir` holds a finished build (its `.complete` marker exists)."""
    return (model_dir / COMPLETE_MARKER).is_file()


def build_tiny_qwen2vl(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random Qwen2-VL (model, tokenizer, processor, generation config) offline.

    Everything is written into a temp folder next to `out_dir`, the `.complete` marker last, and
    the folder is renamed into place, so `out_dir` is either absent or complete. If `out_dir` is
    already complete this returns at once without touching it (the seed is not re-checked; the
    marker records the one used). Takes a few seconds on CPU; the weights are under 1 MB.
    """
    out_dir = Path(out_dir)
    if is_complete_model_dir(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private; the finished model is not
        _write_tiny_qwen2vl(tmp_dir, seed)
        marker = {"version": ASSET_VERSION, "seed": seed, "kind": "tiny-qwen2-vl"}
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


def _train_tokenizer() -> Any:
    """A byte-level BPE (so any text tokenizes) with the Qwen2-VL special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB_SIZE,
        special_tokens=list(QWEN2VL_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(_TOKENIZER_CORPUS), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
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


def _write_tiny_qwen2vl(out_dir: Path, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _train_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in QWEN2VL_SPECIAL_TOKENS}
    vocab_size = len(tokenizer)
    eos_id, pad_id = ids["<|im_end|>"], ids["<|endoftext|>"]

    config = Qwen2VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            # head_dim 16: the three M-RoPE sections (time, height, width) sum to head_dim / 2.
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": None,  # like the tokenizer; Qwen2 adds no BOS
            "eos_token_id": eos_id,
            "pad_token_id": pad_id,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
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


# --------------------------------------------------------------------------------------------
# Synthetic image problems
# --------------------------------------------------------------------------------------------

PROBLEM_KINDS: tuple[str, ...] = ("count", "add", "bar", "hypotenuse", "area")
_PYTHAGOREAN = ((3, 4, 5), (6, 8, 10), (5, 12, 13), (8, 6, 10), (4, 3, 5), (9, 12, 15), (12, 5, 13))
_LETTERS = "ABCD"
DOT_COLOR = (200, 30, 30)
BAR_COLOR = (30, 90, 200)
BAR_UNIT_PX = 8
BAR_LEFT_PX = 8


@dataclass(frozen=True)
class ProblemSpec:
    """What one synthetic problem draws and asks; the answer follows from these numbers alone."""

    kind: str
    numbers: tuple[int, ...]
    size: tuple[int, int]
    choices: tuple[int, ...] = ()  # non-empty: multiple choice, the options in order
    with_solution: bool = False
    dots: tuple[tuple[int, int], ...] = field(default=())  # dot centres, kind "count" only

    @property
    def value(self) -> int:
        """The numeric answer (before mapping to a multiple-choice letter)."""
        if self.kind == "count":
            return len(self.dots)
        if self.kind == "add":
            return self.numbers[0] + self.numbers[1]
        if self.kind == "bar":
            return self.numbers[0]
        if self.kind == "hypotenuse":
            return self.numbers[2]
        if self.kind == "area":
            return self.numbers[0] * self.numbers[1] // 2
        raise ValueError(f"unknown problem kind {self.kind!r}")

    @property
    def answer(self) -> str:
        """The exact reference answer: the number, or the option letter for multiple choice."""
        if self.choices:
            return _LETTERS[self.choices.index(self.value)]
        return str(self.value)


def sample_problem_specs(n: int, seed: int = 0) -> list[ProblemSpec]:
    """Draw `n` problem specs deterministically from `seed` (kinds cycle in a shuffled order)."""
    rng = random.Random(seed)
    specs: list[ProblemSpec] = []
    kinds: list[str] = []
    for i in range(n):
        if not kinds:
            kinds = list(PROBLEM_KINDS)
            rng.shuffle(kinds)
        kind = kinds.pop()
        mc = rng.random() < 0.35
        with_solution = i % 2 == 0
        if kind == "count":
            size = (rng.choice((56, 84)), rng.choice((56, 84)))
            dots = _place_dots(rng, rng.randint(2, 9), size)
            spec = ProblemSpec(kind, (len(dots),), size, dots=dots, with_solution=with_solution)
        elif kind == "add":
            spec = ProblemSpec(kind, (rng.randint(1, 49), rng.randint(1, 49)), (84, 56), with_solution=with_solution)
        elif kind == "bar":
            spec = ProblemSpec(kind, (rng.randint(1, 10),), (112, 56), with_solution=with_solution)
        else:
            a, b, c = rng.choice(_PYTHAGOREAN)
            spec = ProblemSpec(kind, (a, b, c), (84, 84), with_solution=with_solution)
        if mc:
            spec = replace(spec, choices=_make_choices(rng, spec.value))
        specs.append(spec)
    return specs


def _place_dots(rng: random.Random, k: int, size: tuple[int, int], radius: int = 4) -> tuple[tuple[int, int], ...]:
    """Centres of `k` dots that do not touch each other or the border."""
    w, h = size
    gap = 2 * radius + 4
    dots: list[tuple[int, int]] = []
    for _attempt in range(100_000):
        x, y = rng.randint(radius + 2, w - radius - 3), rng.randint(radius + 2, h - radius - 3)
        if all((x - px) ** 2 + (y - py) ** 2 >= gap * gap for px, py in dots):
            dots.append((x, y))
            if len(dots) == k:
                return tuple(dots)
    raise ValueError(f"cannot place {k} dots in a {w}x{h} image")


def _make_choices(rng: random.Random, value: int) -> tuple[int, ...]:
    """Four distinct positive options, one of them `value`, in a random order."""
    options = {value}
    while len(options) < 4:
        candidate = value + rng.choice((-3, -2, -1, 1, 2, 3, 4, 5))
        if candidate > 0:
            options.add(candidate)
    ordered = sorted(options)
    rng.shuffle(ordered)
    return tuple(ordered)


def render_problem_image(spec: ProblemSpec) -> Image.Image:
    """Draw the picture a spec's question is about (RGB, white background)."""
    img = Image.new("RGB", spec.size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    w, h = spec.size
    if spec.kind == "count":
        for x, y in spec.dots:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=DOT_COLOR)
    elif spec.kind == "add":
        a, b = spec.numbers
        draw.rectangle((2, 2, w // 2 - 3, h - 3), outline="black")
        draw.rectangle((w // 2 + 2, 2, w - 3, h - 3), outline="black")
        draw.text((w // 4, h // 2), str(a), fill="black", font=font, anchor="mm")
        draw.text((3 * w // 4, h // 2), str(b), fill="black", font=font, anchor="mm")
    elif spec.kind == "bar":
        length = spec.numbers[0]
        axis_y = h - 14
        draw.line((BAR_LEFT_PX, axis_y, BAR_LEFT_PX + 10 * BAR_UNIT_PX, axis_y), fill="black")
        for t in range(11):
            x = BAR_LEFT_PX + t * BAR_UNIT_PX
            draw.line((x, axis_y, x, axis_y + 3), fill="black")
        draw.text((BAR_LEFT_PX, axis_y + 4), "0", fill="black", font=font, anchor="ma")
        draw.text((BAR_LEFT_PX + 10 * BAR_UNIT_PX, axis_y + 4), "10", fill="black", font=font, anchor="ma")
        draw.rectangle((BAR_LEFT_PX, 12, BAR_LEFT_PX + length * BAR_UNIT_PX - 1, axis_y - 4), fill=BAR_COLOR)
    else:
        a, b, _ = spec.numbers
        scale = 56 / max(a, b)
        x0, y0 = 14, h - 14
        x1, y1 = x0 + round(b * scale), y0 - round(a * scale)
        draw.polygon([(x0, y0), (x1, y0), (x0, y1)], outline="black")
        draw.rectangle((x0, y0 - 5, x0 + 5, y0), outline="black")  # right-angle mark
        draw.text((x0 - 3, (y0 + y1) // 2), str(a), fill="black", font=font, anchor="rm")
        draw.text(((x0 + x1) // 2, y0 + 2), str(b), fill="black", font=font, anchor="ma")
    return img


def _question(spec: ProblemSpec) -> str:
    if spec.kind == "count":
        text = "How many red dots are in the image?"
    elif spec.kind == "add":
        text = "The image shows two numbers in two boxes. What is the sum of the two numbers?"
    elif spec.kind == "bar":
        text = "The blue bar is drawn above a ruler marked from 0 to 10 in equal units. How many units long is the bar?"
    elif spec.kind == "hypotenuse":
        text = "The image shows a right triangle with its two legs labelled. What is the length of the hypotenuse?"
    else:
        text = "The image shows a right triangle with its two legs labelled. What is the area of the triangle?"
    if spec.choices:
        options = " ".join(f"({letter}) {value}" for letter, value in zip(_LETTERS, spec.choices, strict=True))
        text += f"\nChoose one option: {options}"
    return text


def _solution(spec: ProblemSpec) -> str:
    v = spec.value
    if spec.kind == "count":
        steps = [
            f"Counting the red dots one by one gives {', '.join(str(i) for i in range(1, v + 1))}.",
            f"So there are {v} dots.",
        ]
    elif spec.kind == "add":
        a, b = spec.numbers
        steps = [f"The left box shows {a} and the right box shows {b}.", f"Their sum is {a} + {b} = {v}."]
    elif spec.kind == "bar":
        steps = ["The bar starts at the 0 mark of the ruler.", f"It ends at the {v} mark, so it is {v} units long."]
    elif spec.kind == "hypotenuse":
        a, b, c = spec.numbers
        steps = [
            f"The legs are {a} and {b}.",
            f"By the Pythagorean theorem the hypotenuse is sqrt({a}^2 + {b}^2) = sqrt({a * a + b * b}) = {c}.",
        ]
    else:
        a, b, _ = spec.numbers
        steps = [f"The legs are {a} and {b}, and they are perpendicular.", f"The area is (1/2) * {a} * {b} = {v}."]
    if spec.choices:
        steps.append(f"The value {v} is option ({spec.answer}).")
    steps.append(f"The final answer is \\boxed{{{spec.answer}}}")
    return "\n".join(steps)


def make_synthetic_problems(out_dir: Path, n: int, seed: int = 0, id_prefix: str = "demo") -> list[dict[str, Any]]:
    """Draw `n` image math problems and save the PNGs under `out_dir/images/<id>.png`.

    Returns records in the problem schema: id, question, images (relative to `out_dir`), answer
    (a number, or a letter for multiple choice), solution (every other problem, ending with
    `The final answer is \\boxed{...}`) and source "synthetic". Deterministic given `seed`.
    """
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    for i, spec in enumerate(sample_problem_specs(n, seed)):
        pid = f"{id_prefix}-{i:04d}"
        rel = f"images/{pid}.png"
        _save_png_atomic(render_problem_image(spec), out_dir / rel)
        record: dict[str, Any] = {"id": pid, "question": _question(spec), "images": [rel], "answer": spec.answer}
        if spec.with_solution:
            record["solution"] = _solution(spec)
        record["source"] = "synthetic"
        records.append(record)
    return records


def _save_png_atomic(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def _count_lines(path: Path) -> int:
    with path.open("r", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def _dataset_complete(path: Path, expected: int, root: Path) -> bool:
    if not path.is_file() or _count_lines(path) != expected:
        return False
    with path.open("r", encoding="utf-8") as handle:
        return all((root / img).is_file() for line in handle if line.strip() for img in json.loads(line)["images"])


def write_demo_dataset(out_dir: Path, n_seed: int = 16, n_pool: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Write `seed.jsonl` (ids seed-*) and `pool.jsonl` (ids pool-*) plus images under `out_dir`.

    Each file is written to a temp file and renamed into place. Skips the work when both files
    exist with the expected line counts and their images are present. Returns (seed, pool) paths.
    """
    out_dir = Path(out_dir)
    seed_path, pool_path = out_dir / "seed.jsonl", out_dir / "pool.jsonl"
    if _dataset_complete(seed_path, n_seed, out_dir) and _dataset_complete(pool_path, n_pool, out_dir):
        return seed_path, pool_path
    atomic_write_jsonl(seed_path, make_synthetic_problems(out_dir, n_seed, seed=seed, id_prefix="seed"))
    atomic_write_jsonl(pool_path, make_synthetic_problems(out_dir, n_pool, seed=seed + 1, id_prefix="pool"))
    return seed_path, pool_path


def main(argv: list[str] | None = None) -> int:
    """CLI: build the tiny model and the demo dataset, print their paths."""
    parser = argparse.ArgumentParser(prog="python -m mathse.demo_assets", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="where the tiny Qwen2-VL goes")
    parser.add_argument("--data-dir", type=Path, required=True, help="where seed.jsonl, pool.jsonl and images go")
    parser.add_argument("--n-seed", type=int, default=16, help="problems in seed.jsonl")
    parser.add_argument("--n-pool", type=int, default=24, help="problems in pool.jsonl")
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights and problems")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    model_dir = build_tiny_qwen2vl(args.model_dir, seed=args.seed)
    seed_path, pool_path = write_demo_dataset(args.data_dir, args.n_seed, args.n_pool, seed=args.seed)
    print(f"model: {model_dir}")
    print(f"seed:  {seed_path}")
    print(f"pool:  {pool_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
