"""HttpProtocol: the asyncio shell around one ``HttpConn``, and the WebSocket upgrade.

Requests come out of the core one at a time; while one is being answered, reading
is paused (pipelined requests wait in h11's buffer, bounded by one socket read). On
a valid upgrade to a mounted WebSocket path, the transport is handed to a
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

from protocol import ErrorCode, MessageTooBig, RemoteProtocolError
from protocol.http import (
    HttpConn,
    HttpRequest,
    HttpState,
    PeerEOF,
    UpgradeRejected,
    is_websocket_upgrade,
    validate_upgrade,
)
from protocol.ws import WsConn

from .app import Request, Response, error_body
from .auth import authenticate
from .history import RecoverRequest, parse_recover
from .ratelimit import ConnectionLimiter, Refusal, address_key
from .router import MethodNotAllowed
from .state import ServerState
from .ws_protocol import WsProtocol

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


_REFUSALS = {
    "global": (ErrorCode.OVERLOADED, "too many connections"),
    "per_ip": (ErrorCode.RATE_LIMITED, "too many connections from this address"),
    "rate": (ErrorCode.RATE_LIMITED, "too many new connections from this address"),
}


class HttpProtocol(asyncio.Protocol):
    """One client TCP connection until (unless) it upgrades to WebSocket."""

    __slots__ = (
        "_conn",
        "_last_state",
        "_paused",
        "_request",
        "_state",
        "_transport",
        "deadline",
        "remote",
    )

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._conn = HttpConn(state.limits)
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._request: HttpRequest | None = None
        self._last_state = HttpState.IDLE
        self.remote: tuple[str, int] | None = None
        self.deadline = math.inf

    # ------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            # IPv4's (host, port) as it is; IPv6's 4-tuple trimmed.
            self.remote = peer if len(peer) == 2 else (str(peer[0]), int(peer[1]))
        limits = self._state.limits
        transport.set_write_buffer_limits(limits.write_high_water, limits.write_low_water)
        self._state.http_connections.add(self)
        self._state.metrics.http_open += 1
        # Until the first byte, the header timeout is what bounds an idle new connection.
        self._set_deadline(self._state.config.header_timeout)

    def data_received(self, data: bytes) -> None:
        self._conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self._conn.receive_data(b"")
        self._process()
        # Keep the write side open while a response is still being produced.
        return self._conn.state is HttpState.RESPONDING

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._transport = None
        self.deadline = math.inf
        self._state.http_connections.discard(self)
        self._state.metrics.http_open -= 1
        self._state.check_idle()

    # -------------------------------------------------------------- parsing
    def _process(self) -> None:
        """Pull events out of the core until it needs data or a response is pending."""
        conn = self._conn
        while self._transport is not None:
            try:
                event = conn.next_event()
            except MessageTooBig:
                self._fail(413)
                return
            except RemoteProtocolError as exc:
                self._fail(exc.status_hint if exc.status_hint in _ERROR_MESSAGES else 400)
                return
            if isinstance(event, HttpRequest):
                # Record RESPONDING before answering: a synchronous answer returns to
                # IDLE within this call, and that change must still move the deadline.
                self._track_state()
                self._handle(event)
                continue
            if isinstance(event, PeerEOF):
                self._close()
                return
            break  # NEED_DATA or PAUSED
        if conn.state is HttpState.READING_BODY and self._transport is not None:
            # RFC 9110 §10.1.1: the client waits for this before sending the body.
            cont = conn.continue_bytes()
            if cont:
                self._transport.write(cont)
        self._track_state()
        if conn.state is HttpState.RESPONDING and not self._paused and self._transport:
            # A request is being answered: leave pipelined bytes in the kernel.
            self._paused = True
            self._transport.pause_reading()

    def _track_state(self) -> None:
        state = self._conn.state
        if state is self._last_state:
            return
        self._last_state = state
        config = self._state.config
        if state is HttpState.READING:
            self._set_deadline(config.header_timeout)
        elif state is HttpState.READING_BODY:
            self._set_deadline(config.body_timeout)
        elif state is HttpState.IDLE:
            self._set_deadline(config.keep_alive_timeout)
        else:
            self.deadline = math.inf

    def _set_deadline(self, delay: float) -> None:
        self.deadline = self._state.loop.time() + delay
        self._state.sweeper.schedule(self)

    def on_deadline(self, now: float) -> None:
        """The sweeper: header/body timeout → 408; keep-alive idle → silent close."""
        if self._transport is None:
            return
        if self._conn.state in (HttpState.READING, HttpState.READING_BODY):
            log.info("request from %s timed out", self.remote)
            self._fail(408)
        elif self._conn.state is HttpState.CLOSING:
            self._transport.abort()  # the error response never drained
        else:
            self._close()

    # ------------------------------------------------------------- requests
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
        # HEAD: HttpConn sends the GET's content-length without the body.
        data = self._conn.respond(response.status, headers, response.body)
        transport.write(data)
        self._state.metrics.count_request(response.status)
        if self._state.config.access_log:
            access_log.info(
                '%s "%s %s HTTP/%s" %d',
                self.remote[0] if self.remote else "-",
                request.method,
                request.target,
                request.http_version,
                response.status,
            )
        if self._conn.state is HttpState.CLOSING:
            self._close()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._track_state()
        # A pipelined request may be complete in the buffer already.
        self._state.loop.call_soon(self._process)

    def _upgrade(self, request: HttpRequest) -> None:
        state = self._state
        endpoint = state.routes.websocket.get(request.path)
        if endpoint is None:
            # DESIGN §2: unknown path → 404 before the upgrade, never 101 then close.
            self._respond(request, Response.error(ErrorCode.NOT_FOUND, "no WebSocket endpoint"))
            return
        # Connection caps come before the token is verified: refusing costs no crypto.
        limiter = state.limiter
        address = address_key(self.remote[0]) if self.remote else None
        capped = limiter.admit(address, state.loop.time(), len(state.ws_connections))
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
            checked = authenticate(state.authenticator, request, endpoint.auth_policy)
            if isinstance(checked, Response):
                self._respond(request, checked)
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
        transport.write(self._conn.accept_upgrade(outcome.headers))
        state.metrics.count_request(101)
        ws_conn = WsConn(state.limits, outcome.deflate, state.config.deflate)
        proto = WsProtocol(state, endpoint, ws_conn, request, self.remote, outcome.subprotocol)
        if identity is not None:
            proto.authenticate(identity)
        proto.recover = recover
        if limiter.tracks_addresses:
            limiter.opened(address, state.loop.time())
            proto._address_slot = (limiter, address)  # released by its connection_lost
        trailing = self._conn.trailing_data
        # Hand the socket over: from now on the WebSocket protocol owns it.
        self._state.http_connections.discard(self)
        self._state.metrics.http_open -= 1
        self._transport = None
        self.deadline = math.inf
        transport.set_protocol(proto)
        if self._paused:
            self._paused = False
            transport.resume_reading()
        proto.connection_made(transport)
        if trailing:
            proto.data_received(trailing)

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
        """A connection cap refused the upgrade: 429/503 with retry-after, then close."""
        code, message = _REFUSALS[refusal.reason]
        # Milliseconds, rounded up: waiting that long is enough.
        retry_after = math.ceil(refusal.retry_after * 1000) / 1000
        body = orjson.dumps(
            {"error": {"code": code.value, "message": message, "retryAfter": retry_after}}
        )
        headers = [
            *_JSON,
            ("retry-after", str(max(1, math.ceil(retry_after)))),
            ("connection", "close"),  # a refused client does not keep a socket
        ]
        self._state.metrics.count_refused(refusal.reason)
        if limiter.log_budget.take(self._state.loop.time()):
            limiter.not_logged += 1
        else:
            log.warning(
                "refused WebSocket on %s from %s: %s (%d earlier refusals not logged)",
                request.path,
                self.remote[0] if self.remote else "-",
                message,
                limiter.not_logged,
            )
            limiter.not_logged = 0
        self._respond(request, Response(code.status, headers, body))

    # --------------------------------------------------------------- errors
    def _fail(self, status: int) -> None:
        """Answer a protocol error with a JSON body and close (no details leak)."""
        transport = self._transport
        if transport is None:
            return
        code, message = _ERROR_MESSAGES.get(status, _ERROR_MESSAGES[400])
        data = self._conn.reject(status, _JSON, error_body(code, message))
        transport.write(data)
        self._state.metrics.count_request(status)
        self._close()

    def _close(self) -> None:
        transport = self._transport
        if transport is None:
            return
        if not transport.is_closing():
            transport.close()
        # If the client never reads what we wrote, drop the connection anyway.
        self._set_deadline(self._state.config.close_timeout)
        self._last_state = HttpState.CLOSING

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def shutdown(self) -> None:
        """Engine shutdown: idle connections close now; busy ones after their response."""
        if self._conn.state in (HttpState.IDLE, HttpState.READING, HttpState.READING_BODY):
            self._close()


def _recover_positions(query: str) -> RecoverRequest | None:
    """The ``recover`` query parameter (docs/recovery.md); ValueError when malformed."""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "recover":
            return parse_recover(value)
    return None
