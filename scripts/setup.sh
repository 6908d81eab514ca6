#!/usr/bin/env bash
# Sets up .venv with everything datapipe needs on a fresh machine (no GPU, only the package
# registries reachable). Idempotent: a second run with unchanged requirements returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${DATAPIPE_VENV:-.venv}
LLAMA_VERSION=0.3.36
# A portable llama.cpp build: -march=native enables AVX-512/AMX, which some VMs advertise but trap on.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
STAMP="$VENV/.setup-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"

# Headless Chromium renders the HTML report in tests (tests/integration/test_report.py).
# Checked before the up-to-date stamp: a fresh machine may reuse a cached .venv.
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing chromium (apt)"
    apt-get update -q && apt-get install -y -q --no-install-recommends chromium
  else
    echo "setup: warning: chromium is missing and this is not root on a Debian/Ubuntu system;" \
      "install it (sudo apt-get install --no-install-recommends chromium) or the report test fails" >&2
  fi
fi

# pandoc converts EPUB, ODT, RTF, reStructuredText and Org files for unstructured (through pypandoc).
if ! command -v pandoc >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing pandoc (apt)"
    apt-get update -q && apt-get install -y -q --no-install-recommends pandoc
  else
    echo "setup: warning: pandoc is missing and this is not root on a Debian/Ubuntu system;" \
      "install it (sudo apt-get install --no-install-recommends pandoc) or .epub/.odt/.rtf/.rst/.org files are rejected" >&2
  fi
fi

# The Argilla server for the curation tests lives in its own virtual environment (its pins clash with ours).
bash scripts/argilla/setup.sh
# Axolotl and LLaMA-Factory, each in its own virtual environment (their pins clash with ours and each
# other's), for the tests that run the trainers' own data code on our exports.
bash scripts/axolotl/setup.sh
bash scripts/llamafactory/setup.sh

if [ -f "$STAMP" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi

echo "setup: creating $VENV"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip

# 1. PyTorch, CPU build, before anything that depends on it (an unpinned torch pulls CUDA).
"$PIP" install -q torch==2.13.0

# 2. llama-cpp-python has no wheels on PyPI: build it once, keep the wheel outside the checkout.
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/datapipe/wheels/$(echo "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  echo "setup: building llama-cpp-python $LLAMA_VERSION from source (about 10-15 minutes on 2 cores)"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$PIP" wheel -q --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
fi

# 3. datapipe and its dependencies, pinned by constraints.txt.
echo "setup: installing datapipe and dependencies"
"$PIP" install -q --find-links "$WHEELS" -c constraints.txt -e ".[dev]"

# 4. unstructured imports unstructured-inference even for the fast PDF strategy, but its
#    dependency timm pulls torchvision (a CUDA build on PyPI). Its other dependencies are
#    listed in pyproject.toml; the package itself goes in without dependencies.
"$PIP" install -q --no-deps -c constraints.txt unstructured-inference==1.6.14

"$VENV/bin/python" -c "import torch, llama_cpp, unstructured, sentence_transformers, distilabel, prefect; \
print('setup: torch', torch.__version__, '| llama_cpp', llama_cpp.__version__)"
if "$VENV/bin/pip" list 2>/dev/null | grep -q -i -E '^(torchvision|nvidia-)'; then
  echo "setup: error: CUDA packages or torchvision got installed; check constraints.txt" >&2
  exit 1
fi
rm -f "$VENV"/.setup-*
touch "$STAMP"
echo "setup: done"
