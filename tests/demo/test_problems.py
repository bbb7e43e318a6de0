"""The count-down task of the demo and the digit-splitting tokenizer it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mathse.answers.extraction import check_path
from mathse.demo.problems import (
    HANDLERS,
    PROBLEM_KINDS,
    countdown_solution,
    countdown_splits,
    sample_problem_specs,
    write_countdown_dataset,
)
from mathse.demo.tiny_model import DEMO_SIZE, ModelSize, build_tiny_qwen2vl
from mathse.judging.steps import split_steps
from mathse.judging.verdict import ORM_SYSTEM_PROMPT
from mathse.run.records import read_problems


def test_countdown_solution_counts_down_one_step_per_line() -> None:
    text = countdown_solution(6, 5)
    assert text.splitlines() == ["6 + 5:", "6 (5)", "7 (4)", "8 (3)", "9 (2)", "10 (1)", "11 (0)",
                                 "The final answer is \\boxed{11}"]
    assert len(split_steps(text)) == 7 and check_path(text, "11").correct
    assert split_steps(countdown_solution(4, 0)) == ["4 + 0:", "4 (0)\nThe final answer is \\boxed{4}"]


def test_splits_are_disjoint_deterministic_and_cover_at_most_all_sums() -> None:
    sizes = {"seed": 30, "pool": 320, "test": 150}
    splits = countdown_splits(sizes, seed=3, solution_every={"seed": 2})
    pairs = {name: [s.numbers for s in specs] for name, specs in splits.items()}
    assert {k: len(v) for k, v in pairs.items()} == sizes
    assert len({p for v in pairs.values() for p in v}) == 500  # every sum exactly once
    assert all(0 <= a <= 49 and 0 <= b <= 9 for v in pairs.values() for a, b in v)
    assert [s.with_solution for s in splits["seed"]] == [i % 2 == 0 for i in range(30)]
    assert not any(s.with_solution for s in splits["pool"] + splits["test"])
    assert countdown_splits(sizes, seed=3) == countdown_splits(sizes, seed=3, solution_every={})
    assert pairs["test"] != [s.numbers for s in countdown_splits(sizes, seed=4)["test"]]
    with pytest.raises(ValueError, match="500 distinct problems"):
        countdown_splits({"seed": 450, "pool": 51})


def test_write_countdown_dataset(tmp_path: Path) -> None:
    paths = write_countdown_dataset(tmp_path, {"seed": 4, "test": 3}, seed=1, solution_every={"seed": 1})
    seed = read_problems(paths["seed"])
    assert [p.id for p in seed] == ["seed-0000", "seed-0001", "seed-0002", "seed-0003"]
    for p in seed:
        a, b = (int(x) for x in p.question.removeprefix("What is ").removesuffix("?").split(" + "))
        assert p.solution == countdown_solution(a, b) and p.answer == str(a + b)
        with Image.open(p.images[0]) as img:
            assert img.size == (56, 56) and len(img.convert("L").getcolors() or []) > 1
    assert all(p.solution is None for p in read_problems(paths["test"]))
    stamp = paths["seed"].stat().st_mtime_ns
    assert write_countdown_dataset(tmp_path, {"seed": 4, "test": 3}, seed=1) == paths
    assert paths["seed"].stat().st_mtime_ns == stamp  # complete: not rewritten
    assert not list(tmp_path.rglob(".*.tmp"))
    assert json.loads(paths["test"].read_text().splitlines()[0])["source"] == "synthetic"


def test_every_kind_has_a_handler_and_unknown_kinds_are_refused() -> None:
    assert set(PROBLEM_KINDS) == set(HANDLERS) and "countdown" in HANDLERS
    specs = sample_problem_specs(10, seed=0, kinds=("countdown",))
    assert all(s.kind == "countdown" and not s.choices for s in specs)
    with pytest.raises(ValueError, match="unknown problem kinds"):
        sample_problem_specs(3, kinds=("countdown", "division"))


def test_demo_model_size_and_digit_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    model_dir = build_tiny_qwen2vl(tmp_path / "demo", size=DEMO_SIZE)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert 400 < len(tok) <= DEMO_SIZE.vocab
    assert tok.tokenize("17 (8)") == ["1", "7", "Ġ(", "8", ")"]  # one token per digit
    # The tokenizer learned the ORM's system prompt: ~1.4 tokens per word, 4 with the test tokenizer.
    assert len(tok(ORM_SYSTEM_PROMPT)["input_ids"]) < 1.5 * len(ORM_SYSTEM_PROMPT.split())
    model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
    text = model.config.text_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (128, 256, 2)
    assert not model.config.tie_word_embeddings
    assert 300_000 < sum(p.numel() for p in model.parameters()) < 700_000
    with pytest.raises(ValueError, match="mrope_section"):
        ModelSize(hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, mrope_section=(2, 3, 3))
