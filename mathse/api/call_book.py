"""Bookkeeping of one `ChatClient.complete_many` call, shared by its live and Batch API paths.

`CallBook` keeps the call's request order, refuses a key twice, and delivers each result: into
the returned list, to the usage ledger (saved every `LEDGER_SAVE_EVERY_S`), to the caller's
`on_result`, and to the progress bar. `FatalWatch` tells a per-request failure (one refused
prompt) from an endpoint, model or key that refuses everything, and stops the call with a
`FatalEndpointError` once the pattern is unmistakable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mathse.api.messages import ChatResult
from mathse.run.errors import FatalEndpointError
from mathse.run.usage import UsageLedger

__all__ = ["CONFIG_STATUSES", "FATAL_STREAK", "LEDGER_SAVE_EVERY_S", "CallBook", "FatalWatch"]

LEDGER_SAVE_EVERY_S = 30.0  # a killed run loses at most this much bookkeeping (answers are cached)
# Statuses that say the endpoint, model or key is wrong: no request of the batch can succeed.
CONFIG_STATUSES = {401, 403, 404}
# This many requests in a row failing with one such status (or with a 400 before any success)
# stop the batch: paying for, or dropping, the rest would only lose data to a config mistake.
FATAL_STREAK = 3


class FatalWatch:
    """Tells a per-request failure (one refused prompt) from an endpoint that refuses everything."""

    def __init__(self, stage: str, base_url: str, model: str) -> None:
        self.stage = stage
        self.base_url = base_url
        self.model = model
        self.answered = 0  # HTTP successes in this batch
        self.seen = 0  # requests sent in this batch that came back
        self.streak = 0
        self.status: int | None = None
        self.message = ""

    def observe(self, result: ChatResult) -> None:
        """Account one sent request; raise FatalEndpointError once the pattern is unmistakable."""
        self.seen += 1
        if result.ok:
            self.answered += 1
            self.streak = 0
            return
        status = result.status
        # A 400 is a per-request refusal unless every request gets it: only before any success.
        if status in CONFIG_STATUSES or (status == 400 and self.answered == 0):
            self.streak = self.streak + 1 if status == self.status else 1
            self.status, self.message = status, result.error or ""
            if self.streak >= FATAL_STREAK:
                self.fail()
        else:
            self.streak = 0

    def finish(self) -> None:
        """A batch smaller than the streak whose every request got a config status is fatal too."""
        if self.status in CONFIG_STATUSES and 0 < self.streak == self.seen:
            self.fail()

    def fail(self) -> None:
        assert self.status is not None
        message = self.message.removeprefix(f"HTTP {self.status}: ")
        raise FatalEndpointError(self.stage, self.base_url, self.model, self.status, message, self.streak)


class CallBook:
    """The bookkeeping of one `complete_many` call: order, duplicate keys, delivery, ledger."""

    def __init__(
        self,
        *,
        ledger: UsageLedger | None,
        stage: str,
        model: str,
        on_result: Callable[[ChatResult], None] | None,
        bar: Any,
        collect: bool,
        cached: bool,
    ) -> None:
        """`ledger`, `stage`, `model`: where and under which names results are accounted;
        `cached`: whether the client has an answer cache (then it, not this book, serves twins)."""
        self.ledger = ledger
        self.stage = stage
        self.model = model
        self.on_result = on_result
        self.bar = bar
        self.collect = collect
        self.results: list[ChatResult | None] = []
        self.seen: set[str] = set()  # keys: a few dozen bytes a request, no messages or images
        self.count = 0
        # digest -> index of its answer, for identical requests after it: only when collecting
        # without an answer cache (with one, the cache serves them and nothing is held here).
        self.by_digest: dict[str, int] = {}
        self.track_digests = collect and not cached
        self.last_save = time.monotonic()

    def take(self, key: str) -> int:
        """The index of the next request; a key seen before in this batch is a caller bug."""
        if key in self.seen:
            raise ValueError(f"duplicate request key in one batch: {key!r}")
        self.seen.add(key)
        if self.collect:
            self.results.append(None)
        self.count += 1
        return self.count - 1

    def answered(self, digest: str) -> ChatResult | None:
        """An earlier answer in this batch to an identical request (see `by_digest`)."""
        index = self.by_digest.get(digest)
        result = self.results[index] if index is not None else None
        return result if result is not None and result.ok else None

    def deliver(self, index: int, result: ChatResult, digest: str | None = None) -> None:
        """Hand result `index` to the list, the ledger, `on_result` and the progress bar."""
        if self.collect:
            self.results[index] = result
            if digest is not None and result.ok and self.track_digests:
                self.by_digest.setdefault(digest, index)
        if self.ledger is not None:
            self.ledger.record(self.stage, self.model, result)
            if time.monotonic() - self.last_save > LEDGER_SAVE_EVERY_S:
                self.ledger.save()
                self.last_save = time.monotonic()
        if self.on_result is not None:
            self.on_result(result)
        self.bar.update(1)
