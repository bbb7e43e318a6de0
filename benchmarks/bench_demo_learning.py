"""Does the demo learn? Held-out accuracy of M0 and each self-training round (issue 12).

For each run seed: a DEMO_SIZE tiny Qwen2-VL (weights from the seed), disjoint count-down splits
(seed problems with solutions / pool / test), then the real stages through `python -m mathse.cli`
with demo/config.yaml: distill (trains M0 on the seed solutions) -> evolve (k paths per pool
problem at temperature 1, rule-checked, retrain from the base on seed + kept, each round) ->
eval (greedy, on the held-out test set, every checkpoint). Training is the real
`llamafactory-cli train`, generation the real ChatModel.

Prints the accuracy table (rows: checkpoints, columns: seeds) and the timings; the numbers go to
benchmarks/RESULTS.md. Every stage resumes, so a rerun with the same --work only reports.

    python benchmarks/bench_demo_learning.py --seeds 0 1 --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathse.demo_problems import write_countdown_dataset  # noqa: E402
from mathse.tiny_model import DEMO_SIZE, build_tiny_qwen2vl  # noqa: E402

STAGES = ("distill", "evolve", "eval")


def write_config(run_dir: Path, seed: int, sizes: dict[str, int], rounds: int, overrides: list[str]) -> Path:
    """demo/config.yaml pointed at this seed's model and data, with rule checks (no teacher, no ORM)."""
    model = build_tiny_qwen2vl(run_dir / "tiny_model", seed=seed, size=DEMO_SIZE)
    data = write_countdown_dataset(run_dir / "data", sizes, seed=seed, solution_every={"seed": 1})
    cfg = yaml.safe_load((ROOT / "demo" / "config.yaml").read_text())
    cfg["run"] = {"output_dir": str(run_dir / "output"), "seed": seed}
    cfg["model"]["base"] = str(model)
    cfg["data"] = {"seed_file": str(data["seed"]), "pool_file": str(data["pool"])}
    cfg["llama_factory"]["recipe"] = str(ROOT / "configs" / "llama_factory" / "sft_full.yaml")
    cfg["orm"] = {"backend": "rule", "policy": "rule"}
    cfg["evolve"]["rounds"] = rounds
    cfg["eval"]["benchmarks"] = [{"name": "demo-test", "format": "jsonl", "path": str(data["test"])}]
    cfg["eval"]["checkpoints"] = ["stage0", *(f"round_{r}" for r in range(1, rounds + 1))]
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_seed(work: Path, seed: int, sizes: dict[str, int], rounds: int, threads: int, overrides: list[str]) -> dict:
    run_dir = work / f"seed_{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = write_config(run_dir, seed, sizes, rounds, overrides)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    seconds: dict[str, float] = {}
    with (run_dir / "bench.log").open("a", encoding="utf-8") as log:
        for stage in STAGES:
            start = time.perf_counter()
            cmd = [sys.executable, str(ROOT / "main.py"), "--stage", stage, "--config", str(config),
                   *(f"--set={o}" for o in overrides)]
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
            seconds[stage] = round(time.perf_counter() - start, 1)
            print(f"seed {seed}: {stage} exit {code} in {seconds[stage]:.0f}s", flush=True)
            if code != 0:
                return {"seed": seed, "failed": stage, "log": str(run_dir / "bench.log"), "seconds": seconds}
    return {"seed": seed, "seconds": seconds, **collect(run_dir / "output", rounds)}


def collect(out: Path, rounds: int) -> dict[str, Any]:
    """Accuracy per checkpoint, per-round harvest counts and LLaMA-Factory's train runtimes."""
    accuracy: dict[str, float] = {}
    with (out / "eval" / "results.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("demo-test"):
                accuracy[row["checkpoint"]] = float(row["demo-test"])
    harvest = []
    for r in range(1, rounds + 1):
        stats = json.loads((out / "evolve" / f"round_{r}" / "stats.json").read_text())
        harvest.append({k: stats[k] for k in ("attempted", "paths", "accepted", "solved", "gen_seconds")})
    train_s = {}
    for name in ["sft_model_stage0", *(f"sft_model_round_{r}" for r in range(1, rounds + 1))]:
        found = list(out.rglob(f"{name}/train_results.json"))
        if found:
            train_s[name] = round(json.loads(found[0].read_text())["train_runtime"], 1)
    return {"accuracy": accuracy, "harvest": harvest, "train_runtime_s": train_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs=3, default=[30, 120, 50], metavar=("SEED", "POOL", "TEST"))
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: cores / jobs)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "demo_learning")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    sizes = dict(zip(("seed", "pool", "test"), args.sizes, strict=True))
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(run_seed, args.work, s, sizes, args.rounds, threads, args.overrides) for s in args.seeds]
        results = [f.result() for f in futures]
    wall = time.perf_counter() - started
    print(json.dumps(results, indent=1))
    names = ["stage0", *(f"round_{r}" for r in range(1, args.rounds + 1))]
    print(f"\nheld-out accuracy (%) on {sizes['test']} test problems; seed/pool {sizes['seed']}/{sizes['pool']}")
    print("checkpoint  " + "  ".join(f"seed {r['seed']:>3}" for r in results))
    for name in names:
        print(f"{name:<10}  " + "  ".join(f"{r.get('accuracy', {}).get(name, float('nan')):>8.1f}" for r in results))
    print(f"wall time {wall:.0f}s for {len(results)} seeds ({args.jobs} in parallel, {threads} threads each)")
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
