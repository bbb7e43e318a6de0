"""The chat template a served engine renders, so that it builds the prompt LLaMA-Factory trained on.

vLLM renders a checkpoint's own chat template (tokenizer_config.json / chat_template.jinja), which
for some families is not what LLaMA-Factory's template produces: InternVL's LLaMA-Factory template
adds its default system message and puts no "\\n" after the image; GLM-4.1V's generation prompt ends
"<|assistant|>" where the checkpoint's ends "<|assistant|>\\n". A model served that way answers
another prompt than the one it was trained on (measured on tiny InternVL and GLM-4.1V checkpoints:
0 and 1 of 6 greedy answers equal to the in-process engine's; 6 of 6 with this template).

For those families (`Backbone.served_image_placeholder`), the served engine gets LLaMA-Factory's own
template as Jinja (LLaMA-Factory's `_get_jinja_template`, which its exports use), taught to read
OpenAI-style content: a text part is its text, an image part the text the engine's processor expands
into the image's tokens, where LLaMA-Factory's plugin expands its image placeholder. The Qwen
families keep the checkpoint's template: it is the same as LLaMA-Factory's.
"""

from __future__ import annotations

from mathse.model.backbones import backbone_of
from mathse.model.inputs import ModelInputs

__all__ = ["needs_training_template", "served_chat_template"]

# In LLaMA-Factory's Jinja, a message's content and the system message are read as strings here.
_READ_CONTENT = "{% set content = message['content'] %}"
_READ_SYSTEM = "{% set system_message = messages[0]['content'] %}"


def _read_parts(target: str, message: str, placeholder: str) -> str:
    """Jinja: `target` = the message's text, each image part replaced by `placeholder` (the engine may
    hand the content over as OpenAI-style parts, or as a string)."""
    quoted = placeholder.replace("'", r"\'")
    return (
        f"{{% if {message}['content'] is string %}}{{% set {target} = {message}['content'] %}}{{% else %}}"
        f"{{% set parts = namespace(text='') %}}{{% for part in {message}['content'] %}}"
        "{% if part['type'] == 'text' %}{% set parts.text = parts.text + part['text'] %}"
        f"{{% else %}}{{% set parts.text = parts.text + '{quoted}' %}}{{% endif %}}"
        f"{{% endfor %}}{{% set {target} = parts.text %}}{{% endif %}}"
    )


def needs_training_template(inputs: ModelInputs) -> bool:
    """True: a served engine gets LLaMA-Factory's template instead of the checkpoint's."""
    backbone = backbone_of(inputs.template)
    return backbone is not None and backbone.served_image_placeholder is not None


def served_chat_template(model_path: str, inputs: ModelInputs) -> str | None:
    """LLaMA-Factory's template for `inputs.template` as Jinja for a served engine, or None where the
    checkpoint's own template already renders the same prompt (or the family is not in the table)."""
    backbone = backbone_of(inputs.template)
    if backbone is None or not needs_training_template(inputs):
        return None
    from llamafactory.data.template import TEMPLATES
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=inputs.trust_remote_code)
    jinja = TEMPLATES[inputs.template]._get_jinja_template(tokenizer)
    if _READ_CONTENT not in jinja:  # LLaMA-Factory changed how its Jinja reads a message
        raise RuntimeError(f"LLaMA-Factory's Jinja for template {inputs.template!r} has no {_READ_CONTENT!r}")
    placeholder = backbone.served_image_placeholder
    jinja = jinja.replace(_READ_CONTENT, _read_parts("content", "message", placeholder))
    return jinja.replace(_READ_SYSTEM, _read_parts("system_message", "messages[0]", placeholder))
