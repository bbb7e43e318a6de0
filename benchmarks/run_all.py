"""Run every benchmark and write benchmarks/RESULTS.md (machine, date, figures with targets).

    python benchmarks/run_all.py

Each script runs in its own process and prints its figures as `name: value` lines (the last
line is its headline figure); this collects them and checks them against their targets.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Figure:
    name: str
    script: str
    target: str  # human-readable
    ok: object  # value -> bool, or None for an informational figure
    what: str


FIGURES = [
    Figure("api_calls_achieved_over_ideal", "bench_api_calls.py", ">= 0.90", lambda v: v >= 0.90,
           "teacher/ORM calls: achieved / ideal rate, 2,000 calls at concurrency 64, 0.5 s server latency"),
    Figure("resume_repeated_work", "bench_resume.py", "0", lambda v: v == 0,
           "API calls, generations, ORM verdicts and training launches repeated by a rerun of finished "
           "distill, evolve, reflect, final"),
    Figure("dataset_build_time_over_json_dump", "bench_dataset_build.py", "<= 2.0", lambda v: v <= 2.0,
           "LLaMA-Factory dataset for 300K records: time / a bare json.dump of the same records"),
    Figure("dataset_build_peak_mib", "bench_dataset_build.py", "< 2048", lambda v: v < 2048,
           "peak RSS (MiB) writing that dataset"),
    Figure("generation_concurrent_over_sequential", "bench_generation.py", "informational", None,
           "generation: concurrent / one-request-at-a-time paths/s, same ChatModel backend (huggingface, CPU)"),
    Figure("cluster_two_over_one_replica", "bench_cluster.py", ">= 1.5", lambda v: v >= 1.5,
           "served generation (llamafactory-cli api replicas, 1 torch thread each): paths/s, 2 replicas / 1"),
    Figure("cluster_served_over_inprocess", "bench_cluster.py", ">= 0.9", lambda v: v >= 0.9,
           "served generation, 1 replica / the in-process ChatModel, same items and torch threads"),
    Figure("batch_extra_peak_mib", "bench_batch_api.py", "< 64", lambda v: v < 64,
           "Batch API mode: peak RSS (MiB) above the built requests, 2,000 requests with 100 KB images, 20 MB files"),
    Figure("pipeline_overhead_share", "bench_overhead.py", "< 0.02", lambda v: v < 0.02,
           "largest share of a stage's wall time outside model compute and API waits"),
    Figure("scale_peak_rss_ratio", "bench_scale.py", "<= 1.2", lambda v: v <= 1.2,
           "distill teacher calls + ORM judging of one round (test server, 250 KB images): peak RSS at 20K "
           "problems / at 1K"),
    Figure("scale_peak_rss_mib", "bench_scale.py", "< 1024", lambda v: v < 1024,
           "peak RSS (MiB) of that run at 20K problems"),
    Figure("scale_time_per_request_ratio", "bench_scale.py", "<= 1.2", lambda v: v <= 1.2,
           "time per request at 20K problems / at 1K"),
    Figure("evolve_rebuild_peak_rss_ratio", "bench_evolve_rebuild.py", "<= 1.2", lambda v: v <= 1.2,
           "evolve's rewrite of sft_chosen / sft_rejected / hard_problems / history / D_SFT after a round: peak RSS "
           "at 20K problems per round / at 2K (3 rounds, 3 rejected paths per problem)"),
    Figure("evolve_rebuild_peak_mib", "bench_evolve_rebuild.py", "< 1024", lambda v: v < 1024,
           "peak RSS (MiB) of that rewrite at 20K problems per round (180K rejected paths, 204 MiB)"),
    Figure("eval_probe_agreement", "bench_eval_extraction.py", ">= 0.95", lambda v: v >= 0.95,
           "eval rule scorer: share of 300 realistic MathVista/MathVerse/MathVision responses given the human "
           "grader's verdict"),
    Figure("eval_probe_wrong_passed", "bench_eval_extraction.py", "0", lambda v: v == 0,
           "eval rule scorer: wrong answers passed on that probe set"),
    Figure("eval_correct_unextracted_share", "bench_eval_extraction.py", "<= 0.05", lambda v: v <= 0.05,
           "eval rule scorer: share of the correct answers in which the rules find no answer"),
    Figure("eval_heldout_agreement", "bench_eval_extraction.py", "informational", None,
           "agreement on the held-out part alone (111 responses written after the rules were changed)"),
    Figure("eval_heldout_unextracted_share", "bench_eval_extraction.py", "informational", None,
           "share of the held-out correct answers in which the rules find no answer"),
    Figure("engine_identical_share_min", "bench_engine_agreement.py", ">= 0.95", lambda v: v >= 0.95,
           "the demo's M0 on its 150 test problems, greedy, through the in-process ChatModel, llamafactory-cli api "
           "and vLLM (CPU): smallest share of texts identical to the in-process engine's (needs `make demo`)"),
    Figure("engine_accuracy_max_diff_items", "bench_engine_agreement.py", "<= 1", lambda v: v <= 1,
           "largest accuracy difference between those engines, in problems"),
    Figure("engine_unpatched_inprocess_accuracy", "bench_engine_agreement.py", "informational", None,
           "the same M0 through LLaMA-Factory's ChatModel as shipped (no Qwen-VL positions adapter)"),
]

ARGS = {"bench_generation.py": ["--repeats", "2"]}
TIMEOUTS = {"bench_scale.py": 1800}  # 40K requests and 5 GB of images to write; 600 s otherwise


def run_script(script: str) -> tuple[dict[str, float], float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *ARGS.get(script, [])],
        capture_output=True,
        text=True,
        timeout=TIMEOUTS.get(script, 600),
    )
    seconds = time.perf_counter() - start
    values = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^([a-z_]+): (-?[0-9.]+(?:e-?\d+)?)\s*$", proc.stdout, re.M)
    }
    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
    return values, seconds, status


# RESULTS.md below this line is written by hand (measured runs, missed targets, what was tried): kept.
KEEP_BELOW = "<!-- run_all.py writes everything above this line; it keeps what is below -->"


def kept_notes() -> str:
    """The hand-written part of RESULTS.md, as it is now."""
    path = HERE / "RESULTS.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return text.split(KEEP_BELOW + "\n", 1)[1] if KEEP_BELOW + "\n" in text else ""


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0.0)
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "transformers", "llamafactory", "openai"))
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, no GPU; Python {platform.python_version()}; {versions}"


def main() -> int:
    results: dict[str, float] = {}
    runs = []
    for script in dict.fromkeys(f.script for f in FIGURES):
        values, seconds, status = run_script(script)
        results.update(values)
        runs.append((script, seconds, status))
        print(f"{script}: {status} in {seconds:.0f} s: {values}", flush=True)
    lines = [
        "# MathSE benchmark results",
        "",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {machine()}",
        "- command: `python benchmarks/run_all.py`",
        "",
        "| figure | value | target | pass | what |",
        "|---|---:|---|---|---|",
    ]
    failed = 0
    for fig in FIGURES:
        value = results.get(fig.name)
        if value is None:
            verdict, shown = "missing", "-"
            failed += 1
        else:
            shown = f"{value:g}"
            verdict = "-" if fig.ok is None else ("yes" if fig.ok(value) else "NO")
            failed += verdict == "NO"
        lines.append(f"| `{fig.name}` | {shown} | {fig.target} | {verdict} | {fig.what} |")
    lines += ["", "| script | seconds | status |", "|---|---:|---|"]
    lines += [f"| `{script}` | {seconds:.0f} | {status} |" for script, seconds, status in runs]
    lines += [
        "",
        "Notes: on this 2-core CPU machine the tiny model's generation is bound by Python overhead, so concurrent "
        "requests do not beat one at a time there; the figure that matters is the same script with "
        "`--backend vllm --model <real model>` on a GPU node, where vLLM batches the requests in flight.",
    ]
    lines += ["", KEEP_BELOW]
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n" + kept_notes(), encoding="utf-8")
    print(f"wrote {HERE / 'RESULTS.md'}; {failed} figure(s) off target or missing")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
