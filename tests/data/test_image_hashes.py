"""Perceptual hashes of a picture and its copies; the multi-index Hamming table against brute force."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from mathse.data.image_hashes import HammingIndex, distance, image_hashes
from mathse.demo.problems import ProblemSpec, render_problem_image


def test_index_returns_exactly_the_hashes_within_the_distance() -> None:
    rng = random.Random(3)
    base = [rng.getrandbits(64) for _ in range(60)]
    # Near copies: a few bits flipped, so there is something to find at every distance.
    values = base + [b ^ sum(1 << rng.randrange(64) for _ in range(rng.randint(1, 12))) for b in base]
    for t in (0, 3, 4, 7, 11):
        index = HammingIndex(t)
        for v in values:
            index.add(v)
        for q in values[:40] + [rng.getrandbits(64) for _ in range(20)]:
            expected = {(i, distance(q, v)) for i, v in enumerate(values) if distance(q, v) <= t}
            assert set(index.query(q)) == expected
    with pytest.raises(ValueError):
        HammingIndex(12)


def test_a_reencoded_rescaled_or_recoloured_copy_hashes_close_and_another_picture_far(tmp_path: Path) -> None:
    original = render_problem_image(ProblemSpec("countdown", (27, 4), (56, 56)))
    other = render_problem_image(ProblemSpec("countdown", (3, 9), (56, 56)))
    original.save(tmp_path / "a.png")
    original.save(tmp_path / "a.jpg", "JPEG", quality=70)
    original.resize((84, 84), Image.BICUBIC).save(tmp_path / "a_big.png")
    Image.eval(original, lambda v: 40 + v * 3 // 4).save(tmp_path / "a_tinted.png")
    other.save(tmp_path / "b.png")
    a = image_hashes(tmp_path / "a.png")

    def closest(path: str) -> int:
        return min(distance(x, y) for x, y in zip(a, image_hashes(tmp_path / path), strict=True))

    assert all(closest(p) <= 4 for p in ("a.jpg", "a_big.png", "a_tinted.png"))
    assert closest("b.png") > 4
