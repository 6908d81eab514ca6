#!/usr/bin/env bash
# Sets everything up, then runs the demo pipeline over examples/docs with the embedded teacher.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/datapipe run examples/pipeline.yaml "$@"
