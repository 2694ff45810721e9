"""HttpConn: the server side of one HTTP/1.1 connection, over h11 (RFC 9112).

h11 does the parsing; this core adds what a gateway needs around it: whole requests
with their bodies under a size limit (413), header limits (431), the keep-alive
cycle with pipelining (requests come out one at a time, in order, and the next is
parsed only after the current one was answered), and the hand-off of the bytes that
follow a 101 to the WebSocket core (``trailing_data``: nothing is parsed twice).

It also refuses what h11 lets through but a gateway must not: a request framed two
ways (Content-Length with Transfer-Encoding, a repeated Content-Length, Transfer-
Encoding in HTTP/1.0: RFC 9112 §6.1/§6.3, the request-smuggling vectors) is a 400
that closes the connection; and a response h11 refuses to serialize (CR/LF in a
header, a 1xx status...) raises ``UnsendableResponse`` so the shell can answer 502.
"""

from __future__ import annotations

import re
import sys
from enum import Enum
from http import HTTPStatus
from typing import Final

import h11

from ..errors import LocalProtocolError, MessageTooBig, RemoteProtocolError
from ..limits import Limits
from .events import HttpRequest, PeerEOF

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "HttpConn",
    "HttpState",
    "UnsendableResponse",
    "build_response",
]


class UnsendableResponse(LocalProtocolError):
    """The response handed to ``respond``/``accept_upgrade`` cannot be serialized.

    The connection is CLOSING (h11 may be in its error state): answer with
    ``reject(502, ...)``, whose bytes do not depend on what was refused.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, status_hint=502)


# The blank line that ends a request head, as h11 finds it (bare LF accepted).
_HEAD_END = re.compile(b"\n\r?\n")
# What h11 may raise while validating and serializing what a handler handed us.
_SEND_ERRORS = (h11.LocalProtocolError, ValueError, TypeError, AttributeError)
# RFC 9110 §5.1 token (a field name) and §5.5 field value, as h11 checks them.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


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
    except (ValueError, TypeError):
        return ""


def _why_unsendable(status: object, headers: list[tuple[str, str]] | None, exc: Exception) -> str:
    """What was wrong, for the log: names what to fix, never a header's value (which
    may be a cookie or a token). ``status`` None: a 101, whose status is ours."""
    if status is not None and (not isinstance(status, int) or not 200 <= status <= 999):
        return f"status {status!r} is not a final status (200-999)"
    for name, value in headers or ():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            return f"header name {str(name)[:40]!r} is not a token"
        if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
            return f"header {name!r} has a character HTTP forbids (CR, LF, NUL, non-Latin-1)"
    if isinstance(exc, h11.LocalProtocolError):
        return str(exc)  # framing: "Too much data for declared Content-Length"...
    return f"{type(exc).__name__} while serializing"


def _raw_headers(headers: list[tuple[str, str]] | None) -> list[tuple[bytes, bytes]]:
    """Latin-1 bytes for h11; OWS around a value is not part of it (RFC 9110 §5.5)."""
    return [(k.encode("latin-1"), v.strip(" \t").encode("latin-1")) for k, v in headers or ()]


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
        "_head_checked",
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
        # One growing buffer, not a list of chunks: a chunked body of 1-byte chunks
        # would otherwise cost an object (~40 bytes) per 6 bytes on the wire.
        self._body = bytearray()
        self._body_size = 0
        self._method = b""
        # Bytes fed since the current request began (for the head-size limit).
        self._fed = 0
        # The current request's raw head was scanned for repeated Content-Length.
        self._head_checked = False

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
            if not self._head_checked and self._pending is None:
                self._check_raw_head()
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._state = HttpState.CLOSING
                raise RemoteProtocolError(str(exc), status_hint=exc.error_status_hint) from exc
            if event is h11.NEED_DATA:
                if self._pending is not None and self._chunk_over_budget():
                    self._state = HttpState.CLOSING
                    raise MessageTooBig("request body too large")
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
                self._body += event.data
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

    def _chunk_over_budget(self) -> bool:
        """The chunk being received was declared larger than what the body may still
        take: refuse now (as a Content-Length over the limit is), not after waiting
        for bytes that must be refused anyway (``ffffffffffffffff1``: 2**68 of them)."""
        pending = getattr(getattr(self._h11, "_reader", None), "_bytes_in_chunk", 0)
        return isinstance(pending, int) and self._body_size + pending > self._limits.max_body_bytes

    def _check_raw_head(self) -> None:
        """Refuse a repeated Content-Length before h11 parses the head.

        h11 merges identical Content-Length fields (and ``5, 5``) into one, so the
        repetition is only visible in the raw bytes. RFC 9110 §8.6 lets a recipient
        merge them, but a proxy in front may frame the message differently: refuse
        (as nginx does). Looked at once per request, only when its whole head is
        buffered, and only up to ``max_header_bytes``.
        """
        buffer = getattr(getattr(self._h11, "_receive_buffer", None), "_data", None)
        if not isinstance(buffer, bytearray):
            self._head_checked = True  # h11 internals moved: its own checks remain
            return
        end = _HEAD_END.search(buffer, 0, self._limits.max_header_bytes + 3)
        if end is None:
            return  # incomplete: h11 asks for more data (or refuses a head too large)
        self._head_checked = True
        head = bytes(buffer[: end.start()])
        if b"content-length" not in head.lower():
            return
        lengths = 0
        for line in head.split(b"\n")[1:]:
            name, colon, value = line.partition(b":")
            if colon and name.lower() == b"content-length":
                lengths += 1 + value.count(b",")
        if lengths > 1:
            self._state = HttpState.CLOSING
            raise RemoteProtocolError("repeated Content-Length", status_hint=400)

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
        chunked = False
        for name, value in event.headers:
            if name == b"content-length":
                length = int(value)  # h11 validated it
            elif name == b"transfer-encoding":
                chunked = True  # h11 accepts "chunked" only
        if chunked and (length is not None or event.http_version == b"1.0"):
            # RFC 9112 §6.1: framed two ways (or chunked where HTTP/1.0 cannot be) is
            # how requests are smuggled past a proxy: 400, then close.
            self._state = HttpState.CLOSING
            raise RemoteProtocolError("ambiguous request framing", status_hint=400)
        if length is not None and length > self._limits.max_body_bytes:
            # Refuse before reading a byte of it (and before any 100 Continue).
            self._state = HttpState.CLOSING
            raise MessageTooBig("request body too large")
        self._pending = event
        self._body = bytearray()
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
        body = bytes(self._body)
        self._body = bytearray()
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

        Raises:
            UnsendableResponse: h11 refused the status, a header or the body length
                (state CLOSING, nothing written: answer with ``reject``).
        """
        if self._state is not HttpState.RESPONDING:
            raise LocalProtocolError(f"no request to respond to in state {self._state.value}")
        try:
            raw = _raw_headers(headers)
            if self._server and not any(k == b"server" for k, _ in raw):
                raw.append((b"server", self._server.encode("latin-1")))
            if not any(k.lower() == b"content-length" for k, _ in raw) and status >= 200:
                raw.append((b"content-length", str(len(body)).encode()))
            # h11 refuses what would break the framing (CR/LF, 1xx, a wrong length)
            # only as it serializes: nothing is returned until all of it passed.
            out = self._h11.send(
                h11.Response(status_code=status, headers=raw, reason=_phrase(status).encode())
            )
            if body and self._method != b"HEAD":
                out += self._h11.send(h11.Data(data=body))
            out += self._h11.send(h11.EndOfMessage())
        except _SEND_ERRORS as exc:
            self._state = HttpState.CLOSING
            raise UnsendableResponse(_why_unsendable(status, headers, exc)) from None
        self._next_cycle()
        return out

    def _next_cycle(self) -> None:
        if self._h11.our_state is h11.MUST_CLOSE or self._h11.their_state is not h11.DONE:
            # HTTP/1.0, "connection: close", or a body we did not read to its end.
            self._state = HttpState.CLOSING
            return
        self._h11.start_next_cycle()
        self._head_checked = False
        # A pipelined request may already be buffered: its header timeout runs now.
        self._fed = self._buffered()
        self._state = HttpState.READING if self._fed else HttpState.IDLE

    def accept_upgrade(self, headers: list[tuple[str, str]]) -> bytes:
        """Answer the current request with ``101 Switching Protocols``."""
        if self._state is not HttpState.RESPONDING:
            raise LocalProtocolError("no request to upgrade")
        try:
            out = self._h11.send(
                h11.InformationalResponse(status_code=101, headers=_raw_headers(headers))
            )
        except _SEND_ERRORS as exc:  # a subprotocol or extension the hooks chose
            self._state = HttpState.CLOSING
            raise UnsendableResponse(_why_unsendable(None, headers, exc)) from None
        self._state = HttpState.SWITCHED
        return out

    def reject(self, status: int, headers: list[tuple[str, str]] | None, body: bytes) -> bytes:
        """An error response that also closes the connection (used for 4xx/5xx on errors)."""
        self._state = HttpState.CLOSING
        hdrs = list(headers or ())
        if self._server:
            hdrs.append(("server", self._server))
        return build_response(status, hdrs, body, close=True)
