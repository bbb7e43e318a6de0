"""What of a published model response is the model's reply to the asked question, before any answer is read.

Published outputs carry more than the reply:

* raw end-of-sequence / end-of-turn tokens (``</s>``, ``<|im_end|>``, ``<|eot_id|>`` ...) that a
  tokenizer left in: the reply ends at the first one (an engine would have stopped there), and
  what follows (often an invented next turn) is not read; markers at the very start are dropped;
* invented follow-up questions with their own answers ("Question: ... Answer: 7" after the
  reply): `reply_parts` splits them off, so the first complete answer to the asked question counts.
"""

from __future__ import annotations

import itertools
import re

__all__ = ["END_MARKERS", "reply_parts", "strip_end_markers"]

# Tokenizer end markers seen in published outputs (Llama 2/Mistral, ChatML/Qwen, Llama 3, Gemma, Phi, DeepSeek).
END_MARKERS = (
    "</s>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>",
    "<eos>", "<｜end▁of▁sentence｜>", "<|im_start|>", "<|start_header_id|>", "<start_of_turn>", "<|user|>",
)  # fmt: skip
_END_RE = re.compile("|".join(re.escape(m) for m in END_MARKERS))
# A new question the model made up: "Question: ...", "Q2:", "### Problem", "Human:", "User:" at a line start.
_FOLLOW_UP_RE = re.compile(
    r"^[ \t>*]*(?:(?:new|next|another|follow-?up)\s+)?(?:question|problem|q|human|user|exercise)\s*\d*\s*\**\s*[:：]"
    r"|^[ \t]*#+\s*(?:question|problem|exercise)\b",
    re.IGNORECASE | re.MULTILINE,
)


def strip_end_markers(text: str) -> str:
    """The text up to the first end marker (markers opening the text are skipped first)."""
    rest = text
    while True:
        stripped = rest.lstrip()
        match = _END_RE.match(stripped)
        if not match:
            break
        rest = re.sub(r"^(?:assistant|model)[ \t]*(?:<\|end_header_id\|>)?[ \t]*\n", "", stripped[match.end() :])
    found = _END_RE.search(rest)
    return rest[: found.start()] if found else rest


def reply_parts(text: str) -> list[str]:
    """The reply split at each invented follow-up question: [the reply proper, follow-up 1, ...].

    A question line at the very start is the model restating the task, not a follow-up.
    """
    starts = [m.start() for m in _FOLLOW_UP_RE.finditer(text) if text[: m.start()].strip()]
    bounds = [0, *starts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds) if text[a:b].strip()]
