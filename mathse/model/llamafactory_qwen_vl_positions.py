"""Qwen-VL image positions at inference through LLaMA-Factory 0.9.5: the adapter, and why it exists.

The bug it fixes (issue 24, measured): since transformers 5.3 (huggingface/transformers PR #43972) the
Qwen2-VL family (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4.1V, ...) builds its 3D rope positions from
`mm_token_type_ids`, which the processor returns beside `input_ids`. Without them `generate` quietly
gives every token, image tokens included, plain 1D text positions. LLaMA-Factory 0.9.5 computes the
positions itself in its training collator (`data/collator.py`, `_compute_rope_position_ids`), so
training is right; but `Qwen2VLPlugin.get_mm_inputs`, which its chat engine calls for every
in-process generation and every `llamafactory-cli api` reply, does not return `mm_token_type_ids`.
So the model was trained with one set of image positions and asked with another: the demo's M0
scored 16.7% in-process against 47.3% under vLLM (same checkpoint, inputs, greedy); it copied
"What is 33 + 5?" as "3 + 5:". With this adapter it scores the same as vLLM.

What it does: wraps `get_mm_inputs` of `Qwen2VLPlugin` and of every plugin class derived from it so
that, when a request carries images or videos and the plugin returned no `mm_token_type_ids`, they
are added from the processor's own `create_mm_token_type_ids` (exactly what the processor's
`__call__` returns, and what LLaMA-Factory's Gemma-4 plugin already does). Nothing else changes:
a plugin that already returns them is left alone, and a text-only request gets nothing new.

Where it is installed: `load_chat_model` (every in-process ChatModel of the project: the
huggingface backend, eval, the local ORM) and `python <this file> api <yaml>`, the command the
pipeline starts `llamafactory-cli api` servers with. This file imports nothing from `mathse`, so it
also runs under `serve.python` in an environment of its own.

When it can go: when the pinned LLaMA-Factory's plugin returns `mm_token_type_ids` itself (then
`install` finds it does and wraps nothing, and `tests/model/test_llamafactory_qwen_vl_positions.py` fails to
say so), or
when the project pins a transformers older than 5.3 (LLaMA-Factory 0.9.5 accepts 4.55-5.6, but
checkpoints saved by transformers 5.x do not load in 4.x; see README "Engines"). The cross-engine
test (`tests/model/test_engine_agreement.py`) is what catches a regression either way.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from typing import Any

__all__ = ["install", "load_chat_model", "patched_plugins"]

_MARK = "__mathse_adds_mm_token_type_ids__"


def _family() -> list[type]:
    """Qwen2VLPlugin and every plugin class derived from it, parents first."""
    from llamafactory.data import mm_plugin

    found: list[type] = []
    todo: list[type] = [mm_plugin.Qwen2VLPlugin]
    while todo:
        cls = todo.pop(0)
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return found


def _wrap(original: Any) -> Any:
    signature = inspect.signature(original)

    @functools.wraps(original)
    def get_mm_inputs(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        mm_inputs = original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs).arguments
        processor = bound.get("processor")
        has_media = bool(bound.get("images")) or bool(bound.get("videos"))
        if (
            has_media
            and "mm_token_type_ids" not in mm_inputs
            and callable(getattr(processor, "create_mm_token_type_ids", None))
        ):
            mm_inputs["mm_token_type_ids"] = processor.create_mm_token_type_ids(bound["batch_ids"])
        return mm_inputs

    setattr(get_mm_inputs, _MARK, True)
    return get_mm_inputs


def install() -> list[str]:
    """Wrap the Qwen2-VL family's `get_mm_inputs` (once per process); returns the classes wrapped now."""
    wrapped: list[str] = []
    for cls in _family():
        current = cls.get_mm_inputs  # its own, or the (maybe already wrapped) one it inherits
        if getattr(current, _MARK, False):
            continue
        cls.get_mm_inputs = _wrap(current)
        wrapped.append(cls.__name__)
    return wrapped


def patched_plugins() -> list[str]:
    """The classes of the family whose `get_mm_inputs` adds the ids (after `install`)."""
    return [cls.__name__ for cls in _family() if getattr(cls.get_mm_inputs, _MARK, False)]


def load_chat_model(args: dict[str, Any]) -> Any:
    """`llamafactory.chat.ChatModel(args)` with the adapter installed: the project's only way to build one."""
    install()
    from llamafactory.chat import ChatModel

    return ChatModel(dict(args))


def main(argv: list[str]) -> None:
    """`python llamafactory_qwen_vl_positions.py api <yaml>`: `llamafactory-cli api` with the adapter installed."""
    here = os.path.dirname(os.path.abspath(__file__))
    # Run as a file, its folder is sys.path[0]: mathse's own modules must not shadow any library's.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    install()
    from llamafactory.cli import main as llamafactory_main

    sys.argv = ["llamafactory-cli", *argv]
    llamafactory_main()


if __name__ == "__main__":
    main(sys.argv[1:])
