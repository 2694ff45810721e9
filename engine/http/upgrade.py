"""Upgrade: an HTTP request becomes a WebSocket, and the socket changes hands.

The checks run cheapest first, and every refusal is an HTTP answer before the 101,
never a 101 then a close (docs/architecture.md): the path (404), the ``Origin``
(``--allowed-origins``: 403), the per-address caps
(admission.py, before any crypto), the endpoint's ``reject_upgrade``, the token (401,
then the per-user cap), ``?recover=`` (400), the handshake itself
(protocol/http ``validate_upgrade``: 400/426), shutdown (503). Then the 101 is written
and the transport is handed to a ``WsProtocol`` (engine/ws/protocol.py) together with
h11's trailing bytes, so nothing is parsed twice; the WebSocket keeps the
``max_connections`` slot and the per-address slot this connection held.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from urllib.parse import parse_qsl

from engine.api.request import Request, Response, error_body
from engine.auth import authenticate
from engine.brokers.history import RecoverRequest, parse_recover
from engine.config import Config
from engine.http.admission import Admission
from engine.http.base import HOLD_WRITE, JSON
from engine.ws.protocol import WsProtocol
from protocol import ErrorCode
from protocol.errors import UnauthorizedError
from protocol.http import HttpRequest, UnsendableResponse, UpgradeRejected, validate_upgrade
from protocol.http.origin import OriginPolicy
from protocol.ws import WsConn

__all__ = ["Upgrade", "origin_policy"]

log = logging.getLogger("linkd.http")


class Upgrade(Admission):
    __slots__ = ()

    def _upgrade(self, request: HttpRequest) -> None:
        state = self._state
        endpoint = state.routes.websocket.get(request.path)
        if endpoint is None:
            # docs/embedding.md (websocket): an unknown path is a 404 before the upgrade,
            # never a 101 then a close.
            self._respond(request, Response.error(ErrorCode.NOT_FOUND, "no WebSocket endpoint"))
            return
        # The endpoint's own list (a service's WebSocketOptions(origins=...)) wins.
        own = endpoint.allowed_origins
        if own is not None:
            policy: OriginPolicy | None = _policy(own, state.config.require_origin)
        else:
            policy = origin_policy(state.config)
        if policy is not None and not policy.allows(request.header("origin")):
            self._refuse_origin(request)
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
            # docs/configuration.md, Authentication: a bad token is a 401 before the
            # upgrade, never a 101 then a close.
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
                outcome.status, [*JSON, *outcome.headers], error_body(code, outcome.message)
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
            proto.hold_address_slot(limiter, address)  # released by its connection_lost
        trailing = self._conn.trailing_data
        # Hand the socket over: from now on the WebSocket protocol owns it, and its
        # max_connections slot (the hub counts it from proto.connection_made on).
        state.http_connections.discard(self)
        state.metrics.http_open -= 1
        self._release_slot()
        self._transport = None
        self.deadline = math.inf
        state.sweeper.cancel(self)
        write_held = self._hold & HOLD_WRITE
        transport.set_protocol(proto)
        if self._hold:
            self._hold = 0
            transport.resume_reading()
        proto.connection_made(transport)
        if write_held:  # the 101 passed the high-water mark before the hand-over
            proto.pause_writing()
        if trailing:
            proto.data_received(trailing)


@lru_cache(maxsize=8)
def _policy(origins: tuple[str, ...], require: bool) -> OriginPolicy:
    return OriginPolicy.parse(origins, require)


def origin_policy(config: Config) -> OriginPolicy | None:
    """``--allowed-origins`` parsed once; None: any origin (and no ``Origin``) passes."""
    if config.allowed_origins is None:
        return OriginPolicy(None, True) if config.require_origin else None
    return _policy(config.allowed_origins, config.require_origin)


def _recover_positions(query: str) -> RecoverRequest | None:
    """The ``recover`` query parameter (docs/recovery.md); ValueError when malformed."""
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "recover":
            return parse_recover(value)
    return None
