"""Does the demo learn? `make demo` per random seed: held-out accuracy of every checkpoint (issue 12).

For each seed s this runs the demo itself (`python -m mathse.demo --asset-seed s --set run.seed=s`
on a copy of demo/config.yaml in its own folder): a DEMO_SIZE tiny Qwen2-VL with weights from s,
a count-down split from s, the scripted teacher, and every stage with the real
`llamafactory-cli train` and ChatModel. It prints the accuracy table (rows: checkpoints, columns:
seeds), the wall time of each demo, and the figures (`name: value` lines) for benchmarks/RESULTS.md:

    demo_final_minus_stage0_min   min over seeds of final - stage0 accuracy (points; target >= 15)
    demo_last_round_minus_stage0_min   the same for the last evolve round (target > 0)
    demo_final_minus_last_round_min    final - last round (target >= 0)
    demo_orm_accuracy_min         the trained ORM's accuracy on its held-out paths (target >= 0.85)
    demo_orm_error_step_exact_min its first wrong step named exactly, on the held-out incorrect paths
    demo_reflection_kept_min      reflection rows kept for the final SFT (target > 0)
    demo_wall_s_max               the slowest demo's wall time (target < 600 s on 2 cores)
    demo_rerun_teacher_calls_max  teacher calls answered when every seed's demo had finished before (target 0:
                                  nothing repeated); on a first run `demo_teacher_calls_max` instead

Every stage resumes, so a rerun with the same --work only reports.

    python benchmarks/bench_demo_learning.py --seeds 0 1 --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_config(run_dir: Path, seed: int) -> Path:
    """demo/config.yaml in `run_dir` (so the demo's work/ folder lands there), the recipe made absolute."""
    cfg = yaml.safe_load((ROOT / "demo" / "config.yaml").read_text())
    cfg["run"]["seed"] = seed
    cfg["llama_factory"]["recipe"] = str(ROOT / "configs" / "llama_factory" / "sft_full.yaml")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def run_seed(work: Path, seed: int, threads: int, overrides: list[str]) -> dict[str, Any]:
    run_dir = work / f"seed_{seed}"
    out = run_dir / "work" / "output"
    rerun = (out / "report" / "report.md").is_file()  # a finished demo: this run should repeat nothing
    config = write_config(run_dir, seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "mathse.demo", "--config", str(config), "--asset-seed", str(seed),
           *(f"--set={o}" for o in overrides)]
    start = time.perf_counter()
    with (run_dir / "demo.log").open("a", encoding="utf-8") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    seconds = round(time.perf_counter() - start, 1)
    print(f"seed {seed}: demo exit {code} in {seconds:.0f}s (log {run_dir / 'demo.log'})", flush=True)
    result: dict[str, Any] = {"seed": seed, "wall_s": seconds, "exit": code, "rerun": rerun,
                              "teacher_calls": teacher_calls(run_dir)}
    if (out / "eval" / "results.csv").is_file():
        result.update(collect(out))
    return result


def teacher_calls(run_dir: Path) -> int | None:
    """Teacher calls answered in the latest demo run (its "scripted teacher answered" line)."""
    text = (run_dir / "demo.log").read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("demo: scripted teacher answered:")]
    if not lines:
        return None
    return sum(int(n) for n in re.findall(r"(\d+) [a-z]+", lines[-1]))


def collect(out: Path) -> dict[str, Any]:
    """Accuracy per checkpoint, per-round harvest counts, stage timings and train runtimes."""
    with (out / "eval" / "results.csv").open(encoding="utf-8") as handle:
        accuracy = {row["checkpoint"]: float(row["demo-test"]) for row in csv.DictReader(handle) if row["demo-test"]}
    harvest = [
        {k: stats[k] for k in ("attempted", "accepted", "solved", "gen_seconds")}
        for stats in (json.loads(p.read_text()) for p in sorted(out.glob("evolve/round_*/stats.json")))
    ]
    train_s = {
        p.parent.name: round(json.loads(p.read_text())["train_runtime"], 1)
        for p in sorted(out.glob("*/train_results.json"))
    }
    stage_s = {p.parent.name: json.loads(p.read_text())["wall_s"] for p in sorted(out.glob("*/timings.json"))}
    orm = json.loads((out / "orm_model" / "orm_metrics.json").read_text()) if (out / "orm_model").is_dir() else {}
    reflect = out / "reflect" / "stats.json"
    return {"accuracy": accuracy, "harvest": harvest, "train_runtime_s": train_s, "stage_timings": stage_s,
            "orm": {k: orm.get(k) for k in ("paths", "accuracy", "accuracy_on_correct", "accuracy_on_incorrect",
                                            "error_step_exact", "unparseable_rate")},
            "reflection_kept": json.loads(reflect.read_text())["kept"] if reflect.is_file() else None}


def sample_load(loads: list[float], done: threading.Event, every_s: float = 10.0) -> None:
    while True:
        loads.append(os.getloadavg()[0])
        if done.wait(every_s):
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per demo (0: cores / jobs)")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "demo_learning")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.perf_counter()
    # The machine may be shared: the 1-minute load average, sampled while the demos run, says how much.
    loads: list[float] = []
    done = threading.Event()
    sampler = threading.Thread(target=sample_load, args=(loads, done), daemon=True)
    sampler.start()
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        work = args.work.resolve()
        results = list(pool.map(lambda s: run_seed(work, s, threads, args.overrides), args.seeds))
    done.set()
    wall = time.perf_counter() - started
    print(json.dumps(results, indent=1))

    names = list(dict.fromkeys(name for r in results for name in r.get("accuracy", {})))
    print("\nheld-out accuracy (%) on the demo test set")
    print("checkpoint  " + "  ".join(f"seed {r['seed']:>3}" for r in results))
    for name in names:
        print(f"{name:<10}  " + "  ".join(f"{r.get('accuracy', {}).get(name, float('nan')):>8.1f}" for r in results))
    print(f"wall time {wall:.0f}s for {len(results)} seeds ({args.jobs} in parallel, {threads} threads each); "
          f"load average (1 min) during the run: mean {sum(loads) / max(len(loads), 1):.1f}, "
          f"max {max(loads, default=0.0):.1f} on {os.cpu_count()} cores")
    if any(r["exit"] != 0 or "accuracy" not in r for r in results):
        return 1
    rounds = [n for n in names if n.startswith("round_")]
    gains = {
        "final": [r["accuracy"].get("final", float("nan")) - r["accuracy"]["stage0"] for r in results],
        "last_round": [r["accuracy"][rounds[-1]] - r["accuracy"]["stage0"] for r in results] if rounds else [],
    }
    print(f"demo_final_minus_stage0_min: {min(gains['final']):.1f}")
    if gains["last_round"]:
        print(f"demo_last_round_minus_stage0_min: {min(gains['last_round']):.1f}")
        final_vs_last = [r["accuracy"].get("final", float("nan")) - r["accuracy"][rounds[-1]] for r in results]
        print(f"demo_final_minus_last_round_min: {min(final_vs_last):.1f}")
    orm = [r["orm"] for r in results if r.get("orm", {}).get("accuracy") is not None]
    if orm:
        print(f"demo_orm_accuracy_min: {min(m['accuracy'] for m in orm):.3f}")
        steps = [m["error_step_exact"] for m in orm if m["error_step_exact"] is not None]
        if steps:
            print(f"demo_orm_error_step_exact_min: {min(steps):.3f}")
    kept = [r["reflection_kept"] for r in results if r.get("reflection_kept") is not None]
    if kept:
        print(f"demo_reflection_kept_min: {min(kept)}")
    print(f"demo_wall_s_max: {max(r['wall_s'] for r in results):.0f}")
    calls = [r["teacher_calls"] for r in results if r["teacher_calls"] is not None]
    if calls:
        # Only a rerun of finished demos measures what a rerun repeats; a first run reports its own calls.
        name = "demo_rerun_teacher_calls_max" if all(r["rerun"] for r in results) else "demo_teacher_calls_max"
        print(f"{name}: {max(calls)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
