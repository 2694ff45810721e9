"""What the client hands to the application: events, callbacks, iterators, counters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

if TYPE_CHECKING:
    from .positions import Stream

__all__ = [
    "ClientStats",
    "Event",
    "EventStream",
    "Handler",
    "RecoveredCallback",
    "State",
    "StateCallback",
]

State: TypeAlias = Literal["connecting", "open", "reconnecting", "closed"]
#: An event as it arrived: ``{"type", "data"}``, plus ``room``/``user``, ``seq``, ``epoch``.
Event: TypeAlias = dict[str, Any]
Handler: TypeAlias = Callable[[Event], Awaitable[None] | None]
StateCallback: TypeAlias = Callable[[State], Awaitable[None] | None]
RecoveredCallback: TypeAlias = Callable[["Stream", bool], Awaitable[None] | None]


@dataclass
class ClientStats:
    """Counters since the client was made."""

    events: int = 0  # events handed to handlers and iterators
    duplicates: int = 0  # positioned events at or before a known position: dropped
    gaps: int = 0  # holes: an event past the next seq (delivered; the hole is recovered later)
    reconnects: int = 0  # successful reconnections
    recovered: int = 0  # linkd.recovered verdicts with recovered: true
    not_recovered: int = 0  # ... and with recovered: false


class EventStream:
    """What ``Client.events()`` returns: an async iterator over every event.

    ``streams`` is the set of live iterators of its client; closing removes it there.
    """

    def __init__(self, streams: set[EventStream], maxsize: int) -> None:
        self._streams = streams
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.ended = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self.ended and self.queue.empty():
            raise StopAsyncIteration
        event = await self.queue.get()
        if event is None:  # the client closed
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        """Stop receiving events here (an unread full iterator holds the connection)."""
        self._streams.discard(self)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
