"""Chat requests through OpenAI's Batch API: half the live price, answers within 24 hours.

`ChatClient.complete_many` hands its cache misses here when the endpoint's `mode` is `batch`.
The requests are streamed into JSONL files (``custom_id`` = the request's cache key, so any
answer, whichever batch brings it, lands in the same cache entry the live path reads), split
under the API's limits, uploaded (``files.create(purpose="batch")``) and submitted
(``batches.create``). Every file id and batch id is journaled the moment it exists
(``<cache>/_batches/<stage>/journal.jsonl``): a killed process resumes polling the same batches
and never submits a request twice. Output and error files are streamed back line by line and
joined by ``custom_id`` (their order is not the input's).

Requests a batch did not answer (an expired or cancelled batch's missing lines, a failed batch, a
retryable error line) go into a new batch, or live (``batch.on_failure``); an error no retry
fixes (HTTP 400) is reported on its request. With ``batch.output_file`` the Batch API is not
called: the output of ``vllm run-batch`` is read instead, and what it lacks is written out as
the next input file.

The JSONL formats are `mathse.api.batch_files`. This module sits below the client and never
imports it: what it uses of the client is the `ChatSender` protocol (request bodies, the answer
cache, an HTTP client, sending one request live).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import openai
from tqdm import tqdm

from mathse.api.answer_cache import AnswerCache, cache_key, cached_result
from mathse.api.batch_files import ENDPOINT, BatchOutcome, parse_line, write_request_files
from mathse.api.call_book import CallBook
from mathse.api.messages import ChatRequest, ChatResult
from mathse.run.storage import Journal

if TYPE_CHECKING:
    from mathse.run.config import ApiConfig

__all__ = ["BatchRun", "ChatSender", "complete_in_batches"]

log = logging.getLogger(__name__)

TERMINAL = {"completed", "failed", "expired", "cancelled"}
MANAGE_RETRIES = 5  # files/batches calls are cheap and idempotent to retry, unlike chat calls
MANAGE_TIMEOUT_S = 600.0  # uploads of up to 200 MB


class ChatSender(Protocol):
    """What the Batch API path uses of the client that hands it requests (`ChatClient`)."""

    cfg: ApiConfig
    stage: str
    cache_dir: Path | None
    cache: AnswerCache

    def body(self, request: ChatRequest) -> dict[str, Any]: ...

    def wire_body(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def make_openai(self) -> openai.AsyncOpenAI: ...

    async def send_one(
        self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, request: ChatRequest, body: dict[str, Any]
    ) -> ChatResult: ...


def _describe(err: openai.APIError) -> str:
    """One line naming the Batch API endpoint and the HTTP status (or the connection problem)."""
    request = getattr(err, "request", None)
    where = f"{request.method} {request.url}" if request is not None else "Batch API"
    if isinstance(err, openai.APIStatusError):
        hint = " (no Batch API at this endpoint? then set mode: live)" if err.status_code == 404 else ""
        return f"Batch API {where}: HTTP {err.status_code}: {str(err.message)[:200]}{hint}"
    return f"Batch API {where}: {type(err).__name__}: {str(err)[:200]}"


class BatchRun:
    """One `complete_many` call's cache misses, answered through batches (or a local output file)."""

    def __init__(
        self,
        client: ChatSender,
        wanted: dict[str, int],
        body_of: Callable[[int], dict[str, Any]],
        settle: Callable[[int, ChatResult], None],
        run_live: Callable[[list[int]], Awaitable[None]],
    ) -> None:
        self.client = client
        self.cfg = client.cfg.batch
        self.wanted = wanted  # custom_id (cache key) -> request index, for requests still unanswered
        self.body_of = body_of
        self.settle = settle
        self.run_live = run_live
        self.folder = client.cache_dir / "_batches" / client.stage
        self.reasons: dict[str, str] = {}  # custom_id -> why its last batch did not answer it
        self.stats: Counter[str] = Counter()

    # -- results --

    def take(self, outcome: BatchOutcome) -> None:
        """File one output/error line: an answer is cached and delivered; a lasting error delivered."""
        index = self.wanted.get(outcome.custom_id)
        result = outcome.result
        if result.ok:
            self.stats["answered"] += 1
            if index is None:  # paid for by an earlier run (another request list): keep it all the same
                self.client.cache.put(outcome.custom_id, result)
                return
            del self.wanted[outcome.custom_id]
            self.settle(index, result)
            return
        self.stats["error_lines"] += 1
        if index is None:
            return
        if result.retryable:
            self.reasons[outcome.custom_id] = result.error or "error line"
            return
        del self.wanted[outcome.custom_id]
        self.settle(index, result)

    # -- local teacher: the output of `vllm run-batch` --

    def run_local(self) -> None:
        out_file: Path = self.cfg.output_file  # type: ignore[assignment]
        if out_file.is_file():
            with out_file.open("rb") as handle:
                for number, raw in enumerate(handle, 1):
                    if raw.strip() and (outcome := parse_line(raw)) is not None:
                        self.take(outcome)
                    elif raw.strip():
                        log.warning("%s:%d: not a batch output line, skipped", out_file, number)
        if not self.wanted:
            return
        for old in self.folder.glob("pending-*"):
            old.unlink()
        # One file, whatever its size: vLLM's runner has no per-file limits.
        (pending, _), = write_request_files(self.folder, self._items(), prefix="pending")
        reason = f"not in batch.output_file {out_file}: run `vllm run-batch -i {pending} -o {out_file}`, then rerun"
        log.warning("%d requests %s", len(self.wanted), reason)
        self.stats["missing"] += len(self.wanted)
        for index in sorted(self.wanted.values()):
            self.settle(index, ChatResult(key="", error=reason, retryable=True, batch=True))
        self.wanted.clear()

    def _items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for custom_id, index in sorted(self.wanted.items(), key=lambda kv: kv[1]):
            yield custom_id, self.body_of(index)

    # -- the Batch API --

    async def run(self) -> None:
        if self.cfg.output_file is not None:
            self.run_local()
            return
        base = self.client.make_openai()
        api = base.with_options(max_retries=MANAGE_RETRIES, timeout=max(MANAGE_TIMEOUT_S, self.client.cfg.timeout_s))
        try:
            with Journal(self.folder / "journal.jsonl") as journal:
                resumed = await self._resume(api, journal)
                if resumed:
                    await self._poll(api, journal, resumed)
                submissions = 0
                while self.wanted and submissions <= self.cfg.max_resubmits:
                    if submissions and self.cfg.on_failure == "live":
                        break
                    if submissions:
                        self.stats["resubmitted"] += len(self.wanted)
                    batch_ids = await self._submit(api, journal)
                    submissions += 1
                    await self._poll(api, journal, batch_ids)
        except openai.APIError as err:
            # The SDK's own retries ran out: every journaled batch is polled again by a rerun.
            self._fail_wanted(_describe(err))
        finally:
            await base.close()
        self._finish_leftovers()
        if self.wanted:
            await self.run_live(sorted(self.wanted.values()))

    async def _resume(self, api: openai.AsyncOpenAI, journal: Journal) -> list[str]:
        """Open batches of a killed run that hold requests wanted now (one created but not yet
        journaled included); batches holding none of them are left alone, not waited for."""
        rows = list(journal.values())
        created = {r["file_id"]: r["batch_id"] for r in rows if r["event"] == "created"}
        collected = {r["batch_id"] for r in rows if r["event"] == "collected"}
        uploaded = {r["file_id"]: r.get("time", 0.0) for r in rows if r["event"] == "uploaded"}
        orphans = {f: t for f, t in uploaded.items() if f not in created and self._holds_wanted(f)}
        if orphans:  # killed between upload and journaling the batch: find it, or create it now
            async for batch in api.batches.list(limit=100):  # newest first
                if batch.input_file_id in orphans and batch.input_file_id not in created:
                    created[batch.input_file_id] = batch.id
                    journal.append({"key": f"created:{batch.id}", "event": "created", "batch_id": batch.id,
                                    "file_id": batch.input_file_id})
                if all(f in created for f in orphans) or batch.created_at < min(orphans.values()) - 3600:
                    break
            for file_id in orphans:
                if file_id not in created:
                    created[file_id] = await self._create(api, journal, file_id)
        open_ids = [b for f, b in created.items() if b not in collected and self._holds_wanted(f)]
        if open_ids:
            log.info("%s: resuming %d submitted batches", self.client.stage, len(open_ids))
            self.stats["resumed_batches"] += len(open_ids)
        return open_ids

    def _holds_wanted(self, file_id: str) -> bool:
        """Whether an uploaded file holds a request still wanted (True when its id list is gone)."""
        ids = self.folder / f"{file_id}.ids"
        if not ids.is_file():
            return True
        with ids.open(encoding="utf-8") as handle:
            return any(line.rstrip("\n") in self.wanted for line in handle)

    async def _create(self, api: openai.AsyncOpenAI, journal: Journal, file_id: str) -> str:
        batch = await api.batches.create(
            input_file_id=file_id, endpoint=ENDPOINT, completion_window=self.cfg.completion_window,
            metadata={"mathse_stage": self.client.stage},
        )
        journal.append({"key": f"created:{batch.id}", "event": "created", "batch_id": batch.id, "file_id": file_id})
        self.stats["batches"] += 1
        return batch.id

    async def _submit(self, api: openai.AsyncOpenAI, journal: Journal) -> list[str]:
        """Write, upload and create batches for every wanted request; journal each id at once."""
        batch_ids = []
        limits = (self.cfg.max_requests_per_file, self.cfg.max_bytes_per_file)
        files = write_request_files(self.folder, self._items(), *limits)
        for path, count in files:
            with path.open("rb") as handle:  # a handle, not the path: the SDK would read it all into memory
                upload = await api.files.create(file=handle, purpose="batch")
            path.with_suffix(".ids").replace(self.folder / f"{upload.id}.ids")
            journal.append({"key": f"uploaded:{upload.id}", "event": "uploaded", "file_id": upload.id,
                            "requests": count, "time": time.time()})
            batch_ids.append(await self._create(api, journal, upload.id))
            self.stats["submitted"] += count
            path.unlink()
        return batch_ids

    async def _poll(self, api: openai.AsyncOpenAI, journal: Journal, batch_ids: list[str]) -> None:
        """Poll until every batch is terminal; collect each as soon as it is."""
        open_ids = list(batch_ids)
        shown: dict[str, str] = {}
        bar = tqdm(total=0, desc=f"{self.client.stage} batches", unit="req")
        try:
            while open_ids:
                done = failed = total = 0
                for batch_id in list(open_ids):
                    batch = await api.batches.retrieve(batch_id)
                    counts = batch.request_counts
                    shown[batch_id[-6:]] = batch.status
                    if counts is not None:  # requests done / failed per batch, as the API counts them
                        done, failed, total = done + counts.completed, failed + counts.failed, total + counts.total
                        shown[batch_id[-6:]] += f" {counts.completed}/{counts.total} done, {counts.failed} failed"
                    if batch.status in TERMINAL:
                        await self._collect(api, batch)
                        journal.append({"key": f"collected:{batch_id}", "event": "collected", "batch_id": batch_id,
                                        "status": batch.status})
                        (self.folder / f"{batch.input_file_id}.ids").unlink(missing_ok=True)
                        open_ids.remove(batch_id)
                bar.total = max(bar.total or 0, total)
                bar.n = done + failed
                bar.set_postfix_str("; ".join(f"{k}: {v}" for k, v in shown.items())[:200])
                if open_ids:
                    await asyncio.sleep(self.cfg.poll_interval_s)
        finally:
            bar.close()

    async def _collect(self, api: openai.AsyncOpenAI, batch: Any) -> None:
        """Stream a finished batch's output and error files into the cache and the results."""
        if batch.status != "completed":
            self.stats[batch.status] += 1
            why = f"batch {batch.id} {batch.status}"
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            if errors:
                why += f" ({'; '.join(str(e.message) for e in errors[:3])[:300]})"
            log.warning("%s: %s", self.client.stage, why)
            for custom_id in self.wanted:
                self.reasons.setdefault(custom_id, why)
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            async with api.files.with_streaming_response.content(file_id) as response:
                async for raw in response.iter_lines():
                    if raw.strip() and (outcome := parse_line(raw)) is not None:
                        self.take(outcome)

    def _fail_wanted(self, reason: str | None = None) -> None:
        """Report every unanswered request, with `reason` or why its last batch did not answer it."""
        log.warning("%s: %d requests unanswered by the Batch API%s", self.client.stage, len(self.wanted),
                    f": {reason}" if reason else "")
        self.stats["unanswered"] += len(self.wanted)
        for custom_id, index in sorted(self.wanted.items(), key=lambda kv: kv[1]):
            why = reason or self.reasons.get(custom_id, "no answer in any batch")
            self.settle(index, ChatResult(key="", error=f"{why}; rerun to resume", retryable=True, batch=True))
        self.wanted.clear()

    def _finish_leftovers(self) -> None:
        """Requests no batch answered: sent live (`on_failure: live`) or reported retryable."""
        if not self.wanted:
            return
        if self.cfg.on_failure == "live":
            self.stats["sent_live"] += len(self.wanted)
            return
        self._fail_wanted()

    def summary_line(self) -> str:
        s = self.stats
        parts = [f"{s['batches']} batches submitted ({s['submitted']} requests)", f"{s['answered']} answered"]
        parts += [f"{s[k]} {k.replace('_', ' ')}" for k in
                  ("resumed_batches", "expired", "cancelled", "failed", "error_lines", "resubmitted", "sent_live",
                   "unanswered", "missing") if s[k]]
        return f"{self.client.stage} batch: " + ", ".join(parts)


async def complete_in_batches(client: ChatSender, requests: Iterator[ChatRequest], batch: CallBook) -> None:
    """`ChatClient.complete_many` in `mode: batch`: cache hits delivered at once, the misses
    through the Batch API (`BatchRun`). The misses' requests are kept (their images as unencoded
    `ImageRef`s); each JSONL line is encoded as it is written."""
    misses: dict[int, tuple[ChatRequest, dict[str, Any], str]] = {}  # index -> request, body, digest
    wanted: dict[str, int] = {}  # digest -> index of the miss asked for it
    followers: dict[int, list[tuple[int, str]]] = {}
    for request in requests:
        index = batch.take(request.key)
        body = client.body(request)
        digest = cache_key(body, request.cache_salt)
        if digest in wanted:
            followers.setdefault(wanted[digest], []).append((index, request.key))
        elif (entry := client.cache.get(digest)) is not None:
            batch.deliver(index, cached_result(request.key, entry), digest)
        else:
            wanted[digest], misses[index] = index, (request, body, digest)

    def settle(index: int, result: ChatResult) -> None:
        request, _, digest = misses.pop(index)
        result = replace(result, key=request.key)
        if result.ok:
            client.cache.put(digest, result)
        batch.deliver(index, result, digest)
        for j, key in followers.pop(index, ()):
            twin = replace(result, key=key, attempts=0, latency_s=0.0)
            batch.deliver(j, replace(twin, cached=True) if result.ok else twin)

    async def run_live(indices: list[int]) -> None:
        """Requests no batch answered, with `batch.on_failure: live`: sent as usual."""
        sem = asyncio.Semaphore(max(1, client.cfg.concurrency))
        http = client.make_openai()

        async def one(index: int) -> None:
            request, body, _ = misses[index]
            settle(index, await client.send_one(http, sem, request, body))

        try:
            await asyncio.gather(*(one(i) for i in indices))
        finally:
            await http.close()

    if not wanted:
        return
    run = BatchRun(client, wanted, lambda i: client.wire_body(misses[i][1]), settle, run_live)
    await run.run()
    tqdm.write(run.summary_line())
