"""Delays between reconnection attempts."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: exponential with full jitter.

    The n-th consecutive failure waits a uniform random time in
    ``[0, min(max, initial * factor**n)]``, so clients dropped together do not come
    back together. A connection that stays open ``reset_after`` seconds starts the
    count again; one that drops sooner counts as a failure (a server accepting and
    closing at once is not hammered).
    """

    initial: float = 0.5
    max: float = 15.0
    factor: float = 2.0
    reset_after: float = 5.0

    def delay(self, failures: int) -> float:
        ceiling = min(self.max, self.initial * self.factor ** min(failures, 64))
        return random.uniform(0.0, ceiling)
