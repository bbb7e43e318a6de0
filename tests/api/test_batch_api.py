"""`mode: batch` against the real HTTP Batch API of the test server: files, batches, cache, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from mathse.api.answer_cache import cache_key
from mathse.api.batch_files import parse_line, write_request_files
from mathse.api.client import ChatClient
from mathse.api.messages import ChatRequest, user_message
from mathse.run.config import ApiConfig, Price
from mathse.run.usage import UsageLedger
from mathse.testing.openai_server import FakeHTTPError, FakeOpenAIServer, last_user_text
from tests.conftest import PROJECT_ROOT

MODEL = "gpt-4o"


def api(server: FakeOpenAIServer, mode: str = "batch", **batch: Any) -> ApiConfig:
    return ApiConfig(base_url=server.base_url, model=MODEL, mode=mode, max_retries=1, backoff_base_s=0.01,
                     batch={"poll_interval_s": 0.02, **batch})


def echo(body: dict[str, Any]) -> str:
    return f"answer to: {last_user_text(body)}"


def requests(n: int, prefix: str = "q") -> list[ChatRequest]:
    return [ChatRequest(key=f"{prefix}{i}", messages=[user_message(f"{prefix} problem {i}")]) for i in range(n)]


def uploaded_lines(server: FakeOpenAIServer) -> list[dict[str, Any]]:
    """Every request line of every batch input file the server received."""
    return [json.loads(line) for f in server.files.values() if f["purpose"] == "batch"
            for line in f["_data"].splitlines()]


def test_batch_answers_equal_live_answers_and_share_the_cache(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies=echo) as server:
        live = ChatClient(api(server, mode="live"), tmp_path / "live").complete_many_sync(requests(7))
        batch = ChatClient(api(server), tmp_path / "batch").complete_many_sync(requests(7))
        assert [r.text for r in batch] == [r.text for r in live] and all(r.batch and r.ok for r in batch)
        assert [r.key for r in batch] == [f"q{i}" for i in range(7)]
        # Batch lines: custom_id is the cache key, the body is what live mode would send.
        lines = uploaded_lines(server)
        assert {(line["method"], line["url"]) for line in lines} == {("POST", "/v1/chat/completions")}
        canonical = sorted(json.dumps(line["body"], sort_keys=True) for line in lines)
        assert canonical == sorted(json.dumps(body, sort_keys=True) for body in server.requests)
        assert {line["custom_id"] for line in lines} == {cache_key(b) for b in server.requests}
        # Switching modes never pays twice: a live run on the batch cache makes no call.
        calls = server.chat_calls
        again = ChatClient(api(server, mode="live"), tmp_path / "batch").complete_many_sync(requests(7))
        assert server.chat_calls == calls and all(r.cached for r in again)
        assert [r.text for r in again] == [r.text for r in live]


def test_request_answered_live_is_not_sent_again_in_batch(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies=echo) as server:
        ChatClient(api(server, mode="live"), tmp_path).complete_many_sync(requests(3))
        results = ChatClient(api(server), tmp_path).complete_many_sync(requests(8))
        assert [r.cached for r in results] == [True] * 3 + [False] * 5
        assert sorted(line["body"]["messages"][0]["content"] for line in uploaded_lines(server)) == \
            sorted(f"q problem {i}" for i in range(3, 8))
        assert len(server.batch_answers) == 5
        # And a rerun in batch mode submits nothing at all.
        files = len(server.files)
        assert all(r.cached for r in ChatClient(api(server), tmp_path).complete_many_sync(requests(8)))
        assert len(server.files) == files


def test_files_split_under_request_and_byte_limits(tmp_path: Path) -> None:
    png = tmp_path / "fig.png"
    png.write_bytes(os.urandom(3000))  # base64 images make the size limit bite first
    reqs = [ChatRequest(key=f"i{i}", messages=[user_message(f"image problem {i}", [png])]) for i in range(5)]
    with FakeOpenAIServer(replies=echo) as server:
        results = ChatClient(api(server, max_bytes_per_file=9000), tmp_path / "c").complete_many_sync(reqs)
        sizes = [f["bytes"] for f in server.files.values() if f["purpose"] == "batch"]
        assert all(r.ok for r in results) and len(sizes) == 3 and max(sizes) <= 9000
        results = ChatClient(api(server, max_requests_per_file=2), tmp_path / "d").complete_many_sync(requests(5))
        assert all(r.ok for r in results) and len(server.batches) == 3 + 3
    # The writer streams: a file is finished (and handed out) before the next one is begun.
    items = ((f"id{i}", {"model": "m", "messages": []}) for i in range(5))
    written = []
    for path, count in write_request_files(tmp_path / "w", items, max_requests=2):
        written.append(count)
        assert len(path.read_text().splitlines()) == count
        assert len(list((tmp_path / "w").glob("*.jsonl"))) == len(written)
        first = sum(written) - count
        assert path.with_suffix(".ids").read_text().split() == [f"id{i}" for i in range(first, first + count)]
    assert written == [2, 2, 1]


def test_expired_batch_with_partial_results_loses_nothing(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies=echo, batch_outcomes=["expired"]) as server:
        results = ChatClient(api(server), tmp_path).complete_many_sync(requests(6))
        assert [r.text for r in results] == [f"answer to: q problem {i}" for i in range(6)]
        first, second = server.batches.values()
        assert first["status"] == "expired" and first["request_counts"]["completed"] == 3
        assert second["request_counts"]["total"] == 3  # only the unanswered half is resubmitted
        assert sorted(server.batch_answers) == sorted(set(server.batch_answers)) and len(server.batch_answers) == 6
        assert server.chat_calls == 0


def test_error_lines_go_live_when_configured_and_lasting_errors_are_reported(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies=echo, batch_outcomes=["errors"]) as server:
        results = ChatClient(api(server, on_failure="live"), tmp_path / "a").complete_many_sync(requests(6))
        assert all(r.ok for r in results) and server.chat_calls == 3 and len(server.batch_answers) == 3
        assert sum(r.batch for r in results) == 3  # the others were answered (and billed) live

    def reject(body: dict[str, Any]) -> str:
        if "problem 1" in last_user_text(body):
            raise FakeHTTPError(400, "image too large")
        return echo(body)

    with FakeOpenAIServer(replies=reject) as server:
        results = ChatClient(api(server), tmp_path / "b").complete_many_sync(requests(3))
        assert results[1].error == "batch line HTTP 400: image too large" and not results[1].retryable
        assert results[0].ok and results[2].ok and len(server.batches) == 1  # a 400 is not resubmitted


def test_failed_batch_is_reported_retryable_and_a_rerun_answers(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies=echo, batch_outcomes=["failed"]) as server:
        results = ChatClient(api(server, max_resubmits=0), tmp_path).complete_many_sync(requests(2))
        assert all(not r.ok and r.retryable for r in results)
        assert "failed (injected validation failure)" in results[0].error
        results = ChatClient(api(server), tmp_path).complete_many_sync(requests(2))
        assert all(r.ok for r in results) and len(server.batches) == 2


def test_batch_cancelled_from_outside_is_resubmitted(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies=echo) as server:
        server.hold_batches = True
        results: list[Any] = []
        worker = threading.Thread(target=lambda: results.extend(
            ChatClient(api(server), tmp_path).complete_many_sync(requests(3))))
        worker.start()
        deadline = time.monotonic() + 60
        while not [b for b in server.batches.values() if b["status"] == "in_progress"]:
            assert worker.is_alive() and time.monotonic() < deadline
            time.sleep(0.01)
        first = next(iter(server.batches))
        openai.OpenAI(base_url=server.base_url, api_key="x").batches.cancel(first)  # e.g. from the dashboard
        server.hold_batches = False
        worker.join(60)
        assert [r.text for r in results] == [f"answer to: q problem {i}" for i in range(3)]
        assert [b["status"] for b in server.batches.values()] == ["cancelled", "completed"]


def test_ledger_prices_batch_tokens_at_batch_rates(tmp_path: Path) -> None:
    prices = {MODEL: Price(prompt_per_1m=2.0, completion_per_1m=8.0)}
    with FakeOpenAIServer(replies=echo) as server:
        live_ledger = UsageLedger(tmp_path / "live.json", prices)
        ChatClient(api(server, mode="live"), tmp_path / "a", live_ledger).complete_many_sync(requests(4))
        batch_ledger = UsageLedger(tmp_path / "batch.json", prices)
        ChatClient(api(server), tmp_path / "b", batch_ledger).complete_many_sync(requests(4))
    live, batch = live_ledger.stage("default"), batch_ledger.stage("default")
    assert live["prompt_tokens"] == batch["prompt_tokens"] > 0 and batch["batch_answered"] == 4
    assert batch["cost_usd"] == pytest.approx(live["cost_usd"] / 2) and batch["cost_usd"] > 0
    saved = json.loads((tmp_path / "batch.json").read_text())
    assert saved["total_cost_usd"] == pytest.approx(batch["cost_usd"], abs=1e-6)
    assert "4 answered (4 by Batch API)" in batch_ledger.summary_line("default")
    explicit = Price(prompt_per_1m=2.0, completion_per_1m=8.0, batch_prompt_per_1m=0.5, batch_completion_per_1m=1.0)
    assert explicit.rates(batch=True) == (0.5, 1.0) and explicit.rates(batch=False) == (2.0, 8.0)


CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from mathse.api.client import ChatClient
    from mathse.run.config import ApiConfig
    from mathse.api.messages import ChatRequest, user_message
    cfg = ApiConfig(base_url=sys.argv[1], model="gpt-4o", mode="batch",
                    batch={"poll_interval_s": 0.05, "max_requests_per_file": 3})
    reqs = [ChatRequest(key=f"q{i}", messages=[user_message(f"q problem {i}")]) for i in range(7)]
    results = ChatClient(cfg, Path(sys.argv[2]), stage="distill").complete_many_sync(reqs)
    print(json.dumps([r.text for r in results]))
""")


def test_killed_while_batches_run_resumes_polling_and_submits_nothing_new(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    journal = cache / "_batches" / "distill" / "journal.jsonl"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with FakeOpenAIServer(replies=echo) as server:
        server.hold_batches = True  # batches stay in progress until the client is dead
        cmd = [sys.executable, "-c", CHILD, server.base_url, str(cache)]
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (journal.is_file() and journal.read_text().count('"created"') == 3
                   and all(b["status"] == "in_progress" for b in server.batches.values())):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        files, batches = len(server.files), len(server.batches)
        server.hold_batches = False
        rerun = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        assert json.loads(rerun.stdout.splitlines()[-1]) == [f"answer to: q problem {i}" for i in range(7)]
        assert (len(server.files) - files, len(server.batches)) == (3, batches)  # only the 3 output files are new
        assert "3 resumed batches" in rerun.stderr + rerun.stdout
        assert sorted(server.batch_answers) == sorted(set(server.batch_answers)) and server.chat_calls == 0


def test_upload_journaled_but_batch_not_is_found_or_created_not_resubmitted(tmp_path: Path) -> None:
    """Killed between files.create and journaling batches.create: the rerun never uploads again."""
    with FakeOpenAIServer(replies=echo) as server:
        cfg = api(server)
        client = ChatClient(cfg, tmp_path)
        folder = tmp_path / "_batches" / "default"
        bodies = [(cache_key(client.body(r)), client.body(r)) for r in requests(2)]
        (path, _), = write_request_files(folder, bodies)
        sdk = openai.OpenAI(base_url=server.base_url, api_key="x")
        upload = sdk.files.create(file=path, purpose="batch")
        sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        with (folder / "journal.jsonl").open("a") as journal:  # the batch was created, not journaled
            journal.write(json.dumps({"key": f"uploaded:{upload.id}", "event": "uploaded", "file_id": upload.id,
                                      "requests": 2}) + "\n")
        results = client.complete_many_sync(requests(3))
        assert all(r.ok for r in results) and len(server.batches) == 2  # the found one + one for q2
        assert len(server.batch_answers) == 3


def test_open_batch_of_other_requests_is_not_waited_for(tmp_path: Path) -> None:
    """A killed run's batch holding none of the requests wanted now (a changed prompt) does not block."""
    with FakeOpenAIServer(replies=echo) as server:
        client = ChatClient(api(server), tmp_path)
        folder = tmp_path / "_batches" / "default"
        old = [(cache_key(client.body(r)), client.body(r)) for r in requests(2, prefix="old")]
        (path, _), = write_request_files(folder, old)
        sdk = openai.OpenAI(base_url=server.base_url, api_key="x")
        upload = sdk.files.create(file=path, purpose="batch")
        stale = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        server.batches[stale.id]["_hold"] = True  # it would never finish
        path.with_suffix(".ids").rename(folder / f"{upload.id}.ids")
        with (folder / "journal.jsonl").open("a") as journal:
            for row in ({"event": "uploaded", "file_id": upload.id, "requests": 2, "key": f"uploaded:{upload.id}"},
                        {"event": "created", "file_id": upload.id, "batch_id": stale.id, "key": f"created:{stale.id}"}):
                journal.write(json.dumps(row) + "\n")
        results = client.complete_many_sync(requests(2))
        assert all(r.ok for r in results) and server.batches[stale.id]["status"] == "validating"  # never polled
        # A run that wants the old requests does wait for that batch, and submits nothing new.
        server.batches[stale.id]["_hold"] = False
        batches = len(server.batches)
        assert all(r.ok for r in ChatClient(api(server), tmp_path).complete_many_sync(requests(2, prefix="old")))
        assert len(server.batches) == batches and server.batches[stale.id]["status"] == "completed"


def test_local_output_file_from_vllm_run_batch(tmp_path: Path) -> None:
    out_file = tmp_path / "vllm_out.jsonl"
    with FakeOpenAIServer(replies=echo) as server:
        cfg = api(server, output_file=str(out_file))
        first = ChatClient(cfg, tmp_path / "cache").complete_many_sync(requests(3))
        assert all(not r.ok and r.retryable and "vllm run-batch -i" in r.error for r in first)
        pending = tmp_path / "cache" / "_batches" / "default" / "pending-0.jsonl"
        assert len(pending.read_text().splitlines()) == 3 and len(server.files) == 0  # no API call
        # What `vllm run-batch -i pending -o out_file` writes: here the server's own batch output.
        sdk = openai.OpenAI(base_url=server.base_url, api_key="x")
        upload = sdk.files.create(file=pending, purpose="batch")
        job = sdk.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        while (job := sdk.batches.retrieve(job.id)).status != "completed":
            pass
        out_file.write_bytes(sdk.files.content(job.output_file_id).read())
        results = ChatClient(cfg, tmp_path / "cache").complete_many_sync(requests(3))
        assert [r.text for r in results] == [f"answer to: q problem {i}" for i in range(3)]
        assert all(r.batch and not r.cached for r in results)


def test_parse_line_shapes() -> None:
    ok = {"custom_id": "a", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1}}}, "error": None}
    outcome = parse_line(json.dumps(ok))
    assert outcome.custom_id == "a" and outcome.result.text == "hi" and outcome.result.prompt_tokens == 3
    expired = {"custom_id": "b", "response": None, "error": {"code": "batch_expired", "message": "expired"}}
    assert parse_line(json.dumps(expired)).result.retryable
    server_error = {"custom_id": "c", "response": {"status_code": 503, "body": {"error": {"message": "busy"}}}}
    assert parse_line(json.dumps(server_error)).result.error == "batch line HTTP 503: busy"
    assert parse_line("not json") is None and parse_line("{}") is None


def test_endpoint_without_batch_api_fails_every_request_with_one_clear_line(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies=echo) as server:
        cfg = api(server).model_copy(update={"base_url": server.base_url + "/no-batch"})
        results = ChatClient(cfg, tmp_path).complete_many_sync(requests(2))
    assert all(not r.ok and r.retryable for r in results)
    assert results[0].error.startswith(f"Batch API POST {server.base_url}/no-batch/files: HTTP 404")
    assert "set mode: live" in results[0].error and "\n" not in results[0].error
