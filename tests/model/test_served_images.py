"""Images for a served model: the pixels LLaMA-Factory's processor got in training."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from mathse.api.messages import ImageRef, user_message, wire_messages
from mathse.model.inputs import ModelInputs
from mathse.model.served_images import TrainingSizedImages


def llamafactory_image(path: Path, template: str, max_pixels: int, min_pixels: int = 32 * 32) -> Image.Image:
    from llamafactory.data.template import TEMPLATES

    return TEMPLATES[template].mm_plugin._regularize_images(
        [str(path)], image_max_pixels=max_pixels, image_min_pixels=min_pixels)["images"][0]


def sent_image(message: dict) -> Image.Image:
    url = wire_messages([message])[0]["content"][0]["image_url"]["url"]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.mark.parametrize("template", ["qwen2_vl", "qwen3_vl_nothink", "intern_vl", "glm4v"])
def test_a_large_image_goes_out_as_llamafactory_resized_it(tmp_path: Path, template: str) -> None:
    path = tmp_path / "big.jpg"
    Image.effect_mandelbrot((1024, 768), (-2, -1.5, 1, 1.5), 60).convert("RGB").save(path, quality=90)
    prep = TrainingSizedImages(ModelInputs(template, 262144))
    sent = sent_image(user_message("q", [path], prep=prep))
    expected = llamafactory_image(path, template, 262144)
    assert sent.size == expected.size == (591, 443)  # int(1024 * sqrt(262144 / 786432)), not vLLM's 28-px rounding
    assert sent.tobytes() == expected.tobytes()  # lossless: the same pixels


def test_an_image_within_the_limits_goes_as_its_file(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (56, 56), (1, 2, 3)).save(path)
    prep = TrainingSizedImages(ModelInputs("qwen2_vl", 262144))
    assert prep.encode(str(path)) is None
    assert wire_messages([user_message("q", [path], prep=prep)]) == wire_messages([user_message("q", [path])])


def test_a_non_rgb_image_goes_as_llamafactory_converted_it(tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (40, 40), (200, 10, 10, 0)).save(path)
    sent = sent_image(user_message("q", [path], prep=TrainingSizedImages(ModelInputs("qwen2_vl"))))
    assert sent.mode == "RGB" and sent.tobytes() == llamafactory_image(path, "qwen2_vl", 768 * 768).tobytes()


def test_the_preparation_is_part_of_the_images_identity(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (800, 800), (5, 5, 5)).save(path)
    small, large = (TrainingSizedImages(ModelInputs("qwen2_vl", n)) for n in (65536, 262144))
    assert ImageRef(path, small) != ImageRef(path, large) and ImageRef(path, small).sha256 != ImageRef(path).sha256
