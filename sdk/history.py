"""Room history for services: ``await ctx.history(room, since=..., limit=...)``.

The events the engine keeps for recovery (docs/recovery.md), read by a handler: the
same store, local or Redis, so a service does not keep its own copy of "what happened
while you were away". See docs/sdk.md, "Room history".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = ["DEFAULT_HISTORY_LIMIT", "MAX_HISTORY_LIMIT", "HistoryEvent", "RoomHistory"]

#: The engine's bounds (engine/brokers/history.py): at most 1000 events per call.
MAX_HISTORY_LIMIT: Final = 1000
DEFAULT_HISTORY_LIMIT: Final = 100


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One kept event, as clients received it."""

    type: str
    data: Any
    #: Its number in the room's stream (``seq`` on the wire).
    seq: int
    #: The stream's epoch it belongs to.
    epoch: str
    #: When the engine numbered it, in seconds since the Unix epoch.
    time: float | None


@dataclass(frozen=True, slots=True)
class RoomHistory:
    """A page of a room's kept events, oldest first.

    ``complete``: no event between ``since`` and the first one here is missing (with
    ``since=None``: the page reaches back to the room's first event of this epoch).
    False when the events after ``since`` outlived the retention (``--history-size``,
    ``--history-ttl``), or when ``since`` belongs to another epoch (the history was
    lost or forgotten since: the page then starts at the oldest kept event).
    ``more``: later events exist: ask again with ``since=page.next``.
    """

    room: str
    #: The stream's current epoch (None: nothing was ever kept for this room, or it
    #: was forgotten).
    epoch: str | None
    #: The room's latest seq (0: none yet).
    seq: int
    events: list[HistoryEvent]
    complete: bool
    more: bool

    @property
    def next(self) -> int:
        """The ``since`` of the next page: the last seq here (or the room's latest)."""
        return self.events[-1].seq if self.events else self.seq

    @classmethod
    def from_result(cls, value: Any) -> RoomHistory:
        events = [
            HistoryEvent(
                type=e.get("type", ""),
                data=e.get("data"),
                seq=int(e.get("seq", 0)),
                epoch=str(e.get("epoch", "")),
                time=e["time"] / 1000.0 if isinstance(e.get("time"), int | float) else None,
            )
            for e in value.get("events", [])
            if isinstance(e, dict)
        ]
        return cls(
            room=value["room"],
            epoch=value.get("epoch"),
            seq=int(value.get("seq", 0)),
            events=events,
            complete=bool(value.get("complete")),
            more=bool(value.get("more")),
        )
