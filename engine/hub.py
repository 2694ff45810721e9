"""Hub: which connection is in which room, by id and by user; room fan-out.

In-process state of one engine. Rooms are global to the engine (any service may
emit to any room). The scale-out release puts a broker behind the same methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from protocol.ws import OutboundMessage

from .fanout import fanout

if TYPE_CHECKING:
    from .ws_protocol import WsProtocol

__all__ = ["Hub"]


class Hub:
    __slots__ = ("by_id", "rooms", "users")

    def __init__(self) -> None:
        self.by_id: dict[int, WsProtocol] = {}
        self.rooms: dict[str, set[WsProtocol]] = {}
        self.users: dict[str, set[WsProtocol]] = {}

    # ------------------------------------------------------------ membership
    def add(self, ws: WsProtocol) -> None:
        self.by_id[ws.id] = ws
        if ws.user_id is not None:
            self.users.setdefault(ws.user_id, set()).add(ws)

    def remove(self, ws: WsProtocol) -> list[str]:
        """Forget a closed connection; returns the rooms it was in."""
        self.by_id.pop(ws.id, None)
        if ws.user_id is not None:
            tabs = self.users.get(ws.user_id)
            if tabs is not None:
                tabs.discard(ws)
                if not tabs:
                    del self.users[ws.user_id]
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
    ) -> int:
        """Deliver to one target kind, minus ``exclude`` (connection ids)."""
        targets: Iterable[WsProtocol]
        if room is not None:
            targets = self.rooms.get(room, ())
        elif user is not None:
            targets = self.users.get(user, ())
        elif conn is not None:
            ws = self.by_id.get(conn)
            targets = (ws,) if ws is not None else ()
        elif everyone:
            targets = self.by_id.values()
        else:
            return 0
        excluded = set(exclude)
        if excluded:
            # Filtering costs only the excluded; the others pay nothing extra.
            targets = [ws for ws in targets if ws.id not in excluded]
        return fanout(message, targets)
