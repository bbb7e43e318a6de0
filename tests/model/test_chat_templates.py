"""The served engine's prompt is LLaMA-Factory's, token for token, image tokens included."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from PIL import Image

from mathse.demo.tiny_backbones import TINY_FAMILIES, build_tiny
from mathse.model.chat_templates import needs_training_template, served_chat_template
from mathse.model.inputs import ModelInputs

QUESTION = "What is 3 + 4?"


@pytest.mark.parametrize("family", ["intern_vl", "glm4v"])
@pytest.mark.parametrize("system", [None, "Solve it step by step."])
def test_served_template_builds_llamafactorys_tokens(tmp_path: Path, family: str, system: str | None) -> None:
    """What vLLM does with the template (render OpenAI-style parts, then the HF processor expands the
    image placeholder) gives the ids LLaMA-Factory's in-process engine builds (plugin, then template)."""
    from llamafactory.data.template import TEMPLATES
    from transformers import AutoProcessor, AutoTokenizer

    model = build_tiny(family, tmp_path / family)
    template = TINY_FAMILIES[family]
    tokenizer, processor = AutoTokenizer.from_pretrained(model), AutoProcessor.from_pretrained(model)
    image = Image.new("RGB", (56, 56), (10, 200, 30))
    lf = TEMPLATES[template]
    processor.image_max_pixels, processor.image_min_pixels = 768 * 768, 32 * 32
    expanded = lf.mm_plugin.process_messages([{"role": "user", "content": "<image>" + QUESTION},
                                              {"role": "assistant", "content": ""}], [image], [], [], processor)
    expected, _ = lf.encode_oneturn(tokenizer, expanded, system)

    jinja = served_chat_template(str(model), ModelInputs(template))
    assert jinja is not None
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    text = jinja2.Environment().from_string(jinja).render(messages=messages, add_generation_prompt=True)
    served = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    assert served == expected
    # The checkpoint's own template builds another prompt: the reason this exists.
    own = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert processor(text=[own], images=[image], return_tensors="pt")["input_ids"][0].tolist() != expected


def test_qwen_families_keep_the_checkpoints_template() -> None:
    assert not needs_training_template(ModelInputs("qwen2_vl"))
    assert not needs_training_template(ModelInputs("qwen3_vl_nothink"))
    assert served_chat_template("/no/such/model", ModelInputs("qwen2_vl")) is None
    assert needs_training_template(ModelInputs("intern_vl")) and needs_training_template(ModelInputs("glm4v"))
