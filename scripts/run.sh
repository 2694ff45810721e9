#!/usr/bin/env bash
# Install and run the engine on :3000 (plus the echo endpoint on /echo).
# Usage: bash scripts/run.sh [engine flags]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/engine --listen "${LINKD_LISTEN:-:3000}" --ipc "${LINKD_IPC:-/tmp/linkd.sock}" --echo /echo "$@"
