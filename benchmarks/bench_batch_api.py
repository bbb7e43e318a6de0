"""Batch mode's own memory does not grow with the number of requests.

N requests, each with its own 100 KB image, go through `ChatClient.complete_many` in `mode: batch`
against the test server's Batch API (run as a separate process, so its copy of the files is not
counted). Each N runs in a fresh subprocess; the figure is the peak RSS of the batch run minus the
RSS once the requests are built (those are the caller's: see issue 16 for building them lazily).
Request files are capped at 20 MB here, so a larger N means more files, not bigger ones (and they
are uploaded from a file handle, streamed). Target: the extra at 4x the requests < 64 MiB, whatever
N. The last line is `batch_extra_peak_mib: X`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FILE_CAP = 20_000_000
IMAGE_BYTES = 100_000


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(base_url: str, n: int, work: Path) -> None:
    from mathse.api.client import ChatClient
    from mathse.api.messages import ChatRequest, user_message
    from mathse.run.config import ApiConfig

    images = work / f"images{n}"
    images.mkdir()
    requests = []
    for i in range(n):
        image = images / f"{i}.png"
        image.write_bytes(os.urandom(IMAGE_BYTES))
        requests.append(ChatRequest(key=f"p{i}", messages=[user_message(f"problem {i}", [image])]))
    # Encode now, as the stages do (user_message keeps a small LRU only): the baseline holds them all.
    from mathse.api.answer_cache import cache_key

    client = ChatClient(ApiConfig(base_url=base_url, model="gpt-4o", mode="batch",
                                  batch={"poll_interval_s": 0.2, "max_bytes_per_file": FILE_CAP}), work / f"cache{n}")
    for request in requests:
        cache_key(client.body(request))
    baseline = rss_mib()
    start = time.perf_counter()
    results = client.complete_many_sync(requests)
    seconds = time.perf_counter() - start
    assert all(r.ok and r.batch for r in results), [r.error for r in results if not r.ok][:3]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"baseline_mib": baseline, "extra_mib": peak - baseline, "seconds": seconds}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500, help="the small N; the large one is 4x")
    parser.add_argument("--child", nargs=3, metavar=("BASE_URL", "N", "WORK"))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "mathse.testing.openai_server", "--port", str(port), "--quiet"],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()  # "serving ..." once it listens
        figures = {}
        with tempfile.TemporaryDirectory() as tmp:
            for n in (args.requests, 4 * args.requests):
                proc = subprocess.run([sys.executable, __file__, "--child", f"http://127.0.0.1:{port}/v1", str(n), tmp],
                                      capture_output=True, text=True, env=env, timeout=600)
                if proc.returncode != 0:
                    raise SystemExit(proc.stderr[-2000:])
                figures[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=30)
    small, large = figures[args.requests], figures[4 * args.requests]
    for n, fig in figures.items():
        print(f"{n:,} requests with {IMAGE_BYTES // 1000} KB images: requests built {fig['baseline_mib']:,.0f} MiB, "
              f"batch run +{fig['extra_mib']:,.0f} MiB peak, {fig['seconds']:.1f} s "
              f"({1000 * fig['seconds'] / n:.2f} ms/request)")
    print(f"batch_extra_large_over_small: {large['extra_mib'] / max(small['extra_mib'], 1.0):.2f}")
    print(f"batch_extra_peak_mib: {large['extra_mib']:.0f}")


if __name__ == "__main__":
    main()
