#!/usr/bin/env bash
# GPU check: the bundled offline demo (`python -m mathse.demo`, demo/config.yaml) on one CUDA GPU.
#
# Made for the workplace's device machine (an image with python3 3.12 + torch, no network), run from
# the root of a checkout that carries two ignored folders:
#   .whl/      the wheels the image lacks, or has at versions LLaMA-Factory 0.9.5 refuses (transformers
#              5.6.0, datasets 4.0.0, trl 0.24.0, peft 0.18.1, ...); .whl/opt/ a fallback pandas 2.3.3
#   .gpu/      this script and repo.tar (`git archive HEAD` of the branch under test)
# Writes to $OUT (8 files at most): summary.txt (versions, CUDA, stage times, accuracy, leftover
# processes), install.log, demo.log (timestamped), gpu.csv (nvidia-smi samples), report.md,
# results.md, orm_metrics.json, stage_logs_tail.txt.
# Usage: OUT=/tmp/out DEMO_TIMEOUT=480 bash benchmarks/gpu_demo_check.sh
# Preparing (here, with network): `echo /.whl/ >> .git/info/exclude`, then the device README's
# `pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl` of: llamafactory==0.9.5
# transformers==5.6.0 tokenizers==0.22.2 datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16 trl==0.24.0
# peft==0.18.1 accelerate==1.11.0 fsspec==2025.3.0 openai==3.60.0 httpx2==2.16.2 httpcore2==2.16.2
# truststore==0.10.5 jiter==0.19.0 sniffio==1.3.1 pydantic==2.12.3 pydantic_core==2.41.4
# annotated-types==0.7.0 typing-inspection==0.4.2 typing_extensions==4.16.0 math-verify==0.9.0
# latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 fastapi==0.163.2 starlette==0.52.1
# sse-starlette==3.7.1 uvicorn==0.55.0 python-multipart==0.0.34 opentelemetry-api==1.45.2
# omegaconf==2.4.0 pytz==2026.6 (35 MB with .whl/opt: pandas==2.3.3 tzdata); ray, av, gradio and
# modelscope are optional imports the demo does not reach. Run on 2026-12-04 (benchmarks/RESULTS.md):
# `DEMO_TIMEOUT=480 bash .gpu/gpu_demo_check.sh`, carry [".whl", ".gpu"], timeout_s 570.
set -u -o pipefail
ROOT=$PWD
OUT=${OUT:-/tmp/gpu_check_out}
DEMO_TIMEOUT=${DEMO_TIMEOUT:-480}
REPO=${REPO:-/tmp/mathse}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT"
T0=$(date +%s)
say() { echo "[gpu-check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }

# 1. Carried wheels in front of the image's site-packages (the device README's recipe). Not a venv:
#    the image's python3 is itself a venv, and a venv made from it would not see its torch.
#    mathse runs LLaMA-Factory as `sys.executable -m llamafactory.cli`, which inherits PYTHONPATH.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$ROOT"/.whl/*.whl >"$OUT/install.log" 2>&1 || { say "FAILED: wheel install"; tail -5 "$OUT/install.log"; exit 1; }
mkdir -p "$REPO" && tar -xf "$ROOT/.gpu/repo.tar" -C "$REPO"
export PYTHONPATH=$SITE:$REPO PYTHONUNBUFFERED=1
# The demo is offline by design; on a machine without network a hub lookup would only hang.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# 2. Smoke test (seconds): versions, CUDA, LLaMA-Factory's own version check, and a JSON-array
#    dataset load (LLaMA-Factory reads our sharegpt files through datasets -> pandas).
smoke() {
  (cd "$(mktemp -d)" && python3 - <<'EOF'  # not the checkout: its mathse/ is not the one under test
import importlib.metadata as md, json, os, sys, tempfile
import torch
names = ["torch", "transformers", "tokenizers", "datasets", "trl", "peft", "accelerate", "llamafactory",
         "pandas", "numpy", "pyarrow", "fsspec", "huggingface_hub", "openai", "pydantic", "math-verify"]
print("python", sys.version.split()[0], sys.executable)
print("versions:", ", ".join(f"{n} {md.version(n)}" for n in names))
print("cuda:", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
from llamafactory.extras.misc import check_dependencies
check_dependencies()
import datasets
d = tempfile.mkdtemp()
p = os.path.join(d, "x.json")
json.dump([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 3, open(p, "w"))
assert len(datasets.load_dataset("json", data_files=p, split="train", cache_dir=d)) == 3
import llamafactory.api.app, llamafactory.chat, llamafactory.train.tuner, mathse.demo.run  # noqa: F401
print("smoke: ok")
EOF
  ) >>"$OUT/summary.txt" 2>&1
}
if ! smoke; then
  say "smoke test failed (tail above); retrying with the carried pandas 2.3.3"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$ROOT"/.whl/opt/*.whl >>"$OUT/install.log" 2>&1
  smoke || { say "FAILED: smoke test"; tail -30 "$OUT/summary.txt"; exit 1; }
fi
say "installed and smoke-tested"

# 3. GPU samples every 2 s while the demo runs: utilisation, memory, and which processes hold the GPU.
( while true; do
    echo "# $(date +%T) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader)"
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader | while IFS=, read -r pid mem; do
      echo "  $pid$mem $(ps -o args= -p "$pid" | cut -c1-150)"
    done
    sleep 2
  done ) >"$OUT/gpu.csv" 2>&1 &
MON=$!

# 4. The demo, as a user runs it; SIGINT at the limit (the pipeline's Ctrl-C path stops its servers).
#    Each output line gets the seconds since the start (tqdm's \r updates become lines of their own).
say "demo: start (limit ${DEMO_TIMEOUT}s)"
cd "$REPO"
timeout -s INT -k 30 "$DEMO_TIMEOUT" python3 -m mathse.demo 2>&1 \
  | python3 -u -c 'import io, sys, time
t = time.time()
for line in io.TextIOWrapper(sys.stdin.buffer, errors="replace", newline=None):
    sys.stdout.write(f"{time.time() - t:7.1f} {line}")' >"$OUT/demo.log"
RC=${PIPESTATUS[0]}
say "demo: exit code $RC"
kill "$MON" 2>/dev/null; wait "$MON" 2>/dev/null
sleep 2

# 5. Left-over processes (none expected: the pipeline stops its servers) and what still holds the GPU.
{
  echo "--- processes after the demo (python / llamafactory / mathse; expect none):"
  ps -eo pid,ppid,etimes,args | grep -E "llamafactory|mathse" | grep -v -E "grep|ps -eo" || echo "(none)"
  echo "--- all python processes (context):"
  ps -eo pid,ppid,etimes,args | grep python | grep -v grep | cut -c1-200
  echo "--- GPU compute apps after the demo:"
  nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader | grep . || echo "(none)"
  W=$REPO/demo/work/output
  echo "--- stage wall times (from demo.log timestamps; each stage runs until the next header):"
  python3 - "$OUT/demo.log" <<'EOF'
import re, sys
marks = []
last = 0.0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\s*([\d.]+) (.*)", line)
    if not m:
        continue
    last = float(m.group(1))
    s = re.search(r"=== mathse: stage (\w+) ===", m.group(2))
    if s:
        marks.append((s.group(1), last))
for (name, t), nxt in zip(marks, marks[1:] + [("end", last)]):
    print(f"  {name:8s} {nxt[1] - t:7.1f} s  (from {t:.1f} s)")
print(f"  total demo {last:.1f} s")
EOF
  echo "--- the demo's summary lines:"
  grep -E "^ *[0-9.]+ (demo:|\| |eval: |orm: |evolve: |reflect|final: |distill: |train_[a-z0-9_]+: trained|generation: )" "$OUT/demo.log" | cut -c1-400
  echo "--- LLaMA-Factory's device lines in the stage logs:"
  grep -rhoE "device: [a-z]+:?[0-9]*[^|]{0,80}|compute dtype: [a-z0-9.]+" "$W" "$OUT/demo.log" --include=*.log | sort | uniq -c
  echo "--- timings.json of each stage:"
  for f in "$W"/*/timings.json; do [ -f "$f" ] && echo "$f: $(tr -d '\n ' <"$f")"; done
} >>"$OUT/summary.txt" 2>&1

# 6. The run's own outputs.
W=$REPO/demo/work/output
cp "$W/report/report.md" "$OUT/report.md" 2>/dev/null
cp "$W/eval/results.md" "$OUT/results.md" 2>/dev/null
cp "$W/orm_model/orm_metrics.json" "$OUT/orm_metrics.json" 2>/dev/null
for f in $(find "$W" -name "*.log" | sort); do
  echo "===== ${f#$W/}"
  tr '\r' '\n' <"$f" | grep -v -E "^\s*$" | tail -n 12 | cut -c1-300
done >"$OUT/stage_logs_tail.txt" 2>&1
say "done"
exit "$RC"
