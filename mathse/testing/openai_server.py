"""A real OpenAI-compatible chat-completions HTTP server on 127.0.0.1, for tests, benchmarks, demos.

It runs in a background thread with its own asyncio event loop and a minimal HTTP/1.1 keep-alive
parser (stdlib only). One event loop instead of a thread per connection matters: with 64
keep-alive connections and 0.5 s latency, a threaded server spends its time switching threads
and fighting the client for the GIL, and the client then measures the server, not itself.

Replies are scripted (a fixed string or a function of the request body), and faults can be
injected deterministically per (seed, call index): 429 with Retry-After, 500, a stall longer than
the client's timeout, a malformed body, a dropped connection. Configuration errors are answered
as OpenAI does: with `api_key` set, a request without that bearer key gets 401; with `models`
set, a request for another model gets 404 (both attributes may be changed while serving, to
"fix" the endpoint mid-test).

It also serves the Batch API: ``/v1/files`` (upload, retrieve, content) and ``/v1/batches``
(create, retrieve, list, cancel). A batch goes validating -> in_progress -> a terminal status, one
step per retrieve (``batch_polls`` retrieves in progress; none while ``hold_batches`` is set).
``batch_outcomes`` scripts the batches in creation order: "completed", "errors" (every other line
in the error file as HTTP 500), "expired" (the first half answered, the rest `batch_expired`
lines), "failed" (validation failed, no line answered).

    with FakeOpenAIServer(replies="The final answer is \\boxed{4}", latency_s=0.5) as server:
        ...  # point an OpenAI client at server.base_url

CLI: ``python -m mathse.testing.openai_server --port 8000 --latency 0.5 --reply "..."``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from mathse.testing.fake_batch_api import BATCH_OUTCOMES, BatchRoutes
from mathse.testing.fake_http import FakeHTTPError, Response, error_response

__all__ = [
    "ALL_FAULTS",
    "BATCH_OUTCOMES",
    "FakeHTTPError",
    "FakeOpenAIServer",
    "FaultPlan",
    "count_words",
    "last_user_text",
    "token_logprobs",
]

ALL_FAULTS: tuple[str, ...] = ("429", "500", "timeout", "malformed", "disconnect")
DEFAULT_REPLY = "Step 1: Compute 2 + 2 = 4.\nThe final answer is \\boxed{4}"
IMAGE_TOKENS = 85  # what OpenAI bills a low-detail image; keeps the fake usage plausible

Replies = Callable[[dict[str, Any]], str] | str
# (request body, reply text) -> OpenAI `logprobs.content` for that reply, or None for no logprobs.
Logprobs = Callable[[dict[str, Any], str], list[dict[str, Any]] | None]

_TOKEN_RE = re.compile(r"\s*(?:\w+|[^\w\s])")


def token_logprobs(text: str, p_true: float | None = None, top: int = 2) -> list[dict[str, Any]]:
    """`text` cut into word/punctuation tokens with OpenAI-style log-probabilities.

    Every token is certain (logprob 0) except, when `p_true` is given, a "true"/"false" token right
    after `"correct":`, where the alternatives " true" (p_true) and " false" (1 - p_true) are listed
    in `top_logprobs`: what a real ORM server returns for the verdict's deciding token.
    """
    entries: list[dict[str, Any]] = []
    seen = ""
    for match in _TOKEN_RE.finditer(text):
        token = match.group(0)
        word = token.strip().lower()
        entry: dict[str, Any] = {"token": token, "logprob": 0.0, "top_logprobs": [{"token": token, "logprob": 0.0}]}
        if p_true is not None and word in ("true", "false") and re.search(r'correct"?\s*:\s*$', seen):
            p = p_true if word == "true" else 1.0 - p_true
            alts = [(" true", p_true), (" false", 1.0 - p_true)][:top]
            entry = {
                "token": token,
                "logprob": math.log(max(p, 1e-12)),
                "top_logprobs": [{"token": t, "logprob": math.log(max(q, 1e-12))} for t, q in alts],
            }
        entries.append(entry)
        seen += token
    return entries


@dataclass(frozen=True)
class FaultPlan:
    """Inject faults into a fraction `rate` of chat calls, chosen deterministically per call index."""

    rate: float = 0.0
    kinds: Sequence[str] = ALL_FAULTS
    seed: int = 0
    retry_after_s: float = 1.0  # sent as Retry-After on injected 429s
    timeout_sleep_s: float = 30.0  # a "timeout" stalls this long: set it above the client's timeout

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in ALL_FAULTS]
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds must be a non-empty subset of {ALL_FAULTS}, got {list(self.kinds)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be in [0, 1], got {self.rate}")

    def fault_for(self, index: int) -> tuple[str | None, random.Random]:
        """The fault (or None) for chat call number `index`, and the call's own RNG."""
        # One RNG per call, seeded from (seed, index): the plan does not depend on arrival timing.
        rng = random.Random(self.seed * 1_000_003 + index)
        if rng.random() < self.rate:
            return self.kinds[rng.randrange(len(self.kinds))], rng
        return None, rng


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message of a chat request (handy in scripted `replies`)."""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def count_words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(body: dict[str, Any]) -> int:
    tokens = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        tokens += count_words(_text_of(content))
        if isinstance(content, list):
            tokens += IMAGE_TOKENS * sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")
    return tokens


class FakeOpenAIServer(BatchRoutes):
    """OpenAI chat-completions over real HTTP on 127.0.0.1, in a background thread."""

    def __init__(
        self,
        replies: Replies = DEFAULT_REPLY,
        latency_s: float = 0.0,
        faults: FaultPlan | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        record_bodies: bool = True,
        model_name: str = "fake-model",
        api_key: str | None = None,
        models: Sequence[str] | None = None,
        logprobs: Logprobs | None = None,
        batch_outcomes: Sequence[str] = (),
        batch_polls: int = 1,
    ) -> None:
        """`logprobs`: the token log-probabilities of a reply, sent when a request asks for them
        (`"logprobs": true`); default: `token_logprobs(reply)` (every token certain)."""
        self.replies = replies
        self.logprobs = logprobs
        self.latency_s = latency_s
        self.faults = faults
        self.host = host
        self.port = port
        self.record_bodies = record_bodies
        self.model_name = model_name
        self.api_key = api_key  # when set, requests must carry "Authorization: Bearer <api_key>"
        self.models = models  # when set, the only model names served; others get 404
        self.requests: list[dict[str, Any]] = []  # received chat bodies, when record_bodies
        self.faults_injected: dict[str, int] = {}
        self._lock = threading.Lock()
        self._calls = 0
        self._chat_calls = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        unknown = [o for o in batch_outcomes if o not in BATCH_OUTCOMES]
        if unknown:
            raise ValueError(f"batch outcomes must be in {BATCH_OUTCOMES}, got {unknown}")
        self.batch_outcomes = list(batch_outcomes)  # per batch, in creation order; then "completed"
        self.batch_polls = batch_polls
        self.hold_batches = False  # while True, batches stay in progress (a test kills the client then)
        self.files: dict[str, dict[str, Any]] = {}  # id -> file object, with its bytes under "_data"
        self.batches: dict[str, dict[str, Any]] = {}  # id -> batch object, with private "_" fields
        self.batch_answers: list[str] = []  # custom_ids answered in batches (each one paid for)
        self._ids = itertools.count(1)

    # -- public ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def calls(self) -> int:
        """HTTP requests received so far (all routes), counted when a request is fully read."""
        with self._lock:
            return self._calls

    @property
    def chat_calls(self) -> int:
        with self._lock:
            return self._chat_calls

    def start(self) -> FakeOpenAIServer:
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._run, name="FakeOpenAIServer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"FakeOpenAIServer failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- event loop --------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # surfaced to start() if it happens before ready
            self._error = err
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, self.port, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            # Handlers may be mid-sleep (latency, timeout faults): cancel them, do not wait.
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                keep_alive = headers.get("connection", "").lower() != "close"
                response = await self._dispatch(method, path, body, headers)
                if response.disconnect:
                    break
                writer.write(self._serialize(response, keep_alive))
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # client went away or sent garbage: just drop the connection
        except asyncio.CancelledError:
            pass  # server stopping: end quietly (a cancelled handler makes asyncio log a traceback)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # clean close between requests
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers expected
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(chunks)
        else:
            body = b""
        return method, target.split("?", 1)[0], headers, body

    @staticmethod
    def _serialize(response: Response, keep_alive: bool) -> bytes:
        phrase = HTTPStatus(response.status).phrase
        lines = [
            f"HTTP/1.1 {response.status} {phrase}",
            "Content-Type: application/json",
            f"Content-Length: {len(response.payload)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.payload

    # -- routes ------------------------------------------------------------------------------

    async def _dispatch(self, method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> Response:
        headers = headers or {}
        with self._lock:
            self._calls += 1
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return error_response(401, "Incorrect API key provided (fake server)")
        path = path.rstrip("/")
        if "/files" in path or "/batches" in path:
            with self._lock:
                return self._batch_api(method, path.split("/v1", 1)[-1], body, headers)
        if path.endswith("/chat/completions"):
            if method != "POST":
                return error_response(405, "use POST")
            return await self._chat(body)
        if path.endswith("/models"):
            model = {"id": self.model_name, "object": "model", "created": 0, "owned_by": "mathse"}
            data = {"object": "list", "data": [model]}
            return Response(200, json.dumps(data).encode())
        return error_response(404, f"no route {method} {path}")

    async def _chat(self, raw: bytes) -> Response:
        with self._lock:
            index = self._chat_calls
            self._chat_calls += 1
        try:
            body = json.loads(raw)
        except ValueError:
            return error_response(400, "request body is not valid JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body.get("model"):
            return error_response(400, "'model' and 'messages' are required")
        if body.get("stream"):
            return error_response(400, "streaming is not supported by the fake server")
        if self.record_bodies:
            with self._lock:
                self.requests.append(body)
        if self.models is not None and body["model"] not in self.models:
            return error_response(404, f"The model `{body['model']}` does not exist or you do not have access to it.")

        fault, rng = self.faults.fault_for(index) if self.faults else (None, None)
        if fault is not None:
            with self._lock:
                self.faults_injected[fault] = self.faults_injected.get(fault, 0) + 1
        if fault == "429":  # rate limiters answer at once
            return error_response(429, "rate limited (injected)", {"Retry-After": f"{self.faults.retry_after_s:g}"})  # type: ignore[union-attr]
        if fault == "timeout":
            await asyncio.sleep(self.faults.timeout_sleep_s)  # type: ignore[union-attr]
        elif self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if fault == "disconnect":
            return Response(0, b"", disconnect=True)
        if fault == "500":
            return error_response(500, "internal error (injected)")
        if fault == "malformed":
            if rng is not None and rng.random() < 0.5:
                return Response(200, b'{"id": "chatcmpl-broken", "choices": [')
            return Response(200, json.dumps({"id": "chatcmpl-broken", "object": "chat.completion"}).encode())

        try:
            data = self._completion(body, f"chatcmpl-fake-{index}")
        except FakeHTTPError as err:
            return error_response(err.status, err.message, err.headers)
        return Response(200, json.dumps(data).encode())

    def _completion(self, body: dict[str, Any], completion_id: str) -> dict[str, Any]:
        """The chat completion for a request body; FakeHTTPError when it is to fail."""
        n = int(body.get("n") or 1)
        texts: list[str] = []
        try:
            for _ in range(n):
                texts.append(self.replies(body) if callable(self.replies) else self.replies)
        except FakeHTTPError:
            raise
        except Exception as err:  # a bug in a scripted reply: show it to the client
            raise FakeHTTPError(500, f"replies callable failed: {err!r}") from err
        want_logprobs = bool(body.get("logprobs"))
        try:
            logprobs = [self._logprobs(body, t) if want_logprobs else None for t in texts]
        except Exception as err:  # a bug in a scripted logprobs function: show it to the client
            raise FakeHTTPError(500, f"logprobs callable failed: {err!r}") from err
        completion_tokens = sum(count_words(t) for t in texts)
        prompt_tokens = _prompt_tokens(body)
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": t},
                    "finish_reason": "stop",
                    "logprobs": None if logprobs[i] is None else {"content": logprobs[i]},
                }
                for i, t in enumerate(texts)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def _logprobs(self, body: dict[str, Any], text: str) -> list[dict[str, Any]] | None:
        if self.logprobs is not None:
            return self.logprobs(body, text)
        return token_logprobs(text)

def main(argv: Sequence[str] | None = None) -> None:
    """Serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Fake OpenAI chat-completions server (for tests and demos).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--reply", default=DEFAULT_REPLY, help="fixed reply text")
    parser.add_argument("--fault-rate", type=float, default=0.0)
    parser.add_argument("--fault-kinds", default=",".join(ALL_FAULTS))
    parser.add_argument("--fault-seed", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--quiet", action="store_true", help="do not print the call count every 10 s")
    args = parser.parse_args(argv)
    faults = None
    if args.fault_rate > 0:
        kinds = tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip())
        faults = FaultPlan(rate=args.fault_rate, kinds=kinds, seed=args.fault_seed, retry_after_s=args.retry_after)
    server = FakeOpenAIServer(
        replies=args.reply, latency_s=args.latency, faults=faults, port=args.port, host=args.host, record_bodies=False
    )
    with server:
        print(f"serving OpenAI chat completions at {server.base_url}", flush=True)
        try:
            while True:
                time.sleep(10)
                if not args.quiet:
                    print(f"calls: {server.calls}", flush=True)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
