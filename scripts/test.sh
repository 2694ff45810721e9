#!/usr/bin/env bash
# The whole test suite, from a fresh clone: venv, install, lint, types, tests.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== import boundaries"
.venv/bin/python scripts/check_imports.py
echo "== chromium (for the chat page's browser test)"
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >/dev/null || echo "could not install chromium: the browser test will be skipped"
fi
echo "== haproxy, nginx (tests/engine/test_proxy.py runs both on 127.0.0.1; missing: they fail)"
if { ! command -v haproxy >/dev/null || ! command -v nginx >/dev/null; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy nginx; } \
        >/dev/null || echo "could not install haproxy/nginx: their tests will fail (LINKD_ALLOW_SKIP=1 skips)"
fi
echo "== redis-server (the scale-out tests start their own when none answers)"
if ! command -v redis-server >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } \
        >/dev/null || echo "could not install redis-server: the scale-out tests will fail"
fi
echo "== pytest"
# Exit code 5 ("no tests collected") is a failure like any other non-zero code.
.venv/bin/python -m pytest "$@"
