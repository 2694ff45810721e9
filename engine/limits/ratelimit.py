"""Rate limits and connection caps: a token bucket and the per-address table.

Nothing here owns a task or a timer. A bucket is refilled from the clock value its
caller passes in (the loop's monotonic clock), so a check is a few float operations
and an idle bucket costs nothing but its memory.

- ``TokenBucket``: ``rate`` tokens per second up to ``burst``; ``take(now)`` returns
  0.0 (allowed, one token spent) or the seconds until the next token (retryAfter).
- ``ConnectionLimiter``: the upgrade-time caps of one engine: open WebSockets in
  total and per client address, and new WebSockets per address per second. Its
  per-address table is bounded (see ``ConnectionLimiter``).
- ``AddressRates``: the per-address HTTP request rate, one bucket per address in a
  bounded table.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

__all__ = [
    "AddressRates",
    "ConnectionLimiter",
    "LogBudget",
    "Refusal",
    "TokenBucket",
    "address_key",
    "parse_type_limit",
]


# A token is whole a hair early, so float rounding never refuses a client that waited
# exactly the announced time.
_ONE = 1.0 - 1e-9


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` banked; starts full.

    Args:
        rate: tokens added per second (> 0).
        burst: most tokens held at once (>= 1): how many checks pass back to back.
        now: the clock value at creation (the loop's ``time()``).
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until one is available.

        A refused check spends nothing; the refill up to ``now`` is kept either way.
        """
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= _ONE:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def force(self, now: float) -> float:
        """Spend one token even if none is left (the balance may go below zero): for a
        message handled anyway. Returns the seconds until a whole token is back."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        self.tokens = tokens = tokens - 1.0
        return 0.0 if tokens >= _ONE else (1.0 - tokens) / self.rate

    def full(self, now: float) -> bool:
        """True when the bucket has refilled to ``burst`` (as good as a new one)."""
        return self.tokens + (now - self.stamp) * self.rate >= self.burst


def parse_type_limit(spec: str) -> tuple[str, float, float]:
    """``TYPE=RATE/BURST`` (``chat.send=5/10``) → ``("chat.send", 5.0, 10.0)``.

    ``TYPE=RATE`` alone takes a burst of ``max(1, RATE)``.
    """
    name, sep, numbers = spec.strip().partition("=")
    rate_text, slash, burst_text = numbers.partition("/")
    try:
        rate = float(rate_text)
        burst = float(burst_text) if slash else max(1.0, rate)
    except ValueError:
        raise ValueError(f"--ws-type-limit wants TYPE=RATE/BURST, got {spec!r}") from None
    if not sep or not name:
        raise ValueError(f"--ws-type-limit wants TYPE=RATE/BURST, got {spec!r}")
    check_rate(f"--ws-type-limit {name}", rate, burst)
    return name, rate, burst


def check_rate(what: str, rate: float, burst: float) -> None:
    """A limit is ``rate`` per second with ``burst``; rate 0 disables it."""
    if not (math.isfinite(rate) and math.isfinite(burst)) or rate < 0 or burst < 0:
        raise ValueError(f"{what}: rate and burst must be finite and not negative")
    if rate > 0 and burst < 1:
        raise ValueError(f"{what}: a burst below 1 would refuse everything")


def address_key(host: str) -> str:
    """The unit a per-address limit applies to: the IPv4 address, or the IPv6 /64.

    One IPv6 client usually owns a whole /64, so counting single addresses would let
    it open connections from 2**64 of them. IPv4-mapped addresses count as IPv4.
    """
    if ":" not in host:
        return host
    try:
        addr = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))


class LogBudget:
    """Warnings about refusals, at most ``rate`` a second (bursts of ``burst``): a
    flood must not become a log flood. The lines held back are counted, and the next
    line that goes out says how many."""

    __slots__ = ("_bucket", "not_logged")

    def __init__(self, rate: float = 1.0, burst: float = 5.0) -> None:
        self._bucket = TokenBucket(rate, burst, 0.0)
        self.not_logged = 0

    def warning(self, logger: logging.Logger, now: float, msg: str, *args: object) -> None:
        """``logger.warning(msg, *args)`` with the count of held-back lines appended,
        or only counted when over the budget."""
        self.log(logger, logging.WARNING, now, msg, *args)

    def log(self, logger: logging.Logger, level: int, now: float, msg: str, *args: object) -> None:
        """``logger.log(level, msg, *args)`` within the budget (see ``warning``)."""
        if self._bucket.take(now):
            self.not_logged += 1
            return
        logger.log(level, msg + " (%d earlier not logged)", *args, self.not_logged)
        self.not_logged = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade is refused: ``reason`` is the metric label."""

    reason: str  # "per_ip", "rate" or "global"
    retry_after: float


class _Entry(TokenBucket):
    """One address: its new-connection bucket and how many WebSockets it has open."""

    __slots__ = ("open",)

    def __init__(self, rate: float, burst: float, now: float) -> None:
        super().__init__(rate, burst, now)
        self.open = 0


#: Retry-After when a cap on open connections (not a rate) refuses: a guess, since
#: only the client's (or others') closing frees a slot.
CAP_RETRY_AFTER = 5.0

# Entries looked at per admission to drop idle ones (amortised cleaning).
_SWEEP = 2
# Entries looked at, at most, to make room when the table is full.
_EVICT_SCAN = 16


class ConnectionLimiter:
    """Upgrade-time caps of one engine; all state is in a bounded per-address table.

    Args:
        max_connections: open WebSockets in all (0: no cap) → refusal ``global``.
        per_ip: open WebSockets per address (0: no cap) → refusal ``per_ip``.
        rate: new WebSockets per address per second (0: no limit), with ``burst``
            → refusal ``rate``.
        table_size: addresses remembered without an open WebSocket.

    The table is kept in least-recently-used order. An entry without open
    connections whose bucket has refilled carries no information and is forgotten
    once it reaches the old end of the table. A new address arriving when the table
    holds ``table_size`` entries pushes out the oldest entries that have no open
    connection, even if their bucket is still refilling (under a flood from more
    than ``table_size`` addresses an old address may get its burst back early).
    Entries with open connections are never forgotten, so the table holds at most
    about ``table_size`` entries plus one per address with an open WebSocket, and
    those are bounded by ``max_connections``. Each entry is about 230 bytes.
    """

    __slots__ = (
        "_burst",
        "_entries",
        "_per_ip",
        "_rate",
        "log",
        "max_connections",
        "table_size",
    )

    def __init__(
        self,
        *,
        max_connections: int = 0,
        per_ip: int = 0,
        rate: float = 0.0,
        burst: float = 0.0,
        table_size: int = 65536,
    ) -> None:
        self.max_connections = max_connections
        self._per_ip = per_ip
        self._rate = rate
        self._burst = burst
        self.table_size = table_size
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: Refusals are logged at most once a second (bursts of 5); the rest are counted.
        self.log = LogBudget()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def tracks_addresses(self) -> bool:
        return self._per_ip > 0 or self._rate > 0

    def open_count(self, key: str) -> int:
        entry = self._entries.get(key)
        return 0 if entry is None else entry.open

    def admit(self, key: str | None, now: float, open_total: int) -> Refusal | None:
        """May a new WebSocket from ``key`` (an ``address_key``) open? None: yes.

        Spends a new-connection token of ``key`` when the rate limit is on. Does not
        count the connection as open: call ``opened`` once the 101 is sent.
        """
        if self.max_connections and open_total >= self.max_connections:
            return Refusal("global", CAP_RETRY_AFTER)
        if key is None or not self.tracks_addresses:
            return None
        entries = self._entries
        self._sweep(now)
        entry = entries.get(key)
        if entry is None:
            entry = self._add(key, now)
        else:
            entries.move_to_end(key)
        if self._per_ip and entry.open >= self._per_ip:
            return Refusal("per_ip", CAP_RETRY_AFTER)
        if self._rate > 0:
            wait = entry.take(now)
            if wait:
                return Refusal("rate", wait)
        return None

    def opened(self, key: str | None, now: float) -> None:
        """A WebSocket from ``key`` is open (after a successful ``admit``)."""
        if key is None or not self.tracks_addresses:
            return
        entry = self._entries.get(key)
        if entry is None:  # not expected: admit() just touched it
            entry = self._add(key, now)
        entry.open += 1

    def closed(self, key: str | None) -> None:
        """A WebSocket counted by ``opened`` is gone."""
        if key is None:
            return
        entry = self._entries.get(key)
        if entry is not None and entry.open > 0:
            entry.open -= 1
            if not entry.open and self._rate <= 0:
                del self._entries[key]  # no bucket to remember: nothing left to track

    # ------------------------------------------------------------ the table
    def _add(self, key: str, now: float) -> _Entry:
        entries = self._entries
        if len(entries) >= self.table_size:
            self._evict()
        entry = _Entry(self._rate or 1.0, self._burst or 1.0, now)
        entries[key] = entry
        return entry

    def _sweep(self, now: float) -> None:
        """Forget up to ``_SWEEP`` of the oldest entries that carry no information."""
        entries = self._entries
        for _ in range(_SWEEP):
            if not entries:
                return
            key, entry = next(iter(entries.items()))
            if entry.open:
                entries.move_to_end(key)  # long-lived connections: look further next time
            elif self._rate <= 0 or entry.full(now):
                del entries[key]
            else:
                return  # the oldest is still refilling: so, most likely, are the others

    def _evict(self) -> None:
        """The table is full: forget the oldest entries without an open connection."""
        entries = self._entries
        for _ in range(min(_EVICT_SCAN, len(entries))):
            key, entry = entries.popitem(last=False)
            if entry.open:
                entries[key] = entry  # keep it (to the young end)
            elif len(entries) < self.table_size:
                return


class AddressRates:
    """One token bucket per client address (``address_key``), in a bounded table.

    The per-address HTTP request rate: ``take`` spends a token of the address and
    returns 0.0, or the seconds until it may try again (nothing is spent).

    The table is kept in least-recently-used order and holds at most ``table_size``
    buckets (about 200 bytes each). A bucket that has refilled carries no information
    and is dropped when it reaches the old end; when the table is full the oldest
    bucket is forgotten even if it was still refilling, so under a flood from more
    than ``table_size`` addresses an old address may get its burst back early.

    Args:
        rate: requests per second per address (> 0).
        burst: requests an address may make at once (>= 1).
        table_size: addresses remembered at most.
    """

    __slots__ = ("_buckets", "burst", "log", "rate", "table_size")

    def __init__(self, rate: float, burst: float, table_size: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.table_size = table_size
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        #: Refusals are logged at most once a second (bursts of 5); the rest are counted.
        self.log = LogBudget()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            for _ in range(_SWEEP):  # amortised cleaning of refilled buckets
                if not buckets:
                    break
                oldest_key, oldest = next(iter(buckets.items()))
                if not oldest.full(now):
                    break
                del buckets[oldest_key]
            if len(buckets) >= self.table_size:
                buckets.popitem(last=False)
            bucket = buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            buckets.move_to_end(key)
        return bucket.take(now)
