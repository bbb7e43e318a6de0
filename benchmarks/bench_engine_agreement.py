"""One checkpoint, every engine, the same answers? (issue 24)

Evaluates one checkpoint (default: the demo's M0, `demo/work/output/sft_model_stage0`, after
`make demo`) greedily on a problem set (default: the demo's 150 held-out problems) with
`--stage eval`, once per engine: the in-process ChatModel, `llamafactory-cli api` servers and vLLM
servers the pipeline starts and stops (vLLM from `make vllm-env`'s .venv-vllm, or --vllm-python).
Also LLaMA-Factory's ChatModel as shipped, without mathse/model/llamafactory_qwen_vl_positions.py, in a
process of its own: the engine every figure of this project came through before issue 24.

Prints per engine its accuracy and wall time, then the figures (`name: value` lines):

    engine_unpatched_inprocess_accuracy   the shipped in-process engine (informational: the bug)
    engine_accuracy_max_diff_items        largest accuracy difference between engines, in items (target <= 1)
    engine_identical_share_min            smallest share of texts identical to the in-process engine's (>= 0.95)

    python benchmarks/bench_engine_agreement.py [--model DIR] [--data test.jsonl] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathse.answers.extraction import check_path  # noqa: E402
from mathse.cli import main as mathse_main  # noqa: E402
from mathse.run.config_loading import load_config  # noqa: E402
from mathse.run.records import read_problems  # noqa: E402
from mathse.run.storage import iter_jsonl, mark_done  # noqa: E402
from mathse.testing.shipped_chat_model import shipped_greedy_texts  # noqa: E402

ENGINES: dict[str, dict[str, Any]] = {
    "in-process": {"inference": {"backend": "huggingface"}},
    "llamafactory-cli api": {"inference": {"backend": "served"}, "serve": {"engine": "llamafactory", "replicas": 1}},
    "vllm": {"inference": {"backend": "served"},
             "serve": {"engine": "vllm", "replicas": 1, "vllm_cpu": True, "env": {"VLLM_CPU_KVCACHE_SPACE": "1"}}},
}


def evaluate(work: Path, model: Path, data: Path, engine: str, max_new_tokens: int,
             vllm_python: str) -> tuple[dict[str, dict[str, Any]], float]:
    cfg = yaml.safe_load((ROOT / "demo" / "config.yaml").read_text())
    run = work / engine.replace(" ", "_")
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cfg["run"]["output_dir"] = str(run / "output")
    cfg["model"]["base"] = str(model)
    cfg["data"] = {"seed_file": str(data), "pool_file": str(data)}
    cfg["llama_factory"]["recipe"] = str(ROOT / "configs" / "llama_factory" / "sft_full.yaml")
    cfg["orm"] = {"backend": "rule", "policy": "rule"}
    for section, values in ENGINES[engine].items():
        cfg.setdefault(section, {}).update(values)
    if engine == "vllm":
        cfg["serve"]["python"] = vllm_python
    cfg["inference"].update({"temperature": 0, "n_paths": 1, "concurrency": 4})
    cfg["eval"] = {"checkpoints": ["stage0"], "max_new_tokens": max_new_tokens,
                   "benchmarks": [{"name": "test", "format": "jsonl", "path": str(data)}]}
    config = run / "config.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    m0 = load_config(config).model_path("sft_model_stage0")
    shutil.copytree(model, m0)
    mark_done(m0, {"job": f"copy of {model}"})
    start = time.perf_counter()
    if mathse_main(["--stage", "eval", "--config", str(config)]) != 0:
        raise SystemExit(f"eval through {engine} failed; see {run}")
    seconds = time.perf_counter() - start
    rows = iter_jsonl(run / "output" / "eval" / "stage0" / "test" / "predictions.jsonl")
    return {row["id"]: row for row in rows}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "demo" / "work" / "output" / "sft_model_stage0")
    parser.add_argument("--data", type=Path, default=ROOT / "demo" / "work" / "data" / "test.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--vllm-python", default=os.environ.get("MATHSE_VLLM_PYTHON")
                        or str(ROOT / ".venv-vllm" / "bin" / "python"))
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        raise SystemExit(f"no checkpoint at {args.model}: run `make demo` first, or pass --model")
    work = ROOT / "benchmarks" / "work" / "engines"
    work.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    if args.limit:
        data = work / "problems.jsonl"
        lines = args.data.read_text().splitlines()[: args.limit]
        root = args.data.resolve().parent
        rows = [json.loads(line) for line in lines]
        for row in rows:
            row["images"] = [str(root / image) for image in row["images"]]
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))

    results = {engine: evaluate(work, args.model.resolve(), data, engine, args.max_new_tokens, args.vllm_python)
               for engine in ENGINES}
    reference = {i: row["response"] for i, row in results["in-process"][0].items()}
    n = len(reference)
    correct = {engine: sum(bool(r["correct"]) for r in rows.values()) for engine, (rows, _) in results.items()}
    identical = {engine: sum(rows[i]["response"] == reference[i] for i in reference)
                 for engine, (rows, _) in results.items()}
    for engine, (_, seconds) in results.items():
        print(f"{engine}: accuracy {100 * correct[engine] / n:.1f}% ({correct[engine]}/{n}), identical to "
              f"in-process {identical[engine]}/{n}, eval wall {seconds:.0f} s")
    problems = read_problems(data)
    texts = shipped_greedy_texts(args.model.resolve(), problems, args.max_new_tokens)
    shipped = sum(check_path(texts[p.id], p.answer).correct for p in problems)
    same = sum(texts[p.id] == reference[p.id] for p in problems)
    print(f"in-process as shipped (no adapter): accuracy {100 * shipped / n:.1f}% ({shipped}/{n}), "
          f"identical to the adapted engine {same}/{n}")
    print(f"engine_unpatched_inprocess_accuracy: {shipped / n:.3f}")
    print(f"engine_accuracy_max_diff_items: {max(correct.values()) - min(correct.values())}")
    print(f"engine_identical_share_min: {min(identical.values()) / n:.3f}")


if __name__ == "__main__":
    main()
