"""Watchers: the users who see a user's presence, each told once (``ctx.to_watchers``).

A user present in three rooms with Bob must get one ``user.online`` for Bob, not three:
emitting to each of Bob's rooms reaches such a watcher once per room. Here the rooms'
presence (the engine's ``presence`` query: from Redis on every node of a cluster) is
merged per user, and each watcher gets one event through the user target (which the
broker carries to the watcher's node), with the rooms it shares in ``roomIds``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from protocol.ipc import messages as m

from .encoding import event_text
from .link import Link

__all__ = [
    "MAX_WATCHED_ROOMS",
    "MAX_WATCHERS",
    "WatcherData",
    "WatcherEmitter",
    "find_watchers",
]

#: Rooms queried for one call: each is one presence query to the engine (a Redis read
#: in a cluster), so a user in thousands of rooms cannot fan out thousands per change.
MAX_WATCHED_ROOMS: Final = 100
#: Users notified by one call: each is one emit (and, in a cluster, one publish).
MAX_WATCHERS: Final = 1000
#: Presence queries in flight at once: parallel enough to hide round trips, few enough
#: not to flood the engine's IPC link or Redis with one call's queries.
_QUERY_BATCH: Final = 8

#: ``emit``'s data: a mapping (``roomIds`` is added to it), or ``(watcher id, the rooms
#: it shares) -> data`` for data of each watcher's own.
WatcherData = Mapping[str, Any] | Callable[[str, list[str]], Any] | None


async def find_watchers(
    link: Link,
    logger: logging.Logger,
    rooms: Iterable[str],
    subject: str | None,
    *,
    max_rooms: int = MAX_WATCHED_ROOMS,
    max_watchers: int = MAX_WATCHERS,
) -> dict[str, list[str]]:
    """Each user present in ``rooms`` other than ``subject`` → the rooms of ``rooms``
    they are present in (in the order given), users in the order found."""
    if isinstance(rooms, str | bytes):
        # A bare string would be queried character by character.
        raise TypeError(f"rooms must be an iterable of room names, not one {type(rooms).__name__}")
    if max_rooms < 1 or max_watchers < 1:
        raise ValueError("max_rooms and max_watchers must be at least 1")
    wanted = list(dict.fromkeys(rooms))
    if len(wanted) > max_rooms:
        logger.warning(
            "to_watchers of user %r: %d rooms, only the first %d are queried (max_rooms=%d)",
            subject,
            len(wanted),
            max_rooms,
            max_rooms,
        )
        del wanted[max_rooms:]
    answers: list[Any] = []
    for start in range(0, len(wanted), _QUERY_BATCH):
        batch = wanted[start : start + _QUERY_BATCH]
        results = await asyncio.gather(
            *(link.query("presence", room=room) for room in batch), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result  # before any emit: a watcher is told all or nothing
        answers.extend(results)
    shared: dict[str, list[str]] = {}
    for room, users in zip(wanted, answers, strict=True):
        for entry in users or ():
            user_id = entry.get("userId") if isinstance(entry, dict) else None
            if isinstance(user_id, str) and user_id != subject:
                shared.setdefault(user_id, []).append(room)
    if len(shared) > max_watchers:
        logger.warning(
            "to_watchers of user %r: %d watchers, only the first %d are notified (max_watchers=%d)",
            subject,
            len(shared),
            max_watchers,
            max_watchers,
        )
        shared = dict(itertools.islice(shared.items(), max_watchers))
    return shared


class WatcherEmitter:
    """``ctx.to_watchers(rooms)``: every user present in ``rooms`` except the subject,
    once each, whatever number of rooms or tabs they have.

    ``await ctx.to_watchers(rooms).emit("user.online", {"userId": ctx.user_id})``: each
    watcher's connections get ``{"type": "user.online", "data": {"userId": ...,
    "roomIds": [the rooms it shares with the subject]}}``.
    """

    __slots__ = ("_link", "_logger", "_max_rooms", "_max_watchers", "_rooms", "_subject")

    def __init__(
        self,
        link: Link,
        logger: logging.Logger,
        rooms: Iterable[str],
        subject: str | None,
        *,
        max_rooms: int = MAX_WATCHED_ROOMS,
        max_watchers: int = MAX_WATCHERS,
    ) -> None:
        self._link = link
        self._logger = logger
        self._rooms = rooms
        self._subject = subject
        self._max_rooms = max_rooms
        self._max_watchers = max_watchers

    async def emit(self, event: str, data: WatcherData = None) -> dict[str, list[str]]:
        """Send ``event`` to each watcher once; returns who got it → their shared rooms.

        ``data`` is a mapping, sent with ``roomIds`` added, or a callable
        ``(watcher_id, room_ids) -> data`` whose result is sent as it is. The presence
        queries all run first: when one fails, its error is raised and nothing is sent.
        """
        if not (data is None or isinstance(data, Mapping) or callable(data)):
            raise TypeError(
                f"to_watchers(...).emit({event!r}): data must be a mapping (roomIds is "
                f"added to it) or a callable (watcher_id, room_ids) -> data, "
                f"not {type(data).__name__}"
            )
        watchers = await find_watchers(
            self._link,
            self._logger,
            self._rooms,
            self._subject,
            max_rooms=self._max_rooms,
            max_watchers=self._max_watchers,
        )
        # Watchers sharing the same rooms get the same bytes: encode each set once.
        encoded: dict[tuple[str, ...], bytes] = {}
        for user_id, rooms in watchers.items():
            if data is None or isinstance(data, Mapping):
                key = tuple(rooms)
                payload = encoded.get(key)
                if payload is None:
                    payload = encoded[key] = event_text(event, {**(data or {}), "roomIds": rooms})
            else:
                payload = event_text(event, data(user_id, list(rooms)))
            self._link.command(m.Emit(payload=payload, user=user_id, event=event))
            await self._link.flush()
        return watchers
