"""Memory and time per request as the number of problems grows: distill's teacher calls and the
ORM judging of one evolve round, against the local test server over real HTTP, 250 KB images.

Each size runs in a fresh process (peak RSS is per process) that reads the seed file, asks the
teacher for every problem (`distill.ask_teacher`, replies journaled as they arrive), then has the
ORM judge one path per problem (`judge.PathJudge`, backend api, as an evolve round does), the
problems streamed from the seed file and the paths from the replies' journal. Both servers are
`mathse.testing.openai_server` in child processes of their own, so the RSS measured is the
pipeline's alone. Every image is a distinct file (a PNG signature and random bytes: the client
never decodes an image, it reads, hashes and base64-encodes it), so neither the encoder cache
nor the page cache makes a large run cheaper than a small one.

    python benchmarks/bench_scale.py                      # 1K and 20K problems
    python benchmarks/bench_scale.py --sizes 1000 4000    # quicker

Figures: peak RSS at the largest size over the smallest (target <= 1.2), absolute peak at the
largest (target < 1 GiB), time per request at the largest over the smallest (target <= 1.2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

TEACHER_REPLY = "Step 1: The side is 2.\nStep 2: The area is 2 * 2 = 4.\nThe final answer is \\boxed{4}"
ORM_REPLY = '{"correct": true, "error_step": null, "analysis": "Each step follows from the figure."}'
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@contextlib.contextmanager
def fake_server(reply: str, latency: float) -> Iterator[str]:
    """The test server in a child process; yields its base URL; stopped however the block ends."""
    cmd = [sys.executable, "-m", "mathse.testing.openai_server", "--port", "0", "--latency", str(latency),
           "--reply", reply, "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "http://" not in line:
                raise RuntimeError(f"test server did not start: {line!r}")
            yield line.strip().rsplit(" ", 1)[-1]
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def write_data(folder: Path, sizes: list[int], image_kb: int) -> dict[int, Path]:
    """max(sizes) distinct image files and one seed file per size (its first n problems)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    n_max = max(sizes)
    rows = []
    for i in range(n_max):
        path = images / f"fig{i:06d}.png"
        if not path.exists():
            path.write_bytes(PNG_SIGNATURE + os.urandom(image_kb * 1000 - len(PNG_SIGNATURE)))
        question = f"Problem {i}: the figure shows a square with side 2. What is its area? (variant {i})"
        rows.append(json.dumps({"id": f"p{i:06d}", "question": question, "answer": "4", "images": [str(path)]}))
    seeds = {}
    for n in sizes:
        seeds[n] = folder / f"seed_{n}.jsonl"
        seeds[n].write_text("\n".join(rows[:n]) + "\n", encoding="utf-8")
    return seeds


def child(seed: Path, out: Path, teacher_url: str, orm_url: str, concurrency: int) -> None:
    """One size, in this fresh process: prints a JSON line with the counts, seconds and peak RSS."""
    from mathse.judging.judge import JudgeItem, PathJudge
    from mathse.run.config import MathSEConfig
    from mathse.run.records import iter_problems
    from mathse.run.storage import Journal
    from mathse.run.usage import UsageLedger
    from mathse.stages import distill

    api = {"concurrency": concurrency, "max_retries": 2, "backoff_base_s": 0.1, "timeout_s": 120}
    cfg = MathSEConfig.model_validate({
        "run": {"output_dir": str(out)},
        "model": {"base": "unused-by-the-api-calls"},
        "teacher": {"base_url": teacher_url, "model": "teacher", **api},
        "orm": {"backend": "api", "policy": "orm", "logprobs": False,
                "api": {"base_url": orm_url, "model": "orm", **api}},
    })
    # As distill and an evolve round do: problems read from their file as they are needed, the
    # teacher's replies journaled as they arrive, the paths to judge made from that journal lazily.
    n = sum(1 for _ in iter_problems(seed))
    start = time.perf_counter()
    with Journal(out / "teacher_replies.jsonl") as replies:
        distill.ask_teacher(cfg, iter_problems(seed), replies, total=n)
        teacher_s = time.perf_counter() - start
        teacher_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        answered = sum(1 for row in replies.values() if row["text"] is not None)
        items = (JudgeItem(key=f"{p.id}#0", problem=p, path=reply["text"]) for p in iter_problems(seed)
                 if (reply := replies.get(p.id)) is not None and reply["text"] is not None)
        ledger = UsageLedger(out / "usage.json", cfg.pricing)
        start = time.perf_counter()
        with Journal(out / "verdicts.jsonl") as journal:
            stats = PathJudge(cfg, "evolve", ledger).judge(items, journal, total=answered)
        judge_s = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "teacher_ok": answered, "judged": stats.correct + stats.incorrect,
                      "teacher_s": teacher_s, "judge_s": judge_s, "teacher_peak_mib": teacher_peak_mib,
                      "peak_mib": peak_mib}), flush=True)


def measure(n: int, seed: Path, work: Path, teacher_url: str, orm_url: str, concurrency: int) -> dict[str, float]:
    out = work / f"run_{n}"
    shutil.rmtree(out, ignore_errors=True)  # nothing cached: every request is paid and sent
    cmd = [sys.executable, __file__, "--child", str(seed), str(out), teacher_url, orm_url, str(concurrency)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"size {n} failed: {proc.stderr.strip()[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--image-kb", type=int, default=250)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.0, help="server latency per call, seconds")
    parser.add_argument("--keep-data", type=Path, help="write the images here and keep them (default: a temp dir)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        seed, out, teacher_url, orm_url, concurrency = args.child
        child(Path(seed), Path(out), teacher_url, orm_url, int(concurrency))
        return

    sizes = sorted(args.sizes)
    with contextlib.ExitStack() as stack:
        work = args.keep_data or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mathse-scale-")))
        seeds = write_data(work, sizes, args.image_kb)
        teacher_url = stack.enter_context(fake_server(TEACHER_REPLY, args.latency))
        orm_url = stack.enter_context(fake_server(ORM_REPLY, args.latency))
        runs = {}
        for n in sizes:
            runs[n] = run = measure(n, seeds[n], work, teacher_url, orm_url, args.concurrency)
            requests = run["n"] + run["judged"]
            run["per_request_ms"] = (run["teacher_s"] + run["judge_s"]) / requests * 1000
            print(f"{n} problems: {run['teacher_ok']} teacher answers in {run['teacher_s']:.1f} s, "
                  f"{run['judged']} ORM verdicts in {run['judge_s']:.1f} s, {run['per_request_ms']:.2f} ms/request, "
                  f"peak RSS {run['peak_mib']:.0f} MiB (after the teacher calls: {run['teacher_peak_mib']:.0f})",
                  flush=True)
            if run["teacher_ok"] != n or run["judged"] != n:
                raise SystemExit(f"size {n}: not every request was answered: {run}")
    small, large = runs[sizes[0]], runs[sizes[-1]]
    print(f"images: {args.image_kb} KB each, one distinct file per problem; concurrency {args.concurrency}; "
          f"server latency {args.latency} s")
    print(f"scale_peak_rss_mib: {large['peak_mib']:.0f}")
    print(f"scale_time_per_request_ratio: {large['per_request_ms'] / small['per_request_ms']:.3f}")
    print(f"scale_peak_rss_ratio: {large['peak_mib'] / small['peak_mib']:.3f}")


if __name__ == "__main__":
    main()
