"""Hub: which connection is in which room, by id and by user; room fan-out.

In-process state of one engine. Rooms are global to the engine (any service may
emit to any room). The scale-out release puts a broker behind the same methods.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from protocol.ws import OutboundMessage

from .fanout import fanout
from .history import Recovery, StreamHistory
from .presence import Presence
from .slow import PolicyTable

if TYPE_CHECKING:
    from .metrics import Metrics
    from .state import Corker
    from .ws_protocol import WsProtocol

__all__ = ["Hub"]


class Hub:
    __slots__ = (
        "_corker",
        "_metrics",
        "by_id",
        "compression_threshold",
        "history",
        "presence",
        "rooms",
        "slow",
        "users",
    )

    def __init__(
        self,
        presence: Presence | None = None,
        slow: PolicyTable | None = None,
        metrics: Metrics | None = None,
        corker: Corker | None = None,
        history: StreamHistory | None = None,
        compression_threshold: int = 128,
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
        #: Numbered room and user streams for recovery (docs/recovery.md); None: off.
        self.history = history
        self.compression_threshold = compression_threshold

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
            recover = ws.recover
            if recover is not None and recover.user is not None:
                epoch, seq = recover.user
                recover.user = None
                self._recover(ws, "u:" + user_id, b"user", user_id, epoch, seq)

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
        recover = ws.recover
        if recover is not None:
            position = recover.rooms.pop(room, None)
            if position is not None:
                # Joined and caught up in one step: no live event of the room can
                # come between the missed ones and the verdict.
                self._recover(ws, "r:" + room, b"room", room, *position)

    def _recover(
        self, ws: WsProtocol, key: str, field: bytes, name: str, epoch: str, seq: int
    ) -> None:
        """Send ``ws`` what it missed of stream ``key`` since ``seq``, then the verdict."""
        history = self.history
        found = Recovery([], False, "", 0) if history is None else history.since(key, epoch, seq)
        threshold = self.compression_threshold
        for payload in found.events:
            ws.send_prepared(OutboundMessage(payload, text=True, compression_threshold=threshold))
        verdict = orjson.dumps(
            {
                "type": "linkd.recovered",
                "data": {
                    field.decode(): name,
                    "recovered": found.recovered,
                    "epoch": found.epoch,
                    "seq": found.seq,
                    "missed": len(found.events),
                },
            }
        )
        ws.send_prepared(OutboundMessage(verdict, text=True, compression_threshold=threshold))
        if self._metrics is not None:
            self._metrics.count_recovery(found.recovered, len(found.events))

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
    def publish(
        self,
        payload: bytes,
        *,
        room: str | None = None,
        user: str | None = None,
        conn: int | None = None,
        everyone: bool = False,
        exclude: Iterable[int] = (),
        event: str | None = None,
    ) -> int:
        """A JSON event ``{"type", "data"}`` from a service; numbered (and kept for
        recovery) when it goes to a room or a user. Returns the local deliveries."""
        history = self.history
        if history is not None:
            if room is not None:
                payload = history.append("r:" + room, payload, b"room", room)
            elif user is not None:
                payload = history.append("u:" + user, payload, b"user", user)
        message = OutboundMessage(
            payload, text=True, compression_threshold=self.compression_threshold
        )
        return self.emit(
            message,
            room=room,
            user=user,
            conn=conn,
            everyone=everyone,
            exclude=exclude,
            event=event,
        )

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
