#!/usr/bin/env bash
# Every stage in order (finished stages are skipped on rerun). Extra arguments go to main.py.
set -euo pipefail
cd "$(dirname "$0")"
exec python main.py --stage all --config "${CONFIG:-config.yaml}" "$@"
