"""ReplayCache: recent WebSocket acks by message id, so a retried request runs once.

A client that loses its connection before the ack of a request cannot tell whether
the service handled it; it sends it again, with the same ``id``, once reconnected.
The service endpoint (engine/services/routing.py) asks this cache first: a repeat is
answered with the remembered ack, and a repeat of a request still running waits for
the first's answer instead of running the handler a second time (docs/clients.md,
"Retrying a request").

A key is ``(path, user id or connection id, message id)``; an entry also keeps a
digest of the whole message text, so a reused id with another message (two tabs
numbering their ids from 1) is a new request, not a repeat. Per node and in memory:
bounded by age, by count and by bytes, and a big ack is not remembered at all.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = [
    "MAX_ACK_BYTES",
    "MAX_REMEMBERED",
    "MAX_REMEMBERED_BYTES",
    "REMEMBER_SECONDS",
    "ReplayCache",
]

# Read when a cache is made (tests patch them before the engine starts).
#: Seconds an ack is remembered: a reconnecting client retries within seconds (both
#: clients' backoff stops at 15 s), and an older retry is more likely a new request.
REMEMBER_SECONDS = 60.0
#: Acks remembered per node (all services and users together).
MAX_REMEMBERED = 10_000
#: A bigger ack is not remembered: a repeat of it runs the handler again.
MAX_ACK_BYTES = 64 * 1024
#: Bytes of remembered acks per node; the oldest go first past it (10 000 acks of
#: 64 KiB would be 640 MiB).
MAX_REMEMBERED_BYTES = 16 * 1024 * 1024
# What an entry costs besides its ack (key tuple, dict slot, the record): counted so
# that many tiny acks cannot outgrow the byte budget unseen.
_ENTRY_OVERHEAD = 200


#: A remembered ack: ``(expires, digest, frame)``. A plain tuple, not a NamedTuple,
#: whose ``__new__`` is a Python call once per request.
_Remembered = tuple[float, int, bytes]


class _Running:
    """A request whose answer is not in yet; repeats wait on ``answer``."""

    __slots__ = ("answer", "digest")

    def __init__(self, digest: int) -> None:
        self.digest = digest
        #: Made by the first repeat; the first request's frame, or None if it gave up.
        self.answer: asyncio.Future[bytes | None] | None = None


class ReplayCache:
    """The acks of one node, by ``(path, user or connection, id)``.

    ``claim`` then ``finish``: the caller that ``claim`` answers None runs the request
    and must call ``finish`` (in a ``finally``) with its answer.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ttl: float | None = None,
        max_entries: int | None = None,
        max_ack_bytes: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.clock = clock
        self.ttl = REMEMBER_SECONDS if ttl is None else ttl
        self.max_entries = MAX_REMEMBERED if max_entries is None else max_entries
        self.max_ack_bytes = MAX_ACK_BYTES if max_ack_bytes is None else max_ack_bytes
        self.max_bytes = MAX_REMEMBERED_BYTES if max_bytes is None else max_bytes
        # Insertion order is expiry order (one ttl for all): the oldest is first. An
        # OrderedDict, as a dict emptied from the front makes ``next(iter())`` walk
        # over the holes left behind.
        self._done: OrderedDict[Hashable, _Remembered] = OrderedDict()
        self._running: dict[Hashable, _Running] = {}
        self._bytes = 0
        #: When the oldest remembered ack expires: ``claim`` looks no further before.
        self._expire_at = math.inf

    def __len__(self) -> int:
        return len(self._done)

    @property
    def remembered_bytes(self) -> int:
        return self._bytes

    def claim(self, key: Hashable, digest: int) -> bytes | asyncio.Future[bytes | None] | None:
        """What to do with a request: bytes, the remembered ack to send again; a future,
        the answer of the same request still running (None in it: it gave up, claim
        again); None, the caller runs it and must ``finish`` it.

        A different message under the same key (``digest`` differs) is a new request:
        None, and its answer replaces the old one. While that older one still runs, the
        new one runs beside it and is not remembered.
        """
        if self._done and self.clock() >= self._expire_at:
            self._expire()
        done = self._done.get(key)
        if done is not None:
            if done[1] == digest:
                return done[2]
            self._forget(key)
        running = self._running.get(key)
        if running is None:
            self._running[key] = _Running(digest)
            return None
        if running.digest != digest:
            return None
        if running.answer is None:
            running.answer = asyncio.get_running_loop().create_future()
        return running.answer

    def finish(self, key: Hashable, digest: int, frame: bytes | None, remember: bool) -> None:
        """The request claimed under ``key`` answered ``frame`` (None: it gave up);
        ``remember``: whether a repeat may get it too (False: the handler may not have
        run, e.g. TIMEOUT). Repeats already waiting get ``frame`` either way."""
        running = self._running.get(key)
        if running is None or running.digest != digest:
            return  # a request that ran beside the claimed one (see claim)
        del self._running[key]
        if running.answer is not None and not running.answer.done():
            running.answer.set_result(frame)
        if frame is None or not remember or len(frame) > self.max_ack_bytes:
            return
        done = self._done
        if key in done:
            self._forget(key)
        expires = self.clock() + self.ttl
        if not done:
            self._expire_at = expires
        done[key] = (expires, digest, frame)
        self._bytes += len(frame) + _ENTRY_OVERHEAD
        while len(done) > self.max_entries or self._bytes > self.max_bytes:
            _, old = done.popitem(last=False)
            self._bytes -= len(old[2]) + _ENTRY_OVERHEAD
            self._expire_at = -math.inf  # the oldest changed: the next claim looks

    def _forget(self, key: Hashable) -> None:
        done = self._done.pop(key, None)
        if done is not None:
            self._bytes -= len(done[2]) + _ENTRY_OVERHEAD

    def _expire(self) -> None:
        done = self._done
        now = self.clock()
        while done:
            key = next(iter(done))
            expires = done[key][0]
            if expires > now:
                self._expire_at = expires
                return
            self._forget(key)
        self._expire_at = math.inf
