#!/usr/bin/env bash
# Install and run the engine on :3000 with the chat example (examples/chat: embedded
# Postgres, demo mode) and the echo endpoint on /echo. Then open http://localhost:3000/chat/
# Usage: bash scripts/run.sh [engine flags]
#   LINKD_JWT_SECRET  the token secret (default: a random one for this run)
#   DATABASE_URL      use this Postgres instead of the embedded one (data in .data/)
#   CHAT_DEMO=0       turn demo mode off (the page then asks for a token)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[examples]'

if [ -z "${LINKD_JWT_SECRET:-}" ]; then
    LINKD_JWT_SECRET=$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(32))')
    echo "run.sh: LINKD_JWT_SECRET is not set; using a random secret for this run" >&2
fi
# The engine verifies tokens with it; its chat workers inherit it to mint demo tokens.
export LINKD_JWT_SECRET
export CHAT_DEMO=${CHAT_DEMO:-1}

listen=${LINKD_LISTEN:-:3000}
echo "run.sh: chat page at http://localhost:${listen##*:}/chat/ (echo WebSocket at /echo)" >&2
exec .venv/bin/engine --listen "$listen" --ipc "${LINKD_IPC:-/tmp/linkd.sock}" --echo /echo \
    --service examples.chat.service --workers "${LINKD_WORKERS:-2}" "$@"
