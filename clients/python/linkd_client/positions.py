"""Where the client is in each recoverable stream, and what a reconnection asks for.

Events of rooms and of the user stream carry ``seq`` and ``epoch`` (docs/recovery.md).
``Positions`` keeps the last contiguous position per stream, notices gaps and
duplicates, applies ``linkd.recovered`` verdicts and builds the ``?recover=`` value.
No I/O: the client feeds it every event it receives.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeAlias

import orjson

__all__ = ["MAX_AHEAD", "Cursor", "Positions", "Seen", "Stream"]

#: Events past a gap remembered per stream while waiting for the gap to fill (by the
#: recovery of the next reconnection); beyond this the gap is accepted as lost.
MAX_AHEAD = 1024

Seen: TypeAlias = Literal["next", "gap", "ahead", "duplicate"]


class Stream(NamedTuple):
    """A recoverable stream: a room, or the user stream (``kind`` ``"user"``, its user id)."""

    kind: Literal["room", "user"]
    name: str


@dataclass
class Cursor:
    """The last event processed on one stream, and the seqs seen past a gap."""

    epoch: str
    seq: int
    ahead: set[int] = field(default_factory=set)

    def see(self, epoch: str, seq: int) -> Seen:
        """Record one event. The position advances only to the next seq (or a new epoch).

        Returns "gap" for the first event past a new hole, "ahead" for the next ones.
        """
        if epoch != self.epoch:
            # A new life of the stream: the old positions mean nothing in it.
            self.epoch, self.seq, self.ahead = epoch, seq, set()
            return "next"
        if seq <= self.seq or seq in self.ahead:
            return "duplicate"
        if seq != self.seq + 1:
            # Kept at the last contiguous seq, so the next recovery asks for the gap;
            # what is past it is remembered to drop it when it is replayed.
            new_hole = seq - 1 not in self.ahead
            self.ahead.add(seq)
            if len(self.ahead) > MAX_AHEAD:
                self.seq, self.ahead = max(self.ahead), set()
            return "gap" if new_hole else "ahead"
        self.seq = seq
        while self.seq + 1 in self.ahead:
            self.ahead.remove(self.seq + 1)
            self.seq += 1
        return "next"


class Positions:
    """The cursors of the rooms and of the user stream this client has seen."""

    def __init__(self) -> None:
        self.rooms: dict[str, Cursor] = {}
        self.user: tuple[str, Cursor] | None = None

    def track(self, event: dict[str, Any]) -> tuple[Seen, str] | None:
        """Advance the position of the event's stream: what the event was, and its stream.

        None for an event that belongs to no recoverable stream (or is the first of it).
        """
        seq, epoch = event.get("seq"), event.get("epoch")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(epoch, str):
            return None
        room, user = event.get("room"), event.get("user")
        if isinstance(room, str):
            cursor = self.rooms.get(room)
            if cursor is None:
                self.rooms[room] = Cursor(epoch, seq)
                return None
            return cursor.see(epoch, seq), room
        if isinstance(user, str):
            if self.user is None or self.user[0] != user:
                self.user = (user, Cursor(epoch, seq))
                return None
            return self.user[1].see(epoch, seq), user
        return None

    def verdict(self, data: Any) -> tuple[Stream, bool] | None:
        """Apply a ``linkd.recovered`` verdict: the stream is now at its current position."""
        if not isinstance(data, dict):
            return None
        seq, epoch = data.get("seq"), data.get("epoch")
        position = Cursor(epoch, seq) if isinstance(epoch, str) and isinstance(seq, int) else None
        if isinstance(room := data.get("room"), str):
            if position is not None:
                self.rooms[room] = position
            stream = Stream("room", room)
        elif isinstance(user := data.get("user"), str):
            if position is not None:
                self.user = (user, position)
            stream = Stream("user", user)
        else:
            return None
        return stream, data.get("recovered") is True

    def as_dict(self) -> dict[str, Any]:
        """``{"rooms": {room: [epoch, seq]}, "user": [epoch, seq]}`` (``user`` once known)."""
        body: dict[str, Any] = {"rooms": {r: [c.epoch, c.seq] for r, c in self.rooms.items()}}
        if self.user is not None:
            body["user"] = [self.user[1].epoch, self.user[1].seq]
        return body

    def forget(self, room: str) -> None:
        self.rooms.pop(room, None)

    def recover_param(self) -> str | None:
        """The ``recover`` query value for these positions; None when there is none."""
        body = self.as_dict()
        if not body["rooms"] and "user" not in body:
            return None
        return base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()
