#!/usr/bin/env bash
# Install and run the engine on 127.0.0.1:3000 with the chat example (examples/chat:
# embedded Postgres, demo mode) and the echo endpoint on /echo. Then open
# http://127.0.0.1:3000/chat/
# Usage: bash scripts/run.sh [engine flags]
#   LINKD_LISTEN      where to listen (default 127.0.0.1:3000, this machine only; :3000 is
#                     every interface: with demo mode on, only this machine gets tokens)
#   LINKD_JWT_SECRET  the token secret (default: a random one for this run)
#   DATABASE_URL      use this Postgres instead of the embedded one (data in .data/)
#   CHAT_DEMO=0       turn demo mode off (the page then asks for a token)
#   LINKD_ALLOWED_ORIGINS  origins whose pages may open the WebSocket (default: the
#                     engine's own, http://HOST:PORT and http://localhost:PORT)
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

# Demo mode hands out tokens for any demo user: loopback only unless told otherwise.
listen=${LINKD_LISTEN:-127.0.0.1:3000}
case "$CHAT_DEMO" in
1 | true | yes | on)
    echo "run.sh: WARNING: demo mode is on (CHAT_DEMO=0 turns it off): anyone on this machine" \
        "can sign in as any demo user; never use it where real users connect" >&2
    case "${listen%:*}" in
    127.* | localhost | "[::1]") ;;
    *) echo "run.sh: WARNING: listening on ${listen} beyond this machine; demo tokens are" \
        "still only given to clients on it" >&2 ;;
    esac
    ;;
esac
host=${listen%:*}
case "$host" in "" | 0.0.0.0 | "[::]") host=127.0.0.1 ;; esac
echo "run.sh: chat page at http://${host}:${listen##*:}/chat/ (echo WebSocket at /echo)" >&2
# The page is served by the engine itself: only pages of its own origin may open the
# chat's WebSocket (LINKD_ALLOWED_ORIGINS, comma-separated, replaces the list).
origins=${LINKD_ALLOWED_ORIGINS:-http://${host}:${listen##*:},http://localhost:${listen##*:}}
exec .venv/bin/engine --listen "$listen" --ipc "${LINKD_IPC:-/tmp/linkd.sock}" --echo /echo \
    --allowed-origins "$origins" \
    --service examples.chat.service --workers "${LINKD_WORKERS:-2}" "$@"
