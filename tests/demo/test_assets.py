"""Tests for mathse.demo.assets: the tiny offline Qwen2-VL and the synthetic image problems."""

from __future__ import annotations

import json
import os
import re
import time
from collections import deque
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from mathse.demo.assets import (
    BAR_COLOR,
    BAR_UNIT_PX,
    COMPLETE_MARKER,
    DOT_COLOR,
    QWEN2VL_SPECIAL_TOKENS,
    build_tiny_qwen2vl,
    main,
    make_synthetic_problems,
    sample_problem_specs,
    write_demo_dataset,
)

N = 30  # enough to cover every kind, with and without options


# ---------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problems(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("problems")
    return out, make_synthetic_problems(out, N, seed=7)


def _count_blobs(img: Image.Image, color: tuple[int, int, int]) -> int:
    """Number of 4-connected regions of exactly `color`."""
    w, h = img.size
    px = img.load()
    seen: set[tuple[int, int]] = set()
    blobs = 0
    for y in range(h):
        for x in range(w):
            if (x, y) in seen or px[x, y] != color:
                continue
            blobs += 1
            queue = deque([(x, y)])
            seen.add((x, y))
            while queue:
                cx, cy = queue.popleft()
                for nx, ny in ((cx + 1, cy), (cx - 1, cy), (cx, cy + 1), (cx, cy - 1)):
                    if 0 <= nx < w and 0 <= ny < h and (nx, ny) not in seen and px[nx, ny] == color:
                        seen.add((nx, ny))
                        queue.append((nx, ny))
    return blobs


def _options(question: str) -> dict[str, int]:
    return {letter: int(value) for letter, value in re.findall(r"\(([A-D])\) (\d+)", question)}


def test_problems_are_deterministic(tmp_path: Path, problems: tuple[Path, list[dict]]) -> None:
    out, records = problems
    again = make_synthetic_problems(tmp_path, N, seed=7)
    assert again == records
    for rec in records:
        assert (tmp_path / rec["images"][0]).read_bytes() == (out / rec["images"][0]).read_bytes()
    other = make_synthetic_problems(tmp_path / "other", N, seed=8)
    assert [r["question"] + r["answer"] for r in other] != [r["question"] + r["answer"] for r in records]


def test_problem_schema_and_variety(problems: tuple[Path, list[dict]]) -> None:
    _, records = problems
    assert [r["id"] for r in records] == [f"demo-{i:04d}" for i in range(N)]
    for rec in records:
        assert set(rec) <= {"id", "question", "images", "answer", "solution", "source"}
        assert rec["source"] == "synthetic"
        assert rec["images"] == [f"images/{rec['id']}.png"]
        assert isinstance(rec["answer"], str) and rec["answer"]
        if "solution" in rec:
            assert rec["solution"].splitlines()[-1] == f"The final answer is \\boxed{{{rec['answer']}}}"
    with_solution = sum("solution" in r for r in records)
    assert N // 3 <= with_solution <= 2 * N // 3
    kinds = {s.kind for s in sample_problem_specs(N, seed=7)}
    assert kinds == {"count", "add", "bar", "hypotenuse", "area"}
    assert any(r["answer"] in "ABCD" for r in records) and any(r["answer"].isdigit() for r in records)


def test_images_exist_and_open(problems: tuple[Path, list[dict]]) -> None:
    out, records = problems
    for rec in records:
        path = out / rec["images"][0]
        assert path.is_file()
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG"
            assert 56 <= img.width <= 112 and 56 <= img.height <= 112
            assert len(img.convert("L").getcolors(256 * 256) or []) > 1  # not blank


def test_answers_match_what_was_drawn(problems: tuple[Path, list[dict]]) -> None:
    out, records = problems
    specs = sample_problem_specs(N, seed=7)
    for rec, spec in zip(records, specs, strict=True):
        img = Image.open(out / rec["images"][0]).convert("RGB")
        if spec.kind == "count":
            expected = _count_blobs(img, DOT_COLOR)
        elif spec.kind == "add":
            a, b = spec.numbers
            expected = a + b
            gray = img.convert("L")
            half = img.width // 2
            for box in ((4, 4, half - 5, img.height - 5), (half + 4, 4, img.width - 5, img.height - 5)):
                assert gray.crop(box).getextrema()[0] < 128, "each box must show its number"
            if "solution" in rec:
                assert f"{a} + {b} = {expected}" in rec["solution"]
        elif spec.kind == "bar":
            columns = sum(any(img.getpixel((x, y)) == BAR_COLOR for y in range(img.height)) for x in range(img.width))
            assert columns % BAR_UNIT_PX == 0
            expected = columns // BAR_UNIT_PX
        else:
            a, b, c = spec.numbers
            assert a * a + b * b == c * c
            expected = c if spec.kind == "hypotenuse" else a * b // 2
        assert spec.value == expected, (rec["id"], spec)
        options = _options(rec["question"])
        if options:
            assert sorted(options) == ["A", "B", "C", "D"] and len(set(options.values())) == 4
            assert options[rec["answer"]] == expected
        else:
            assert rec["answer"] == str(expected)


def test_write_demo_dataset_is_idempotent_and_valid(tmp_path: Path) -> None:
    from mathse.run.records import read_problems

    seed_path, pool_path = write_demo_dataset(tmp_path, n_seed=6, n_pool=9, seed=1)
    assert seed_path == tmp_path / "seed.jsonl" and pool_path == tmp_path / "pool.jsonl"
    seed_rows = [json.loads(line) for line in seed_path.read_text().splitlines()]
    pool_rows = [json.loads(line) for line in pool_path.read_text().splitlines()]
    assert len(seed_rows) == 6 and len(pool_rows) == 9
    assert not {r["id"] for r in seed_rows} & {r["id"] for r in pool_rows}
    assert len(read_problems(seed_path)) == 6 and len(read_problems(pool_path)) == 9  # schema + images

    stamps = (seed_path.stat().st_mtime_ns, pool_path.stat().st_mtime_ns)
    assert write_demo_dataset(tmp_path, n_seed=6, n_pool=9, seed=1) == (seed_path, pool_path)
    assert (seed_path.stat().st_mtime_ns, pool_path.stat().st_mtime_ns) == stamps
    write_demo_dataset(tmp_path, n_seed=7, n_pool=9, seed=1)  # another size: rewritten
    assert len(seed_path.read_text().splitlines()) == 7
    assert not list(tmp_path.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# Tiny model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny") / "qwen2vl", seed=0)


def test_model_dir_is_complete(tiny_model: Path) -> None:
    names = {p.name for p in tiny_model.iterdir()}
    expected = {COMPLETE_MARKER, "config.json", "generation_config.json", "model.safetensors"}
    expected |= {"tokenizer.json", "tokenizer_config.json", "processor_config.json", "chat_template.jinja"}
    assert expected <= names
    assert json.loads((tiny_model / COMPLETE_MARKER).read_text())["seed"] == 0
    assert not list(tiny_model.parent.glob(".*.tmp")), "temp build folder left behind"
    assert (tiny_model / "model.safetensors").stat().st_size < 2_000_000


def test_tokenizer_and_generation_config(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert 400 <= len(tok) <= 600
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for special in QWEN2VL_SPECIAL_TOKENS:
        ids = tok.encode(special, add_special_tokens=False)
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids[0]) == special
    text = "Solve: 12 + 30 = ?\n\tÄnswer ≈ 42 → \\boxed{42} (B) {x^2}"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    gen = json.loads((tiny_model / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id and gen["pad_token_id"] == tok.pad_token_id
    assert gen["do_sample"] is False and gen["max_new_tokens"] <= 64


def test_model_loads_and_runs_with_an_image(tiny_model: Path) -> None:
    import torch
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is 2+3?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>What is 2+3?<|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    image = Image.new("RGB", (84, 56), "white")
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert logits.shape[-1] == model.config.text_config.vocab_size
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 4


def test_build_is_idempotent_and_deterministic(tiny_model: Path, tmp_path: Path) -> None:
    weights = tiny_model / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert build_tiny_qwen2vl(tiny_model, seed=0) == tiny_model
    assert time.perf_counter() - start < 0.5
    assert weights.stat().st_mtime_ns == stamp

    other = build_tiny_qwen2vl(tmp_path / "again", seed=0)
    assert (other / "model.safetensors").read_bytes() == weights.read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (tiny_model / "tokenizer.json").read_bytes()


def test_incomplete_dir_is_rebuilt(tiny_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("{half written")
    build_tiny_qwen2vl(target, seed=0)
    assert (target / COMPLETE_MARKER).is_file()
    assert json.loads((target / "config.json").read_text())["model_type"] == "qwen2_vl"


def test_cli_builds_both(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model-dir", str(tiny_model), "--data-dir", str(tmp_path / "data"), "--n-seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert str(tiny_model) in printed and str(tmp_path / "data" / "pool.jsonl") in printed
    assert len((tmp_path / "data" / "seed.jsonl").read_text().splitlines()) == 3
    assert len((tmp_path / "data" / "pool.jsonl").read_text().splitlines()) == 24
