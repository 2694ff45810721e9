"""HttpProtocol: the asyncio shell around one ``HttpConn``, and the WebSocket upgrade.

Requests come out of the core one at a time. While one is being answered, reading
is paused; once it is answered, the next pipelined request (already in h11's buffer,
unparsed) is taken at the next loop iteration, never inline, so a connection that
pipelines thousands of requests gets one per iteration like everybody else. Reading
resumes only when the core needs bytes for the next request.

Write side: the transport's buffer marks (``write_high_water``/``write_low_water``)
drive ``pause_writing``/``resume_writing``. Above the high-water mark no further
request is taken and reading stays paused, so what a peer that does not read can
make us hold is bounded: its unsent responses (the mark plus one response), one
socket read of pipelined bytes in h11 and the head or body being received (their
limits). A peer that takes no byte for ``send_timeout`` is dropped.

Every response goes through ``HttpConn.respond``; one that h11 refuses to serialize
(CR/LF in a header, a 1xx status...) is answered 502 and the connection closed.
An HTTP connection holds a ``max_connections`` slot from ``connection_made`` until
``connection_lost``, or until it upgrades: the WebSocket keeps the slot.

On a valid upgrade to a mounted WebSocket path, the transport is handed to a
``WsProtocol`` together with h11's trailing bytes, so nothing is parsed twice.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable
from typing import cast
from urllib.parse import parse_qsl

import orjson

from engine.api.request import Request, Response, error_body
from engine.api.routes import MethodNotAllowed
from engine.auth import authenticate
from engine.brokers.history import RecoverRequest, parse_recover
from engine.limits.ratelimit import CAP_RETRY_AFTER, ConnectionLimiter, Refusal, address_key
from engine.log import redact_target
from engine.node import Node
from engine.ws.protocol import WsProtocol
from protocol import ErrorCode, MessageTooBig, RemoteProtocolError
from protocol.errors import UnauthorizedError
from protocol.http import (
    NEED_DATA,
    HttpConn,
    HttpRequest,
    HttpState,
    PeerEOF,
    UnsendableResponse,
    UpgradeRejected,
    is_websocket_upgrade,
    validate_upgrade,
)
from protocol.ws import WsConn

__all__ = ["HttpProtocol"]

log = logging.getLogger("linkd.http")
access_log = logging.getLogger("linkd.access")

_JSON = [("content-type", "application/json")]

# Client-facing messages per status: fixed strings, never parser internals.
_ERROR_MESSAGES = {
    400: (ErrorCode.BAD_REQUEST, "malformed HTTP request"),
    408: (ErrorCode.REQUEST_TIMEOUT, "request not received in time"),
    413: (ErrorCode.PAYLOAD_TOO_LARGE, "request body too large"),
    431: (ErrorCode.HEADERS_TOO_LARGE, "request line or headers too large"),
    501: (ErrorCode.BAD_REQUEST, "not implemented"),
}

#: A response h11 refuses is the handler's fault, not the client's, and retrying will
#: not help: 502 (the gateway got an invalid answer from upstream) with INTERNAL.
_UNSENDABLE = error_body(ErrorCode.INTERNAL, "the handler's response could not be sent")

#: How long a connection refused at accept may linger for its EOF (then: reset).
_REFUSED_LINGER = 1.0

_REFUSALS = {
    "global": (ErrorCode.OVERLOADED, "too many connections"),
    "per_ip": (ErrorCode.RATE_LIMITED, "too many connections from this address"),
    "rate": (ErrorCode.RATE_LIMITED, "too many new connections from this address"),
    "http_rate": (ErrorCode.RATE_LIMITED, "too many requests from this address"),
}

# Why reading is paused (bit flags: it resumes when none is left).
#: A request is being answered, or the next one may be in h11's buffer already.
_HOLD_REQUEST = 1
#: The transport's buffer is above its high-water mark (``pause_writing``).
_HOLD_WRITE = 2


class HttpProtocol(asyncio.Protocol):
    """One client TCP connection until (unless) it upgrades to WebSocket."""

    __slots__ = (
        "_address",
        "_conn",
        "_eof",
        "_hold",
        "_last_state",
        "_over_cap",
        "_request",
        "_scheduled",
        "_slot",
        "_state",
        "_transport",
        "_unsent",
        "deadline",
        "remote",
    )

    def __init__(self, state: Node) -> None:
        self._state = state
        self._conn = HttpConn(state.limits)
        self._transport: asyncio.Transport | None = None
        #: ``_HOLD_*`` flags; reading is paused while any is set.
        self._hold = 0
        #: A ``_process`` is scheduled with ``call_soon``.
        self._scheduled = False
        self._eof = False
        #: Holds a ``max_connections`` slot; or came over the cap (answered 503).
        self._slot = False
        self._over_cap = False
        #: Unsent bytes when the send timeout was last armed (progress detection).
        self._unsent = 0
        self._request: HttpRequest | None = None
        self._last_state = HttpState.IDLE
        self.remote: tuple[str, int] | None = None
        self._address: str | None = None
        self.deadline = math.inf

    @property
    def writing_paused(self) -> bool:
        """The transport's buffer is above its high-water mark."""
        return bool(self._hold & _HOLD_WRITE)

    # ------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        state = self._state
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            # IPv4's (host, port) as it is; IPv6's 4-tuple trimmed.
            self.remote = peer if len(peer) == 2 else (str(peer[0]), int(peer[1]))
            self._address = address_key(self.remote[0])
        limits = state.limits
        transport.set_write_buffer_limits(limits.write_high_water, limits.write_low_water)
        state.http_connections.add(self)
        state.metrics.http_open += 1
        cap = state.config.max_connections
        if cap and state.open_connections >= cap:
            self._refuse_at_accept(transport)
            return
        self._slot = True
        state.http_slots += 1
        # Until the first byte, the header timeout is what bounds an idle new connection.
        self._set_deadline(state.config.header_timeout)

    def _refuse_at_accept(self, transport: asyncio.Transport) -> None:
        """Over ``--max-connections``: 503 now, before any request, and FIN.

        Waiting for the request would let a flood hold sockets for a header timeout
        each. What the peer sends meanwhile is read and dropped (closing with unread
        bytes sends a reset, which can destroy the 503 before it is read) until its
        EOF or ``_REFUSED_LINGER`` s, whichever comes first.
        """
        self._over_cap = True
        state = self._state
        state.metrics.count_refused("global")
        state.metrics.count_request(503)
        limiter = state.limiter
        if limiter.log_budget.take(state.loop.time()):
            limiter.not_logged += 1
        else:
            log.warning(
                "refused a connection from %s: over --max-connections %d "
                "(%d earlier refusals not logged)",
                self.remote[0] if self.remote else "-",
                state.config.max_connections,
                limiter.not_logged,
            )
            limiter.not_logged = 0
        code, message = _REFUSALS["global"]
        headers = [*_JSON, *_retry_after(CAP_RETRY_AFTER)]
        transport.write(
            self._conn.reject(503, headers, _refusal_body(code, message, CAP_RETRY_AFTER))
        )
        if transport.can_write_eof():
            transport.write_eof()
        self._set_deadline(_REFUSED_LINGER)

    def data_received(self, data: bytes) -> None:
        if self._over_cap:
            return  # refused at accept: read and dropped until EOF
        self._conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        if self._over_cap:
            return False  # the transport closes itself
        if not self._eof:
            self._eof = True
            self._conn.receive_data(b"")
            self._process()
        # Keep the write side open: pipelined requests before the EOF are still
        # answered, one per iteration; the core reports PeerEOF after them (→ close).
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._transport = None
        self.deadline = math.inf
        self._state.sweeper.cancel(self)
        self._hold = 0
        state = self._state
        state.http_connections.discard(self)
        state.metrics.http_open -= 1
        self._release_slot()
        state.check_idle()

    def pause_writing(self) -> None:
        """Above the high-water mark: take no request and read nothing until it drains."""
        if self._hold & _HOLD_WRITE or self._transport is None:
            return
        self._hold_reading(_HOLD_WRITE)
        self._unsent = self._transport.get_write_buffer_size()
        self._arm_send_timeout()

    def resume_writing(self) -> None:
        if not self._hold & _HOLD_WRITE:
            return
        self._release_reading(_HOLD_WRITE)
        self._state_deadline()
        self._schedule()  # pipelined requests waiting in h11's buffer

    # -------------------------------------------------------------- parsing
    def _process(self) -> None:
        """Take at most one event out of the core: a request is answered before the
        next is parsed, and the next waits for another loop iteration."""
        self._scheduled = False
        conn = self._conn
        if self._transport is None or self._hold & _HOLD_WRITE:
            return  # resume_writing comes back here
        try:
            event = conn.next_event()
        except MessageTooBig:
            self._fail(413)
            return
        except RemoteProtocolError as exc:
            self._fail(exc.status_hint if exc.status_hint in _ERROR_MESSAGES else 400)
            return
        if isinstance(event, HttpRequest):
            self._hold_reading(_HOLD_REQUEST)
            # Record RESPONDING before answering: a synchronous answer returns to
            # IDLE within this call, and that change must still move the deadline.
            self._track_state()
            self._dispatch(event)
            return
        if isinstance(event, PeerEOF):
            self._close()
            return
        transport = self._transport
        if conn.state is HttpState.READING_BODY:
            # RFC 9110 §10.1.1: the client waits for this before sending the body.
            cont = conn.continue_bytes()
            if cont:
                transport.write(cont)
        self._track_state()
        if event is NEED_DATA:
            self._release_reading(_HOLD_REQUEST)

    def _schedule(self) -> None:
        if not self._scheduled and self._transport is not None:
            self._scheduled = True
            self._state.loop.call_soon(self._process)

    def _hold_reading(self, reason: int) -> None:
        if not self._hold and self._transport is not None:
            self._transport.pause_reading()
        self._hold |= reason

    def _release_reading(self, reason: int) -> None:
        if not self._hold & reason:
            return
        self._hold &= ~reason
        transport = self._transport
        if (
            not self._hold
            and transport is not None
            and not self._eof
            and not transport.is_closing()
        ):
            transport.resume_reading()

    def _track_state(self) -> None:
        state = self._conn.state
        if state is self._last_state:
            return
        self._last_state = state
        if not self._hold & _HOLD_WRITE:  # the send timeout runs until it drains
            self._state_deadline()

    def _state_deadline(self) -> None:
        state = self._conn.state
        config = self._state.config
        if state is HttpState.CLOSING or (self._transport and self._transport.is_closing()):
            self._set_deadline(config.close_timeout)
        elif state is HttpState.READING:
            self._set_deadline(config.header_timeout)
        elif state is HttpState.READING_BODY:
            self._set_deadline(config.body_timeout)
        elif state is HttpState.IDLE:
            self._set_deadline(config.keep_alive_timeout)
        else:
            self.deadline = math.inf

    def _send_window(self) -> float:
        """How long a write-paused peer may take no byte: ``send_timeout``, or
        ``close_timeout`` once we are closing (0: never)."""
        config = self._state.config
        closing = self._transport is not None and self._transport.is_closing()
        return config.close_timeout if closing else config.send_timeout

    def _arm_send_timeout(self) -> None:
        window = self._send_window()
        if window or (self._transport is not None and self._transport.is_closing()):
            self._set_deadline(window)
        else:
            self.deadline = math.inf

    def _set_deadline(self, delay: float) -> None:
        self.deadline = self._state.loop.time() + delay
        self._state.sweeper.schedule(self)

    def on_deadline(self, now: float) -> None:
        """The sweeper: no progress writing → drop; header/body timeout → 408;
        keep-alive idle → silent close; a close that never drained → drop."""
        transport = self._transport
        if transport is None:
            return
        if self._over_cap:
            transport.abort()  # refused at accept and still not gone
        elif self._hold & _HOLD_WRITE:
            unsent = transport.get_write_buffer_size()
            if unsent != self._unsent:  # the peer took some: a slow reader, not a dead one
                self._unsent = unsent
                self._arm_send_timeout()
                return
            log.info(
                "%s read none of its responses for %.1fs: dropped",
                self.remote[0] if self.remote else "-",
                self._send_window(),
            )
            transport.abort()
        elif self._conn.state is HttpState.CLOSING or transport.is_closing():
            transport.abort()  # we closed, and what was left to write never drained
        elif self._conn.state in (HttpState.READING, HttpState.READING_BODY):
            log.info("request from %s timed out", self.remote)
            self._fail(408)
        else:
            self._close()

    # ------------------------------------------------------------- requests
    def _dispatch(self, request: HttpRequest) -> None:
        """Admission (connection cap, request rate), then the request itself."""
        state = self._state
        rates = state.http_rates
        if rates is not None and self._address is not None:
            wait = rates.take(self._address, state.loop.time())
            if wait:
                self._rate_limited(request, wait)
                return
        try:
            self._handle(request)
        except Exception:
            # Endpoint hooks run inline (reject_upgrade, select_subprotocol...).
            log.exception("handler for %s %s failed", request.method, request.path)
            if self._transport is not None and self._conn.state is HttpState.RESPONDING:
                self._respond(request, Response.error(ErrorCode.INTERNAL, "internal error"))

    def _handle(self, request: HttpRequest) -> None:
        routes = self._state.routes
        if request.upgrade is not None and is_websocket_upgrade(request):
            self._upgrade(request)
            return
        if request.path == "/health" and request.method in ("GET", "HEAD"):
            # Degraded (Redis unreachable) still answers 200: local clients are served.
            healthy = self._state.broker.healthy
            body = {
                "status": "healthy" if healthy else "degraded",
                "version": self._state.config.version,
            }
            if self._state.config.redis_url:
                body["redis"] = "connected" if healthy else "unreachable"
            self._respond(request, Response.json(body))
            return
        if request.path == "/metrics" and request.method in ("GET", "HEAD"):
            self._respond(
                request,
                Response(
                    200,
                    [("content-type", "text/plain; version=0.0.4")],
                    self._state.metrics.render(),
                ),
            )
            return
        found = routes.http.match(request.method, request.path)
        if not isinstance(found, tuple):
            if isinstance(found, MethodNotAllowed):
                resp = Response.error(ErrorCode.METHOD_NOT_ALLOWED, "method not allowed")
                resp.headers.append(("allow", ", ".join(found.allowed)))
            else:
                resp = Response.error(ErrorCode.NOT_FOUND, f"no route for {request.path}")
            self._respond(request, resp)
            return
        handler, params = found
        try:
            result = handler(Request(request, self.remote, params))
        except Exception:
            log.exception("handler for %s %s failed", request.method, request.path)
            self._respond(request, Response.error(ErrorCode.INTERNAL, "internal error"))
            return
        self._state.spawn(self._await_response(request, result))

    async def _await_response(self, request: HttpRequest, result: Awaitable[Response]) -> None:
        try:
            response = await result if inspect.isawaitable(result) else result
        except Exception:
            log.exception("handler for %s %s failed", request.method, request.path)
            response = Response.error(ErrorCode.INTERNAL, "internal error")
        if not isinstance(response, Response):
            log.error("handler for %s returned %r, not a Response", request.path, response)
            response = Response.error(ErrorCode.INTERNAL, "internal error")
        self._respond(request, response)

    def _respond(self, request: HttpRequest, response: Response) -> None:
        transport = self._transport
        if transport is None:
            return  # the client left before the answer was ready
        headers = response.headers
        if self._state.shutting_down:
            headers = [*headers, ("connection", "close")]
        try:
            # HEAD: HttpConn sends the GET's content-length without the body.
            data = self._conn.respond(response.status, headers, response.body)
        except UnsendableResponse as exc:
            # Never silence: the client gets a 502, and the stream (h11 may be in its
            # error state, a pipelined request behind) is closed after it.
            log.error(
                "response %r to %s %s could not be sent (502 instead): %s",
                response.status,
                request.method,
                request.path,
                exc,
            )
            self._fail(502, request)
            return
        transport.write(data)
        self._state.metrics.count_request(response.status)
        self._log_access(request, response.status)
        if self._conn.state is HttpState.CLOSING:
            self._close()
            return
        self._track_state()
        # The next pipelined request, if any, at the next iteration (never inline):
        # reading stays paused until the core asks for more bytes.
        self._schedule()

    def _log_access(self, request: HttpRequest, status: int) -> None:
        if self._state.config.access_log:
            access_log.info(
                '%s "%s %s HTTP/%s" %d',
                self.remote[0] if self.remote else "-",
                request.method,
                redact_target(request.target),  # ?token= never reaches a log
                request.http_version,
                status,
            )

    def _upgrade(self, request: HttpRequest) -> None:
        state = self._state
        endpoint = state.routes.websocket.get(request.path)
        if endpoint is None:
            # DESIGN §2: unknown path → 404 before the upgrade, never 101 then close.
            self._respond(request, Response.error(ErrorCode.NOT_FOUND, "no WebSocket endpoint"))
            return
        # Connection caps come before the token is verified: refusing costs no crypto.
        # The global cap was applied when the connection was accepted: it holds a
        # slot already, which the WebSocket keeps (so 0 here: nothing to add).
        limiter = state.limiter
        address = self._address
        capped = limiter.admit(address, state.loop.time(), 0)
        if capped is not None:
            self._refuse(request, limiter, capped)
            return
        refusal = endpoint.reject_upgrade(Request(request, self.remote))
        if refusal is not None:
            self._respond(request, refusal)
            return
        identity = None
        if endpoint.auth_policy != "none":
            # DESIGN §2: a bad token is a 401 before the upgrade, never 101 then close.
            try:
                checked = authenticate(state.authenticator, request, endpoint.auth_policy)
            except UnauthorizedError as exc:
                self._respond(request, Response.error(exc.code, exc.message))
                return
            identity = checked
            if checked is not None and self._over_user_cap(request, checked.user_id):
                return
        recover = None
        if "recover=" in request.query:
            try:
                recover = _recover_positions(request.query)
            except ValueError as exc:
                self._respond(request, Response.error(ErrorCode.BAD_REQUEST, str(exc)))
                return
        deflate = state.config.deflate if state.config.deflate.enabled else None
        outcome = validate_upgrade(request, deflate, endpoint.select_subprotocol)
        if isinstance(outcome, UpgradeRejected):
            code = ErrorCode.for_status(outcome.status)
            resp = Response(
                outcome.status, [*_JSON, *outcome.headers], error_body(code, outcome.message)
            )
            self._respond(request, resp)
            return
        if state.shutting_down:
            self._respond(request, Response.error(ErrorCode.SERVICE_UNAVAILABLE, "shutting down"))
            return
        transport = self._transport
        assert transport is not None
        try:
            switching = self._conn.accept_upgrade(outcome.headers)
        except UnsendableResponse as exc:
            log.error("101 to %s could not be sent (502 instead): %s", request.path, exc)
            self._fail(502, request)
            return
        transport.write(switching)
        state.metrics.count_request(101)
        self._log_access(request, 101)
        ws_conn = WsConn(state.limits, outcome.deflate, state.config.deflate)
        proto = WsProtocol(state, endpoint, ws_conn, request, self.remote, outcome.subprotocol)
        if identity is not None:
            proto.authenticate(identity)
        proto.recover = recover
        if limiter.tracks_addresses:
            limiter.opened(address, state.loop.time())
            proto._address_slot = (limiter, address)  # released by its connection_lost
        trailing = self._conn.trailing_data
        # Hand the socket over: from now on the WebSocket protocol owns it, and its
        # max_connections slot (the hub counts it from proto.connection_made on).
        state.http_connections.discard(self)
        state.metrics.http_open -= 1
        self._release_slot()
        self._transport = None
        self.deadline = math.inf
        state.sweeper.cancel(self)
        write_held = self._hold & _HOLD_WRITE
        transport.set_protocol(proto)
        if self._hold:
            self._hold = 0
            transport.resume_reading()
        proto.connection_made(transport)
        if write_held:  # the 101 passed the high-water mark before the hand-over
            proto.pause_writing()
        if trailing:
            proto.data_received(trailing)

    def _release_slot(self) -> None:
        if self._slot:
            self._slot = False
            self._state.http_slots -= 1

    def _over_user_cap(self, request: HttpRequest, user_id: str | None) -> bool:
        """``max_connections_per_user``: refuse (429) one connection too many."""
        state = self._state
        cap = state.config.max_connections_per_user
        if not cap or user_id is None or state.hub.connections_of(user_id) < cap:
            return False
        state.metrics.count_refused("per_user")
        log.warning(
            "refused WebSocket on %s for user %s: %d connections open (the cap)",
            request.path,
            user_id,
            cap,
        )
        message = f"this user already has {cap} open connections (the limit)"
        self._respond(request, Response.error(ErrorCode.TOO_MANY_CONNECTIONS, message))
        return True

    def _refuse(self, request: HttpRequest, limiter: ConnectionLimiter, refusal: Refusal) -> None:
        """A connection cap refused the connection: 429/503 with retry-after, then close."""
        code, message = _REFUSALS[refusal.reason]
        headers = [*_JSON, *_retry_after(refusal.retry_after)]
        headers.append(("connection", "close"))  # a refused client does not keep a socket
        self._state.metrics.count_refused(refusal.reason)
        if limiter.log_budget.take(self._state.loop.time()):
            limiter.not_logged += 1
        else:
            log.warning(
                "refused %s on %s from %s: %s (%d earlier refusals not logged)",
                "WebSocket" if request.upgrade is not None else "HTTP request",
                request.path,
                self.remote[0] if self.remote else "-",
                message,
                limiter.not_logged,
            )
            limiter.not_logged = 0
        body = _refusal_body(code, message, refusal.retry_after)
        self._respond(request, Response(code.status, headers, body))

    def _rate_limited(self, request: HttpRequest, wait: float) -> None:
        """Over the per-address request rate: 429 with retry-after; keep-alive kept
        (the client may simply wait; a flood meets the write-side backpressure)."""
        rates = self._state.http_rates
        assert rates is not None
        if rates.log_budget.take(self._state.loop.time()):
            rates.not_logged += 1
        else:
            log.warning(
                "refused %s %s from %s: over the HTTP request rate of %g/s, burst %g "
                "(--http-rate, --http-burst; %d earlier refusals not logged)",
                request.method,
                request.path,
                self.remote[0] if self.remote else "-",
                rates.rate,
                rates.burst,
                rates.not_logged,
            )
            rates.not_logged = 0
        code, message = _REFUSALS["http_rate"]
        headers = [*_JSON, *_retry_after(wait)]
        self._respond(request, Response(code.status, headers, _refusal_body(code, message, wait)))

    # --------------------------------------------------------------- errors
    def _fail(self, status: int, request: HttpRequest | None = None) -> None:
        """Answer an error with a JSON body and close (no details leak)."""
        transport = self._transport
        if transport is None:
            return
        if status == 502:
            body = _UNSENDABLE
        else:
            code, message = _ERROR_MESSAGES.get(status, _ERROR_MESSAGES[400])
            body = error_body(code, message)
        transport.write(self._conn.reject(status, _JSON, body))
        self._state.metrics.count_request(status)
        if request is not None:
            self._log_access(request, status)
        self._close()

    def _close(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()
        self._last_state = HttpState.CLOSING
        # If the client never reads what we wrote, drop the connection anyway (while
        # the buffer is over the mark, only if it takes nothing for that long).
        self._set_deadline(self._state.config.close_timeout)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def shutdown(self) -> None:
        """Engine shutdown: idle connections close now; busy ones after their response."""
        if self._conn.state in (HttpState.IDLE, HttpState.READING, HttpState.READING_BODY):
            self._close()


def _retry_after(seconds: float) -> list[tuple[str, str]]:
    # Whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3).
    return [("retry-after", str(max(1, math.ceil(seconds))))]


def _refusal_body(code: ErrorCode, message: str, retry_after: float) -> bytes:
    # Milliseconds, rounded up: waiting that long is enough.
    wait = math.ceil(retry_after * 1000) / 1000
    return orjson.dumps({"error": {"code": code.value, "message": message, "retryAfter": wait}})


def _recover_positions(query: str) -> RecoverRequest | None:
    """The ``recover`` query parameter (docs/recovery.md); ValueError when malformed."""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "recover":
            return parse_recover(value)
    return None
