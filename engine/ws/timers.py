"""Timers: one deadline per connection, on the sweeper's wheel (engine/core/sweeper.py).

``deadline`` is the earliest of what the connection waits for: the heartbeat (ping
after ``heartbeat`` s without traffic, 1011 without a pong within
``heartbeat_timeout``), the token's expiry (1008), the close timeout (TCP reset when a
closing handshake or a drain does not finish within ``close_timeout``) and an earlier
wake-up (``_wake_at``: for guards.py the end of a throttle or a report that is due;
for protocol.py the moment to drop the frame parser of a connection gone quiet).
``_due`` keeps the heartbeat/close timer while a wake-up stands in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct

from engine.ws.base import WsBase
from protocol import CloseCode
from protocol.ws import WsState

__all__ = ["SHED_AFTER", "Timers"]

#: Seconds without a byte received after which a connection drops its frame parser
#: (``WsConn.shed``: ~900 bytes, most of an idle connection's Python objects). Checked
#: once, this long after a read made a new parser; a connection still busy then keeps
#: it until the heartbeat finds it idle. Making one again costs ~2 µs.
SHED_AFTER = 2.0

log = logging.getLogger("linkd.ws")


class Timers(WsBase):
    __slots__ = ()

    def _arm_heartbeat(self, now: float) -> None:
        interval = self._state.config.heartbeat
        # The token's expiry is a deadline too, heartbeat or not (see _set_deadline).
        self._set_deadline(now + interval if interval > 0 else math.inf)

    def _set_deadline(self, when: float) -> None:
        self._due = when
        if self._conn.state is WsState.OPEN:
            when = min(when, self._expires_at)
        if self._wake_at < when:
            when = self._wake_at
        self.deadline = when
        self._state.sweeper.schedule(self)

    def on_deadline(self, now: float) -> None:
        """Called by the sweeper: wake-up, heartbeat, pong timeout, close timeout."""
        if self._closed:
            self.deadline = math.inf
            return
        if now >= self._wake_at:
            self._wake_at = math.inf
            self._wake(now)
            if self._closed:
                return
            if now - self._last_rx >= SHED_AFTER:
                self._conn.shed()  # quiet since its parser was made (protocol.py)
            due = self._due
            if self._conn.state is WsState.OPEN:
                due = min(due, self._expires_at)
            if now < due:  # woken early: the timer it stands for is still ahead
                self._set_deadline(self._due)
                return
        transport = self._transport
        assert transport is not None
        conn_state = self._conn.state
        if conn_state is not WsState.OPEN or transport.is_closing():
            # The close timeout passed without the peer's close or a drained buffer.
            log.debug("ws %d: close timeout, dropping TCP", self.id)
            _reset(transport)
            return
        config = self._state.config
        if now >= self._expires_at:
            log.info("ws %d: token of user %s expired", self.id, self.user_id)
            self.close(CloseCode.POLICY_VIOLATION, "token expired")
            return
        if self._ping_payload is not None:
            if self._paused:
                # We stopped reading ourselves (handler backlog or our own write side
                # is full): the pong may be sitting unread in the kernel. Not its fault.
                self._pong_deadline = now + config.heartbeat_timeout
                self._set_deadline(self._pong_deadline)
            elif now >= self._pong_deadline:
                log.info("ws %d: pong not received in %.1fs", self.id, config.heartbeat_timeout)
                self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            else:
                self._set_deadline(self._pong_deadline)
            return
        if config.heartbeat <= 0:
            self._set_deadline(math.inf)
            return
        idle_until = self._last_rx + config.heartbeat
        if now < idle_until:
            self._set_deadline(idle_until)  # traffic arrived: not idle yet
            return
        self._conn.shed()  # idle for a heartbeat: its parser need not wait with it
        self._ping_payload = self.id.to_bytes(8, "big") + int(now * 1000).to_bytes(8, "big")
        self._queue(self._conn.ping(self._ping_payload))
        self._pong_deadline = now + config.heartbeat_timeout
        self._set_deadline(self._pong_deadline)


def _reset(transport: asyncio.Transport) -> None:
    """Abort with SO_LINGER 0: the kernel discards what the peer never read (RST)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
