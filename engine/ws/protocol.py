"""WsProtocol: the asyncio shell around one ``WsConn``; handlers see it as a ``WebSocket``
(engine/api/endpoint.py), the hub as a ``Member`` (engine/hub/member.py).

A thin pump: ``data_received`` feeds the core and ``_pump`` (inbound.py) dispatches
its events to the endpoint; what the core owes and what handlers send is queued
(outbound.py). This module is the pump and the composition: one class per job, one
object per connection (the slots are declared once, in base.py):

- facade.py    what handlers and the hub call: send, close, drain, room refusals
- outbound.py  the cork, ``send_prepared``/``send_now``, the outbound cap (1013)
- lossy.py     the backlog of the ``drop_oldest``/``conflate`` policies
- inbound.py   frame budget, events to ``on_message``, the inbox and its one task
- guards.py    rate limits, abuse (1008), ``linkd.rate_limited`` reports
- refresh.py   ``linkd.refresh``: a new token without reconnecting
- timers.py    the one deadline: heartbeat, token expiry, close timeout, wake-ups
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, cast

from engine.ws.base import PAUSE_RATE, PAUSE_TURN, PAUSE_WRITE
from engine.ws.facade import Facade
from engine.ws.guards import Guards
from engine.ws.inbound import Inbound
from engine.ws.lossy import Lossy
from engine.ws.outbound import Outbound
from engine.ws.refresh import Refresh
from engine.ws.timers import SHED_AFTER, Timers
from protocol import CloseCode

if TYPE_CHECKING:
    from engine.limits.ratelimit import ConnectionLimiter

__all__ = ["WsProtocol"]

log = logging.getLogger("linkd.ws")


class WsProtocol(Facade, Outbound, Lossy, Inbound, Guards, Refresh, Timers):
    """One upgraded connection. Handlers receive it as a ``WebSocket``."""

    __slots__ = ()

    def hold_address_slot(self, limiter: ConnectionLimiter, address: str | None) -> None:
        """Hold ``limiter``'s slot for ``address`` (taken by the upgrade) until
        ``connection_lost`` releases it."""
        self._address_slot = (limiter, address)

    # ------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        limits = self._state.limits
        transport.set_write_buffer_limits(limits.write_high_water, limits.write_low_water)
        self._state.hub.add(self)
        metrics = self._state.metrics
        metrics.ws_open += 1
        by_path = metrics.ws_open_by_path
        by_path[self.request.path] = by_path.get(self.request.path, 0) + 1
        self._last_rx = self._state.loop.time()
        self._arm_heartbeat(self._last_rx)
        log.debug("ws %d open %s from %s", self.id, self.request.path, self.remote)
        result = self._endpoint.on_connect(self)
        if result is not None:
            self._busy = True  # messages wait in the inbox until on_connect is done
            self._wait_for(result)

    def data_received(self, data: bytes) -> None:
        now = self._state.loop.time()
        self._state.metrics.ws_bytes_in += len(data)
        if self._conn.receive_data(data) and self._wake_at == math.inf:
            # A new parser: shed it again if the connection falls quiet (timers.py).
            self._wake_at = now + SHED_AFTER
            self._set_deadline(self._due)
        if self._paused & (PAUSE_RATE | PAUSE_TURN):
            # Throttled, or frames of an earlier read still wait for their turn (bytes
            # a transport had read before pause_reading): they wait in the core.
            self._last_rx = now
            return
        self._pump(now)

    def eof_received(self) -> bool:
        self._conn.receive_data(None)
        if not self._paused & PAUSE_RATE:
            # The peer is gone and the transport closes after this: what waits for a
            # turn is parsed now (one read's worth at most), then the EOF.
            self._paused &= ~PAUSE_TURN
            self._pump(self._state.loop.time())
            while self._paused & PAUSE_TURN and not self._closed:
                self._paused &= ~PAUSE_TURN
                self._pump(self._state.loop.time())
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.deadline = math.inf
        self._state.sweeper.cancel(self)
        self._out = None
        if self._backlog is not None:
            self._state.metrics.dropped_messages += len(self._backlog)
            self._backlog = None
        self._conn.release()
        self.left_rooms = self._state.hub.remove(self)
        self._state.metrics.ws_open -= 1
        self._state.metrics.ws_open_by_path[self.request.path] -= 1
        if self._address_slot is not None:
            limiter, key = self._address_slot
            self._address_slot = None
            limiter.closed(key)
        self._state.check_idle()
        code = self._received_close or self._close_code or CloseCode.ABNORMAL
        self._state.metrics.count_close(code)
        if self._write_ready is not None:
            self._write_ready.set()
        log.debug("ws %d closed code=%d", self.id, code)
        if self._busy:
            self._disconnect_code = code  # delivered after the queued messages
        else:
            self._notify_disconnect(code)

    def pause_writing(self) -> None:
        if self._write_ready is None:
            self._write_ready = asyncio.Event()
        self._write_ready.clear()
        self._pause(PAUSE_WRITE)

    def resume_writing(self) -> None:
        if self._write_ready is not None:
            self._write_ready.set()
        self._resume(PAUSE_WRITE)
        if self._backlog is not None:
            self._release()
