"""Hub: which connection is in which room, by id and by user; room fan-out.

In-process state of one engine. Rooms are global to the engine (any service may
emit to any room). The scale-out release puts a broker behind the same methods.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from protocol.ws import OutboundMessage

from .fanout import fanout
from .presence import Presence
from .slow import PolicyTable

if TYPE_CHECKING:
    from .metrics import Metrics
    from .state import Corker
    from .ws_protocol import WsProtocol

__all__ = ["Hub"]


class Hub:
    __slots__ = ("_corker", "_metrics", "by_id", "presence", "rooms", "slow", "users")

    def __init__(
        self,
        presence: Presence | None = None,
        slow: PolicyTable | None = None,
        metrics: Metrics | None = None,
        corker: Corker | None = None,
    ) -> None:
        self.by_id: dict[int, WsProtocol] = {}
        self.rooms: dict[str, set[WsProtocol]] = {}
        #: Every open connection of each authenticated user (all tabs, all paths).
        self.users: dict[str, set[WsProtocol]] = {}
        #: Told when a user's first connection opens and their last one closes.
        self.presence = presence
        #: Slow-consumer policies of event types (engine/slow.py).
        self.slow = slow or PolicyTable()
        self._metrics = metrics
        self._corker = corker

    # ------------------------------------------------------------ membership
    def add(self, ws: WsProtocol) -> None:
        self.by_id[ws.id] = ws
        user_id = ws.user_id
        if user_id is not None:
            tabs = self.users.get(user_id)
            if tabs is None:
                self.users[user_id] = {ws}
                if self.presence is not None:
                    self.presence.connected(user_id, _username(ws))
            else:
                tabs.add(ws)

    def connections_of(self, user_id: str) -> int:
        tabs = self.users.get(user_id)
        return len(tabs) if tabs else 0

    def remove(self, ws: WsProtocol) -> list[str]:
        """Forget a closed connection; returns the rooms it was in."""
        self.by_id.pop(ws.id, None)
        user_id = ws.user_id
        if user_id is not None:
            tabs = self.users.get(user_id)
            if tabs is not None:
                tabs.discard(ws)
                if not tabs:
                    del self.users[user_id]
                    if self.presence is not None:
                        self.presence.disconnected(user_id)
        rooms = sorted(ws.rooms) if ws.rooms else []
        for room in rooms:
            self._discard(room, ws)
        ws.rooms = None
        return rooms

    def join(self, ws: WsProtocol, room: str) -> None:
        if ws.closed:
            return
        if ws.rooms is None:
            ws.rooms = set()
        ws.rooms.add(room)
        self.rooms.setdefault(room, set()).add(ws)

    def leave(self, ws: WsProtocol, room: str) -> None:
        if ws.rooms:
            ws.rooms.discard(room)
        self._discard(room, ws)

    def _discard(self, room: str, ws: WsProtocol) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(ws)
            if not members:
                del self.rooms[room]

    def rooms_of(self, ws: WsProtocol) -> list[str]:
        return sorted(ws.rooms) if ws.rooms else []

    def members(self, room: str) -> list[int]:
        return sorted(ws.id for ws in self.rooms.get(room, ()))

    def room_presence(self, room: str) -> list[dict[str, Any]]:
        """The users with a connection in ``room``: ``{userId, username, connections}``.

        Anonymous connections are not users; ``members`` counts them.
        """
        found: dict[str, dict[str, Any]] = {}
        for ws in self.rooms.get(room, ()):
            user_id = ws.user_id
            if user_id is None:
                continue
            entry = found.get(user_id)
            if entry is None:
                found[user_id] = {"userId": user_id, "username": _username(ws), "connections": 1}
            else:
                entry["connections"] += 1
        return [found[user] for user in sorted(found)]

    # --------------------------------------------------------------- fan-out
    def emit(
        self,
        message: OutboundMessage,
        *,
        room: str | None = None,
        user: str | None = None,
        conn: int | None = None,
        everyone: bool = False,
        exclude: Iterable[int] = (),
        event: str | None = None,
    ) -> int:
        """Deliver to one target kind, minus ``exclude`` (connection ids).

        ``event``: the event type, for its slow-consumer policy and conflation key.
        """
        started = time.perf_counter()
        targets: Iterable[WsProtocol]
        if room is not None:
            targets = self.rooms.get(room, ())
            target = "r:" + room
        elif user is not None:
            targets = self.users.get(user, ())
            target = "u:" + user
        elif conn is not None:
            ws = self.by_id.get(conn)
            targets = (ws,) if ws is not None else ()
            target = "c"
        elif everyone:
            targets = self.by_id.values()
            target = "*"
        else:
            return 0
        if exclude:
            excluded = set(exclude)
            # Filtering costs only the excluded; the others pay nothing extra.
            targets = [ws for ws in targets if ws.id not in excluded]
        policy = key = None
        if event is not None and self.slow.lossy:
            policy = self.slow.for_event(event)
            key = target + "\x00" + event
        delivered = fanout(message, targets, None, policy, key)
        metrics = self._metrics
        if metrics is not None:
            metrics.fanout_publishes += 1
            metrics.fanout_deliveries += delivered
            if delivered and self._corker is not None:
                self._corker.published(started)
        return delivered


def _username(ws: WsProtocol) -> str | None:
    name = ws.auth.get("username") if ws.auth else None
    return name if isinstance(name, str) else None
