"""One timer wheel for every connection's deadlines (heartbeat, timeouts).

A ``call_later`` per connection and per timeout costs a heap entry, a handle object
and a heap operation each time a deadline moves; at ten thousand connections that is
real CPU and memory. Instead each connection keeps one ``deadline`` (its next moment
of interest) and registers it here; one periodic callback pops the slots that are due.

Each item is in one slot at most (a slot is a dict keyed by the item's id): moving a
deadline moves the item, and an item that is done (a closed connection, a finished
call) leaves the wheel at once with ``cancel`` or a deadline of infinity. Entries
that stayed until their old slot came up kept whatever the item held alive that
long: under connection churn, thousands of closed connections (the hostile-traffic
bench measured ~128 KiB each behind a 1009, up to the heartbeat interval).
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
        #: slot → {id(item): item}; an item is in the slot ``_where`` names, only.
        self._slots: dict[int, dict[int, Timed]] = {}
        self._where: dict[int, int] = {}
        self._next_slot = self._slot_of(loop.time())
        self._handle: asyncio.TimerHandle | None = None
        self._closed = False

    def _slot_of(self, when: float) -> int:
        return math.ceil(when / self._resolution)

    def __len__(self) -> int:
        return len(self._where)

    def schedule(self, item: Timed) -> None:
        """Make sure ``item.on_deadline`` runs once ``item.deadline`` has passed
        (and only then: an earlier registration of ``item`` is replaced). A deadline
        of infinity takes the item off the wheel."""
        when = item.deadline
        if when == math.inf or self._closed:
            self.cancel(item)
            return
        key = id(item)
        slot = max(self._slot_of(when), self._next_slot)
        where = self._where
        old = where.get(key)
        if old == slot:
            return
        slots = self._slots
        if old is not None:
            previous = slots.get(old)
            if previous is not None:
                previous.pop(key, None)
        bucket = slots.get(slot)
        if bucket is None:
            slots[slot] = {key: item}
        else:
            bucket[key] = item
        where[key] = slot
        if self._handle is None:
            self._arm()

    def cancel(self, item: Timed) -> None:
        """Take ``item`` off the wheel (nothing happens if it is not on it)."""
        key = id(item)
        slot = self._where.pop(key, None)
        if slot is not None:
            bucket = self._slots.get(slot)
            if bucket is not None:
                bucket.pop(key, None)
                if not bucket:
                    del self._slots[slot]

    def _arm(self) -> None:
        delay = max(0.0, self._next_slot * self._resolution - self._loop.time())
        self._handle = self._loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._handle = None
        now = self._loop.time()
        # Slot k holds deadlines in ((k-1)*res, k*res]: it is due once now >= k*res.
        current = math.floor(now / self._resolution)
        slots = self._slots
        where = self._where
        try:
            while self._next_slot <= current:
                due = self._next_slot
                bucket = slots.pop(due, None)
                self._next_slot += 1
                if not bucket:
                    continue
                for key, item in bucket.items():
                    if where.get(key) != due:
                        continue  # moved or cancelled by an earlier item's handler
                    del where[key]
                    deadline = item.deadline
                    if deadline <= now:
                        try:
                            item.on_deadline(now)
                        except Exception:  # one connection's bug must not stop every timer
                            log.exception("deadline handler failed")
                    elif deadline != math.inf and key not in where:
                        # Moved later without a new registration, or clock jitter.
                        self.schedule(item)
                if self._next_slot <= current and not slots:
                    self._next_slot = current + 1
        finally:
            if slots and not self._closed and self._handle is None:
                self._arm()

    def close(self) -> None:
        self._closed = True
        self._slots.clear()
        self._where.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
