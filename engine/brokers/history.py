"""Numbered event streams and their bounded history, kept in memory (docs/recovery.md).

Every event emitted to a room or a user is stamped with the next ``seq`` of its
stream and the stream's ``epoch``, and kept for recovery: at most ``size`` events per
stream, none older than ``ttl`` seconds. A stream whose every event has expired is
forgotten; if it is used again it starts a new epoch, so a position from its previous
life is answered ``recovered: false`` instead of a silent partial list.

The Redis broker keeps the same thing in Redis Streams; both answer ``since()`` alike,
and both read pages of it for services (``ctx.history``, ``HistoryPage``).
"""

from __future__ import annotations

import base64
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import orjson

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "MAX_HISTORY_LIMIT",
    "HistoryPage",
    "Recovery",
    "Stamped",
    "Stream",
    "StreamHistory",
    "history_page",
    "new_epoch",
    "stamp",
]

#: Events one history query returns at most (``ctx.history(limit=...)``), and by default:
#: a page is one IPC frame, and a thousand chat messages is far below its 8 MiB.
MAX_HISTORY_LIMIT = 1000
DEFAULT_HISTORY_LIMIT = 100


def new_epoch() -> str:
    """Eight random URL-safe characters: a new life of a stream."""
    return base64.urlsafe_b64encode(os.urandom(6)).decode()


def stamp(payload: bytes, field: bytes, name: str, seq: int, epoch: str) -> bytes:
    """``{"type":..,"data":..}`` → the same object plus ``"room"|"user"``, seq, epoch.

    ``payload`` is a JSON object as the SDK built it (the engine validated UTF-8);
    ``field`` is ``b"room"`` or ``b"user"``.
    """
    body = payload.rstrip()
    if not body.endswith(b"}"):
        return payload  # not an object: forwarded unstamped (cannot be recovered)
    return b"".join(
        (
            body[:-1],
            b',"',
            field,
            b'":',
            orjson.dumps(name),
            b',"seq":',
            str(seq).encode(),
            b',"epoch":"',
            epoch.encode(),
            b'"}',
        )
    )


#: One kept event: ``(seq, at, payload)``, its number, the loop time it was kept and
#: its stamped JSON. A plain tuple of atoms on purpose: the garbage collector stops
#: tracking it at its first collection. A dataclass each (tracked for ever) put every
#: kept event into the old generation: at 3 000 publishes/s a full collection of the
#: whole heap every 1.6 s, 60-90 ms each (the chat bench's ack p99).
Stamped = tuple[int, float, bytes]


class Stream:
    __slots__ = ("epoch", "events", "last", "seq")

    def __init__(self, size: int, now: float) -> None:
        self.epoch = new_epoch()
        self.seq = 0
        self.last = now  # loop time of the last append (or of creation)
        self.events: deque[Stamped] = deque(maxlen=size)


@dataclass(frozen=True, slots=True)
class Recovery:
    """What ``since()`` found: the missed events (in order) and whether that is all."""

    events: list[bytes]
    recovered: bool
    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """One page of a room's kept history, for a service (docs/sdk.md, "Room history").

    ``events``: ``(seq, time in ms since the Unix epoch, stamped payload)``, oldest
    first. ``complete``: no event between the position asked for and the first one
    returned is missing (always false for a position of another epoch). ``more``:
    events after the last one returned exist (ask again with ``since`` = its seq).
    """

    epoch: str | None
    seq: int
    events: list[tuple[int, float, bytes]]
    complete: bool
    more: bool

    def to_json(self, room: str) -> bytes:
        """The ``result`` of a history query: built from the stored JSON texts, which
        are not parsed again; each event gets its ``"time"``."""
        events = b",".join(_with_time(payload, ms) for _, ms, payload in self.events)
        head = orjson.dumps(
            {
                "room": room,
                "epoch": self.epoch,
                "seq": self.seq,
                "complete": self.complete,
                "more": self.more,
            }
        )
        return head[:-1] + b',"events":[' + events + b"]}"


def _with_time(payload: bytes, ms: float) -> bytes:
    body = payload.rstrip()
    if not body.endswith(b"}"):
        return payload
    return body[:-1] + b',"time":' + str(int(ms)).encode() + b"}"


def history_page(
    epoch: str | None,
    seq: int,
    kept: list[tuple[int, float, bytes]],
    since: int | None,
    asked_epoch: str | None,
    limit: int,
) -> HistoryPage:
    """The page of ``kept`` (every event still kept, oldest first, none expired) that
    answers ``since``/``asked_epoch``/``limit`` (validated by the caller); shared by
    the local and the Redis history so both answer alike.

    - ``since`` None: the newest ``limit`` events; complete when they reach back to
      the first event of the epoch.
    - ``since`` a seq of the current epoch: the oldest ``limit`` events after it;
      complete when the one right after ``since`` is still kept (or nothing followed).
    - a position of another epoch (``asked_epoch`` differs), or beyond the stream's
      last seq: the stream's numbering restarted since (history lost, or the stream
      forgotten), so the page starts at the oldest kept event and is never complete.
    """
    if since is None:
        events = kept[-limit:]
        complete = seq == 0 or (bool(events) and events[0][0] == 1)
        return HistoryPage(epoch, seq, events, complete, False)
    foreign = (asked_epoch is not None and asked_epoch != epoch) or since > seq
    after = 0 if foreign else since
    events = [e for e in kept if e[0] > after][:limit]
    # A foreign position cannot be vouched for: never complete.
    complete = not foreign and (after >= seq or (bool(events) and events[0][0] == after + 1))
    more = bool(events) and events[-1][0] < seq
    return HistoryPage(epoch, seq, events, complete, more)


class StreamHistory:
    """Streams keyed ``"r:<room>"`` / ``"u:<user>"``; ``clock`` is the loop's time."""

    __slots__ = ("_clock", "_size", "_streams", "_ttl")

    def __init__(self, size: int, ttl: float, clock: Callable[[], float]) -> None:
        self._size = max(0, size)
        self._ttl = ttl
        self._clock = clock
        self._streams: dict[str, Stream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def append(self, key: str, payload: bytes, field: bytes, name: str) -> bytes:
        """Number ``payload`` in stream ``key``, keep it, return the stamped bytes."""
        now = self._clock()
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = Stream(self._size, now)
        stream.seq += 1
        stream.last = now
        stamped = stamp(payload, field, name, stream.seq, stream.epoch)
        if self._size:
            stream.events.append((stream.seq, now, stamped))
        self._expire(stream, now)
        return stamped

    def position(self, key: str) -> tuple[str, int] | None:
        stream = self._streams.get(key)
        return None if stream is None else (stream.epoch, stream.seq)

    def since(self, key: str, epoch: str, seq: int) -> Recovery:
        """The events after ``seq`` of ``epoch``; ``recovered`` only if none is missing."""
        now = self._clock()
        stream = self._streams.get(key)
        if stream is None:
            # Never used, or forgotten: nothing to give; a fresh stream cannot vouch
            # for a position of another epoch.
            stream = self._streams[key] = Stream(self._size, now)
        self._expire(stream, now)
        if epoch != stream.epoch or seq > stream.seq or seq < 0:
            return Recovery([], False, stream.epoch, stream.seq)
        events = stream.events
        if seq == stream.seq:
            return Recovery([], True, stream.epoch, stream.seq)
        oldest = events[0][0] if events else stream.seq + 1
        # Kept events are consecutive up to stream.seq: complete when the first one
        # missing (seq + 1) is still there.
        missed = [e[2] for e in events if e[0] > seq]
        return Recovery(missed, oldest <= seq + 1, stream.epoch, stream.seq)

    def read(self, key: str, since: int | None, epoch: str | None, limit: int) -> HistoryPage:
        """A page of stream ``key`` for a service (``history_page``); a stream never
        used (or forgotten) has no epoch and nothing kept. Reading creates nothing."""
        now = self._clock()
        stream = self._streams.get(key)
        if stream is None:
            return history_page(None, 0, [], since, epoch, limit)
        self._expire(stream, now)
        # Loop time → wall time: the offset now, close enough for a display.
        wall_ms = time.time() * 1000.0
        kept = [(n, wall_ms - (now - at) * 1000.0, payload) for n, at, payload in stream.events]
        return history_page(stream.epoch, stream.seq, kept, since, epoch, limit)

    def _expire(self, stream: Stream, now: float) -> None:
        events = stream.events
        limit = now - self._ttl
        while events and events[0][1] < limit:
            events.popleft()

    def prune(self) -> int:
        """Forget streams unused for ``forget_after`` seconds; returns how many.

        A stream's counters outlive its events (a quiet room's clients are still up
        to date: ``recovered: true`` with nothing missed), but not forever: a stream
        forgotten starts a new epoch when it is used again.
        """
        now = self._clock()
        limit = now - self.forget_after
        gone = [key for key, stream in self._streams.items() if stream.last < limit]
        for key in gone:
            del self._streams[key]
        now_limit = now - self._ttl
        for stream in self._streams.values():
            events = stream.events
            while events and events[0][1] < now_limit:
                events.popleft()
        return len(gone)

    @property
    def forget_after(self) -> float:
        return max(self._ttl * 10, 600.0)


@dataclass(slots=True)
class RecoverRequest:
    """The positions a reconnecting client sent in ``?recover=`` (docs/recovery.md)."""

    rooms: dict[str, tuple[str, int]]
    user: tuple[str, int] | None = None


#: A client may name at most this many rooms (the query string is bounded anyway).
MAX_RECOVER_ROOMS = 1000


def parse_recover(text: str) -> RecoverRequest:
    """Decode ``recover``: base64url (padding optional) of JSON; ValueError if bad."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError):
        raise ValueError("recover is not base64url-encoded JSON") from None
    if not isinstance(value, dict):
        raise ValueError("recover must be a JSON object")
    rooms_value = value.get("rooms", {})
    if not isinstance(rooms_value, dict) or len(rooms_value) > MAX_RECOVER_ROOMS:
        raise ValueError(f"recover.rooms must be an object of at most {MAX_RECOVER_ROOMS} rooms")
    rooms = {room: _position(pos, f"recover.rooms[{room!r}]") for room, pos in rooms_value.items()}
    user = value.get("user")
    return RecoverRequest(rooms, None if user is None else _position(user, "recover.user"))


def _position(value: object, where: str) -> tuple[str, int]:
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
        and 0 <= value[1] < 2**63
    ):
        return value[0], value[1]
    raise ValueError(f"{where} must be [epoch, seq]")
