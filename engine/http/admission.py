"""Admission: who may connect and how often; the 403/429/503 refusals.

The Origin policy (``--allowed-origins``: 403 at the upgrade), connection caps
(``--max-connections``: a 503 when the connection is accepted, before any request; per
address and per user: 429 at the upgrade, before the token is verified where possible)
and the per-address HTTP request rate. Every refusal is counted and logged within a
budget (a flood must not turn into a log flood); a 429/503 carries ``retry-after``
(header, and ``retryAfter`` in the JSON body). The limits
themselves are bookkeeping in engine/limits/ratelimit.py; this module turns their
verdicts into answers.
"""

from __future__ import annotations

import asyncio
import logging
import math

import orjson

from engine.api.request import Response
from engine.http.base import JSON, HttpBase
from engine.limits.ratelimit import CAP_RETRY_AFTER, ConnectionLimiter, Refusal
from protocol import ErrorCode
from protocol.http import HttpRequest

__all__ = ["Admission"]

log = logging.getLogger("linkd.http")

#: How long a connection refused at accept may linger for its EOF (then: reset).
_REFUSED_LINGER = 1.0

_REFUSALS = {
    "global": (ErrorCode.OVERLOADED, "too many connections"),
    "per_ip": (ErrorCode.RATE_LIMITED, "too many connections from this address"),
    "rate": (ErrorCode.RATE_LIMITED, "too many new connections from this address"),
    "http_rate": (ErrorCode.RATE_LIMITED, "too many requests from this address"),
}


class Admission(HttpBase):
    __slots__ = ()

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
        state.limiter.log.warning(
            log,
            state.loop.time(),
            "refused a connection from %s: over --max-connections %d",
            self.remote[0] if self.remote else "-",
            state.config.max_connections,
        )
        code, message = _REFUSALS["global"]
        headers = [*JSON, *_retry_after(CAP_RETRY_AFTER)]
        transport.write(
            self._conn.reject(503, headers, _refusal_body(code, message, CAP_RETRY_AFTER))
        )
        if transport.can_write_eof():
            transport.write_eof()
        self._set_deadline(_REFUSED_LINGER)

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
        headers = [*JSON, *_retry_after(refusal.retry_after)]
        headers.append(("connection", "close"))  # a refused client does not keep a socket
        self._state.metrics.count_refused(refusal.reason)
        limiter.log.warning(
            log,
            self._state.loop.time(),
            "refused %s on %s from %s: %s",
            "WebSocket" if request.upgrade is not None else "HTTP request",
            request.path,
            self.remote[0] if self.remote else "-",
            message,
        )
        body = _refusal_body(code, message, refusal.retry_after)
        self._respond(request, Response(code.status, headers, body))

    def _refuse_origin(self, request: HttpRequest) -> None:
        """``--allowed-origins``: a page on another site (cross-site WebSocket
        hijacking) gets 403 before the upgrade, and the token is never looked at."""
        state = self._state
        state.metrics.count_refused("origin")
        state.limiter.log.warning(
            log,
            state.loop.time(),
            "refused WebSocket on %s from %s: Origin %r is not allowed (--allowed-origins)",
            request.path,
            self.remote[0] if self.remote else "-",
            (request.header("origin") or "(none)")[:200],
        )
        message = "this origin may not open a WebSocket here"
        self._respond(request, Response.error(ErrorCode.FORBIDDEN, message))

    def _rate_limited(self, request: HttpRequest, wait: float) -> None:
        """Over the per-address request rate: 429 with retry-after; keep-alive kept
        (the client may simply wait; a flood meets the write-side backpressure)."""
        rates = self._state.http_rates
        assert rates is not None
        rates.log.warning(
            log,
            self._state.loop.time(),
            "refused %s %s from %s: over the HTTP request rate of %g/s, burst %g "
            "(--http-rate, --http-burst)",
            request.method,
            request.path,
            self.remote[0] if self.remote else "-",
            rates.rate,
            rates.burst,
        )
        code, message = _REFUSALS["http_rate"]
        headers = [*JSON, *_retry_after(wait)]
        self._respond(request, Response(code.status, headers, _refusal_body(code, message, wait)))


def _retry_after(seconds: float) -> list[tuple[str, str]]:
    # Whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3).
    return [("retry-after", str(max(1, math.ceil(seconds))))]


def _refusal_body(code: ErrorCode, message: str, retry_after: float) -> bytes:
    # Milliseconds, rounded up: waiting that long is enough.
    wait = math.ceil(retry_after * 1000) / 1000
    return orjson.dumps({"error": {"code": code.value, "message": message, "retryAfter": wait}})
