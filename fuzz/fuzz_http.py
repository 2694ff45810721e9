"""Fuzz the HTTP/1.1 request path: ``HttpConn`` → ``validate_upgrade`` → ``respond``.

Usage (from the repository root; libFuzzer flags after the corpus directories)::

    .venv/bin/python fuzz/fuzz_http.py fuzz/work/http fuzz/corpus/http \\
        -max_total_time=600 -timeout=10 -rss_limit_mb=2048

The input is the byte stream a client sends on one connection. It is run three ways:

1. **whole**: one ``receive_data`` with everything, then EOF (``receive_data(b"")``);
2. **one byte at a time**: ``receive_data`` per byte, pulling ``next_event()`` after
   each, then EOF;
3. **upgrade hand-off** (only when run 1 saw an accepted WebSocket upgrade): the
   first accepted upgrade is answered with 101 and ``trailing_data`` goes to a
   ``WsConn``.

After every ``HttpRequest`` we run ``validate_upgrade(request, DeflateOptions())`` and
answer ``respond(200, [], b"ok")``, so keep-alive cycles and pipelining are exercised.

Invariants (any other exception, or a failed assert, is a crash):

* only ``protocol.errors.RemoteProtocolError`` (``MessageTooBig`` included) escapes
  ``next_event``; after it the connection is CLOSING; ``MessageTooBig`` says 413;
* ``validate_upgrade`` returns ``UpgradeAccepted`` / ``UpgradeRejected`` and never
  raises; an accepted upgrade carries the right ``Sec-WebSocket-Accept``;
* ``respond`` never raises for a request ``next_event`` returned;
* bounded memory: the body accumulated inside ``HttpConn`` and every request body
  stay ≤ ``max_body_bytes``;
* segmentation does not matter: runs 1 and 2 produce the same requests and the same
  final outcome;
* after a 101, ``next_event`` is PAUSED and ``trailing_data`` is a suffix of the input;
  the ``WsConn`` fed with it raises nothing.

Known bugs (see ``fuzz/README.md``) are stepped around while their ids are in
``KNOWN_BUGS`` so that a long run explores past them; set ``LINKD_FUZZ_STRICT=1`` (or
pass ``known=frozenset()``) to check them too. Remove an id once its bug is fixed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from protocol import Limits, MessageTooBig, RemoteProtocolError
from protocol.http import (
    NEED_DATA,
    PAUSED,
    HttpConn,
    HttpRequest,
    HttpState,
    PeerEOF,
    UpgradeAccepted,
    UpgradeRejected,
    accept_token,
    is_websocket_upgrade,
    validate_upgrade,
)
from protocol.ws import ConnectionFailed, DeflateOptions, PeerClosed, WsConn, WsState

try:
    from fuzz.runner import run_fuzzer
except ImportError:  # run as a script: fuzz/ itself is on sys.path
    from runner import run_fuzzer  # type: ignore[no-redef]

__all__ = ["KNOWN_BUGS", "LIMITS", "check_http", "main"]

#: Small limits, so the fuzzer reaches 413 and 431 with short inputs.
LIMITS = Limits(max_header_bytes=1024, max_body_bytes=4096)
WS_LIMITS = Limits(max_message_bytes=4096, inflate_chunk_bytes=1024)
DEFLATE = DeflateOptions()

#: Bugs found by this target and not fixed yet (ids explained in fuzz/README.md).
KNOWN_BUGS: frozenset[str] = frozenset()
STRICT_ENV = "LINKD_FUZZ_STRICT"

_ALLOWED_WS_FAILURES = {1002, 1007, 1009}

Request = tuple[str, str, str, tuple[tuple[str, str], ...], bytes]


def _known(known: frozenset[str] | None) -> frozenset[str]:
    if known is not None:
        return known
    return frozenset() if os.environ.get(STRICT_ENV) else KNOWN_BUGS


@dataclass
class _Run:
    """What one way of feeding the input produced, for the segmentation comparison."""

    requests: list[Request] = field(default_factory=list)
    end: str = ""
    #: First request answered with an accepted WebSocket upgrade, if any.
    upgrade: UpgradeAccepted | None = None


def _check_body_bound(conn: HttpConn) -> None:
    buffered = len(conn._body)  # the bound under test (one bytearray)
    assert buffered <= LIMITS.max_body_bytes, f"HttpConn buffered {buffered} body bytes"


def _nonascii_digit(req: HttpRequest) -> bool:
    return any(
        ch.isdigit() and not ch.isascii()
        for value in req.header_list("sec-websocket-extensions")
        for ch in value
    )


def _validate(req: HttpRequest, known: frozenset[str]) -> UpgradeAccepted | UpgradeRejected | None:
    try:
        outcome = validate_upgrade(req, DEFLATE)
    except ValueError:
        if "ext-bits-nonascii-digit" in known and _nonascii_digit(req):
            return None
        raise
    if isinstance(outcome, UpgradeAccepted):
        headers = dict(outcome.headers)
        key = req.header("sec-websocket-key")
        assert key is not None
        assert headers["sec-websocket-accept"] == accept_token(key.strip())
        if outcome.deflate is not None:
            assert headers["sec-websocket-extensions"] == outcome.deflate.response
    else:
        assert isinstance(outcome, UpgradeRejected), outcome
        assert outcome.status in (400, 405, 426), outcome
    return outcome


def _drain(conn: HttpConn, run: _Run, known: frozenset[str], *, upgrade: bool, data: bytes) -> bool:
    """Pull events until NEED_DATA/PAUSED; True when the connection is finished."""
    while True:
        try:
            event = conn.next_event()
        except MessageTooBig as exc:
            assert exc.status_hint == 413
            assert conn.state is HttpState.CLOSING
            run.end = "error 413"
            return True
        except RemoteProtocolError as exc:
            assert 400 <= exc.status_hint < 600, exc.status_hint
            assert conn.state is HttpState.CLOSING
            run.end = f"error {exc.status_hint}"
            return True
        finally:
            _check_body_bound(conn)
        if isinstance(event, HttpRequest):
            if _on_request(conn, event, run, known, upgrade=upgrade, data=data):
                return True
            continue
        if isinstance(event, PeerEOF):
            assert conn.state is HttpState.CLOSING
            run.end = "eof"
            return True
        assert event is NEED_DATA or event is PAUSED, event
        if conn.state is HttpState.READING_BODY:
            conn.continue_bytes()  # what the engine does; must not raise
        run.end = "paused" if event is PAUSED else "need_data"
        return False


def _on_request(
    conn: HttpConn,
    req: HttpRequest,
    run: _Run,
    known: frozenset[str],
    *,
    upgrade: bool,
    data: bytes,
) -> bool:
    assert len(req.body) <= LIMITS.max_body_bytes
    assert conn.state is HttpState.RESPONDING
    assert conn.next_event() is PAUSED  # the next request waits for this answer
    run.requests.append((req.method, req.target, req.http_version, req.headers, req.body))
    outcome = _validate(req, known)
    if isinstance(outcome, UpgradeAccepted) and is_websocket_upgrade(req):
        if run.upgrade is None:
            run.upgrade = outcome
        if upgrade:
            _hand_off(conn, outcome, data)
            run.end = "switched"
            return True
    status = 200
    if req.method == "CONNECT" and "connect-2xx" in known:
        status = 405
    out = conn.respond(status, [], b"ok")
    assert out.startswith(b"HTTP/1.1 "), out[:20]
    assert conn.state in (HttpState.IDLE, HttpState.READING, HttpState.CLOSING), conn.state
    return False


def _hand_off(conn: HttpConn, outcome: UpgradeAccepted, data: bytes) -> None:
    out = conn.accept_upgrade(outcome.headers)
    assert out.startswith(b"HTTP/1.1 101 "), out[:20]
    assert conn.state is HttpState.SWITCHED
    assert conn.next_event() is PAUSED
    trailing = conn.trailing_data
    assert data.endswith(trailing)
    ws = WsConn(WS_LIMITS, outcome.deflate, trailing_data=trailing)
    ws.receive_data(None)
    for event in ws.events():
        if isinstance(event, ConnectionFailed):
            assert event.code in _ALLOWED_WS_FAILURES, event
        if isinstance(event, PeerClosed | ConnectionFailed):
            assert ws.state is WsState.CLOSED
    ws.data_to_send()


def _feed(data: bytes, chunks: list[bytes], known: frozenset[str], *, upgrade: bool) -> _Run:
    conn = HttpConn(LIMITS)
    run = _Run()
    for chunk in chunks:
        conn.receive_data(chunk)
        if _drain(conn, run, known, upgrade=upgrade, data=data):
            return run
    conn.receive_data(b"")
    _drain(conn, run, known, upgrade=upgrade, data=data)
    return run


def check_http(data: bytes, known: frozenset[str] | None = None) -> None:
    """Run every invariant of this target on one input; raise on a violation."""
    bugs = _known(known)
    whole = _feed(data, [data] if data else [], bugs, upgrade=False)
    split = _feed(data, [data[i : i + 1] for i in range(len(data))], bugs, upgrade=False)
    if whole.requests != split.requests or whole.end != split.end:
        # One difference is by design: a head that is both malformed and larger than
        # max_header_bytes gets 400 when it arrives whole (h11 validates a complete
        # head) and 431 when it trickles in (the size limit fires before the head is
        # complete). Both refuse it and close.
        both_refusals = (
            whole.requests == split.requests
            and whole.end == "error 400"
            and split.end == "error 431"
        )
        tolerated = both_refusals or (
            "header-limit-split" in bugs
            and split.end == "error 431"
            and whole.requests[: len(split.requests)] == split.requests
        )
        assert tolerated, (
            f"segmentation changed the outcome: whole {len(whole.requests)} requests, "
            f"end {whole.end!r}; byte-wise {len(split.requests)} requests, end {split.end!r}"
        )
    if whole.upgrade is not None:
        _feed(data, [data], bugs, upgrade=True)


def main() -> None:
    run_fuzzer(check_http)


if __name__ == "__main__":
    main()
