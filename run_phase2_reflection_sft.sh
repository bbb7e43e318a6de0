#!/usr/bin/env bash
# Stage 3: reflection data with ORM feedback, then the final SFT. Extra arguments go to main.py.
set -euo pipefail
cd "$(dirname "$0")"
python main.py --stage reflect --config "${CONFIG:-config.yaml}" "$@"
exec python main.py --stage final --config "${CONFIG:-config.yaml}" "$@"
