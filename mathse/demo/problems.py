"""Synthetic image math problems for the demo and the tests, drawn with PIL (no downloads).

Every problem kind is one `KindHandler` in `HANDLERS`: how to draw its numbers, what the answer
is, the picture, the question and a reference solution. Records follow the project's problem
schema (`mathse.run.records.Problem`).

`countdown` is the demo's learnable task (issue 12): "What is a + b?" with a in 0..49 and b in
0..9, the sum also drawn in a 56x56 image, solved by counting down b while counting up a:

    6 + 5:
    6 (5)
    7 (4)
    ...
    11 (0)
    The final answer is \\boxed{11}

Every line follows from the one before it (add one, take one away), so a tiny model learns the
rule instead of memorising sums; each line is a step the scripted teacher can check. The other
kinds (dots, boxes, bars, triangles) are the older shape problems, kept for tests and variety.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from mathse.run.storage import atomic_write_bytes, atomic_write_jsonl

__all__ = [
    "BAR_COLOR",
    "BAR_UNIT_PX",
    "COUNTDOWN_RE",
    "DOT_COLOR",
    "HANDLERS",
    "PROBLEM_KINDS",
    "SHAPE_KINDS",
    "KindHandler",
    "ProblemSpec",
    "countdown_lines",
    "countdown_solution",
    "countdown_splits",
    "make_synthetic_problems",
    "render_problem_image",
    "sample_problem_specs",
    "write_countdown_dataset",
    "write_demo_dataset",
    "write_problem_images",
]

_PYTHAGOREAN = ((3, 4, 5), (6, 8, 10), (5, 12, 13), (8, 6, 10), (4, 3, 5), (9, 12, 15), (12, 5, 13))
_LETTERS = "ABCD"
DOT_COLOR = (200, 30, 30)
BAR_COLOR = (30, 90, 200)
BAR_UNIT_PX = 8
BAR_LEFT_PX = 8
COUNTDOWN_A_MAX = 49  # 500 distinct problems: room for a 150-problem test set and a large pool
COUNTDOWN_B_MAX = 9
# The question of a countdown problem; the scripted teacher parses it back.
COUNTDOWN_QUESTION = "What is {a} + {b}?"
COUNTDOWN_RE = r"What is (\d+) \+ (\d+)\?"


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
        return HANDLERS[self.kind].value(self)

    @property
    def answer(self) -> str:
        """The exact reference answer: the number, or the option letter for multiple choice."""
        if self.choices:
            return _LETTERS[self.choices.index(self.value)]
        return str(self.value)


@dataclass(frozen=True)
class KindHandler:
    """Everything kind-specific about a problem."""

    sample: Callable[[random.Random, bool], ProblemSpec]  # (rng, with_solution) -> spec
    value: Callable[[ProblemSpec], int]
    draw: Callable[[ProblemSpec, ImageDraw.ImageDraw, Any], None]  # (spec, canvas, font)
    question: Callable[[ProblemSpec], str]
    steps: Callable[[ProblemSpec], list[str]]  # the solution's lines before the final answer
    multiple_choice: bool = True  # may be asked with options (A)-(D)


# --------------------------------------------------------------------------------------------
# countdown: the demo's learnable task


def countdown_lines(a: int, b: int) -> list[str]:
    """The steps of a + b by counting down b: `a + b:`, then `a+i (b-i)` for i = 0..b."""
    return [f"{a} + {b}:", *(f"{a + i} ({b - i})" for i in range(b + 1))]


def countdown_solution(a: int, b: int) -> str:
    return "\n".join([*countdown_lines(a, b), f"The final answer is \\boxed{{{a + b}}}"])


def _sample_countdown(rng: random.Random, with_solution: bool) -> ProblemSpec:
    a, b = rng.randint(0, COUNTDOWN_A_MAX), rng.randint(0, COUNTDOWN_B_MAX)
    return ProblemSpec("countdown", (a, b), (56, 56), with_solution=with_solution)


def _draw_countdown(spec: ProblemSpec, draw: ImageDraw.ImageDraw, font: Any) -> None:
    w, h = spec.size
    a, b = spec.numbers
    draw.text((w // 2, h // 2), f"{a} + {b}", fill="black", font=font, anchor="mm")


# --------------------------------------------------------------------------------------------
# shape problems


def _sample_count(rng: random.Random, with_solution: bool) -> ProblemSpec:
    size = (rng.choice((56, 84)), rng.choice((56, 84)))
    dots = _place_dots(rng, rng.randint(2, 9), size)
    return ProblemSpec("count", (len(dots),), size, dots=dots, with_solution=with_solution)


def _draw_count(spec: ProblemSpec, draw: ImageDraw.ImageDraw, font: Any) -> None:
    for x, y in spec.dots:
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=DOT_COLOR)


def _steps_count(spec: ProblemSpec) -> list[str]:
    v = spec.value
    return [f"Counting the red dots one by one gives {', '.join(str(i) for i in range(1, v + 1))}.",
            f"So there are {v} dots."]


def _sample_add(rng: random.Random, with_solution: bool) -> ProblemSpec:
    return ProblemSpec("add", (rng.randint(1, 49), rng.randint(1, 49)), (84, 56), with_solution=with_solution)


def _draw_add(spec: ProblemSpec, draw: ImageDraw.ImageDraw, font: Any) -> None:
    w, h = spec.size
    a, b = spec.numbers
    draw.rectangle((2, 2, w // 2 - 3, h - 3), outline="black")
    draw.rectangle((w // 2 + 2, 2, w - 3, h - 3), outline="black")
    draw.text((w // 4, h // 2), str(a), fill="black", font=font, anchor="mm")
    draw.text((3 * w // 4, h // 2), str(b), fill="black", font=font, anchor="mm")


def _steps_add(spec: ProblemSpec) -> list[str]:
    a, b = spec.numbers
    return [f"The left box shows {a} and the right box shows {b}.", f"Their sum is {a} + {b} = {spec.value}."]


def _sample_bar(rng: random.Random, with_solution: bool) -> ProblemSpec:
    return ProblemSpec("bar", (rng.randint(1, 10),), (112, 56), with_solution=with_solution)


def _draw_bar(spec: ProblemSpec, draw: ImageDraw.ImageDraw, font: Any) -> None:
    length = spec.numbers[0]
    axis_y = spec.size[1] - 14
    draw.line((BAR_LEFT_PX, axis_y, BAR_LEFT_PX + 10 * BAR_UNIT_PX, axis_y), fill="black")
    for t in range(11):
        x = BAR_LEFT_PX + t * BAR_UNIT_PX
        draw.line((x, axis_y, x, axis_y + 3), fill="black")
    draw.text((BAR_LEFT_PX, axis_y + 4), "0", fill="black", font=font, anchor="ma")
    draw.text((BAR_LEFT_PX + 10 * BAR_UNIT_PX, axis_y + 4), "10", fill="black", font=font, anchor="ma")
    draw.rectangle((BAR_LEFT_PX, 12, BAR_LEFT_PX + length * BAR_UNIT_PX - 1, axis_y - 4), fill=BAR_COLOR)


def _steps_bar(spec: ProblemSpec) -> list[str]:
    v = spec.value
    return ["The bar starts at the 0 mark of the ruler.", f"It ends at the {v} mark, so it is {v} units long."]


def _sample_triangle(kind: str) -> Callable[[random.Random, bool], ProblemSpec]:
    def sample(rng: random.Random, with_solution: bool) -> ProblemSpec:
        return ProblemSpec(kind, rng.choice(_PYTHAGOREAN), (84, 84), with_solution=with_solution)

    return sample


def _draw_triangle(spec: ProblemSpec, draw: ImageDraw.ImageDraw, font: Any) -> None:
    a, b, _ = spec.numbers
    h = spec.size[1]
    scale = 56 / max(a, b)
    x0, y0 = 14, h - 14
    x1, y1 = x0 + round(b * scale), y0 - round(a * scale)
    draw.polygon([(x0, y0), (x1, y0), (x0, y1)], outline="black")
    draw.rectangle((x0, y0 - 5, x0 + 5, y0), outline="black")  # right-angle mark
    draw.text((x0 - 3, (y0 + y1) // 2), str(a), fill="black", font=font, anchor="rm")
    draw.text(((x0 + x1) // 2, y0 + 2), str(b), fill="black", font=font, anchor="ma")


def _steps_hypotenuse(spec: ProblemSpec) -> list[str]:
    a, b, c = spec.numbers
    return [f"The legs are {a} and {b}.",
            f"By the Pythagorean theorem the hypotenuse is sqrt({a}^2 + {b}^2) = sqrt({a * a + b * b}) = {c}."]


def _steps_area(spec: ProblemSpec) -> list[str]:
    a, b, _ = spec.numbers
    return [f"The legs are {a} and {b}, and they are perpendicular.", f"The area is (1/2) * {a} * {b} = {spec.value}."]


_TRIANGLE_TEXT = "The image shows a right triangle with its two legs labelled. "

HANDLERS: dict[str, KindHandler] = {
    "countdown": KindHandler(
        sample=_sample_countdown,
        value=lambda s: s.numbers[0] + s.numbers[1],
        draw=_draw_countdown,
        question=lambda s: COUNTDOWN_QUESTION.format(a=s.numbers[0], b=s.numbers[1]),
        steps=lambda s: countdown_lines(*s.numbers),
        multiple_choice=False,
    ),
    "count": KindHandler(
        sample=_sample_count, value=lambda s: len(s.dots), draw=_draw_count,
        question=lambda s: "How many red dots are in the image?", steps=_steps_count,
    ),
    "add": KindHandler(
        sample=_sample_add, value=lambda s: s.numbers[0] + s.numbers[1], draw=_draw_add,
        question=lambda s: "The image shows two numbers in two boxes. What is the sum of the two numbers?",
        steps=_steps_add,
    ),
    "bar": KindHandler(
        sample=_sample_bar, value=lambda s: s.numbers[0], draw=_draw_bar,
        question=lambda s: "The blue bar is drawn above a ruler marked from 0 to 10 in equal units. "
        "How many units long is the bar?",
        steps=_steps_bar,
    ),
    "hypotenuse": KindHandler(
        sample=_sample_triangle("hypotenuse"), value=lambda s: s.numbers[2], draw=_draw_triangle,
        question=lambda s: _TRIANGLE_TEXT + "What is the length of the hypotenuse?", steps=_steps_hypotenuse,
    ),
    "area": KindHandler(
        sample=_sample_triangle("area"), value=lambda s: s.numbers[0] * s.numbers[1] // 2, draw=_draw_triangle,
        question=lambda s: _TRIANGLE_TEXT + "What is the area of the triangle?", steps=_steps_area,
    ),
}
SHAPE_KINDS: tuple[str, ...] = ("count", "add", "bar", "hypotenuse", "area")
PROBLEM_KINDS: tuple[str, ...] = tuple(HANDLERS)


def sample_problem_specs(
    n: int, seed: int = 0, kinds: Sequence[str] = SHAPE_KINDS, solution_every: int | None = 2
) -> list[ProblemSpec]:
    """Draw `n` problem specs deterministically from `seed` (kinds cycle in a shuffled order).

    Problem i has a reference solution when `solution_every` divides i (None: none has one).
    """
    unknown = [k for k in kinds if k not in HANDLERS]
    if unknown or not kinds:
        raise ValueError(f"unknown problem kinds {unknown} (known: {', '.join(HANDLERS)})")
    rng = random.Random(seed)
    specs: list[ProblemSpec] = []
    queue: list[str] = []
    for i in range(n):
        if not queue:
            queue = list(kinds)
            rng.shuffle(queue)
        handler = HANDLERS[queue.pop()]
        mc = rng.random() < 0.35  # drawn for every kind, so adding a kind keeps the others' draws
        spec = handler.sample(rng, solution_every is not None and i % solution_every == 0)
        if mc and handler.multiple_choice:
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
    HANDLERS[spec.kind].draw(spec, ImageDraw.Draw(img), ImageFont.load_default())
    return img


def _question(spec: ProblemSpec) -> str:
    text = HANDLERS[spec.kind].question(spec)
    if spec.choices:
        options = " ".join(f"({letter}) {value}" for letter, value in zip(_LETTERS, spec.choices, strict=True))
        text += f"\nChoose one option: {options}"
    return text


def _solution(spec: ProblemSpec) -> str:
    steps = HANDLERS[spec.kind].steps(spec)
    if spec.choices:
        steps.append(f"The value {spec.value} is option ({spec.answer}).")
    steps.append(f"The final answer is \\boxed{{{spec.answer}}}")
    return "\n".join(steps)


def _png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def make_synthetic_problems(
    out_dir: Path,
    n: int,
    seed: int = 0,
    id_prefix: str = "demo",
    kinds: Sequence[str] = SHAPE_KINDS,
    solution_every: int | None = 2,
) -> list[dict[str, Any]]:
    """Draw `n` image math problems and save the PNGs under `out_dir/images/<id>.png`.

    Returns records in the problem schema: id, question, images (relative to `out_dir`), answer
    (a number, or a letter for multiple choice), solution (see `sample_problem_specs`; it ends with
    `The final answer is \\boxed{...}`) and source "synthetic". Deterministic given `seed`.
    """
    return write_problem_images(out_dir, sample_problem_specs(n, seed, kinds, solution_every), id_prefix)


def write_problem_images(out_dir: Path, specs: Sequence[ProblemSpec], id_prefix: str) -> list[dict[str, Any]]:
    """Save each spec's picture as `out_dir/images/<id>.png`; return the problem records."""
    out_dir = Path(out_dir)
    records: list[dict[str, Any]] = []
    for i, spec in enumerate(specs):
        pid = f"{id_prefix}-{i:04d}"
        rel = f"images/{pid}.png"
        atomic_write_bytes(out_dir / rel, _png_bytes(render_problem_image(spec)))
        record: dict[str, Any] = {"id": pid, "question": _question(spec), "images": [rel], "answer": spec.answer}
        if spec.with_solution:
            record["solution"] = _solution(spec)
        record["source"] = "synthetic"
        records.append(record)
    return records


def countdown_splits(
    sizes: dict[str, int], seed: int = 0, solution_every: dict[str, int | None] | None = None
) -> dict[str, list[ProblemSpec]]:
    """Disjoint countdown problem sets (e.g. seed / pool / test) drawn without replacement.

    There are only 50 * 10 = 500 distinct sums, so independent draws would put test questions in
    the training data; a shuffled partition keeps the test set truly held out.
    """
    pairs = [(a, b) for a in range(COUNTDOWN_A_MAX + 1) for b in range(COUNTDOWN_B_MAX + 1)]
    if sum(sizes.values()) > len(pairs):
        raise ValueError(f"countdown has {len(pairs)} distinct problems; asked for {sum(sizes.values())}")
    random.Random(seed).shuffle(pairs)
    every = solution_every or {}
    splits: dict[str, list[ProblemSpec]] = {}
    start = 0
    for name, n in sizes.items():
        k = every.get(name)
        splits[name] = [
            ProblemSpec("countdown", pair, (56, 56), with_solution=k is not None and i % k == 0)
            for i, pair in enumerate(pairs[start : start + n])
        ]
        start += n
    return splits


def _count_lines(path: Path) -> int:
    with path.open("r", encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def _dataset_complete(path: Path, expected: int, root: Path) -> bool:
    if not path.is_file() or _count_lines(path) != expected:
        return False
    with path.open("r", encoding="utf-8") as handle:
        return all((root / img).is_file() for line in handle if line.strip() for img in json.loads(line)["images"])


def write_demo_dataset(
    out_dir: Path,
    n_seed: int = 16,
    n_pool: int = 24,
    seed: int = 0,
    kinds: Sequence[str] = SHAPE_KINDS,
    seed_solution_every: int | None = 2,
) -> tuple[Path, Path]:
    """Write `seed.jsonl` (ids seed-*) and `pool.jsonl` (ids pool-*) plus images under `out_dir`.

    Each file is written to a temp file and renamed into place. Skips the work when both files
    exist with the expected line counts and their images are present. Returns (seed, pool) paths.
    """
    out_dir = Path(out_dir)
    seed_path, pool_path = out_dir / "seed.jsonl", out_dir / "pool.jsonl"
    if _dataset_complete(seed_path, n_seed, out_dir) and _dataset_complete(pool_path, n_pool, out_dir):
        return seed_path, pool_path
    seed_rows = make_synthetic_problems(out_dir, n_seed, seed, "seed", kinds, seed_solution_every)
    atomic_write_jsonl(seed_path, seed_rows)
    atomic_write_jsonl(pool_path, make_synthetic_problems(out_dir, n_pool, seed + 1, "pool", kinds))
    return seed_path, pool_path


def write_countdown_dataset(
    out_dir: Path, sizes: dict[str, int], seed: int = 0, solution_every: dict[str, int | None] | None = None
) -> dict[str, Path]:
    """Write `<name>.jsonl` (ids `<name>-*`) plus images for each of `countdown_splits`' sets.

    Skips the work when every file exists with the expected line count and its images; each file is
    written whole and renamed into place. Returns {name: path}.
    """
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.jsonl" for name in sizes}
    if all(_dataset_complete(paths[name], n, out_dir) for name, n in sizes.items()):
        return paths
    for name, specs in countdown_splits(sizes, seed, solution_every).items():
        atomic_write_jsonl(paths[name], write_problem_images(out_dir, specs, name))
    return paths
