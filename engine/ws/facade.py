"""Facade: what handlers and the hub call on a connection (the ``WebSocket`` of
engine/api/endpoint.py, the ``Member`` of engine/hub/member.py).

``send``, ``close``, ``abort``, ``drain``, the token attached at the upgrade, and the
room cap the hub enforces. The rest of the handler API lives with its job:
``send_prepared``/``send_now`` in outbound.py (the fan-out path), ``rate_limit`` and
``note_dropped`` in guards.py.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import orjson

from engine.ws.base import PAUSE_RATE, Refusals, WsBase
from protocol import CloseCode
from protocol.ws import OutboundMessage, WsState

if TYPE_CHECKING:
    from engine.auth import Identity

__all__ = ["Facade"]

log = logging.getLogger("linkd.ws")


class Facade(WsBase):
    __slots__ = ()

    def authenticate(self, identity: Identity) -> None:
        """Attach a verified token (before ``connection_made``: the hub indexes users)."""
        self.auth = identity.auth
        self.user_id = identity.user_id
        if identity.expires is not None and self._state.config.close_on_token_expiry:
            # exp is wall-clock time; every timer here runs on the loop's monotonic clock.
            left = identity.expires - time.time()
            self._expires_at = self._state.loop.time() + max(0.0, left)

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def closed(self) -> bool:
        """True once no more messages can be sent (closing handshake started or done)."""
        return self._closed or self._conn.state is not WsState.OPEN

    def send(self, data: str | bytes) -> bool:
        """Queue one message; returns False (and drops it) when the connection is closing.

        Never blocks and never raises for a closed peer: a broadcast must not stop at
        one bad recipient. Use ``drain()`` to wait for the kernel to take the bytes.
        """
        if not self._conn.raw_allowed or self._closed:
            self._state.metrics.dropped_messages += 1
            return False
        frame = self._conn.send(data)
        if self._policy is not None:
            self._queue_message(frame, self._policy, None)
        else:
            self._queue(frame)
        self._state.metrics.ws_messages_out += 1
        return True

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; TCP is dropped if the peer does not answer."""
        if self._closed:
            return
        if self._backlog is not None and code != CloseCode.TRY_AGAIN_LATER:
            self._release(force=True)  # held messages go before the close frame
        frame = self._conn.close(code, reason)
        if not frame:
            return
        self._close_code = code
        self._queue(frame)
        now = self._state.loop.time()
        if self._paused & PAUSE_RATE:
            # Throttled: read again at the next tick, or the peer's close waits unread
            # behind its throttled messages (those are discarded now: we are closing).
            self._wake_at = now
        self._set_deadline(now + self._state.config.close_timeout)

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        if self._transport is not None and not self._closed:
            self._transport.abort()

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark."""
        self.flush()  # corked frames count: hand them to the transport first
        if self._write_ready is None or self._closed:
            return
        await self._write_ready.wait()

    # ------------------------------------------------------ rooms (the hub)
    @property
    def max_rooms(self) -> int:
        """Rooms this connection may be in (0: no cap); the hub enforces it."""
        return self._state.config.max_rooms_per_connection

    @property
    def join_refusals(self) -> int:
        """Joins refused since the last successful one (0: not refusing)."""
        refusals = self._refusals
        return 0 if refusals is None else refusals.joins

    def join_refused(self, room: str, limit: int) -> None:
        """The hub did not add this connection to ``room``: it is in ``limit`` rooms.

        Counted; logged once per episode (until a join succeeds again); the client
        gets ``{"type": "linkd.join_refused", "data": {"room", "limit"}}``.
        """
        self._state.metrics.ws_joins_refused += 1
        refusals = self._refusals
        if refusals is None:
            refusals = self._refusals = Refusals()
        if not refusals.joins:
            log.warning(
                "ws %d user %s on %s: join of room %r refused: already in %d rooms "
                "(--max-rooms-per-connection); more refusals are not logged",
                self.id,
                self.user_id or "-",
                self.request.path,
                room,
                limit,
            )
        refusals.joins += 1
        event = orjson.dumps({"type": "linkd.join_refused", "data": {"room": room, "limit": limit}})
        self._send_event(event)

    def end_join_refusals(self) -> None:
        """A join succeeded again: the refusal episode is over."""
        refusals = self._refusals
        if refusals is not None and refusals.joins:
            log.info("ws %d: joins accepted again after %d refused", self.id, refusals.joins)
            refusals.joins = 0

    def _send_event(self, payload: bytes) -> None:
        """An engine event (JSON text) to this client."""
        threshold = self._state.limits.compression_threshold
        self.send_prepared(OutboundMessage(payload, text=True, compression_threshold=threshold))
