"""The fake OpenAI server speaks real HTTP/1.1 on 127.0.0.1: routes, keep-alive, faults, CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import pytest

from mathse.testing.openai_server import ALL_FAULTS, FakeHTTPError, FakeOpenAIServer, FaultPlan, last_user_text


def chat_body(text: str = "what is 2 + 2", **extra: Any) -> dict[str, Any]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}], **extra}


def test_chat_completion_shape_and_usage() -> None:
    with FakeOpenAIServer(replies="four is the answer") as server, httpx.Client(base_url=server.base_url) as http:
        response = http.post("/chat/completions", json=chat_body("what is 2 + 2"))
        assert response.status_code == 200
        data = response.json()
        assert data["object"] == "chat.completion"
        assert data["choices"][0]["message"] == {"role": "assistant", "content": "four is the answer"}
        assert data["choices"][0]["finish_reason"] == "stop"
        assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
        assert server.calls == 1
        assert server.requests == [chat_body("what is 2 + 2")]


def test_models_route_404_and_bad_bodies() -> None:
    with FakeOpenAIServer(model_name="m1") as server, httpx.Client(base_url=server.base_url) as http:
        assert http.get("/models").json()["data"][0]["id"] == "m1"
        assert http.get("/nope").status_code == 404
        assert http.post("/chat/completions", content=b"{not json").status_code == 400
        assert http.post("/chat/completions", json={"messages": []}).status_code == 400
        assert http.post("/chat/completions", json=chat_body(stream=True)).status_code == 400
        assert server.calls == 5
        assert server.requests == []  # only valid chat bodies are recorded


def test_scripted_replies_n_choices_and_http_errors() -> None:
    def replies(body: dict[str, Any]) -> str:
        text = last_user_text(body)
        if "forbidden" in text:
            raise FakeHTTPError(400, "no such thing", {"X-Why": "test"})
        return text.upper()

    server = FakeOpenAIServer(replies=replies, record_bodies=False)
    with server, httpx.Client(base_url=server.base_url) as http:
        data = http.post("/chat/completions", json=chat_body("echo me", n=3)).json()
        assert [c["message"]["content"] for c in data["choices"]] == ["ECHO ME"] * 3
        assert data["usage"]["completion_tokens"] == 6
        bad = http.post("/chat/completions", json=chat_body("forbidden fruit"))
        assert bad.status_code == 400
        assert bad.headers["x-why"] == "test"
        assert bad.json()["error"]["message"] == "no such thing"
        assert server.requests == []


def test_image_parts_count_as_prompt_tokens() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    content = [image, {"type": "text", "text": "a b"}]
    body = {"model": "fake-model", "messages": [{"role": "user", "content": content}]}
    with FakeOpenAIServer() as server, httpx.Client(base_url=server.base_url) as http:
        assert http.post("/chat/completions", json=body).json()["usage"]["prompt_tokens"] == 85 + 2
        assert last_user_text(body) == "a b"


def test_keep_alive_reuses_one_connection() -> None:
    connections: list[Any] = []
    with FakeOpenAIServer() as server:
        with httpx.Client(base_url=server.base_url) as http:
            for _ in range(5):
                response = http.post("/chat/completions", json=chat_body())
                connections.append(response.extensions["network_stream"].get_extra_info("client_addr"))
        assert len(set(connections)) == 1
        assert server.calls == 5


def test_fault_plan_is_deterministic_and_validated() -> None:
    plan = FaultPlan(rate=0.3, seed=3)
    first = [plan.fault_for(i)[0] for i in range(2000)]
    assert first == [FaultPlan(rate=0.3, seed=3).fault_for(i)[0] for i in range(2000)]
    assert first != [FaultPlan(rate=0.3, seed=4).fault_for(i)[0] for i in range(2000)]
    faults = [f for f in first if f is not None]
    assert 0.25 < len(faults) / len(first) < 0.35
    assert set(faults) == set(ALL_FAULTS)
    with pytest.raises(ValueError, match="fault kinds"):
        FaultPlan(rate=0.1, kinds=("404",))
    with pytest.raises(ValueError, match="rate"):
        FaultPlan(rate=1.5)


def test_each_fault_kind() -> None:
    def one(kind: str, timeout: float = 5.0) -> httpx.Response:
        plan = FaultPlan(rate=1.0, kinds=(kind,), retry_after_s=2.5, timeout_sleep_s=1.0)
        with FakeOpenAIServer(faults=plan) as server, httpx.Client(base_url=server.base_url, timeout=timeout) as http:
            try:
                return http.post("/chat/completions", json=chat_body())
            finally:
                assert server.calls == 1
                assert server.faults_injected == {kind: 1}

    rate_limited = one("429")
    assert rate_limited.status_code == 429
    assert rate_limited.headers["retry-after"] == "2.5"
    assert one("500").status_code == 500
    malformed = one("malformed")
    assert malformed.status_code == 200
    with pytest.raises((ValueError, KeyError)):
        malformed.json()["choices"]  # either invalid JSON or no choices
    with pytest.raises(httpx.RemoteProtocolError):
        one("disconnect")
    with pytest.raises(httpx.ReadTimeout):
        one("timeout", timeout=0.2)


def test_malformed_fault_produces_both_flavours() -> None:
    plan = FaultPlan(rate=1.0, kinds=("malformed",), seed=1)
    flavours = set()
    with FakeOpenAIServer(faults=plan) as server, httpx.Client(base_url=server.base_url) as http:
        for _ in range(20):
            try:
                flavours.add(
                    "no choices"
                    if "choices" not in http.post("/chat/completions", json=chat_body()).json()
                    else "choices"
                )
            except json.JSONDecodeError:
                flavours.add("invalid json")
    assert flavours == {"no choices", "invalid json"}


def test_sustains_64_concurrent_keep_alive_connections() -> None:
    """64 connections x 3 requests each at 0.2 s latency: an event-loop server needs ~0.6 s."""
    payload = json.dumps(chat_body()).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)

    async def hammer(port: int) -> float:
        # A bare asyncio client, so the figure is the server's, not an HTTP client library's.
        async def worker() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(3):
                writer.write(request)
                await writer.drain()
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                assert head.startswith("HTTP/1.1 200")
                length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
                assert json.loads(await reader.readexactly(length))["choices"]
            writer.close()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(64)))
        return time.perf_counter() - start

    with FakeOpenAIServer(latency_s=0.2, record_bodies=False) as server:
        elapsed = asyncio.run(hammer(server.port))
        assert server.calls == 192
    # Generous for a busy CI box; a server that handled connections one at a time would need 38 s.
    assert elapsed < 2.5, f"64 concurrent connections took {elapsed:.2f} s (ideal 0.6 s)"


def test_calls_counter_is_thread_safe_and_stop_is_clean() -> None:
    server = FakeOpenAIServer().start()
    try:

        def worker() -> None:
            with httpx.Client(base_url=server.base_url) as http:
                for _ in range(10):
                    http.post("/chat/completions", json=chat_body())

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.calls == 40
        assert len(server.requests) == 40
    finally:
        server.stop()
    server.stop()  # idempotent


def test_stop_does_not_wait_for_stalled_requests() -> None:
    plan = FaultPlan(rate=1.0, kinds=("timeout",), timeout_sleep_s=60)
    server = FakeOpenAIServer(faults=plan).start()
    with httpx.Client(base_url=server.base_url, timeout=0.2) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/chat/completions", json=chat_body())
    start = time.perf_counter()
    server.stop()
    assert time.perf_counter() - start < 5


def test_cli_serves_until_terminated() -> None:
    cmd = [sys.executable, "-m", "mathse.testing.openai_server", "--port", "0", "--reply", "hello there", "--quiet"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
            with httpx.Client(base_url=base_url) as http:
                data = http.post("/chat/completions", json=chat_body()).json()
            assert data["choices"][0]["message"]["content"] == "hello there"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_batch_api_routes_lifecycle_outcomes_and_cancel() -> None:
    import openai

    lines = "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                                "body": chat_body(f"question {i}")}) + "\n" for i in range(4)).encode()
    chat = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    with FakeOpenAIServer(replies="yes", batch_outcomes=["errors", "expired", "completed"]) as server:
        sdk = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        upload = sdk.files.create(file=("in.jsonl", lines), purpose="batch")
        assert (upload.purpose, upload.bytes) == ("batch", len(lines))
        assert sdk.files.retrieve(upload.id).filename == "in.jsonl"
        assert sdk.files.content(upload.id).read() == lines

        def run(outcome: str) -> openai.types.Batch:
            batch = sdk.batches.create(input_file_id=upload.id, **chat)
            statuses = [batch.status]
            while statuses[-1] not in ("completed", "expired", "failed", "cancelled"):
                statuses.append((batch := sdk.batches.retrieve(batch.id)).status)
            assert statuses == ["validating", "in_progress", outcome], statuses
            return batch

        def read(file_id: str | None) -> dict[str, dict[str, Any]]:
            text = sdk.files.content(file_id).read().decode() if file_id else ""
            return {row["custom_id"]: row for row in map(json.loads, text.splitlines())}

        errors = run("completed")  # "errors": every other line in the error file
        assert sorted(read(errors.output_file_id)) == ["c0", "c2"]
        assert sorted(read(errors.error_file_id)) == ["c1", "c3"]
        assert read(errors.error_file_id)["c1"]["response"]["status_code"] == 500
        assert read(errors.output_file_id)["c0"]["response"]["body"]["choices"][0]["message"]["content"] == "yes"
        expired = run("expired")  # the first half answered, the rest batch_expired
        assert sorted(read(expired.output_file_id)) == ["c0", "c1"]
        assert read(expired.error_file_id)["c3"]["error"]["code"] == "batch_expired"
        assert expired.request_counts.completed == 2 and expired.request_counts.failed == 2

        server.hold_batches = True
        held = sdk.batches.create(input_file_id=upload.id, **chat)
        assert [sdk.batches.retrieve(held.id).status for _ in range(3)] == ["in_progress"] * 3
        cancelled = sdk.batches.cancel(held.id)
        assert cancelled.status == "cancelled" and len(read(cancelled.error_file_id)) == 4
        assert next(b.id for b in sdk.batches.list()) == held.id  # newest first
        assert sorted(server.batch_answers) == ["c0", "c0", "c1", "c2"]
        with pytest.raises(openai.BadRequestError):
            sdk.batches.create(input_file_id="file-missing", **chat)
        with pytest.raises(openai.NotFoundError):
            sdk.batches.retrieve("batch_missing")
    with pytest.raises(ValueError, match="batch outcomes"):
        FakeOpenAIServer(batch_outcomes=["exploded"])
