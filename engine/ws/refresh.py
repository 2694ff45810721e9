"""Refresh: a new token for an open connection, without reconnecting (docs/clients.md).

The client sends ``{"type": "linkd.refresh", "data": {"token": "..."}, "id": N}``
before its token expires; inbound.py hands it here, on every path with an auth policy,
before the endpoint sees it (it never reaches a handler or a worker). A token of the
connection's own user replaces ``auth`` (what every later ``message`` and the
``disconnect`` carry to the workers) and moves the expiry; rooms, the recovery position
and the hub's user index stay as they are. Refused, the connection keeps its old token
and is still closed (1008) when that one expires: ``UNAUTHORIZED`` for a token that
does not verify, ``FORBIDDEN`` for one of another user (or for an anonymous
connection: it has no user to refresh), ``RATE_LIMITED`` past ``REFRESH_RATE``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import orjson

from engine.auth import AuthError
from engine.ws.base import WsBase
from protocol import ErrorCode

__all__ = ["REFRESH_BURST", "REFRESH_RATE", "REFRESH_TYPE", "Refresh"]

log = logging.getLogger("linkd.ws")

#: The reserved message type (the ``linkd.`` prefix is the engine's).
REFRESH_TYPE = "linkd.refresh"
#: Refreshes per second a connection may send, sustained, and in a burst: every one
#: costs a signature check, and a client needs one per token lifetime.
REFRESH_RATE = 1.0
REFRESH_BURST = 2.0


class Refresh(WsBase):
    __slots__ = ()

    def _refresh(self, text: str) -> bool:
        """Handle ``text`` if it is a refresh; False (untouched) when it is not one."""
        try:
            envelope = orjson.loads(text)
        except orjson.JSONDecodeError:
            return False
        if type(envelope) is not dict or envelope.get("type") != REFRESH_TYPE:
            return False
        msg_id = envelope.get("id")
        if type(msg_id) not in (str, int):
            msg_id = None
        wait = self.rate_limit(REFRESH_TYPE, REFRESH_RATE, REFRESH_BURST)
        if wait:
            if not self.closed:  # else closed for abuse: the close says it
                self._refresh_error(msg_id, ErrorCode.RATE_LIMITED, "too many refreshes", wait)
            return True
        data = envelope.get("data")
        token = data.get("token") if type(data) is dict else None
        if type(token) is not str or not token:
            self._refresh_error(msg_id, ErrorCode.BAD_REQUEST, "data.token must be a string")
            return True
        authenticator = self._state.authenticator
        if not authenticator.configured:
            self._refresh_error(
                msg_id, ErrorCode.UNAUTHORIZED, "token verification is not configured"
            )
            return True
        try:
            identity = authenticator.verify(token)  # logs a refusal, never the token
        except AuthError as exc:
            self._refresh_error(msg_id, ErrorCode.UNAUTHORIZED, str(exc))
            return True
        wall = time.time()
        if identity.expires is not None and identity.expires <= wall:
            # Within the leeway verify allows: it would only close the connection now.
            self._refresh_error(msg_id, ErrorCode.UNAUTHORIZED, "token expired")
            return True
        if self.user_id is None or identity.user_id != self.user_id:
            log.info(
                "ws %d user %s: refresh with a token of user %s refused",
                self.id,
                self.user_id or "-",
                identity.user_id,
            )
            reason = "token is for another user" if self.user_id else "connection is anonymous"
            self._refresh_error(msg_id, ErrorCode.FORBIDDEN, reason)
            return True
        self.auth = identity.auth
        if identity.expires is None or not self._state.config.close_on_token_expiry:
            self._expires_at = math.inf
        else:
            self._expires_at = self._state.loop.time() + (identity.expires - wall)
        self._set_deadline(self._due)  # the expiry is part of the deadline (timers.py)
        log.debug("ws %d user %s: token refreshed", self.id, self.user_id)
        if msg_id is not None:
            ack: dict[str, Any] = {
                "id": msg_id,
                "type": REFRESH_TYPE,
                "data": {"expiresAt": identity.expires},
            }
            self._send_event(orjson.dumps(ack))
        return True

    def _refresh_error(
        self, msg_id: Any, code: ErrorCode, message: str, retry_after: float | None = None
    ) -> None:
        error: dict[str, Any] = {"code": code.value, "message": message}
        if retry_after is not None:
            error["retryAfter"] = math.ceil(retry_after * 1000) / 1000
        frame: dict[str, Any] = {"type": REFRESH_TYPE, "error": error}
        if msg_id is not None:
            frame = {"id": msg_id, **frame}
        self._send_event(orjson.dumps(frame))
