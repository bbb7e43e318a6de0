"""The served vLLM path on a GPU node, end to end, in a few minutes (run by benchmarks/gpu_check.sh).

Starts two vLLM replicas of MODEL from the vLLM environment VLLM_PYTHON (both on this node's GPUs:
one GPU each when there are two, else sharing GPU 0 at half the memory each), generates a round of
greedy paths through them into a journal, kills one replica in the middle, and checks: every item
journaled exactly once, the rerun sends nothing, no server process left. Prints `gpu_check: ok`.

    python benchmarks/gpu_check.py MODEL VLLM_PYTHON [--problems 64]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mathse.demo.assets import make_synthetic_problems
from mathse.model.generation import ServedGenerator
from mathse.model.generation_items import make_items
from mathse.model.inputs import ModelInputs
from mathse.model.servers import ServedModel
from mathse.run.config import InferenceConfig, ServeConfig
from mathse.run.records import read_problems
from mathse.run.storage import Journal, atomic_write_jsonl, iter_jsonl


def gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip()])
    return len([d for d in Path("/dev").glob("nvidia[0-9]*")])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("vllm_python")
    parser.add_argument("--problems", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mathse-gpu-check-"))
    atomic_write_jsonl(work / "p.jsonl", make_synthetic_problems(work, args.problems, seed=3, id_prefix="gpu"))
    items = make_items(read_problems(work / "p.jsonl"), 1)
    gpus = gpu_count()
    two_gpus = gpus >= 2
    inf = InferenceConfig(backend="served", temperature=0, max_new_tokens=args.max_new_tokens, concurrency=32,
                          vllm_gpu_util=0.85 if two_gpus else 0.4, vllm_maxlen=4096)
    serve = ServeConfig(engine="vllm", python=args.vllm_python, replicas=2, gpus_per_replica=1 if two_gpus else 0,
                        startup_timeout_s=420, extra_args=["--enforce-eager", "--limit-mm-per-prompt", '{"image": 1}'])
    spec = ServedModel(name="gpu-check", model=args.model, max_model_len=inf.vllm_maxlen,
                       gpu_memory_utilization=inf.vllm_gpu_util, seed=0, inputs=ModelInputs("qwen2_vl", 262144))
    path = work / "gen.jsonl"
    print(f"gpu_check: {gpus} GPU(s); 2 vLLM replicas ({'one GPU each' if two_gpus else 'sharing GPU 0'}); "
          f"work in {work}", flush=True)
    with ServedGenerator(spec, inf, serve, None, work / "servers") as gen:
        t0 = time.perf_counter()
        gen._ensure_servers()
        print(f"gpu_check: servers up in {time.perf_counter() - t0:.0f} s: {gen.servers.base_urls}", flush=True)
        victim = gen.servers.processes[1]

        def kill_mid_round() -> None:
            while not path.exists() or path.read_text().count("\n") < len(items) // 3:
                time.sleep(0.05)
            os.killpg(victim.pid, signal.SIGKILL)

        threading.Thread(target=kill_mid_round, daemon=True).start()
        with Journal(path) as journal:
            stats = gen.generate(items, journal)
        print(f"gpu_check: {stats.summary()}; failovers {gen._router.failovers}", flush=True)
        with Journal(path) as journal:
            again = gen.generate(items, journal)
        pids = [p.pid for p in gen.servers.processes]
    keys = [row["key"] for row in iter_jsonl(path)]
    problems = []
    if len(keys) != len(set(keys)) or len(keys) != len(items):
        problems.append(f"journal has {len(keys)} rows, {len(set(keys))} keys, want {len(items)}")
    if again.done or again.skipped_existing != len(items):
        problems.append(f"the rerun generated {again.done} paths, want 0")
    if victim.alive():
        problems.append("the killed replica is alive")
    time.sleep(2)
    left = [p for p in pids if Path(f"/proc/{p}").exists()]
    if left:
        problems.append(f"server processes left: {left}")
    sample = next(iter_jsonl(path))
    print(f"gpu_check: sample path {sample['key']}: {sample['response'][:200]!r}")
    for line in problems:
        print(f"gpu_check: FAIL: {line}")
    print("gpu_check: ok" if not problems else "gpu_check: FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
