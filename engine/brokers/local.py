"""LocalBroker: one node; events numbered and kept in memory (brokers/history.py), delivered
at once."""

from __future__ import annotations

import asyncio

from engine.brokers.base import FIELDS, Conn, Numbered, Sink
from engine.brokers.commands import Command, Outcome
from engine.brokers.events import LocalEvents
from engine.brokers.history import HistoryPage, Recovery, StreamHistory
from engine.brokers.publish import Publish

__all__ = ["PRUNE_INTERVAL", "LocalBroker"]

#: Seconds between sweeps of expired events out of the in-memory history.
PRUNE_INTERVAL = 60.0


class LocalBroker:
    """One node: events numbered and kept in memory, delivered at once."""

    healthy = True
    # Recoveries are answered within the call: nothing is ever held, nor late.
    recovery_timeout = 5.0
    max_held = 1000

    def __init__(self, history: StreamHistory, events: LocalEvents | None = None) -> None:
        self.history = history
        self.events = events if events is not None else LocalEvents()
        self._hub: Sink | None = None
        self._prune_timer: asyncio.TimerHandle | None = None

    async def start(self, hub: Sink) -> None:
        self._hub = hub
        await self.events.start()
        # The in-memory history is pruned here; Redis expires its own keys.
        self._prune_timer = asyncio.get_running_loop().call_later(PRUNE_INTERVAL, self._prune)

    async def stop(self) -> None:
        await self.events.stop()
        if self._prune_timer is not None:
            self._prune_timer.cancel()
            self._prune_timer = None

    def _prune(self) -> None:
        self.history.prune()
        self._prune_timer = asyncio.get_running_loop().call_later(PRUNE_INTERVAL, self._prune)

    def attach(self, hub: Sink) -> None:
        self._hub = hub

    def publish(self, publish: Publish, numbered: Numbered | None = None) -> None:
        assert self._hub is not None
        field = None if publish.binary else FIELDS.get(publish.kind)
        if field is not None:
            # No seq for the hub: recoveries here are synchronous, nothing is held back.
            stamped = self.history.append(publish.stream, publish.payload, field, publish.name)
            publish = publish.stamped(stamped)
            if numbered is not None:  # numbered just now: the stream's position is its own
                numbered.set_result(self.history.position(publish.stream))
        elif numbered is not None:
            numbered.set_result(None)
        self._hub.deliver(publish)

    async def command(self, command: Command) -> Outcome:
        """This node's connections: the only ones (a connection of another node: none)."""
        assert self._hub is not None
        if command.node is not None:
            return Outcome(0)
        return Outcome(self._hub.apply(command))

    def watch(self, kind: str, name: str) -> None:
        return None

    def unwatch(self, kind: str, name: str) -> None:
        return None

    def fence(self) -> asyncio.Future[None] | None:
        return None  # everything takes effect at once

    def recover(self, ws: Conn, kind: str, name: str, epoch: str, seq: int) -> None:
        # Synchronous: no live event of the stream can come between the missed ones
        # and the verdict.
        assert self._hub is not None
        found: Recovery = self.history.since(f"{kind}:{name}", epoch, seq)
        self._hub.send_recovery(ws, kind, name, found)

    async def read_history(
        self, room: str, since: int | None, epoch: str | None, limit: int
    ) -> HistoryPage:
        return self.history_of(room, since, epoch, limit)

    def history_of(
        self, room: str, since: int | None, epoch: str | None, limit: int
    ) -> HistoryPage:
        """``read_history`` without the coroutine: the local history answers at once."""
        return self.history.read(f"r:{room}", since, epoch, limit)
