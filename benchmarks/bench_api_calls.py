"""Throughput of the chat client: N calls at concurrency C against a fake server with latency L.

The ideal rate is C / L (every slot always busy, zero overhead); the figure that matters is the
achieved / ideal ratio, i.e. how much the client (SDK, retries, cache, ledger) costs per call.

    python benchmarks/bench_api_calls.py --calls 2000 --concurrency 64 --latency 0.5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from mathse.client import ChatClient, ChatRequest, UsageLedger, user_message
from mathse.config import ApiConfig, Price
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.5, help="server latency per call, seconds")
    parser.add_argument("--sequential-calls", type=int, default=20, help="calls for the one-at-a-time baseline")
    args = parser.parse_args()

    reply = "The final answer is \\boxed{4}"
    with FakeOpenAIServer(replies=reply, latency_s=args.latency, record_bodies=False) as server:
        run_batch(server.base_url, min(args.concurrency, args.calls), args.concurrency, "warmup")
        seq_s, _, seq_ok = run_batch(server.base_url, args.sequential_calls, 1, "seq")
        par_s, par_cpu, par_ok = run_batch(server.base_url, args.calls, args.concurrency, "par")

    seq_rate = args.sequential_calls / seq_s
    rate = args.calls / par_s
    ideal = args.concurrency / args.latency if args.latency > 0 else float("inf")
    print(f"calls: {args.calls} at concurrency {args.concurrency}, server latency {args.latency} s")
    print(f"answered: {par_ok}/{args.calls} (sequential {seq_ok}/{args.sequential_calls})")
    print(f"elapsed: {par_s:.2f} s")
    print(f"cpu per call: {par_cpu / args.calls * 1000:.2f} ms (client and server threads, one process)")
    print(f"achieved: {rate:.1f} calls/s")
    print(f"ideal: {ideal:.1f} calls/s (concurrency / latency)")
    print(f"one-at-a-time: {seq_rate:.2f} calls/s ({args.sequential_calls} calls at concurrency 1)")
    print(f"speedup over one-at-a-time: {rate / seq_rate:.1f}x")
    print(f"api_calls_achieved_over_ideal: {rate / ideal:.2f}")


if __name__ == "__main__":
    main()
