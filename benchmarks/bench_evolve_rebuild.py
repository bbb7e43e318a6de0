"""Peak memory of rewriting evolve's run-wide files as the pool grows (`evolve.rebuild_cumulative`).

After every round, evolve rewrites sft_chosen / sft_rejected / hard_problems / history and D_SFT
(plus its LLaMA-Factory dataset) from the rounds' own files. The rejected paths alone are
n_paths x the pool over the rounds, each with the ORM's analysis, so this must stream.

For each size, one process writes a synthetic run (3 rounds; per round and problem 1 accepted and
3 rejected paths of ~1 KB, a hard-buffer row and a history row; D_SFT from distill of size/10), and a
fresh process runs `rebuild_cumulative(cfg, 3)` alone and reports its peak RSS (VmHWM) and time.

    python benchmarks/bench_evolve_rebuild.py                    # 2K and 20K problems per round
    python benchmarks/bench_evolve_rebuild.py --sizes 1000 5000  # quicker

Figures: peak RSS at the largest size over the smallest (target <= 1.2) and the absolute peak at the
largest (target < 1 GiB); the last line is `evolve_rebuild_peak_rss_ratio: X.XX`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROUNDS = 3
STEP = "Step {k}: The segment measures {a} units and the angle at B is {b} degrees, so the side follows. "


def reasoning(i: int, r: int, k: int) -> str:
    steps = "".join(STEP.format(k=s, a=(i * 7 + s + k) % 97, b=(i * 3 + s + r) % 180) for s in range(1, 8))
    return steps + f"\nThe final answer is \\boxed{{{(i + k) % 1000}}}"


def write_run(config: Path, n: int) -> None:
    """The rounds' files and distill's D_SFT of a run with `n` problems per round, streamed to disk."""
    from mathse.run import layout
    from mathse.run.config_loading import load_config
    from mathse.run.storage import atomic_write_json, atomic_write_jsonl

    cfg = load_config(config)
    question = "Problem {i}: find the length of side AC in the triangle shown. Solve step by step."
    atomic_write_jsonl(layout.d_sft_path(cfg, layout.DISTILL), (
        {"id": f"s{i}", "prompt": question.format(i=i), "images": [], "answer": "1", "response": reasoning(i, 0, 0),
         "origin": "teacher"} for i in range(n // 10)))
    for r in range(1, ROUNDS + 1):
        rd = layout.round_dir(cfg, r)
        rd.mkdir(parents=True, exist_ok=True)
        ids = [f"p{r}-{i}" for i in range(n)]

        def path(i: int, k: int, r: int = r, ids: list[str] = ids) -> dict:
            return {"id": ids[i], "question": question.format(i=i), "images": [], "answer": "1", "round": r,
                    "sample": k, "prompt": question.format(i=i), "reasoning": reasoning(i, r, k)}

        atomic_write_jsonl(rd / layout.CHOSEN, (path(i, 0) for i in range(n)))
        atomic_write_jsonl(rd / "rejected.jsonl", (
            {**path(i, k), "error_step": 2, "analysis": "Step 2 takes the wrong angle from the figure. " * 3,
             "verdict_source": "orm", "orm_raw": None} for i in range(n) for k in (1, 2, 3)))
        atomic_write_jsonl(rd / "hard.jsonl", (
            {"id": ids[i], "question": question.format(i=i), "images": [], "answer": "1", "round": r,
             "paths": [{"sample": 1, "reasoning": reasoning(i, r, 1), "error_step": 2, "analysis": "x",
                        "verdict_source": "orm"}]} for i in range(n)))
        atomic_write_jsonl(rd / layout.HISTORY, (
            {"id": ids[i], "round": r, "verdicts": [True, False, False, False], "solved": True} for i in range(n)))
        atomic_write_json(rd / "remain.json", [])


def rebuild(config: Path) -> None:
    from mathse.run.config_loading import load_config
    from mathse.stages.evolve import rebuild_cumulative

    cfg = load_config(config)
    start = time.perf_counter()
    rebuild_cumulative(cfg, ROUNDS)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux keeps that across exec, so a child
    would report its parent's size at fork if that was larger."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(*args: str) -> str:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000, 20_000])
    parser.add_argument("--child", choices=["write", "rebuild"])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    if args.child == "write":
        write_run(args.config, args.n)
        return
    if args.child == "rebuild":
        rebuild(args.config)
        return
    from _setup import write_config

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            config = write_config(Path(tmp) / f"run-{n}", "http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1")
            child("--child", "write", "--config", str(config), "--n", str(n))
            results[n] = json.loads(child("--child", "rebuild", "--config", str(config)))
            rejected = sum(f.stat().st_size for f in (Path(tmp) / f"run-{n}").rglob("rejected.jsonl")) / 2**20
            got = results[n]
            print(f"{n:,} problems per round x {ROUNDS} rounds ({3 * n * ROUNDS:,} rejected paths, "
                  f"{rejected:,.0f} MiB): rebuild {got['seconds']:.1f} s, peak RSS {got['peak_mib']:,.0f} MiB")
    small, large = results[min(args.sizes)], results[max(args.sizes)]
    print(f"evolve_rebuild_peak_mib: {large['peak_mib']:.0f}")
    print(f"evolve_rebuild_peak_rss_ratio: {large['peak_mib'] / small['peak_mib']:.2f}")


if __name__ == "__main__":
    main()
