"""Fuzz the IPC decoder (docs/ipc.md): framing, CBOR profile, schema and state machine.

Usage (from the repository root; libFuzzer flags after the corpus directories)::

    .venv/bin/python fuzz/fuzz_ipc.py fuzz/work/ipc fuzz/corpus/ipc -max_total_time=600 -timeout=10

Input layout: the first byte picks the side (bit 0: 0 = the engine receiving from a
worker, 1 = a worker receiving from the engine, after its hello) and the chunk size
for the byte-at-a-time pass (bits 1-7, 0 = one byte); the rest is the byte stream.

Invariants (any other exception, or a failed assert, is a crash):

* ``IpcConn.next_message`` returns a message of a type this side receives, returns
  None (needs more bytes), or raises ``IpcProtocolError`` with an ``IpcError`` reason:
  nothing else escapes, and after the error the connection is CLOSED;
* feeding the stream whole or in chunks gives the same messages and the same outcome;
* the frame decoder never holds more than ``max_frame`` + one chunk of unparsed bytes
  (the length is checked before the body is buffered);
* every decoded message encodes back to a body that decodes to an equal message.
"""

from __future__ import annotations

import os

from protocol.ipc import (
    ENGINE_RECEIVES,
    WORKER_RECEIVES,
    IpcConn,
    IpcError,
    IpcProtocolError,
    IpcState,
    Role,
    decode,
    encode,
)
from protocol.ipc import messages as m

try:
    from fuzz.runner import run_fuzzer
except ImportError:  # run as a script: fuzz/ itself is on sys.path
    from runner import run_fuzzer  # type: ignore[no-redef]

__all__ = ["KNOWN_BUGS", "MAX_FRAME", "check_ipc", "main"]

#: Small, so the fuzzer reaches FRAME_TOO_LARGE with short inputs.
MAX_FRAME = 2048
#: Bugs found by this target and not fixed yet (see fuzz/README.md).
KNOWN_BUGS: frozenset[str] = frozenset()
STRICT_ENV = "LINKD_FUZZ_STRICT"


def _conn(worker_side: bool) -> IpcConn:
    if not worker_side:
        return IpcConn(Role.ENGINE, MAX_FRAME)
    conn = IpcConn(Role.WORKER, MAX_FRAME)
    conn.send(
        m.Hello(versions=[m.PROTOCOL_VERSION], service=m.Registration("fuzz"), max_frame=MAX_FRAME)
    )
    return conn


def _run(stream: bytes, worker_side: bool, chunk: int) -> tuple[list[object], str | None]:
    conn = _conn(worker_side)
    receives = WORKER_RECEIVES if worker_side else ENGINE_RECEIVES
    out: list[object] = []
    outcome: str | None = None
    for i in range(0, len(stream), chunk):
        conn.receive_data(stream[i : i + chunk])
        try:
            while (msg := conn.next_message()) is not None:
                assert type(msg) in receives.values(), msg
                assert decode(encode(msg), receives) == msg, msg
                out.append(msg)
        except IpcProtocolError as exc:
            assert isinstance(exc.reason, IpcError), exc
            assert conn.state is IpcState.CLOSED
            outcome = exc.reason.value
            break
        # Unparsed bytes: at most a frame being read plus what the last read brought.
        assert len(conn._decoder) <= MAX_FRAME + 4 + chunk, len(conn._decoder)
    return out, outcome


def check_ipc(data: bytes, known: frozenset[str] | None = None) -> None:
    """Run every invariant on one input; raise on a violation."""
    if known is None:
        known = frozenset() if os.environ.get(STRICT_ENV) else KNOWN_BUGS
    if not data:
        return
    worker_side = bool(data[0] & 1)
    chunk = (data[0] >> 1) or 1
    stream = data[1:]
    whole = _run(stream, worker_side, max(1, len(stream)))
    pieces = _run(stream, worker_side, chunk)
    # A stream cut short by an error may have parsed fewer messages in pieces only if
    # the error is the same one; otherwise both ways must agree exactly.
    assert whole == pieces, (whole, pieces)


def main() -> None:
    run_fuzzer(check_ipc)


if __name__ == "__main__":
    main()
