"""The pixel comparison of a candidate picture pair: copies pass, a changed label or another drawing does not."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from mathse.data.image_hashes import distance, image_hashes
from mathse.data.pictures import DEFAULT_THRESHOLD, picture_difference, same_picture
from mathse.demo.problems import ProblemSpec, render_problem_image


def test_copies_pass_and_a_changed_digit_that_hashes_as_close_does_not(tmp_path: Path) -> None:
    original = render_problem_image(ProblemSpec("add", (27, 41), (84, 84)))
    original.save(tmp_path / "a.png")
    original.convert("RGB").save(tmp_path / "a.jpg", "JPEG", quality=70)
    original.resize((126, 126), Image.BICUBIC).save(tmp_path / "a_big.png")
    w, h = original.size
    original.crop((1, 1, w - 3, h - 3)).save(tmp_path / "a_crop.png")  # ~5% off, cutting into nothing it needs
    Image.eval(original.convert("RGB"), lambda v: 40 + v * 3 // 4).save(tmp_path / "a_tinted.png")
    render_problem_image(ProblemSpec("add", (27, 47), (84, 84))).save(tmp_path / "digit.png")
    render_problem_image(ProblemSpec("hypotenuse", (3, 4, 5), (84, 84))).save(tmp_path / "other.png")
    a = tmp_path / "a.png"
    for copy in ("a.jpg", "a_big.png", "a_crop.png", "a_tinted.png"):
        assert same_picture(a, tmp_path / copy), (copy, picture_difference(a, tmp_path / copy))
    hashes = image_hashes(a), image_hashes(tmp_path / "digit.png")
    assert min(distance(x, y) for x, y in zip(*hashes, strict=True)) <= 10  # the hashes alone would say "same"
    assert picture_difference(a, tmp_path / "digit.png") > DEFAULT_THRESHOLD
    assert picture_difference(a, tmp_path / "other.png") > DEFAULT_THRESHOLD
    assert picture_difference(a, a) == 0.0
