#!/usr/bin/env bash
# Sets up what a local Argilla server needs (tests/integration/test_curation.py, scripts/argilla/stack.py):
# Debian's redis-server, and argilla-server 2.8.0 with osmem-server in their own virtual environment
# .venv-argilla (argilla-server pins an old typer and needs click<8.2, which datapipe's own pins do not allow).
# Idempotent: returns at once when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-python3}
VENV=${DATAPIPE_ARGILLA_VENV:-.venv-argilla}
STAMP="$VENV/.setup-$(cat scripts/argilla/constraints.txt scripts/argilla/setup.sh | sha256sum | cut -c1-16)"

if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "setup: installing redis-server (apt)"
    apt-get update -q && apt-get install -y -q --no-install-recommends redis-server
  else
    echo "setup: warning: redis-server is missing and this is not root on a Debian/Ubuntu system;" \
      "install it (sudo apt-get install redis-server) or the Argilla tests fail" >&2
  fi
fi

if [ -f "$STAMP" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi
echo "setup: creating $VENV (argilla-server 2.8.0, osmem-server)"
"$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -c scripts/argilla/constraints.txt argilla-server==2.8.0 "click<8.2" osmem-server
"$VENV/bin/python" -c "import importlib.metadata as m, osmem_server; print('setup: argilla-server', m.version('argilla-server'))"
rm -f "$VENV"/.setup-*
touch "$STAMP"
