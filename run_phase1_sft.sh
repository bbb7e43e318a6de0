#!/usr/bin/env bash
# Stage 1: distill D_SFT with the teacher and train M0. Extra arguments go to main.py.
set -euo pipefail
cd "$(dirname "$0")"
exec python main.py --stage distill --config "${CONFIG:-config.yaml}" "$@"
