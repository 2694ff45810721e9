"""Brokers: where a published event is numbered and how it reaches every node.

The hub keeps the local side (which connection is in which room) and asks its
broker to publish. ``LocalBroker`` (the default, one node) numbers the event in
memory and hands it straight back to the hub for delivery. ``RedisBroker``
(engine/redis_broker.py) numbers it in Redis and every node, the publishing one
included, delivers it when it comes back on a Redis channel, so all nodes see one
order per room. Both tell the hub ``deliver(...)``; both answer recoveries
(``send_recovery``, or ``recovery_failed`` when they cannot).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .history import Recovery, StreamHistory

if TYPE_CHECKING:
    from .hub import Hub
    from .ws_protocol import WsProtocol

__all__ = ["FIELDS", "Broker", "LocalBroker"]

#: The field a numbered event names its stream with, by kind ("r" room, "u" user).
FIELDS = {"r": b"room", "u": b"user"}


class Broker(Protocol):
    #: False while the broker cannot reach its backend (``/health`` says degraded).
    healthy: bool
    #: Seconds a recovery may take; past it the hub answers ``recovered: false``.
    recovery_timeout: float
    #: Live events the hub holds per connection and stream while its recovery runs;
    #: past it the recovery is given up (``recovered: false``, then the held events).
    max_held: int

    async def start(self, hub: Hub) -> None: ...

    async def stop(self) -> None: ...

    def publish(
        self,
        kind: str,
        name: str,
        payload: bytes,
        exclude: Iterable[int],
        event: str | None,
        started: float,
    ) -> None:
        """Publish to a room (``"r"``), a user (``"u"``) or everyone (``"*"``, name "")."""

    def watch(self, kind: str, name: str) -> None:
        """The first local connection joined this room / of this user: receive its events."""

    def unwatch(self, kind: str, name: str) -> None:
        """The last one left."""

    def recover(self, ws: WsProtocol, kind: str, name: str, epoch: str, seq: int) -> None:
        """Send ``ws`` the events of the stream after ``seq``, then the verdict: through
        ``hub.send_recovery``, or ``hub.recovery_failed`` if it cannot be done."""

    def fence(self) -> asyncio.Future[None] | None:
        """Done when what was asked so far took effect locally; None if it already has."""


class LocalBroker:
    """One node: events numbered and kept in memory, delivered at once."""

    healthy = True
    # Recoveries are answered within the call: nothing is ever held, nor late.
    recovery_timeout = 5.0
    max_held = 1000

    def __init__(self, history: StreamHistory) -> None:
        self.history = history
        self._hub: Hub | None = None

    async def start(self, hub: Hub) -> None:
        self._hub = hub

    async def stop(self) -> None:
        return None

    def attach(self, hub: Hub) -> None:
        self._hub = hub

    def publish(
        self,
        kind: str,
        name: str,
        payload: bytes,
        exclude: Iterable[int],
        event: str | None,
        started: float,
    ) -> None:
        assert self._hub is not None
        field = FIELDS.get(kind)
        if field is not None:
            payload = self.history.append(f"{kind}:{name}", payload, field, name)
        # No seq for the hub: recoveries here are synchronous, nothing is held back.
        self._hub.deliver(kind, name, payload, None, exclude, event, started)

    def watch(self, kind: str, name: str) -> None:
        return None

    def unwatch(self, kind: str, name: str) -> None:
        return None

    def fence(self) -> asyncio.Future[None] | None:
        return None  # everything takes effect at once

    def recover(self, ws: WsProtocol, kind: str, name: str, epoch: str, seq: int) -> None:
        # Synchronous: no live event of the stream can come between the missed ones
        # and the verdict.
        assert self._hub is not None
        found: Recovery = self.history.since(f"{kind}:{name}", epoch, seq)
        self._hub.send_recovery(ws, kind, name, found)
