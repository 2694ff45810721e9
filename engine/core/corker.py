"""Corker: one write per connection per loop iteration."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from engine.core.metrics import Histogram

__all__ = ["Corker", "Flushable"]


class Flushable(Protocol):
    def flush(self) -> None: ...


class Corker:
    """Collects the frames queued to each connection during one loop iteration.

    The first frame queued to a connection registers it here; one ``call_soon``
    flushes every registered connection with a single ``write``/``writelines``, after
    the callbacks already due in this iteration. An idle system adds no timer and no
    delay; a busy one turns N deliveries to a connection into one system call.
    """

    __slots__ = ("_latency", "_loop", "_pending", "_published", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, latency: Histogram | None = None) -> None:
        self._loop = loop
        self._pending: list[Flushable] = []
        self._scheduled = False
        #: perf_counter() of each publish queued during this iteration.
        self._published: list[float] = []
        self._latency = latency

    def add(self, proto: Flushable) -> None:
        self._pending.append(proto)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    @property
    def idle(self) -> bool:
        """Nothing corked in this iteration yet."""
        return not self._pending

    def published(self, started: float) -> None:
        """A publish queued its frames: observe its latency when they are written."""
        self._published.append(started)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for proto in pending:
            proto.flush()
        if self._published:
            published, self._published = self._published, []
            if self._latency is not None:
                now = time.perf_counter()
                for started in published:
                    self._latency.observe(now - started)
