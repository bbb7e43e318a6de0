#!/usr/bin/env bash
# One-shot GPU check of the served vLLM path (fits in ~8 minutes on one node):
#   bash benchmarks/gpu_check.sh /models/Qwen2-VL-2B-Instruct [VLLM_PYTHON]
# 1. finds the vLLM environment: $2, else $VLLM_PYTHON, else a python that imports vllm, else builds
#    /tmp/vllm-env from requirements-vllm.txt (needs the package index; ~3 min);
# 2. benchmarks/gpu_check.py: two vLLM replicas, a round of greedy paths with one replica killed midway,
#    journal exactly once, rerun sends nothing, no server left;
# 3. benchmarks/bench_cluster.py on vLLM: paths/s with 2 replicas over 1 (in-process path skipped:
#    vLLM cannot live in the project's environment, see requirements-gpu.txt).
# The model must be a real checkpoint vLLM supports (the tests' tiny random model is not: head size 16).
# Needs on the box: the project's environment (pip install -r requirements.txt) and either a vLLM
# environment or access to the package index to build one; no model is downloaded.
set -euo pipefail
MODEL=${1:?usage: gpu_check.sh MODEL_PATH [VLLM_PYTHON]}
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -c "import mathse.model.generation" || { echo "gpu_check: the project's environment is missing: pip install -r requirements.txt"; exit 2; }
VLLM_PY=${2:-${VLLM_PYTHON:-}}
if [[ -z "$VLLM_PY" ]]; then
  for cand in python3 python /opt/vllm/bin/python ~/venvs/vllm/bin/python /tmp/vllm-env/bin/python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import vllm" 2>/dev/null; then VLLM_PY=$(command -v "$cand"); break; fi
  done
fi
if [[ -z "$VLLM_PY" ]]; then
  echo "gpu_check: no python with vllm found; building /tmp/vllm-env from requirements-vllm.txt"
  python3 -m venv /tmp/vllm-env && /tmp/vllm-env/bin/pip install -q -r requirements-vllm.txt
  VLLM_PY=/tmp/vllm-env/bin/python
fi
echo "gpu_check: vLLM env $VLLM_PY: $("$VLLM_PY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)')"
echo "gpu_check: project env: $(python -c 'import torch, llamafactory; print("torch", torch.__version__, "llamafactory", llamafactory.__version__)')"
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true
timeout 330 python benchmarks/gpu_check.py "$MODEL" "$VLLM_PY" --problems 64
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
if [[ "$NGPU" -ge 2 ]]; then GPR=(--gpus-per-replica 1); else GPR=(--gpu-util 0.4); fi
# One GPU: both replicas share it (the figure then measures sharing, not scale-out); say so when reporting.
timeout 240 python benchmarks/bench_cluster.py --engine vllm --python "$VLLM_PY" --model "$MODEL" --inprocess none \
  "${GPR[@]}" --problems 256 --concurrency 64 --max-new-tokens 256 --repeats 1 --startup-timeout 200 || \
  echo "gpu_check: bench_cluster did not finish in its time box"
echo "gpu_check: done"
