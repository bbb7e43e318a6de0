"""Throughput of the chat client: N calls at concurrency C against a fake server with latency L.

The ideal rate is C / L (every slot always busy, zero overhead); the figure that matters is the
achieved / ideal ratio, i.e. how much the client (SDK, retries, cache, ledger) costs per call.
Even a free client cannot reach 1.0: the last partial wave of calls leaves slots idle
(2000 calls at 64 in flight: 31.25 waves, so at most 0.977).

By default the FakeOpenAIServer runs in its own process, as a real server would: in a thread of
the benchmark's process it would compete with the client for the GIL, which production never
does (--server thread measures that setup too).

    python benchmarks/bench_api_calls.py --calls 2000 --concurrency 64 --latency 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from mathse.api.client import ChatClient
from mathse.api.messages import ChatRequest, user_message
from mathse.run.config import ApiConfig, Price
from mathse.run.usage import UsageLedger
from mathse.testing.openai_server import FakeOpenAIServer


def run_batch(base_url: str, calls: int, concurrency: int, tag: str) -> tuple[float, float, int]:
    """Wall seconds and process CPU seconds for `calls` uncached calls at `concurrency`, and how many were answered."""
    cfg = ApiConfig(base_url=base_url, model="fake-model", concurrency=concurrency, max_retries=2)
    with tempfile.TemporaryDirectory(prefix="mathse-bench-") as tmp:
        ledger = UsageLedger(Path(tmp) / "usage.json", {"fake-model": Price(prompt_per_1m=2.5, completion_per_1m=10)})
        client = ChatClient(cfg, cache_dir=Path(tmp) / "cache", ledger=ledger, stage="bench")
        # Distinct prompts, so nothing is a cache hit or an in-batch duplicate.
        requests = [
            ChatRequest(key=f"{tag}-{i}", messages=[user_message(f"Problem {tag} {i}: what is {i} + {i}?")])
            for i in range(calls)
        ]
        start, cpu_start = time.perf_counter(), time.process_time()
        results = client.complete_many_sync(requests, progress=None)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return elapsed, cpu, sum(r.ok for r in results)


@contextlib.contextmanager
def fake_server(mode: str, latency: float, reply: str) -> Iterator[str]:
    """A FakeOpenAIServer in a child process (default) or in a thread; yields its base URL."""
    if mode == "thread":
        with FakeOpenAIServer(replies=reply, latency_s=latency, record_bodies=False) as server:
            yield server.base_url
        return
    cmd = [
        sys.executable,
        "-m",
        "mathse.testing.openai_server",
        "--port",
        "0",
        "--latency",
        str(latency),
        "--reply",
        reply,
        "--quiet",
    ]
    root = Path(__file__).resolve().parents[1]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=root) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "serving OpenAI chat completions at http://127.0.0.1:PORT/v1"
            if "http://" not in line:
                raise RuntimeError(f"fake server did not start: {line!r}")
            yield line.strip().rsplit(" ", 1)[-1]
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.5, help="server latency per call, seconds")
    parser.add_argument("--sequential-calls", type=int, default=20, help="calls for the one-at-a-time baseline")
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="run the fake server in a child process (like a real one) or in a thread here",
    )
    args = parser.parse_args()

    reply = "The final answer is \\boxed{4}"
    with fake_server(args.server, args.latency, reply) as base_url:
        run_batch(base_url, min(args.concurrency, args.calls), args.concurrency, "warmup")
        seq_s, _, seq_ok = run_batch(base_url, args.sequential_calls, 1, "seq")
        par_s, par_cpu, par_ok = run_batch(base_url, args.calls, args.concurrency, "par")

    seq_rate = args.sequential_calls / seq_s
    rate = args.calls / par_s
    ideal = args.concurrency / args.latency if args.latency > 0 else float("inf")
    print(
        f"calls: {args.calls} at concurrency {args.concurrency}, server latency {args.latency} s, "
        f"server in a {args.server}"
    )
    print(f"answered: {par_ok}/{args.calls} (sequential {seq_ok}/{args.sequential_calls})")
    print(f"elapsed: {par_s:.2f} s")
    where = "client and server threads" if args.server == "thread" else "client process"
    print(f"cpu per call: {par_cpu / args.calls * 1000:.2f} ms ({where})")
    print(f"achieved: {rate:.1f} calls/s")
    print(f"ideal: {ideal:.1f} calls/s (concurrency / latency)")
    print(f"one-at-a-time: {seq_rate:.2f} calls/s ({args.sequential_calls} calls at concurrency 1)")
    print(f"speedup over one-at-a-time: {rate / seq_rate:.1f}x")
    print(f"api_calls_achieved_over_ideal: {rate / ideal:.2f}")


if __name__ == "__main__":
    main()
