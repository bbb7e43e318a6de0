"""One client layer for OpenAI-compatible chat completions (teacher, served ORM, LLM judge).

Every call goes through `ChatClient.complete_many`: bounded concurrency, retries with exponential
backoff and full jitter (429, 5xx, timeouts, dropped connections, malformed bodies; Retry-After
honoured), an on-disk answer cache so a rerun never pays twice, and a usage ledger (tokens, USD).
A request never raises and is never lost: it comes back answered or failed with a reason.
With ``mode: batch`` the cache misses go through OpenAI's Batch API instead (`mathse.api.batch_api`).
The answer cache (one JSON file per answer, keyed by the request's sha256) is
`mathse.api.answer_cache`; the per-call bookkeeping (order, delivery, ledger, the watch that stops
a call to a misconfigured endpoint) is `mathse.api.call_book`.

    client = ChatClient(cfg.teacher, cache_dir=out / "api_cache", ledger=ledger, stage="distill")
    requests = (ChatRequest(key=p.id, messages=[system_message(sys_prompt), client.user_message(p.question, p.images)])
                for p in problems)  # a generator: taken as the in-flight window has room
    for result in client.complete_many_sync(requests, on_result=journal_it, progress="teacher"):
        ...  # result.text, or result.error (the reason) when it failed

Memory does not grow with the batch: requests are built as they are taken, their images (an
`ImageRef` each) encoded only when sent, and with `collect=False` no result is kept.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
from tqdm import tqdm

from mathse.api.answer_cache import AnswerCache, cache_key, cached_result
from mathse.api.batch_api import complete_in_batches
from mathse.api.call_book import CallBook, FatalWatch
from mathse.api.messages import ChatRequest, ChatResult, ImagePrep, user_message, wire_messages
from mathse.api.replies import (
    RETRYABLE_4XX,
    ReplyFailure,
    error_message,
    parse_completion,
    parse_retry_after,
)
from mathse.run.errors import FatalEndpointError
from mathse.run.usage import UsageLedger

if TYPE_CHECKING:
    from mathse.run.config import ApiConfig

__all__ = ["ChatClient", "FatalEndpointError"]

log = logging.getLogger(__name__)

RETRY_AFTER_CAP_S = 600.0  # never let one odd header park a worker for hours


def _httpx_module() -> Any:
    """The httpx flavour the installed openai SDK is built on (httpx for 1.x, httpx2 later)."""
    for klass in openai.DefaultAsyncHttpxClient.__mro__:
        root = klass.__module__.split(".")[0]
        if root.startswith("httpx"):
            return importlib.import_module(root)
    return importlib.import_module("httpx")


class ChatClient:
    """Batches of chat completions against one OpenAI-compatible endpoint, cached and accounted."""

    def __init__(
        self,
        cfg: ApiConfig,
        cache_dir: Path | None,
        ledger: UsageLedger | None = None,
        stage: str = "default",
        transport: Any = None,
        images: ImagePrep | None = None,
    ) -> None:
        """`cache_dir` None: no answer cache (the caller's journal is the record, e.g. student paths).
        `transport`: an httpx transport, e.g. model.replica_router.ReplicaRouter spreading requests over replicas.
        `images`: how this endpoint's model wants its images (a model the pipeline serves: as in training)."""
        self.cfg = cfg
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.transport = transport
        self.images = images
        self.ledger = ledger
        self.stage = stage
        self.cache = AnswerCache(self.cache_dir, cfg.model)
        self._pause_until = 0.0  # loop time before which no request is sent (a 429's Retry-After)
        self._response_cls = _httpx_module().Response

    # -- messages and bodies --

    def user_message(self, text: str, images: Sequence[str | Path] = ()) -> dict[str, Any]:
        """`user_message` with this endpoint's image detail setting."""
        return user_message(text, images, detail=self.cfg.image_detail, prep=self.images)

    def body(self, request: ChatRequest) -> dict[str, Any]:
        """The chat-completions request body (what is sent, and what the cache key covers)."""
        cfg = self.cfg
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": request.messages,
            "temperature": cfg.temperature if request.temperature is None else request.temperature,
            "max_tokens": cfg.max_tokens if request.max_tokens is None else request.max_tokens,
        }
        if cfg.top_p is not None:
            body["top_p"] = cfg.top_p
        if request.n is not None and request.n != 1:
            body["n"] = request.n
        if request.extra:
            body.update(request.extra)
        return body

    @staticmethod
    def wire_body(body: dict[str, Any]) -> dict[str, Any]:
        """`body` as it goes on the wire: images encoded as data URLs (done per send, not per build)."""
        return {**body, "messages": wire_messages(body["messages"])}

    # -- HTTP --

    def make_openai(self) -> openai.AsyncOpenAI:
        httpx_mod = _httpx_module()
        concurrency = max(1, self.cfg.concurrency)
        http_client = openai.DefaultAsyncHttpxClient(
            # One kept-alive connection per slot: fewer would reconnect all the time; more would
            # sit idle and cost the pool a liveness probe each on every request.
            limits=httpx_mod.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=httpx_mod.Timeout(self.cfg.timeout_s),
            transport=self.transport,
        )
        api_key = self.cfg.api_key.get_secret_value() if self.cfg.api_key is not None else ""
        return openai.AsyncOpenAI(
            base_url=self.cfg.base_url,
            api_key=api_key or "EMPTY",  # local servers accept anything, the SDK insists on one
            max_retries=0,  # we retry ourselves: one policy, and every attempt is counted
            timeout=self.cfg.timeout_s,
            http_client=http_client,
        )

    async def _attempt(
        self, client: openai.AsyncOpenAI, body: dict[str, Any]
    ) -> tuple[list[str], str | None, int, int, list[dict[str, Any]] | None]:
        try:
            # The raw POST skips the SDK's request transform and response models (a third of its
            # per-call CPU); the body is already plain JSON and we parse the answer ourselves.
            response = await client.post(
                "/chat/completions",
                body=self.wire_body(body),
                cast_to=self._response_cls,
                options={"timeout": self.cfg.timeout_s},
            )
            content = response.content
        except openai.APITimeoutError as err:
            raise ReplyFailure("timeout", retry=True) from err
        except openai.APIConnectionError as err:
            cause = err.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
            raise ReplyFailure(f"connection error ({detail[:200]})", retry=True) from err
        except openai.APIStatusError as err:
            status = err.status_code
            if status in RETRYABLE_4XX or status >= 500:
                retry_after = parse_retry_after(err.response.headers) if status in (429, 503) else None
                raise ReplyFailure(f"HTTP {status}", retry=True, retry_after=retry_after, status=status) from err
            raise ReplyFailure(f"HTTP {status}: {error_message(err)}", retry=False, status=status) from err
        return parse_completion(content)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^(attempt-1))]."""
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2 ** (attempt - 1)))
        return random.uniform(0.0, cap)

    async def send_one(
        self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, request: ChatRequest, body: dict[str, Any]
    ) -> ChatResult:
        """One request over `client`: retried with backoff (and Retry-After), never raising."""
        loop = asyncio.get_running_loop()
        start = 0.0  # set when first sent: time queued behind the semaphore is not latency
        attempts = 0
        max_attempts = self.cfg.max_retries + 1
        while True:
            async with sem:
                if attempts == 0:
                    start = loop.time()
                # A 429 with Retry-After pauses every request of this client, not just its own.
                while (wait := self._pause_until - loop.time()) > 0:
                    await asyncio.sleep(wait)
                attempts += 1
                try:
                    texts, finish, p_tok, c_tok, logprobs = await self._attempt(client, body)
                    return ChatResult(
                        key=request.key,
                        text=texts[0],
                        prompt_tokens=p_tok,
                        completion_tokens=c_tok,
                        attempts=attempts,
                        latency_s=loop.time() - start,
                        texts=texts,
                        finish_reason=finish,
                        logprobs=logprobs,
                    )
                except ReplyFailure as err:
                    failure = err
                except Exception as err:  # never raise out of a batch: report it on the request
                    failure = ReplyFailure(f"unexpected error: {type(err).__name__}: {str(err)[:200]}", retry=False)
            if not failure.retry or attempts >= max_attempts:
                reason = failure.reason
                if failure.retry:
                    reason = f"{reason} after {attempts - 1} retries"
                return ChatResult(
                    key=request.key,
                    error=reason,
                    attempts=attempts,
                    latency_s=loop.time() - start,
                    retryable=failure.retry,
                    status=failure.status,
                )
            delay = self._backoff(attempts)
            if failure.retry_after is not None:
                retry_after = min(failure.retry_after, RETRY_AFTER_CAP_S)
                delay = max(delay, retry_after)
                if failure.reason == "HTTP 429":
                    self._pause_until = max(self._pause_until, loop.time() + retry_after)
            log.debug("%s: %s, retry %d in %.2fs", request.key, failure.reason, attempts, delay)
            await asyncio.sleep(delay)  # outside the semaphore: a waiting request holds no slot

    # -- batches --

    async def complete_many(
        self,
        requests: Iterable[ChatRequest],
        on_result: Callable[[ChatResult], None] | None = None,
        progress: str | None = None,
        collect: bool = True,
        total: int | None = None,
    ) -> list[ChatResult]:
        """Run a batch; results in request order. `on_result` sees each result as it arrives.

        `requests` is consumed lazily: a request is taken from it only when the in-flight window
        has room (cache hits do not count), so a generator of 100K requests is never all in memory,
        and its images are encoded only when it is sent. `collect=False` keeps no results (the
        caller's `on_result` journals them) and returns []; memory then stays flat however long
        the batch. `total`: the batch size for the progress bar when `requests` has no len().
        """
        if total is None and isinstance(requests, Sized):
            total = len(requests)
        bar = tqdm(total=total, desc=progress, unit="call", disable=True if progress is None else None)
        batch = CallBook(
            ledger=self.ledger, stage=self.stage, model=self.cfg.model, on_result=on_result, bar=bar,
            collect=collect, cached=self.cache_dir is not None,
        )
        try:
            if self.cfg.mode == "batch":
                await complete_in_batches(self, iter(requests), batch)
            else:
                await self._run_batch(iter(requests), batch)
        finally:
            bar.close()
            if self.ledger is not None:
                self.ledger.save()
        if not collect:
            return []
        missing = [i for i, r in enumerate(batch.results) if r is None]
        if missing:  # cannot happen unless there is a bug below; never return a short list
            raise RuntimeError(f"internal error: no result for requests {missing[:5]}")
        return batch.results  # type: ignore[return-value]

    async def _run_batch(self, requests: Iterator[ChatRequest], batch: CallBook) -> None:
        concurrency = max(1, self.cfg.concurrency)
        sem = asyncio.Semaphore(concurrency)
        done: asyncio.Queue[tuple[int, ChatResult]] = asyncio.Queue()
        # The window of requests taken but not answered yet: it bounds the requests (and so the
        # encoded images) alive at once. Wider than the semaphore so that requests sleeping in
        # backoff do not leave connections idle.
        window = concurrency * 4 + 16
        tasks: set[asyncio.Task[None]] = set()
        client: openai.AsyncOpenAI | None = None
        watch = FatalWatch(self.stage, self.cfg.base_url, self.cfg.model)
        # Identical requests in one batch are asked once: a request whose twin is in flight waits
        # for its answer and gets it as a cache hit, exactly what a rerun would give it.
        leads: dict[str, int] = {}  # digest -> index of the request in flight with it
        followers: dict[int, list[tuple[int, str]]] = {}  # lead index -> (index, key) of its twins
        keys: dict[int, str] = {}  # index -> key, while in flight
        digests: dict[int, str] = {}
        in_flight = 0
        exhausted = False

        async def run(index: int, request: ChatRequest, body: dict[str, Any]) -> None:
            done.put_nowait((index, await self.send_one(client, sem, request, body)))

        try:
            while True:
                while not exhausted and in_flight < window:
                    request = next(requests, None)
                    if request is None:
                        exhausted = True
                        break
                    index = batch.take(request.key)
                    body = self.body(request)
                    digest = cache_key(body, request.cache_salt)
                    lead = leads.get(digest)
                    if lead is not None:
                        followers.setdefault(lead, []).append((index, request.key))
                        continue
                    earlier = batch.answered(digest)
                    entry = self.cache.get(digest) if earlier is None else None
                    if earlier is not None:
                        batch.deliver(index, replace(earlier, key=request.key, cached=True, attempts=0, latency_s=0.0))
                    elif entry is not None:
                        batch.deliver(index, cached_result(request.key, entry), digest)
                    else:
                        if client is None:
                            client = self.make_openai()
                        leads[digest], keys[index], digests[index] = index, request.key, digest
                        task = asyncio.create_task(run(index, request, body))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        in_flight += 1
                if in_flight == 0:
                    break
                index, result = await done.get()
                in_flight -= 1
                digest = digests.pop(index)
                del leads[digest], keys[index]
                if result.ok:
                    self.cache.put(digest, result)
                batch.deliver(index, result, digest)
                for j, key in followers.pop(index, ()):
                    if result.ok:
                        batch.deliver(j, replace(result, key=key, cached=True, attempts=0, latency_s=0.0))
                    else:
                        batch.deliver(j, replace(result, key=key, attempts=0))
                watch.observe(result)  # raises to stop the batch; the finally cancels the rest
            watch.finish()
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if client is not None:
                await client.close()

    def complete_many_sync(
        self,
        requests: Iterable[ChatRequest],
        on_result: Callable[[ChatResult], None] | None = None,
        progress: str | None = None,
        collect: bool = True,
        total: int | None = None,
    ) -> list[ChatResult]:
        """`complete_many` from synchronous code (any thread; also inside a running loop)."""
        batch = self.complete_many(requests, on_result, progress, collect=collect, total=total)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(batch)
        # This thread already runs a loop (a notebook, an async caller): use a helper thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, batch).result()
