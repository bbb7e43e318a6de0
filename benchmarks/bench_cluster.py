"""Generation at scale: served replicas vs one replica vs the in-process ChatModel, same items.

Modes, each generating the same items into a fresh journal, interleaved over `--repeats` rounds
(median reported; a shared machine drifts):

* inprocess:  LLaMA-Factory's ChatModel in this process (`inference.backend: huggingface`, or vllm);
* served-1:   the served backend (mathse/model/generation.py) on one replica;
* served-2:   the same on two replicas (requests spread by serving.ReplicaRouter).

Servers start once (two replicas; served-1 uses the first only) and their start-up time is reported
apart: it is paid once per checkpoint, not per path. The last lines are the two headline figures:
`cluster_two_over_one_replica` (target >= 1.5) and `cluster_served_over_inprocess` (target >= 0.9).

CPU (default): the tiny random Qwen2-VL served by `llamafactory-cli api`; every engine gets
`--threads` torch threads (one replica ~ one GPU), so two replicas need two free cores.

    python benchmarks/bench_cluster.py
    # GPU node, vLLM from its own environment, one GPU per replica, in-process path skipped:
    python benchmarks/bench_cluster.py --engine vllm --python ~/venvs/vllm/bin/python \\
        --model /models/Qwen2-VL-7B-Instruct --gpus-per-replica 1 --inprocess none \\
        --problems 512 --concurrency 128 --max-new-tokens 512
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

from mathse.demo.assets import build_tiny_qwen2vl, make_synthetic_problems
from mathse.model.generation import ServedGenerator
from mathse.model.generation_items import GenItem, make_items
from mathse.model.inference import Generator, chat_model_args
from mathse.model.inputs import ModelInputs
from mathse.model.servers import ServedModel, Servers, serve_model
from mathse.run.config import InferenceConfig, ServeConfig
from mathse.run.records import read_problems
from mathse.run.storage import Journal, atomic_write_jsonl

WORK = Path(__file__).resolve().parent / "work"


def timed(gen: Generator | ServedGenerator, items: list[GenItem]) -> tuple[float, float]:
    """paths/s of one full generation into a fresh journal, and the mean response length (characters)."""
    with tempfile.TemporaryDirectory(prefix="mathse-bench-cluster-") as tmp, Journal(Path(tmp) / "g.jsonl") as journal:
        stats = gen.generate(items, journal)
        chars = statistics.fmean(len(row["response"] or "") for row in journal.values())
    if stats.failed or stats.done != len(items):
        raise SystemExit(f"benchmark run had {stats.failed} failed paths; fix the setup first")
    return stats.done / stats.seconds, chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=("llamafactory", "vllm", "sglang"), default="llamafactory")
    parser.add_argument("--python", help="interpreter of the engine's environment (serve.python)")
    parser.add_argument("--model", help="model path (default: the tiny random Qwen2-VL, built offline)")
    parser.add_argument("--template", default="qwen2_vl")
    parser.add_argument("--inprocess", choices=("huggingface", "vllm", "none"), default="huggingface")
    parser.add_argument("--gpus-per-replica", type=int, default=0, help="0: replicas share the visible GPUs")
    parser.add_argument("--gpu-util", type=float, default=0.9, help="vLLM memory share per replica (0.4: share a GPU)")
    parser.add_argument("--problems", type=int, default=64, help="synthetic image problems (one greedy path each)")
    # 1 on CPU: LLaMA-Factory's huggingface engine runs concurrent requests as threads that contend for
    # the GIL (see bench_generation.py); on vLLM use 64+.
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight per replica / in-process")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per engine (CPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--startup-timeout", type=float, default=900.0)
    args = parser.parse_args()

    model = Path(args.model) if args.model else build_tiny_qwen2vl(WORK / "tiny_model")
    data = WORK / "cluster_data"
    pool = data / f"problems_{args.problems}.jsonl"
    if not pool.is_file():
        atomic_write_jsonl(pool, make_synthetic_problems(data, args.problems, seed=7, id_prefix="bench"))
    items = make_items(read_problems(pool)[: args.problems], 1)
    # Greedy, one path per problem: no two request bodies are equal, so none is answered from another.
    inf = InferenceConfig(backend="served", temperature=0, max_new_tokens=args.max_new_tokens,
                          concurrency=args.concurrency)
    threads = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    serve = ServeConfig(engine=args.engine, python=args.python, replicas=2, gpus_per_replica=args.gpus_per_replica,
                        startup_timeout_s=args.startup_timeout, env=threads if args.gpus_per_replica == 0 else {})
    inputs = ModelInputs(args.template)
    spec = ServedModel(name="bench", model=str(model), inputs=inputs, gpu_memory_utilization=args.gpu_util,
                       concurrency=args.concurrency, llamafactory_args=chat_model_args(str(model), None, inputs, inf))
    rates: dict[str, list[float]] = {"served-1": [], "served-2": []}
    with tempfile.TemporaryDirectory(prefix="mathse-bench-servers-") as logs:
        start = time.perf_counter()
        with serve_model(serve, spec, Path(logs)) as servers:
            startup = time.perf_counter() - start
            one = Servers(spec, serve, servers.base_urls[:1])
            modes: dict[str, Generator | ServedGenerator] = {
                "served-1": ServedGenerator(spec, inf, serve, None, Path(logs), servers=one),
                "served-2": ServedGenerator(spec, inf, serve, None, Path(logs), servers=servers),
            }
            if args.inprocess != "none":
                import torch

                torch.set_num_threads(args.threads)
                local = inf.model_copy(update={"backend": args.inprocess})
                modes["inprocess"] = Generator(model, None, ModelInputs(args.template), local)
                rates["inprocess"] = []
                timed(modes["inprocess"], items[:2])  # load the model outside the timed runs
            for _ in range(args.repeats):
                for name, gen in modes.items():
                    rate, chars = timed(gen, items)
                    rates[name].append(rate)
                    print(f"  {name}: {rate:.2f} paths/s, responses {chars:.0f} chars on average", flush=True)
            if "inprocess" in modes:
                modes["inprocess"].close()
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{len(items)} paths, {args.concurrency} in flight per replica, {args.max_new_tokens} new tokens, "
          f"engine {args.engine}, {args.threads} torch thread(s) per engine; server start-up {startup:.1f} s")
    for name, value in median.items():
        print(f"cluster_paths_per_s_{name.replace('-', '_')}: {value:.3f}")
    if "inprocess" in median:
        print(f"cluster_served_over_inprocess: {median['served-1'] / median['inprocess']:.3f}")
    print(f"cluster_two_over_one_replica: {median['served-2'] / median['served-1']:.3f}")


if __name__ == "__main__":
    main()
