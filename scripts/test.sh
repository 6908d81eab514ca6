#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (unit + integration with real servers on 127.0.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
exec .venv/bin/python -m pytest "$@"
