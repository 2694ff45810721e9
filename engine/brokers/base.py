"""Brokers: where a published event is numbered and how it reaches every node.

The hub keeps the local side (which connection is in which room) and asks its
broker to publish. ``LocalBroker`` (the default, one node) numbers the event in
memory and hands it straight back to the hub for delivery. ``RedisBroker``
(engine/brokers/redis.py) numbers it in Redis and every node, the publishing one
included, delivers it when it comes back on a Redis channel, so all nodes see one
order per room. Both hand the hub a ``Publish`` (engine/brokers/publish.py) to
``deliver``; both answer recoveries (``send_recovery``, or ``recovery_failed`` when they
cannot). Commands on connections (engine/brokers/commands.py) the hub ``apply``s here;
the Redis broker also carries them to the other nodes.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from engine.brokers.commands import Command, Outcome
from engine.brokers.events import EventStore
from engine.brokers.history import HistoryPage, Recovery
from engine.brokers.publish import Publish

__all__ = ["FIELDS", "Broker", "Conn", "Numbered", "Sink"]

#: The field a numbered event names its stream with, by kind ("r" room, "u" user).
FIELDS = {"r": b"room", "u": b"user"}


#: Resolved with the ``(epoch, seq)`` a broker gave one publish, or None when it was not
#: numbered (everyone, binary, Redis unreachable): for a caller that waits (the server
#: API); a worker's emit passes none.
Numbered = asyncio.Future[tuple[str, int] | None]

#: A connection as brokers see it: the hub's member (engine/hub/member.py), opaque
#: here. Brokers only hand it back to their sink, so they never import the hub.
Conn = Any


class Sink(Protocol):
    """What a broker delivers into: the hub (engine/hub/hub.py) implements it."""

    def deliver(self, publish: Publish) -> int:
        """Queue a published event to the local connections; returns how many took it."""

    def send_recovery(self, ws: Conn, kind: str, name: str, found: Recovery) -> None:
        """What ``ws`` missed of the stream, then the verdict."""

    def recovery_failed(self, ws: Conn, kind: str, name: str) -> None:
        """``recovered: false`` for ``ws``, then what was held for it."""

    def recovery_deadline(self, ws: Conn, kind: str, name: str) -> float | None:
        """Loop time by which ``ws``'s recovery must be answered; None: no longer waits."""

    def apply(self, command: Command) -> int:
        """Apply a command to this node's connections; how many it acted on."""


class Broker(Protocol):
    #: False while the broker cannot reach its backend (``/health`` says degraded).
    healthy: bool
    #: Seconds a recovery may take; past it the hub answers ``recovered: false``.
    recovery_timeout: float
    #: Live events the hub holds per connection and stream while its recovery runs;
    #: past it the recovery is given up (``recovered: false``, then the held events).
    max_held: int

    @property
    def events(self) -> EventStore:
        """The queues of events between services (engine/brokers/events.py), kept where
        this broker keeps its state: in memory, or in Redis."""

    async def start(self, hub: Sink) -> None: ...

    async def stop(self) -> None: ...

    def publish(self, publish: Publish, numbered: Numbered | None = None) -> None:
        """Number (rooms, users) and deliver ``publish`` on every node concerned; its
        kind is a room (``"r"``), a user (``"u"``) or everyone (``"*"``), never one
        connection (the hub delivers those itself). ``numbered`` is resolved with the
        offset this publish got (exactly its own, whoever else publishes meanwhile)."""

    async def command(self, command: Command) -> Outcome:
        """Apply ``command`` to the connections it names, on every node concerned."""

    def watch(self, kind: str, name: str) -> None:
        """The first local connection joined this room / of this user: receive its events."""

    def unwatch(self, kind: str, name: str) -> None:
        """The last one left."""

    def recover(self, ws: Conn, kind: str, name: str, epoch: str, seq: int) -> None:
        """Send ``ws`` the events of the stream after ``seq``, then the verdict: through
        ``hub.send_recovery``, or ``hub.recovery_failed`` if it cannot be done."""

    def fence(self) -> asyncio.Future[None] | None:
        """Done when what was asked so far took effect locally; None if it already has."""

    async def read_history(
        self, room: str, since: int | None, epoch: str | None, limit: int
    ) -> HistoryPage:
        """A page of the room's kept events, the ones recovery reads (``history_page``).
        Raises OSError or RedisError when the backend cannot be read."""
