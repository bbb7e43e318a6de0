"""ChatClient against a real HTTP server on 127.0.0.1: order, streaming, cache, retries, ledger."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import threading
import time
import tracemalloc
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from mathse.api.answer_cache import cache_key
from mathse.api.client import ChatClient
from mathse.api.messages import (
    _LRU,
    ENCODED_CACHE_BYTES,
    ChatRequest,
    ChatResult,
    ImageRef,
    encoder_cache_bytes,
    image_data_url,
    system_message,
    user_message,
    wire_messages,
)
from mathse.api.replies import parse_retry_after
from mathse.run.config import ApiConfig, Price
from mathse.run.errors import FatalEndpointError
from mathse.run.usage import UsageLedger
from mathse.testing.openai_server import FakeHTTPError, FakeOpenAIServer, FaultPlan, last_user_text

MODEL = "fake-model"


def api(server: FakeOpenAIServer, **overrides: Any) -> ApiConfig:
    """Fast-failing settings: tests must not sit in real-world backoffs."""
    settings: dict[str, Any] = {
        "base_url": server.base_url,
        "model": MODEL,
        "concurrency": 8,
        "timeout_s": 5.0,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
    }
    settings.update(overrides)
    return ApiConfig(**settings)


def echo(body: dict[str, Any]) -> str:
    return f"answer to: {last_user_text(body)}"


def batch(n: int, prefix: str = "q") -> list[ChatRequest]:
    return [ChatRequest(key=f"{prefix}{i}", messages=[user_message(f"{prefix} problem {i}")]) for i in range(n)]


@pytest.fixture()
def server() -> Any:
    with FakeOpenAIServer(replies=echo) as srv:
        yield srv


# -- messages -------------------------------------------------------------------------------


def test_user_message_images_first_as_data_urls(tmp_path: Path) -> None:
    png = tmp_path / "fig.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake-png-bytes")
    jpg = tmp_path / "photo.jpg"
    jpg.write_bytes(b"\xff\xd8\xfffake-jpeg")
    message = user_message("Find x.", [png, str(jpg), "https://example.org/a.png", "data:image/gif;base64,R0lG"])
    assert message["role"] == "user"
    parts = message["content"]
    assert [p["type"] for p in parts] == ["image_url"] * 4 + ["text"]
    assert parts[-1]["text"] == "Find x."
    # Local files stay ImageRefs until sent; wire_messages makes the data URLs that go out.
    assert [type(p["image_url"]["url"]) for p in parts[:2]] == [ImageRef, ImageRef]
    urls = [p["image_url"]["url"] for p in wire_messages([message])[0]["content"][:4]]
    assert urls[0] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    assert urls[1].startswith("data:image/jpeg;base64,")
    assert base64.b64decode(urls[1].split(",", 1)[1]) == jpg.read_bytes()
    assert urls[2:] == ["https://example.org/a.png", "data:image/gif;base64,R0lG"]
    assert all("detail" not in p["image_url"] for p in parts[:4])  # "auto" is the API default
    assert user_message("t", [png], detail="low")["content"][0]["image_url"]["detail"] == "low"
    assert user_message("just text") == {"role": "user", "content": "just text"}
    assert system_message("be brief") == {"role": "system", "content": "be brief"}


def test_edited_image_is_re_encoded(tmp_path: Path) -> None:
    png = tmp_path / "fig.png"
    png.write_bytes(b"one")
    first = image_data_url(png)
    assert image_data_url(png) is first  # encoded once, reused
    png.write_bytes(b"two-two")
    assert base64.b64decode(image_data_url(png).split(",", 1)[1]) == b"two-two"


def test_images_reach_the_server(server: FakeOpenAIServer, tmp_path: Path) -> None:
    png = tmp_path / "fig.png"
    png.write_bytes(b"\x89PNG-bytes")
    client = ChatClient(api(server, image_detail="high"), tmp_path / "cache")
    message = client.user_message("What is the area?", [png])
    [result] = client.complete_many_sync([ChatRequest("img", [system_message("sys"), message])])
    assert result.ok and result.text == "answer to: What is the area?"
    sent = server.requests[0]["messages"][1]["content"][0]["image_url"]
    assert sent == {"url": image_data_url(png), "detail": "high"}


def test_requests_hold_no_encoded_images(tmp_path: Path) -> None:
    """Building 200 requests with a 200 KB image each allocates a few bytes per image, not 270 KB:
    an eager build (the base64 in the message) would allocate ~54 MB here."""
    paths = []
    for i in range(200):
        path = tmp_path / f"fig{i}.png"
        path.write_bytes(i.to_bytes(2, "big") * 100_000)
        paths.append(path)
    tracemalloc.start()
    try:
        requests = [ChatRequest(f"k{i}", [user_message(f"q{i}", [p])]) for i, p in enumerate(paths)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, peak
    assert len(requests) == 200


def test_encoder_cache_is_bounded_by_bytes(server: FakeOpenAIServer, tmp_path: Path) -> None:
    """40 distinct 1 MiB images go out (each arrives intact); the encoder cache keeps at most its budget."""
    paths = []
    for i in range(40):
        path = tmp_path / f"big{i}.png"
        path.write_bytes(bytes([i]) * 2**20)
        paths.append(path)
    client = ChatClient(api(server), tmp_path / "cache")
    client.complete_many_sync(ChatRequest(f"k{i}", [user_message(f"q{i}", [p])]) for i, p in enumerate(paths))
    assert 0 < encoder_cache_bytes() <= ENCODED_CACHE_BYTES < 40 * 2**20 * 4 // 3
    sent = {last_user_text(b): b["messages"][0]["content"][0]["image_url"]["url"] for b in server.requests}
    for i, path in enumerate(paths):
        assert base64.b64decode(sent[f"q{i}"].split(",", 1)[1]) == path.read_bytes()


@pytest.mark.parametrize("hash_via_url", [True, False])
def test_image_digest_is_the_data_urls_either_way(tmp_path: Path, monkeypatch, hash_via_url: bool) -> None:
    """Cache keys stay stable: an image hashed through its data URL (kept for the send) or in chunks
    (large images) gives sha256 of the data URL text; the first way leaves the URL in the encoder cache."""
    from mathse.api import messages

    monkeypatch.setattr(messages, "_HASH_VIA_URL_BYTES", 10**9 if hash_via_url else 0)
    monkeypatch.setattr(messages, "_READ_CHUNK", 3 * 1000)  # several chunks
    monkeypatch.setattr(messages, "_DIGESTS", messages._LRU(16))
    monkeypatch.setattr(messages, "_ENCODED", messages._LRU(ENCODED_CACHE_BYTES))
    path = tmp_path / "fig.png"
    path.write_bytes(bytes(range(256)) * 40 + b"tail")
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    assert ImageRef(path).sha256 == hashlib.sha256(url.encode("ascii")).hexdigest()
    assert (encoder_cache_bytes() == len(url)) is hash_via_url


def test_lru_keeps_the_recent_within_budget() -> None:
    lru = _LRU(10)
    lru.put("a", "A", 4)
    lru.put("b", "B", 4)
    assert lru.get("a") == "A"  # a is now the most recent
    lru.put("c", "C", 4)  # over budget: b (least recent) goes
    assert (lru.get("a"), lru.get("b"), lru.get("c"), lru.used) == ("A", None, "C", 8)
    lru.put("huge", "H", 11)  # larger than the whole budget: never kept
    assert lru.get("huge") is None and lru.used == 8


def test_generator_is_consumed_within_the_in_flight_window(tmp_path: Path) -> None:
    """The client takes a request only when the window has room: never all of a long generator
    before the first answers come back (and so never all their images)."""
    concurrency = 2
    window = concurrency * 4 + 16
    taken = 0
    delivered = 0
    ahead: list[int] = []

    def requests() -> Any:
        nonlocal taken
        for i in range(300):
            taken += 1
            ahead.append(taken - delivered)
            yield ChatRequest(f"k{i}", [user_message(f"lazy problem {i}")])

    def seen(result: ChatResult) -> None:
        nonlocal delivered
        delivered += 1

    with FakeOpenAIServer(replies=echo, latency_s=0.005) as server:
        client = ChatClient(api(server, concurrency=concurrency), tmp_path / "cache")
        results = client.complete_many_sync(requests(), on_result=seen, collect=False)
        assert results == [] and delivered == 300 and server.calls == 300
        assert max(ahead) <= window + 1, max(ahead)  # +1: the request being taken
        # A rerun is all cache hits: those take no window, and nothing is sent.
        again = client.complete_many_sync(requests(), progress=None)
        assert server.calls == 300 and all(r.cached for r in again)
        assert [r.text for r in again] == [f"answer to: lazy problem {i}" for i in range(300)]


# -- batches --------------------------------------------------------------------------------


def test_results_in_request_order_and_streamed(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies=echo, latency_s=0.1) as server:
        client = ChatClient(api(server, concurrency=3), tmp_path / "cache")
        seen: list[tuple[str, float]] = []
        requests = batch(9)
        results = client.complete_many_sync(
            requests, on_result=lambda r: seen.append((r.key, time.monotonic())), progress="teacher"
        )
    assert [r.key for r in results] == [r.key for r in requests]
    assert [r.text for r in results] == [f"answer to: q problem {i}" for i in range(9)]
    assert all(r.ok and not r.cached and r.attempts == 1 and r.latency_s >= 0.1 for r in results)
    assert sorted(k for k, _ in seen) == sorted(r.key for r in requests)
    # Streamed as they arrive (3 waves of 0.1 s), not all at the end.
    assert seen[-1][1] - seen[0][1] >= 0.15
    assert server.calls == 9


def test_on_result_errors_propagate_and_answers_stay_cached(server: FakeOpenAIServer, tmp_path: Path) -> None:
    def explode(result: ChatResult) -> None:
        raise OSError("disk full")

    client = ChatClient(api(server, concurrency=1), tmp_path / "cache", UsageLedger(tmp_path / "u.json"))
    with pytest.raises(OSError, match="disk full"):
        client.complete_many_sync(batch(3), on_result=explode)
    assert (tmp_path / "u.json").exists()
    results = client.complete_many_sync(batch(3))
    assert results[0].cached and all(r.ok for r in results)


def test_duplicate_keys_are_rejected(server: FakeOpenAIServer, tmp_path: Path) -> None:
    client = ChatClient(api(server), tmp_path / "cache")
    with pytest.raises(ValueError, match="'same'"):
        client.complete_many_sync([ChatRequest("same", [user_message("a")]), ChatRequest("same", [user_message("b")])])
    assert server.calls == 0


def test_empty_batch(server: FakeOpenAIServer, tmp_path: Path) -> None:
    assert ChatClient(api(server), tmp_path / "cache").complete_many_sync([]) == []


def test_n_choices(server: FakeOpenAIServer, tmp_path: Path) -> None:
    [result] = ChatClient(api(server), tmp_path / "cache").complete_many_sync(
        [ChatRequest("k", [user_message("x")], n=3)]
    )
    assert result.texts == ["answer to: x"] * 3 and result.text == "answer to: x"
    assert server.requests[0]["n"] == 3


def test_sync_wrapper_from_thread_and_from_running_loop(server: FakeOpenAIServer, tmp_path: Path) -> None:
    client = ChatClient(api(server), tmp_path / "cache")
    out: list[list[ChatResult]] = []
    thread = threading.Thread(target=lambda: out.append(client.complete_many_sync(batch(3, "t"))))
    thread.start()
    thread.join()
    assert [r.ok for r in out[0]] == [True] * 3

    async def inside_a_loop() -> list[ChatResult]:
        return client.complete_many_sync(batch(2, "loop"))

    assert all(r.ok for r in asyncio.run(inside_a_loop()))


# -- cache ----------------------------------------------------------------------------------


def test_rerun_is_served_from_cache_without_http(server: FakeOpenAIServer, tmp_path: Path) -> None:
    client = ChatClient(api(server), tmp_path / "cache")
    first = client.complete_many_sync(batch(20))
    assert server.calls == 20
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 20
    assert all(len(f.relative_to(tmp_path / "cache").parts) == 3 for f in files)  # ab/cd/<hash>.json
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    again = ChatClient(api(server), tmp_path / "cache").complete_many_sync(batch(20))
    assert server.calls == 20  # not one HTTP call
    assert [r.text for r in again] == [r.text for r in first]
    assert all(r.cached and r.attempts == 0 for r in again)
    assert [(r.prompt_tokens, r.completion_tokens) for r in again] == [
        (r.prompt_tokens, r.completion_tokens) for r in first
    ]


def test_cache_ignores_base_url_and_key(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies=echo) as one, FakeOpenAIServer(replies="other") as two:
        ChatClient(api(one), tmp_path / "cache").complete_many_sync(batch(3))
        results = ChatClient(api(two, api_key="sk-other"), tmp_path / "cache").complete_many_sync(batch(3))
        assert two.calls == 0
        assert [r.text for r in results] == [f"answer to: q problem {i}" for i in range(3)]


def test_sampling_params_are_part_of_the_cache_key(server: FakeOpenAIServer, tmp_path: Path) -> None:
    message = [user_message("same prompt")]
    client = ChatClient(api(server), tmp_path / "cache")
    variants = [
        ChatRequest("base", message),
        ChatRequest("temp", message, temperature=0.7),
        ChatRequest("len", message, max_tokens=64),
        ChatRequest("n", message, n=2),
        ChatRequest("seed", message, extra={"seed": 1}),
        ChatRequest("salt", message, cache_salt="sample-2"),
    ]
    keys = {cache_key(client.body(r), r.cache_salt) for r in variants}
    top_p = ChatClient(api(server, top_p=0.9), tmp_path / "cache")
    other_model = ChatClient(api(server, model="other-model"), tmp_path / "cache")
    keys |= {cache_key(top_p.body(variants[0])), cache_key(other_model.body(variants[0]))}
    assert len(keys) == len(variants) + 2
    results = client.complete_many_sync(variants)
    assert server.calls == len(variants) and not any(r.cached for r in results)
    assert [b["seed"] for b in server.requests if "seed" in b] == [1]  # extra params are sent
    assert not any("cache_salt" in b for b in server.requests)  # the salt is not
    # Key order and the request's key (the caller's id) do not matter.
    assert cache_key({"b": 1, "a": 2}) == cache_key({"a": 2, "b": 1})
    assert client.body(ChatRequest("x", message)) == client.body(ChatRequest("y", message))


def test_image_bytes_are_part_of_the_cache_key(tmp_path: Path) -> None:
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    one.write_bytes(b"first image")
    two.write_bytes(b"second image")
    key_one = cache_key({"model": MODEL, "messages": [user_message("same text", [one])]})
    assert key_one != cache_key({"model": MODEL, "messages": [user_message("same text", [two])]})
    # A message written to JSON and read back (plain strings) keys the same as a fresh one.
    reloaded = json.loads(json.dumps(wire_messages([user_message("same text", [one])])[0]))
    assert cache_key({"model": MODEL, "messages": [reloaded]}) == key_one


def test_identical_requests_in_one_batch_are_asked_once(server: FakeOpenAIServer, tmp_path: Path) -> None:
    client = ChatClient(api(server), tmp_path / "cache")
    same = [ChatRequest(f"k{i}", [user_message("identical")]) for i in range(4)]
    results = client.complete_many_sync([*same, ChatRequest("salted", [user_message("identical")], cache_salt="1")])
    assert server.calls == 2
    assert [r.cached for r in results] == [False, True, True, True, False]
    assert len({r.text for r in results}) == 1


def test_damaged_cache_entry_is_a_miss(server: FakeOpenAIServer, tmp_path: Path) -> None:
    client = ChatClient(api(server), tmp_path / "cache")
    client.complete_many_sync(batch(1))
    [entry] = list((tmp_path / "cache").rglob("*.json"))
    entry.write_text('{"v": 1, "texts": [', encoding="utf-8")  # e.g. a power cut without fsync
    [result] = client.complete_many_sync(batch(1))
    assert result.ok and not result.cached and server.calls == 2
    assert json.loads(entry.read_text(encoding="utf-8"))["texts"] == [result.text]


# -- faults and retries ---------------------------------------------------------------------


def test_twenty_percent_faults_nothing_lost_nothing_duplicated(tmp_path: Path) -> None:
    plan = FaultPlan(rate=0.2, seed=11, retry_after_s=0.05, timeout_sleep_s=1.5)
    with FakeOpenAIServer(replies=echo, faults=plan, latency_s=0.01) as server:
        cfg = api(server, concurrency=16, timeout_s=0.5, max_retries=2)
        ledger = UsageLedger(tmp_path / "usage.json", {})
        streamed: list[str] = []
        requests = batch(300)
        results = ChatClient(cfg, tmp_path / "cache", ledger, "faults").complete_many_sync(
            requests, on_result=lambda r: streamed.append(r.key)
        )
        calls = server.chat_calls
        injected = dict(server.faults_injected)
    assert set(injected) == {"429", "500", "timeout", "malformed", "disconnect"}
    assert [r.key for r in results] == [r.key for r in requests]
    assert sorted(streamed) == sorted(r.key for r in requests)  # each result streamed exactly once
    for i, r in enumerate(results):
        if r.ok:
            assert r.text == f"answer to: q problem {i}" and r.error is None
        else:
            assert r.text is None and r.error and r.error.endswith("after 2 retries"), r
        assert 1 <= r.attempts <= 3
    assert sum(r.attempts for r in results) == calls  # every HTTP call accounted for, none extra
    failed = [r for r in results if not r.ok]
    assert len(failed) <= 10
    stage = ledger.stage("faults")
    assert (stage["answered"], stage["failures"], stage["calls"]) == (300 - len(failed), len(failed), calls)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("500", "HTTP 500 after 2 retries"),
        ("429", "HTTP 429 after 2 retries"),
        ("malformed", "malformed response after 2 retries"),
        ("timeout", "timeout after 2 retries"),
        ("disconnect", "connection error"),
    ],
)
def test_exhausted_retries_report_the_reason(kind: str, reason: str, tmp_path: Path) -> None:
    plan = FaultPlan(rate=1.0, kinds=(kind,), retry_after_s=0.01, timeout_sleep_s=1.0)
    with FakeOpenAIServer(faults=plan) as server:
        [result] = ChatClient(api(server, timeout_s=0.2, max_retries=2), tmp_path / "c").complete_many_sync(batch(1))
        assert server.calls == 3
    assert not result.ok and result.attempts == 3
    assert result.error is not None and result.error.startswith(reason) and result.error.endswith("after 2 retries")
    assert result.retryable  # a rerun may succeed: callers leave the work unmarked
    assert not list((tmp_path / "c").rglob("*.json"))  # failures are not cached


def test_retry_after_is_respected(tmp_path: Path) -> None:
    state = {"calls": 0}

    def replies(body: dict[str, Any]) -> str:
        state["calls"] += 1
        if state["calls"] == 1:
            raise FakeHTTPError(429, "slow down", {"Retry-After": "1"})
        return "fine"

    with FakeOpenAIServer(replies=replies) as server:
        start = time.monotonic()
        [result] = ChatClient(api(server), tmp_path / "cache").complete_many_sync(batch(1))
        elapsed = time.monotonic() - start
        assert server.calls == 2
    assert result.ok and result.text == "fine" and result.attempts == 2
    assert elapsed >= 1.0
    assert result.latency_s >= 1.0


def test_retry_after_formats() -> None:
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    in_3s = parse_retry_after({"retry-after": formatdate(time.time() + 3, usegmt=True)})
    assert in_3s is not None and 1.5 < in_3s <= 3.0
    assert parse_retry_after({"retry-after": formatdate(time.time() - 60, usegmt=True)}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("status", [400, 422])
def test_client_errors_are_not_retried(status: int, tmp_path: Path) -> None:
    def replies(body: dict[str, Any]) -> str:
        raise FakeHTTPError(status, "image too large")

    with FakeOpenAIServer(replies=replies) as server:
        [result] = ChatClient(api(server), tmp_path / "cache").complete_many_sync(batch(1))
        assert server.calls == 1
    assert not result.ok and result.attempts == 1 and result.status == status
    assert result.error == f"HTTP {status}: image too large"
    assert not result.retryable


@pytest.mark.parametrize("fault", ["key", "model"])
def test_endpoint_refusing_everything_stops_the_batch(fault: str, tmp_path: Path) -> None:
    """A wrong key (401) or model (404) stops after a few calls with one line; nothing cached or lost."""
    with FakeOpenAIServer(replies=echo, api_key="sk-right", models=[MODEL]) as server:
        cfg = api(server, api_key="sk-wrong" if fault == "key" else "sk-right",
                  model=MODEL if fault == "key" else "gpt-typo", concurrency=2)
        seen: list[ChatResult] = []
        with pytest.raises(FatalEndpointError) as info:
            ChatClient(cfg, tmp_path / "cache", stage="distill").complete_many_sync(batch(50), on_result=seen.append)
        message = str(info.value)
        status = 401 if fault == "key" else 404
        assert "\n" not in message and f"HTTP {status}" in message and server.base_url in message
        assert f"(model {cfg.model})" in message and message.startswith("distill: ")
        assert server.calls <= 3 + 2 and len(seen) <= 3 + 2  # the streak, plus what was in flight
        assert not any(r.ok for r in seen)
        # After the fix the same batch is answered in full (no failure was cached).
        fixed = api(server, api_key="sk-right", concurrency=2)
        results = ChatClient(fixed, tmp_path / "cache").complete_many_sync(batch(50))
    assert all(r.ok and not r.cached for r in results)


def test_small_batch_all_unauthorized_is_fatal(tmp_path: Path) -> None:
    with (FakeOpenAIServer(replies=echo, api_key="sk-right") as server,
          pytest.raises(FatalEndpointError, match="HTTP 401 to 2 requests")):
        ChatClient(api(server, api_key="sk-x"), tmp_path / "cache").complete_many_sync(batch(2))


def test_400_for_every_request_is_fatal_but_one_400_is_a_drop(tmp_path: Path) -> None:
    refuse = {"all": True}

    def replies(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        if refuse["all"] or text.endswith(" 3"):
            raise FakeHTTPError(400, "Invalid value for 'max_tokens'" if refuse["all"] else "content policy")
        return echo(body)

    with FakeOpenAIServer(replies=replies) as server:
        cfg = api(server, concurrency=1)
        with pytest.raises(FatalEndpointError, match="HTTP 400 to 3 requests"):
            ChatClient(cfg, tmp_path / "cache").complete_many_sync(batch(20))
        assert server.chat_calls == 3
        refuse["all"] = False
        results = ChatClient(cfg, tmp_path / "cache").complete_many_sync(batch(20))
    assert [r.key for r in results if not r.ok] == ["q3"]
    assert results[3].error == "HTTP 400: content policy"


def test_failed_requests_are_retried_on_rerun(tmp_path: Path) -> None:
    broken = {"on": True}

    def replies(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        if broken["on"] and text.endswith(("1", "3")):
            raise FakeHTTPError(500, "down")
        return f"ok {text}"

    with FakeOpenAIServer(replies=replies) as server:
        cfg = api(server, max_retries=1)
        first = ChatClient(cfg, tmp_path / "cache").complete_many_sync(batch(5))
        assert [r.ok for r in first] == [True, False, True, False, True]
        assert server.calls == 3 + 2 * 2
        broken["on"] = False
        second = ChatClient(cfg, tmp_path / "cache").complete_many_sync(batch(5))
        assert server.calls == 7 + 2  # only the two failed ones were asked again
    assert all(r.ok for r in second)
    assert [r.cached for r in second] == [True, False, True, False, True]


def test_global_pause_after_429_holds_back_other_requests(tmp_path: Path) -> None:
    arrivals: list[float] = []

    def replies(body: dict[str, Any]) -> str:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            raise FakeHTTPError(429, "slow down", {"Retry-After": "0.5"})
        return "ok"

    with FakeOpenAIServer(replies=replies) as server:
        client = ChatClient(api(server, concurrency=1), tmp_path / "cache")
        results = client.complete_many_sync(batch(3))
    assert all(r.ok for r in results)
    assert arrivals[1] - arrivals[0] >= 0.5  # the next request waited for the Retry-After too


# -- ledger ---------------------------------------------------------------------------------


def test_ledger_counts_tokens_cost_and_survives_reload(server: FakeOpenAIServer, tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    prices = {"fake": Price(prompt_per_1m=2.5, completion_per_1m=10.0)}  # prefix of "fake-model"
    ledger = UsageLedger(path, prices)
    client = ChatClient(api(server), tmp_path / "cache", ledger, stage="teacher")
    results = client.complete_many_sync(batch(4))
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    assert prompt == 4 * 3 and completion == 4 * 5  # "q problem i" / "answer to: q problem i"
    expected_cost = (prompt * 2.5 + completion * 10.0) / 1e6
    row = ledger.stage("teacher")
    assert row["calls"] == 4 and row["answered"] == 4 and row["cached"] == 0 and row["failures"] == 0
    assert (row["prompt_tokens"], row["completion_tokens"]) == (prompt, completion)
    assert row["cost_usd"] == pytest.approx(expected_cost)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["stages"]["teacher"][MODEL]["answered"] == 4

    # A resumed run adds to the saved counts; cache hits cost nothing.
    resumed = UsageLedger(path, prices)
    client = ChatClient(api(server), tmp_path / "cache", resumed, stage="teacher")
    client.complete_many_sync([*batch(4), ChatRequest("new", [user_message("one more")])])
    row = UsageLedger(path, prices).stage("teacher")
    assert row["answered"] == 5 and row["cached"] == 4 and row["calls"] == 5
    assert row["prompt_tokens"] == prompt + 2
    line = resumed.summary_line("teacher")
    assert line.startswith("teacher:") and "5 answered" in line and "4 cached" in line and "$" in line
    assert UsageLedger(path, prices).summary_line("judge").startswith("judge: 0 answered")


def test_ledger_unknown_price_and_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "usage.json"
    path.write_text("{broken", encoding="utf-8")
    ledger = UsageLedger(path, {"gpt-4o": Price(prompt_per_1m=1.0)})
    assert (tmp_path / "usage.json.corrupt").exists()
    ledger.record("s", "unpriced-model", ChatResult("k", text="t", prompt_tokens=10, completion_tokens=5, attempts=1))
    ledger.record("s", "gpt-4o-2024-08-06", ChatResult("k2", text="t", prompt_tokens=1_000_000, attempts=1))
    ledger.record("s", "gpt-4o", ChatResult("k3", error="HTTP 500 after 6 retries", attempts=7))
    row = ledger.stage("s")
    assert row["cost_usd"] == pytest.approx(1.0)
    assert (row["answered"], row["failures"], row["calls"]) == (2, 1, 9)
    ledger.save()
    assert json.loads(path.read_text(encoding="utf-8"))["total_cost_usd"] == pytest.approx(1.0)


def test_attempt_counts_match_server_under_mixed_batches(tmp_path: Path) -> None:
    """Cached, duplicate and fresh requests together: attempts sum to the server's calls."""
    with FakeOpenAIServer(replies=echo, faults=FaultPlan(rate=0.3, kinds=("500",), seed=5)) as server:
        client = ChatClient(api(server, max_retries=5), tmp_path / "cache")
        client.complete_many_sync(batch(10))
        before = server.calls
        mixed = [*batch(10), *batch(10, "fresh"), ChatRequest("dup", [user_message("fresh problem 0")])]
        results = client.complete_many_sync(mixed)
        assert sum(r.attempts for r in results) == server.calls - before
    counts = collections.Counter((r.cached, r.ok) for r in results)
    assert counts[(True, True)] == 11 and counts[(False, True)] == 10
