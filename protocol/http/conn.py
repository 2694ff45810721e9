"""HttpConn: the server side of one HTTP/1.1 connection, over h11 (RFC 9112).

h11 does the parsing; this core adds what a gateway needs around it: whole requests
with their bodies under a size limit (413), header limits (431), the keep-alive
cycle with pipelining (requests come out one at a time, in order, and the next is
parsed only after the current one was answered), and the hand-off of the bytes that
follow a 101 to the WebSocket core (``trailing_data``: nothing is parsed twice).
"""

from __future__ import annotations

import sys
from enum import Enum
from http import HTTPStatus
from typing import Final

import h11

from ..errors import LocalProtocolError, MessageTooBig, RemoteProtocolError
from ..limits import Limits
from .events import HttpRequest, PeerEOF

__all__ = ["NEED_DATA", "PAUSED", "HttpConn", "HttpState", "build_response"]


class _Sentinel(Enum):
    NEED_DATA = "need_data"
    PAUSED = "paused"


#: More bytes are needed before the next event.
NEED_DATA: Final = _Sentinel.NEED_DATA
#: A request is being answered (or a protocol switch is pending); call
#: ``next_event()`` again after the response is complete.
PAUSED: Final = _Sentinel.PAUSED

Event = HttpRequest | PeerEOF | _Sentinel


class HttpState(Enum):
    #: No byte of the next request has arrived yet (keep-alive idle).
    IDLE = "idle"
    #: Part of a request's head has arrived; the header timeout applies.
    READING = "reading"
    #: The head is complete, the body is arriving; the body timeout applies.
    READING_BODY = "reading_body"
    #: A complete request is waiting for its response.
    RESPONDING = "responding"
    #: Switched to another protocol after a 101.
    SWITCHED = "switched"
    #: The connection must close once what is queued has been written.
    CLOSING = "closing"


def build_response(
    status: int,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    close: bool = False,
) -> bytes:
    """Serialize a complete response without any parser state.

    Used for errors (400, 408, 413, 431...) that must be answerable whatever state
    h11 is in, including after it rejected the request.
    """
    phrase = _phrase(status)
    lines = [f"HTTP/1.1 {status} {phrase}"]
    names = set()
    for name, value in headers or ():
        names.add(name.lower())
        lines.append(f"{name}: {value}")
    if "content-length" not in names:
        lines.append(f"content-length: {len(body)}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class HttpConn:
    """One server-side HTTP/1.1 connection.

    Args:
        limits: header and body limits.
        server_header: value of the ``server`` header on every response, or None.
    """

    __slots__ = (
        "_body",
        "_body_size",
        "_fed",
        "_h11",
        "_limits",
        "_method",
        "_pending",
        "_server",
        "_state",
    )

    def __init__(self, limits: Limits, server_header: str | None = "linkd") -> None:
        self._limits = limits
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self._server = server_header
        self._state = HttpState.IDLE
        self._pending: h11.Request | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._method = b""
        # Bytes fed since the current request began (for the head-size limit).
        self._fed = 0

    @property
    def state(self) -> HttpState:
        return self._state

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the request that was answered with 101."""
        data, _closed = self._h11.trailing_data
        return bytes(data)

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the socket; ``b""`` means EOF."""
        if self._state is HttpState.IDLE and data:
            self._state = HttpState.READING
        self._fed += len(data)
        try:
            self._h11.receive_data(data)
        except RuntimeError as exc:  # bytes after EOF: the caller's bug
            raise LocalProtocolError(str(exc)) from exc

    def next_event(self) -> Event:
        """Return the next complete request, ``PeerEOF``, ``NEED_DATA`` or ``PAUSED``.

        Raises:
            RemoteProtocolError: malformed request (``status_hint`` 400), headers too
                large (431), unsupported transfer coding (501).
            MessageTooBig: the body is larger than ``max_body_bytes`` (413).
        """
        if self._state in (HttpState.RESPONDING, HttpState.SWITCHED, HttpState.CLOSING):
            return PAUSED
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._state = HttpState.CLOSING
                raise RemoteProtocolError(str(exc), status_hint=exc.error_status_hint) from exc
            if event is h11.NEED_DATA:
                return NEED_DATA
            if event is h11.PAUSED:
                return PAUSED
            if isinstance(event, h11.Request):
                self._start_request(event)
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > self._limits.max_body_bytes:
                    self._state = HttpState.CLOSING
                    raise MessageTooBig("request body too large")
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return self._finish_request()
            elif isinstance(event, h11.ConnectionClosed):
                self._state = HttpState.CLOSING
                return PeerEOF()

    def _buffered(self) -> int:
        # h11 keeps unparsed bytes in a private ReceiveBuffer; its public view
        # (trailing_data) copies them, so use the length when it is there.
        buffer = getattr(self._h11, "_receive_buffer", None)
        return len(buffer) if buffer is not None else len(self._h11.trailing_data[0])

    def _start_request(self, event: h11.Request) -> None:
        # h11 checks max_incomplete_event_size only while it waits for more bytes; a
        # complete head that arrived in one read is measured here, on the wire:
        # bytes fed for this request minus what h11 has not consumed yet.
        if self._fed - self._buffered() > self._limits.max_header_bytes:
            self._state = HttpState.CLOSING
            raise RemoteProtocolError("request head too large", status_hint=431)
        if event.method == b"CONNECT":
            # h11 treats a 2xx to CONNECT as a protocol switch; we are not a proxy.
            self._state = HttpState.CLOSING
            raise RemoteProtocolError("CONNECT is not supported", status_hint=501)
        length = None
        for name, value in event.headers:
            if name == b"content-length":
                length = int(value)  # h11 validated it
        if length is not None and length > self._limits.max_body_bytes:
            # Refuse before reading a byte of it (and before any 100 Continue).
            self._state = HttpState.CLOSING
            raise MessageTooBig("request body too large")
        self._pending = event
        self._body = []
        self._body_size = 0
        self._state = HttpState.READING_BODY
        self._method = event.method

    def continue_bytes(self) -> bytes:
        """A ``100 Continue`` when the client waits for one before sending its body."""
        if self._h11.they_are_waiting_for_100_continue:
            return self._h11.send(h11.InformationalResponse(status_code=100, headers=[]))
        return b""

    def _finish_request(self) -> HttpRequest:
        req = self._pending
        assert req is not None
        self._pending = None
        self._state = HttpState.RESPONDING
        path, _, query = req.target.decode("latin-1").partition("?")
        # h11 lower-cases names and refuses NUL in names and values: NUL separates.
        raw_headers = b"\x00".join(k + b"\x00" + v for k, v in req.headers)
        upgrade = None
        for name, value in req.headers:
            if name == b"upgrade":
                upgrade = value.decode("latin-1").strip().lower()
                if upgrade == "websocket":
                    upgrade = "websocket"  # one shared string, not one per connection
        body = b"".join(self._body)
        self._body = []
        return HttpRequest(
            # A WebSocket keeps its request for life: share the strings every request
            # repeats ("GET", "1.1", its path) instead of one copy per connection.
            method=sys.intern(req.method.decode("ascii")),
            path=sys.intern(path),
            query=query,
            http_version=sys.intern(req.http_version.decode("ascii")),
            raw_headers=raw_headers,
            body=body,
            upgrade=upgrade,
        )

    def respond(
        self, status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b""
    ) -> bytes:
        """Serialize a complete response to the current request; ready for the next.

        Returns the bytes to write. Afterwards ``state`` is IDLE (keep-alive) or
        CLOSING (the client or we asked to close).
        """
        if self._state is not HttpState.RESPONDING:
            raise LocalProtocolError(f"no request to respond to in state {self._state.value}")
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or ()]
        if self._server and not any(k == b"server" for k, _ in raw):
            raw.append((b"server", self._server.encode("latin-1")))
        if not any(k.lower() == b"content-length" for k, _ in raw) and status >= 200:
            raw.append((b"content-length", str(len(body)).encode()))
        out = self._h11.send(
            h11.Response(status_code=status, headers=raw, reason=_phrase(status).encode())
        )
        if body and self._method != b"HEAD":
            out += self._h11.send(h11.Data(data=body))
        out += self._h11.send(h11.EndOfMessage())
        self._next_cycle()
        return out

    def _next_cycle(self) -> None:
        if self._h11.our_state is h11.MUST_CLOSE or self._h11.their_state is not h11.DONE:
            # HTTP/1.0, "connection: close", or a body we did not read to its end.
            self._state = HttpState.CLOSING
            return
        self._h11.start_next_cycle()
        # A pipelined request may already be buffered: its header timeout runs now.
        self._fed = self._buffered()
        self._state = HttpState.READING if self._fed else HttpState.IDLE

    def accept_upgrade(self, headers: list[tuple[str, str]]) -> bytes:
        """Answer the current request with ``101 Switching Protocols``."""
        if self._state is not HttpState.RESPONDING:
            raise LocalProtocolError("no request to upgrade")
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        out = self._h11.send(h11.InformationalResponse(status_code=101, headers=raw))
        self._state = HttpState.SWITCHED
        return out

    def reject(self, status: int, headers: list[tuple[str, str]] | None, body: bytes) -> bytes:
        """An error response that also closes the connection (used for 4xx/5xx on errors)."""
        self._state = HttpState.CLOSING
        hdrs = list(headers or ())
        if self._server:
            hdrs.append(("server", self._server))
        return build_response(status, hdrs, body, close=True)
