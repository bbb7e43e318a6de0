"""Perceptual hashes of a picture and its copies; the multi-index keys against brute force."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from mathse.data.image_hashes import distance, image_hashes, index_keys, probe_keys
from mathse.demo.problems import ProblemSpec, render_problem_image


def test_probe_keys_meet_the_index_keys_of_exactly_the_hashes_within_the_distance_and_few_others() -> None:
    rng = random.Random(3)
    base = [rng.getrandbits(64) for _ in range(60)]
    # Near copies: a few bits flipped, so there is something to find at every distance.
    values = base + [b ^ sum(1 << rng.randrange(64) for _ in range(rng.randint(1, 12))) for b in base]
    for t in (0, 3, 4, 7, 11):
        for q in values[:40] + [rng.getrandbits(64) for _ in range(20)]:
            probes = set(probe_keys(q, 0, t))
            candidates = {i for i, v in enumerate(values) if probes & set(index_keys(v, 0))}
            within = {i for i, v in enumerate(values) if distance(q, v) <= t}
            assert within <= candidates  # none missed (pigeonhole)
            assert len(candidates - within - set(range(60, 120))) <= 2  # unrelated hashes rarely share a chunk
            assert not probes & set(index_keys(q, 1))  # each hash kind files its own keys
    with pytest.raises(ValueError):
        probe_keys(0, 0, 12)


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
