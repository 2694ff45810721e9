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

This module is the pump, the requests and their answers; the other jobs are mixins
of the same one object (slots in base.py): admission.py (origin, caps, request rate),
upgrade.py (the WebSocket upgrade and the hand-off of the socket to a ``WsProtocol``
with h11's trailing bytes, so nothing is parsed twice), timers.py (the deadlines),
proxied.py (the client's address behind a balancer: PROXY header, trusted proxies).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Awaitable
from typing import cast

from engine.api.request import Request, Response, error_body
from engine.api.routes import MethodNotAllowed
from engine.http.base import HOLD_REQUEST, HOLD_WRITE, JSON
from engine.http.proxied import Proxied
from engine.http.timers import Timers
from engine.http.upgrade import Upgrade
from engine.log import redact_target
from protocol import ErrorCode, MessageTooBig, RemoteProtocolError
from protocol.http import (
    NEED_DATA,
    HttpRequest,
    HttpState,
    PeerEOF,
    UnsendableResponse,
    is_websocket_upgrade,
)

__all__ = ["HttpProtocol"]

log = logging.getLogger("linkd.http")
access_log = logging.getLogger("linkd.access")

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


class HttpProtocol(Upgrade, Timers, Proxied):
    """One client TCP connection until (unless) it upgrades to WebSocket."""

    __slots__ = ()

    # ------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        state = self._state
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            # IPv4's (host, port) as it is; IPv6's 4-tuple trimmed.
            self._set_peer(peer if len(peer) == 2 else (str(peer[0]), int(peer[1])))
        if state.config.proxy_protocol:
            self._proxy_buffer = bytearray()  # proxied.py: the header comes first
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

    def data_received(self, data: bytes) -> None:
        if self._over_cap:
            return  # refused at accept: read and dropped until EOF
        if self._proxy_buffer is not None:
            rest = self._proxy_data(data)
            if not rest:
                return
            data = rest
        self._conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        if self._over_cap:
            return False  # the transport closes itself
        if self._proxy_buffer is not None:
            if self._proxy_buffer:
                self._proxy_refused("closed before the end of its PROXY header")
            return False  # nothing at all: a balancer's TCP health check
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
        if self._hold & HOLD_WRITE or self._transport is None:
            return
        self._hold_reading(HOLD_WRITE)
        self._unsent = self._transport.get_write_buffer_size()
        self._arm_send_timeout()

    def resume_writing(self) -> None:
        if not self._hold & HOLD_WRITE:
            return
        self._release_reading(HOLD_WRITE)
        self._state_deadline()
        self._schedule()  # pipelined requests waiting in h11's buffer

    # -------------------------------------------------------------- parsing
    def _process(self) -> None:
        """Take at most one event out of the core: a request is answered before the
        next is parsed, and the next waits for another loop iteration."""
        self._scheduled = False
        conn = self._conn
        if self._transport is None or self._hold & HOLD_WRITE:
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
            self._hold_reading(HOLD_REQUEST)
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
            self._release_reading(HOLD_REQUEST)

    def _schedule(self) -> None:
        if not self._scheduled and self._transport is not None:
            self._scheduled = True
            self._state.loop.call_soon(self._process)

    # ------------------------------------------------------------- requests
    def _dispatch(self, request: HttpRequest) -> None:
        """Admission (connection cap, request rate), then the request itself."""
        state = self._state
        self._forwarded(request)
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
        if (
            request.path == "/metrics"
            and request.method in ("GET", "HEAD")
            and self._state.config.public_metrics
        ):
            # Off by default: the admin listener serves it (engine/http/admin.py);
            # otherwise /metrics is an ordinary path (404, or an embedder's route).
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
        transport.write(self._conn.reject(status, JSON, body))
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
