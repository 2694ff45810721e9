"""Slots: how many handlers of one worker run at once (``Service.concurrency``).

``asyncio.Semaphore`` does this, at seven Python calls per request (``__aenter__``,
``acquire``, ``locked`` and its generator, ``__aexit__``, ``release``,
``_wake_up_next``) even when a slot is free, which is nearly always. Here a free slot
costs one comparison to take and one to give back; only a request that must wait makes
a future. Waiters are served first come, first served, and a waiter cancelled after it
was handed a slot passes the slot on, as the semaphore does.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Slots"]


class Slots:
    """``n`` slots; ``take`` (or ``try_take``) one before a handler runs, ``give`` it
    back after, exactly once."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("at least one slot")
        self._free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        return self._free

    def try_take(self) -> bool:
        """Take a free slot now, if there is one and nobody is queued before us."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Wait for a slot (in the order of arrival)."""
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot, then cancelled: the next one gets it
            else:
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Give a slot back: to the first waiter, or to the free count."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
