"""A stand-in for `llamafactory.chat.ChatModel` (its `achat`), for fast tests of the code around
generation: streaming, concurrency bounds, failures, which model answers what.

The real model is tested too (the tiny model of tests/conftest.py); this one is for the
orchestration tests that would otherwise load a model per case.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathse.run.storage import iter_jsonl

__all__ = ["FakeChatModel", "FakeReply"]


@dataclass
class FakeReply:
    """The fields of LLaMA-Factory's `Response` that MathSE reads."""

    response_text: str
    response_length: int = 3
    prompt_length: int = 10
    finish_reason: str = "stop"


class FakeChatModel:
    """Answers every `achat` call, recording it in `calls` and counting calls in flight.

    `reply(content, call, i)` gives the text of the i-th sequence of the call-th call (1-based;
    default "answer <call>.<i>"); `fail(call)` decides whether that call raises; `delay` seconds
    per call. With `journal_path`, each call records how many rows the file held when it was made
    (to show rows are streamed to disk while later requests are still made).
    """

    def __init__(
        self,
        journal_path: Path | None = None,
        fail: Callable[[int], bool] | None = None,
        delay: float = 0.0,
        reply: Callable[[str, int, int], str] | None = None,
    ) -> None:
        self.journal_path = journal_path
        self.fail = fail or (lambda call: False)
        self.delay = delay
        self.reply = reply or (lambda content, call, i: f"answer {call}.{i}")
        self.calls: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def achat(self, messages: list[dict[str, str]], images: Any = None, **kw: Any) -> list[FakeReply]:
        call = {"content": messages[0]["content"], "n_images": len(images or []), "kw": kw}
        if self.journal_path is not None:
            call["rows_on_disk"] = sum(1 for _ in iter_jsonl(self.journal_path))
        self.calls.append(call)
        index = len(self.calls)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail(index):
                raise RuntimeError("engine hiccup")
            n = kw.get("num_return_sequences", 1)
            return [FakeReply(self.reply(call["content"], index, i)) for i in range(n)]
        finally:
            self.in_flight -= 1
