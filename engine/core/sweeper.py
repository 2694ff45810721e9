"""One timer wheel for every connection's deadlines (heartbeat, timeouts).

A ``call_later`` per connection and per timeout costs a heap entry, a handle object
and a heap operation each time a deadline moves; at ten thousand connections that is
real CPU and memory. Instead each connection keeps one ``deadline`` (its next moment
of interest) and registers it here; one periodic callback pops the slots that are due.

Entries are never removed: a connection whose deadline moved is skipped when its old
slot comes up (it re-registered under the new one), so moving a deadline is an
append, and a connection that closed simply sets ``deadline`` to infinity.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Protocol

__all__ = ["Sweeper", "Timed"]

log = logging.getLogger("linkd.sweeper")


class Timed(Protocol):
    """What the sweeper needs from a connection."""

    deadline: float

    def on_deadline(self, now: float) -> None:
        """Called once ``deadline`` has passed; set a new deadline and re-register."""


class Sweeper:
    """Hashed timer wheel with ``resolution``-second slots.

    Args:
        loop: the running loop (its clock is the only clock used).
        resolution: slot width; a deadline fires up to one slot late.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.25) -> None:
        self._loop = loop
        self._resolution = resolution
        self._slots: dict[int, list[Timed]] = {}
        self._next_slot = self._slot_of(loop.time())
        self._handle: asyncio.TimerHandle | None = None
        self._closed = False

    def _slot_of(self, when: float) -> int:
        return math.ceil(when / self._resolution)

    def __len__(self) -> int:
        return sum(len(items) for items in self._slots.values())

    def schedule(self, item: Timed) -> None:
        """Make sure ``item.on_deadline`` runs once ``item.deadline`` has passed."""
        when = item.deadline
        if when == math.inf or self._closed:
            return
        slot = max(self._slot_of(when), self._next_slot)
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [item]
        else:
            bucket.append(item)
        if self._handle is None:
            self._arm()

    def _arm(self) -> None:
        delay = max(0.0, self._next_slot * self._resolution - self._loop.time())
        self._handle = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._handle = None
        now = self._loop.time()
        # Slot k holds deadlines in ((k-1)*res, k*res]: it is due once now >= k*res.
        current = math.floor(now / self._resolution)
        slots = self._slots
        try:
            while self._next_slot <= current:
                bucket = slots.pop(self._next_slot, None)
                self._next_slot += 1
                if not bucket:
                    continue
                for item in bucket:
                    deadline = item.deadline
                    if deadline <= now:
                        try:
                            item.on_deadline(now)
                        except Exception:  # one connection's bug must not stop every timer
                            log.exception("deadline handler failed")
                    elif deadline != math.inf and self._slot_of(deadline) < self._next_slot:
                        # The deadline is in a slot we are passing right now (clock jitter).
                        self.schedule(item)
                if self._next_slot <= current and not slots:
                    self._next_slot = current + 1
        finally:
            if slots and not self._closed and self._handle is None:
                self._arm()

    def close(self) -> None:
        self._closed = True
        self._slots.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
