"""Writing the LLaMA-Factory dataset for 300K records vs a bare `json.dump` of the same records.

Each side runs in a fresh subprocess, so its peak RSS (``resource.getrusage``: ru_maxrss, which
includes the records it was handed) is its own. Both get the same 300K synthetic records
(~800-character responses, one image path each); only the write is timed. Targets: <= 2x the
bare dump's time, < 2 GiB peak. The last line is `dataset_build_time_over_json_dump: X.XX`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STEP = (
    "Step {k}: From the figure, the segment measures {a} units and the angle at B is {b} degrees, "
    "so by the law of sines the opposite side follows. "
)


def make_records(n: int) -> list[dict]:
    records = []
    for i in range(n):
        response = "".join(STEP.format(k=k, a=(i * 7 + k) % 97, b=(i * 3 + k) % 180) for k in range(1, 6))
        response += f"\nThe final answer is \\boxed{{{i % 1000}}}"
        records.append({
            "id": f"p{i}",
            "prompt": f"Problem {i}: find the length of side AC in the triangle shown. Solve step by step.",
            "response": response,
            "images": [f"/data/images/{i % 5000:05d}/{i}.png"],
        })
    return records


def child(side: str, n: int, out: Path) -> None:
    records = make_records(n)
    start = time.perf_counter()
    if side == "bare":
        with (out / "bare.json").open("w", encoding="utf-8") as handle:
            json.dump(records, handle, ensure_ascii=False)
    else:
        from mathse.model.training_data import write_sharegpt_dataset
        from mathse.run.records import SftExample

        examples = (SftExample(prompt=r["prompt"], response=r["response"], images=tuple(r["images"])) for r in records)
        write_sharegpt_dataset(examples, out, "bench")
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


def measure(side: str, n: int, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", side, "--records", str(n), "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--child", choices=["bare", "mathse"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.records, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        bare = measure("bare", args.records, Path(tmp))
        ours = measure("mathse", args.records, Path(tmp))
        size = (Path(tmp) / "bench.json").stat().st_size / 2**20
    print(f"records: {args.records:,}; dataset file {size:,.0f} MiB")
    print(f"bare json.dump: {bare['seconds']:.2f} s, peak RSS {bare['peak_mib']:,.0f} MiB")
    print(f"write_sharegpt_dataset: {ours['seconds']:.2f} s, peak RSS {ours['peak_mib']:,.0f} MiB")
    print(f"dataset_build_peak_mib: {ours['peak_mib']:.0f}")
    print(f"dataset_build_time_over_json_dump: {ours['seconds'] / bare['seconds']:.2f}")


if __name__ == "__main__":
    main()
