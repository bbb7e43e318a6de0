"""One client layer for OpenAI-compatible chat completions (teacher, served ORM, LLM judge).

Every call goes through `ChatClient.complete_many`: bounded concurrency, retries with exponential
backoff and full jitter (429, 5xx, timeouts, dropped connections, malformed bodies; Retry-After
honoured), an on-disk answer cache so a rerun never pays twice, and a usage ledger (tokens, USD).
A request never raises and is never lost: it comes back answered or failed with a reason.
With ``mode: batch`` the cache misses go through OpenAI's Batch API instead (`mathse.batch_api`).

The cache is one small JSON file per answered request, ``cache_dir/ab/cd/<sha256>.json``, written
to a temp file and renamed into place: safe when killed at any instant, and safe with several
processes or nodes on one shared filesystem (no locks, no database; the worst case is two writers
storing the same answer). The key is a sha256 of the canonical JSON of everything that decides the
answer (model, messages with their image bytes, sampling parameters) and nothing that does not
(base_url, api_key), so a result cached against one server is reused against a mirror of it.

    client = ChatClient(cfg.teacher, cache_dir=out / "api_cache", ledger=ledger, stage="distill")
    requests = [ChatRequest(key=p.id, messages=[system_message(sys_prompt), client.user_message(p.question, p.images)])
                for p in problems]
    for result in client.complete_many_sync(requests, on_result=journal_it, progress="teacher"):
        ...  # result.text, or result.error (the reason) when it failed
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import hashlib
import importlib
import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai
from tqdm import tqdm

from mathse.messages import ChatRequest, ChatResult, user_message
from mathse.usage import UsageLedger

if TYPE_CHECKING:
    from mathse.config import ApiConfig

__all__ = ["CACHE_VERSION", "ChatClient", "cache_key"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the cached entry format or key recipe changes
LEDGER_SAVE_EVERY_S = 30.0  # a killed run loses at most this much bookkeeping (answers are cached)
RETRY_AFTER_CAP_S = 600.0  # never let one odd header park a worker for hours
# Besides 429 and 5xx: request timeout and conflict are transient too (OpenAI's SDK retries them).
RETRYABLE_4XX = {408, 409, 429}


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _url_digest(url: str) -> str:
    digest = getattr(url, "sha256", None)  # a DataURL from user_message: hashed when encoded
    return digest if digest is not None else hashlib.sha256(url.encode("utf-8")).hexdigest()


def _key_messages(messages: list[dict[str, Any]]) -> list[Any]:
    """The messages with each inline image (data URL) replaced by its sha256.

    Same identity as hashing the image bytes, without serializing megabytes of base64 into the
    canonical JSON for every request.
    """
    out: list[Any] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts = []
            for part in content:
                image_url = part.get("image_url") if isinstance(part, dict) else None
                url = image_url.get("url") if isinstance(image_url, dict) else None
                if isinstance(url, str) and url.startswith("data:"):
                    part = {**part, "image_url": {**image_url, "url": "sha256:" + _url_digest(url)}}
                parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out


def cache_key(body: dict[str, Any], salt: str | None = None) -> str:
    """sha256 of the canonical JSON of a request body (plus salt): the answer cache key."""
    view = {**body, "messages": _key_messages(body.get("messages") or [])}
    digest = hashlib.sha256(_canonical({"v": CACHE_VERSION, "body": view, "salt": salt}))
    return digest.hexdigest()


class _Failure(Exception):
    """An attempt that did not produce an answer; `retry` says whether another try may help."""

    def __init__(self, reason: str, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.retry_after = retry_after


def _parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from Retry-After (seconds or an HTTP date) or retry-after-ms; None if absent."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(err.message)[:300]


def _parse_completion(content: bytes) -> tuple[list[str], str | None, int, int]:
    """texts, finish_reason, prompt_tokens, completion_tokens from a response body."""
    try:
        data = json.loads(content)
        choices = data["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError("no choices")
        messages = [c["message"] for c in choices]
    except (ValueError, KeyError, TypeError) as err:
        raise _Failure("malformed response", retry=True) from err
    texts = [m.get("content") if isinstance(m, dict) else None for m in messages]
    finish = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
    if not all(isinstance(t, str) for t in texts):
        # A refusal or content filter: deterministic, so paying for retries would not help.
        refusal = messages[0].get("refusal") if isinstance(messages[0], dict) else None
        detail = f", refusal: {str(refusal)[:200]}" if refusal else ""
        raise _Failure(f"no content (finish_reason={finish}{detail})", retry=False)
    usage = data.get("usage") or {}
    return texts, finish, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


# -- the client ------------------------------------------------------------------------------


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
        cache_dir: Path,
        ledger: UsageLedger | None = None,
        stage: str = "default",
    ) -> None:
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self.ledger = ledger
        self.stage = stage
        self._made_dirs: set[str] = set()
        self._pause_until = 0.0  # loop time before which no request is sent (a 429's Retry-After)
        self._response_cls = _httpx_module().Response

    # -- messages and bodies --

    def user_message(self, text: str, images: Sequence[str | Path] = ()) -> dict[str, Any]:
        """`user_message` with this endpoint's image detail setting."""
        return user_message(text, images, detail=self.cfg.image_detail)

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

    # -- cache --

    def _cache_path(self, digest: str) -> Path:
        return self.cache_dir / digest[:2] / digest[2:4] / f"{digest}.json"

    def _cache_get(self, digest: str) -> dict[str, Any] | None:
        try:
            with open(self._cache_path(digest), "rb") as handle:
                entry = json.loads(handle.read())
            if entry.get("v") == CACHE_VERSION and entry["texts"]:
                return entry
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # a damaged entry is a miss; the fresh answer overwrites it
        return None

    def _cache_put(self, digest: str, result: ChatResult) -> None:
        path = self._cache_path(digest)
        folder = str(path.parent)
        entry = {
            "v": CACHE_VERSION,
            "model": self.cfg.model,
            "texts": result.texts,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "created": time.time(),
        }
        # Unique temp name per process and write, so writers on several nodes never collide.
        tmp = f"{folder}/.{digest}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            if folder not in self._made_dirs:
                os.makedirs(folder, exist_ok=True)
                self._made_dirs.add(folder)
            with open(tmp, "wb") as handle:
                handle.write(_canonical(entry))
            # No fsync: a kill cannot tear the renamed file, and an entry damaged by a power cut
            # reads as a miss and is simply asked again; fsync per answer is slow on NFS.
            os.replace(tmp, path)
        except OSError as err:
            log.warning("could not write cache entry %s: %s", path, err)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _from_cache(self, key: str, entry: dict[str, Any]) -> ChatResult:
        texts = list(entry["texts"])
        return ChatResult(
            key=key,
            text=texts[0],
            prompt_tokens=int(entry.get("prompt_tokens") or 0),
            completion_tokens=int(entry.get("completion_tokens") or 0),
            cached=True,
            texts=texts,
            finish_reason=entry.get("finish_reason"),
        )

    # -- HTTP --

    def _make_openai(self) -> openai.AsyncOpenAI:
        httpx_mod = _httpx_module()
        concurrency = max(1, self.cfg.concurrency)
        http_client = openai.DefaultAsyncHttpxClient(
            # One kept-alive connection per slot: fewer would reconnect all the time; more would
            # sit idle and cost the pool a liveness probe each on every request.
            limits=httpx_mod.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            timeout=httpx_mod.Timeout(self.cfg.timeout_s),
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
    ) -> tuple[list[str], str | None, int, int]:
        try:
            # The raw POST skips the SDK's request transform and response models (a third of its
            # per-call CPU); the body is already plain JSON and we parse the answer ourselves.
            response = await client.post(
                "/chat/completions", body=body, cast_to=self._response_cls, options={"timeout": self.cfg.timeout_s}
            )
            content = response.content
        except openai.APITimeoutError as err:
            raise _Failure("timeout", retry=True) from err
        except openai.APIConnectionError as err:
            cause = err.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
            raise _Failure(f"connection error ({detail[:200]})", retry=True) from err
        except openai.APIStatusError as err:
            status = err.status_code
            if status in RETRYABLE_4XX or status >= 500:
                retry_after = _parse_retry_after(err.response.headers) if status in (429, 503) else None
                raise _Failure(f"HTTP {status}", retry=True, retry_after=retry_after) from err
            raise _Failure(f"HTTP {status}: {_error_message(err)}", retry=False) from err
        return _parse_completion(content)

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^(attempt-1))]."""
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * (2 ** (attempt - 1)))
        return random.uniform(0.0, cap)

    async def _one(
        self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, request: ChatRequest, body: dict[str, Any]
    ) -> ChatResult:
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
                    texts, finish, p_tok, c_tok = await self._attempt(client, body)
                    return ChatResult(
                        key=request.key,
                        text=texts[0],
                        prompt_tokens=p_tok,
                        completion_tokens=c_tok,
                        attempts=attempts,
                        latency_s=loop.time() - start,
                        texts=texts,
                        finish_reason=finish,
                    )
                except _Failure as err:
                    failure = err
                except Exception as err:  # never raise out of a batch: report it on the request
                    failure = _Failure(f"unexpected error: {type(err).__name__}: {str(err)[:200]}", retry=False)
            if not failure.retry or attempts >= max_attempts:
                reason = failure.reason
                if failure.retry:
                    reason = f"{reason} after {attempts - 1} retries"
                return ChatResult(key=request.key, error=reason, attempts=attempts, latency_s=loop.time() - start,
                                  retryable=failure.retry)
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
    ) -> list[ChatResult]:
        """Run a batch; results in request order. `on_result` sees each result as it arrives."""
        requests = list(requests)
        seen: set[str] = set()
        for request in requests:
            if request.key in seen:
                raise ValueError(f"duplicate request key in one batch: {request.key!r}")
            seen.add(request.key)

        results: list[ChatResult | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=progress, unit="call", disable=True if progress is None else None)
        last_save = time.monotonic()

        def deliver(index: int, result: ChatResult) -> None:
            nonlocal last_save
            results[index] = result
            if self.ledger is not None:
                self.ledger.record(self.stage, self.cfg.model, result)
                if time.monotonic() - last_save > LEDGER_SAVE_EVERY_S:
                    self.ledger.save()
                    last_save = time.monotonic()
            if on_result is not None:
                on_result(result)
            bar.update(1)

        # Identical requests in one batch are asked once; the others get the answer as a cache
        # hit, exactly what a rerun would give them.
        bodies: dict[int, dict[str, Any]] = {}
        digests: dict[int, str] = {}
        first: dict[str, int] = {}
        followers: dict[int, list[int]] = {}
        pending: list[int] = []
        try:
            for i, request in enumerate(requests):
                body = self.body(request)
                digest = cache_key(body, request.cache_salt)
                if digest in first:
                    followers.setdefault(first[digest], []).append(i)
                    continue
                first[digest] = i
                entry = self._cache_get(digest)
                if entry is not None:
                    deliver(i, self._from_cache(request.key, entry))
                else:
                    bodies[i], digests[i] = body, digest
                    pending.append(i)
            for lead, others in followers.items():
                if results[lead] is not None:  # the lead was a cache hit
                    for j in others:
                        deliver(j, replace(results[lead], key=requests[j].key, cached=True, attempts=0, latency_s=0.0))

            if pending and self.cfg.mode == "batch":
                await self._run_batch(requests, pending, bodies, digests, followers, deliver)
            elif pending:
                await self._run_pending(requests, pending, bodies, digests, followers, deliver)
        finally:
            bar.close()
            if self.ledger is not None:
                self.ledger.save()
        missing = [requests[i].key for i, r in enumerate(results) if r is None]
        if missing:  # cannot happen unless there is a bug above; never return a short list
            raise RuntimeError(f"internal error: no result for {missing[:5]}")
        return results  # type: ignore[return-value]

    async def _run_pending(
        self,
        requests: list[ChatRequest],
        pending: list[int],
        bodies: dict[int, dict[str, Any]],
        digests: dict[int, str],
        followers: dict[int, list[int]],
        deliver: Callable[[int, ChatResult], None],
    ) -> None:
        concurrency = max(1, self.cfg.concurrency)
        sem = asyncio.Semaphore(concurrency)
        done: asyncio.Queue[tuple[int, ChatResult]] = asyncio.Queue()
        # A bounded window of live tasks keeps memory flat for 100k-request batches; it is wider
        # than the semaphore so requests sleeping in backoff do not leave connections idle.
        window = concurrency * 4 + 16
        tasks: set[asyncio.Task[None]] = set()
        client = self._make_openai()

        async def run(index: int) -> None:
            result = await self._one(client, sem, requests[index], bodies.pop(index))
            done.put_nowait((index, result))

        next_pos = 0

        def spawn() -> None:
            nonlocal next_pos
            while next_pos < len(pending) and len(tasks) < window:
                task = asyncio.create_task(run(pending[next_pos]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_pos += 1

        try:
            spawn()
            for _ in range(len(pending)):
                index, result = await done.get()
                self._settle(requests, digests, followers, deliver, index, result)
                spawn()
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    def _settle(
        self,
        requests: list[ChatRequest],
        digests: dict[int, str],
        followers: dict[int, list[int]],
        deliver: Callable[[int, ChatResult], None],
        index: int,
        result: ChatResult,
    ) -> None:
        """Cache a fresh answer and deliver it to its request and to identical ones of the batch."""
        if result.ok:
            self._cache_put(digests[index], result)
        deliver(index, result)
        for j in followers.get(index, ()):
            if result.ok:
                deliver(j, replace(result, key=requests[j].key, cached=True, attempts=0, latency_s=0.0))
            else:
                deliver(j, replace(result, key=requests[j].key, attempts=0))

    async def _run_batch(
        self,
        requests: list[ChatRequest],
        pending: list[int],
        bodies: dict[int, dict[str, Any]],
        digests: dict[int, str],
        followers: dict[int, list[int]],
        deliver: Callable[[int, ChatResult], None],
    ) -> None:
        """`mode: batch`: the cache misses through the Batch API (see mathse.batch_api)."""
        from mathse.batch_api import BatchRun  # it builds on this module

        def settle(index: int, result: ChatResult) -> None:
            self._settle(requests, digests, followers, deliver, index, replace(result, key=requests[index].key))

        async def run_live(indices: list[int]) -> None:
            await self._run_pending(requests, indices, bodies, digests, followers, deliver)

        run = BatchRun(self, {digests[i]: i for i in pending}, bodies.__getitem__, settle, run_live)
        await run.run()
        tqdm.write(run.summary_line())

    def complete_many_sync(
        self,
        requests: Iterable[ChatRequest],
        on_result: Callable[[ChatResult], None] | None = None,
        progress: str | None = None,
    ) -> list[ChatResult]:
        """`complete_many` from synchronous code (any thread; also inside a running loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.complete_many(requests, on_result, progress))
        # This thread already runs a loop (a notebook, an async caller): use a helper thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, self.complete_many(requests, on_result, progress)).result()
