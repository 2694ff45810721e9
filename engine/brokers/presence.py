"""Presence: which users are online, across tabs, without flapping on a quick reconnect.

A user is online from their first connection to their last. When the last one
closes, the user stays online for ``grace`` seconds: a page reload or a network
blip that reconnects within it produces no offline/online pair at all. Listeners
(services over IPC, embedders) hear each transition once.

The hub tells this class when a user's connection count goes 0 → 1 and 1 → 0; it
keeps no per-connection state, so the Redis-backed presence of the scale-out design
can replace it behind the same four methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["Presence", "PresenceListener"]

log = logging.getLogger("linkd.presence")

#: ``listener(user_id, username, online)``: called once per transition.
PresenceListener = Callable[[str, str | None, bool], None]


class Presence:
    __slots__ = ("_grace", "_leaving", "_loop", "_online", "listeners")

    def __init__(self, loop: asyncio.AbstractEventLoop, grace: float) -> None:
        self._loop = loop
        self._grace = grace
        #: Online users and the username they were announced with.
        self._online: dict[str, str | None] = {}
        #: Users whose last connection closed, still inside their grace period.
        self._leaving: dict[str, asyncio.TimerHandle] = {}
        self.listeners: list[PresenceListener] = []

    def is_online(self, user_id: str) -> bool:
        """True from the first connection until the grace period after the last ends."""
        return user_id in self._online

    def online_users(self) -> list[str]:
        return sorted(self._online)

    async def online(self, user_id: str) -> bool:
        return self.is_online(user_id)

    def room_joined(self, room: str, user_id: str) -> None:
        """Room presence is the hub's own index on one node: nothing to record."""

    def room_left(self, room: str, user_id: str) -> None:
        """See ``room_joined``."""

    def connected(self, user_id: str, username: str | None) -> None:
        """The user's first open connection (the hub counts the tabs)."""
        pending = self._leaving.pop(user_id, None)
        if pending is not None:
            pending.cancel()  # back within the grace period: never went offline
            return
        if user_id in self._online:
            return
        self._online[user_id] = username
        self._announce(user_id, username, True)

    def disconnected(self, user_id: str) -> None:
        """The user's last open connection closed."""
        if user_id not in self._online or user_id in self._leaving:
            return
        if self._grace <= 0:
            self._gone(user_id)
            return
        self._leaving[user_id] = self._loop.call_later(self._grace, self._gone, user_id)

    def close(self) -> None:
        """Cancel pending grace timers (the engine is stopping; nobody is told)."""
        for handle in self._leaving.values():
            handle.cancel()
        self._leaving.clear()

    def _gone(self, user_id: str) -> None:
        self._leaving.pop(user_id, None)
        username = self._online.pop(user_id, None)
        self._announce(user_id, username, False)

    def _announce(self, user_id: str, username: str | None, online: bool) -> None:
        for listener in self.listeners:
            try:
                listener(user_id, username, online)
            except Exception:
                log.exception("presence listener failed for user %s", user_id)
