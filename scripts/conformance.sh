#!/usr/bin/env bash
# Autobahn|Testsuite against `engine --echo /`, with and without compression.
#
# Uses the shared runner (../shared/tools/autobahn) when it is present; it is not part
# of the project, so this script is not part of the test command either.
#
# Usage: bash scripts/conformance.sh [quick|full|nocompression] [OUTDIR]
#   quick          all but 9.*, 12.*, 13.*           (~10 s)
#   full           every case, 1-7, 9, 10, 12, 13    (517 cases, ~15 min)   [default]
#   nocompression  every case, engine refuses permessage-deflate
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-full}
OUT=${2:-/tmp/linkd-autobahn-$MODE}
RUNNER=${AUTOBAHN_RUNNER:-../shared/tools/autobahn/run.sh}
PORT=${PORT:-9001}

if [ ! -x "$RUNNER" ]; then
    echo "conformance: Autobahn runner not found at $RUNNER (set AUTOBAHN_RUNNER)" >&2
    exit 2
fi
[ -x /opt/autobahn/bin/wstest ] || "$(dirname "$RUNNER")/setup.sh"

# 9.* sends messages up to 16 MiB: raise the engine's limits for the run.
# The suite floods one connection with thousands of messages: no message rate limit.
# 9.3/9.4 send one message in up to 65,536 fragments: no fragment cap, no frame rate.
ENGINE_ARGS=(--listen "127.0.0.1:$PORT" --ipc "" --echo / --ws-rate 0 --max-message-size 16m
             --max-message-fragments 0 --ws-frame-rate 0
             --max-outbound-buffer 64m --log-level warning --no-access-log)
RUN_ARGS=(--agent linkd)
case "$MODE" in
    quick) ;;
    full) RUN_ARGS+=(--all) ;;
    nocompression) RUN_ARGS+=(--all); ENGINE_ARGS+=(--no-compression) ;;
    *) echo "unknown mode $MODE" >&2; exit 2 ;;
esac

.venv/bin/engine "${ENGINE_ARGS[@]}" &
ENGINE_PID=$!
trap 'kill $ENGINE_PID 2>/dev/null; wait $ENGINE_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.1
done

"$RUNNER" "${RUN_ARGS[@]}" "ws://127.0.0.1:$PORT/" "*" "$OUT"
python3 scripts/autobahn_groups.py "$OUT"
python3 - "$OUT/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
b = s["behavior"]
bad = b.get("FAILED", 0) + b.get("NON-STRICT", 0) + len(s.get("missing", []))
print("conformance:", "PASS" if bad == 0 else "FAIL", json.dumps(b))
sys.exit(1 if bad else 0)
PY
