"""Student generation throughput: many requests in flight vs one at a time, same engine, same items.

Modes, each on the same items with a fresh journal (one engine load for all of them):

* sequential: one request at a time, one path per request (the baseline);
* concurrent: `--concurrency` requests in flight, one path per request;
* grouped:    `--concurrency` requests in flight, the `--n-paths` paths of a problem in one request
  (`num_return_sequences`; the Generator's default on huggingface when sampling).

Modes are interleaved over `--repeats` rounds and the median is reported, since a small shared
machine drifts. The last line is `generation_concurrent_over_sequential: X.XX`.

    python benchmarks/bench_generation.py                      # tiny random Qwen2-VL, huggingface, CPU
    python benchmarks/bench_generation.py --backend vllm --model /models/Qwen2-VL-7B-Instruct \\
        --problems 512 --n-paths 4 --concurrency 256 --max-new-tokens 512
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

from mathse.demo.assets import build_tiny_qwen2vl, write_demo_dataset
from mathse.model.generation_items import GenItem, GenStats, make_items
from mathse.model.inference import Generator
from mathse.model.inputs import ModelInputs
from mathse.run.config import InferenceConfig
from mathse.run.records import read_problems
from mathse.run.storage import Journal, iter_jsonl

WORK = Path(__file__).resolve().parent / "work"


def run_once(gen: Generator, items: list[GenItem], concurrency: int, per_request: int) -> tuple[GenStats, float]:
    """Stats of one run into a fresh journal, and the mean response length in tokens."""
    with tempfile.TemporaryDirectory(prefix="mathse-bench-gen-") as tmp:
        path = Path(tmp) / "gen.jsonl"
        with Journal(path) as journal:
            stats = gen.generate(items, journal, concurrency=concurrency, paths_per_request=per_request)
        tokens = [row.get("response_tokens", 0) for row in iter_jsonl(path)]
    if stats.failed:
        raise SystemExit(f"benchmark run had {stats.failed} failed paths; fix the setup first")
    return stats, statistics.fmean(tokens) if tokens else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("huggingface", "vllm"), default="huggingface")
    parser.add_argument("--model", help="model path (default: the tiny random Qwen2-VL, built offline)")
    parser.add_argument("--template", default="qwen2_vl")
    parser.add_argument("--problems", type=int, default=16, help="synthetic image problems")
    parser.add_argument("--n-paths", type=int, default=2, help="reasoning paths per problem")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight for the concurrent modes")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--image-max-pixels", type=int, default=None, help="default: 12544 for the tiny model")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = args.model or str(build_tiny_qwen2vl(WORK / "tiny_qwen2vl"))
    image_max_pixels = args.image_max_pixels or (None if args.model else 112 * 112)
    _, pool = write_demo_dataset(WORK / "data", n_seed=1, n_pool=args.problems, seed=0)
    items = make_items(read_problems(pool), args.n_paths)
    inf = InferenceConfig(
        backend=args.backend,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        n_paths=args.n_paths,
        concurrency=args.concurrency,
    )
    modes = {
        "sequential": (1, 1),
        "concurrent": (args.concurrency, 1),
        "grouped": (args.concurrency, args.n_paths),
    }
    rates: dict[str, list[float]] = {name: [] for name in modes}
    lengths: dict[str, list[float]] = {name: [] for name in modes}
    with Generator(model, None, ModelInputs(args.template, image_max_pixels), inf) as gen:
        load_start = time.perf_counter()
        run_once(gen, items[: min(len(items), 2 * args.concurrency)], args.concurrency, 1)  # load + warm up
        print(f"load + warm-up: {time.perf_counter() - load_start:.1f} s")
        for _ in range(args.repeats):
            for name, (concurrency, per_request) in modes.items():
                stats, mean_tokens = run_once(gen, items, concurrency, per_request)
                rates[name].append(stats.paths_per_s)
                lengths[name].append(mean_tokens)

    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"backend: {args.backend} on {device}; model: {model}")
    print(
        f"items: {len(items)} paths ({args.problems} problems x {args.n_paths}), max_new_tokens "
        f"{args.max_new_tokens}, temperature {args.temperature}, {args.repeats} rounds (median)"
    )
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, (concurrency, per_request) in modes.items():
        runs = ", ".join(f"{r:.2f}" for r in rates[name])
        print(
            f"{name:>10}: {median[name]:7.2f} paths/s  ({concurrency} in flight, {per_request} path/request; "
            f"mean {statistics.fmean(lengths[name]):.1f} tokens/path; runs: {runs})"
        )
    print(f"generation_grouped_over_sequential: {median['grouped'] / median['sequential']:.2f}")
    print(f"generation_concurrent_over_sequential: {median['concurrent'] / median['sequential']:.2f}")


if __name__ == "__main__":
    main()
