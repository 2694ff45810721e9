"""Commands on connections (the server API's ``disconnect``, ``subscribe``,
``unsubscribe`` and a publish to one connection), as one value the hub applies to
this node's connections and the Redis broker carries to the others
(engine/brokers/redis_control.py, docs/server-api.md).

Connection ids are per node (a counter each node starts at 1, the ints of the IPC):
``"<node>:<id>"`` names connection ``<id>`` of node ``<node>`` (the node id in Redis,
``info``'s ``node``); a bare id names a connection of the node asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

__all__ = ["Action", "Command", "Outcome", "split_conn"]

#: Close them, join the room, leave it, or send one connection an event.
Action = Literal["disconnect", "subscribe", "unsubscribe", "send"]
_ACTIONS = frozenset({"disconnect", "subscribe", "unsubscribe", "send"})
#: An id fits in the 64 bits the IPC carries; a node id is 12 hex digits.
_MAX_DIGITS = 19
_MAX_NODE = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """One action on the connections of a user (every node) or on one connection."""

    action: Action
    #: Every connection of this user, on every node...
    user: str | None = None
    #: ... or this one connection, of ``node`` (None: the node asked).
    conn: int | None = None
    node: str | None = None
    #: The room of a subscribe/unsubscribe.
    room: str = ""
    #: The close frame of a disconnect.
    code: int = 1000
    reason: str = ""
    #: The event of a send (a complete JSON event text) and its type.
    payload: bytes = b""
    event: str | None = None

    def to_wire(self, origin: str, ident: str) -> bytes:
        """The command as a control message: JSON, with the asking node and the id
        its answers name."""
        fields: dict[str, object] = {"id": ident, "from": origin, "do": self.action}
        if self.user is not None:
            fields["user"] = self.user
        else:
            fields["conn"] = self.conn
        if self.action in ("subscribe", "unsubscribe"):
            fields["room"] = self.room
        elif self.action == "disconnect":
            fields["code"], fields["reason"] = self.code, self.reason
        elif self.action == "send":
            fields["payload"], fields["event"] = self.payload.decode(), self.event
        return orjson.dumps(fields)

    @classmethod
    def from_wire(cls, data: bytes) -> tuple[Command, str, str]:
        """``(command, asking node, id)`` from a control message; raises ValueError
        for anything else (a node of another version, a stray publisher)."""
        fields = orjson.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("not an object")
        action, origin, ident = fields.get("do"), fields.get("from"), fields.get("id")
        user, conn = fields.get("user"), fields.get("conn")
        if action not in _ACTIONS or not isinstance(origin, str) or not isinstance(ident, str):
            raise ValueError("no action, origin or id")
        if not (isinstance(user, str) or (isinstance(conn, int) and not isinstance(conn, bool))):
            raise ValueError("no target")
        room, code, reason = (
            fields.get("room", ""),
            fields.get("code", 1000),
            fields.get("reason", ""),
        )
        payload, event = fields.get("payload", ""), fields.get("event")
        if not (isinstance(room, str) and isinstance(reason, str) and isinstance(payload, str)):
            raise ValueError("bad field")
        if not isinstance(code, int) or not (event is None or isinstance(event, str)):
            raise ValueError("bad field")
        command = cls(
            action=action,
            user=user if isinstance(user, str) else None,
            conn=None if isinstance(user, str) else conn,
            room=room,
            code=code,
            reason=reason,
            payload=payload.encode(),
            event=event,
        )
        return command, origin, ident


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command did: how many connections it acted on, and with several nodes
    how many nodes answered and whether every node it reached did (a bounded wait)."""

    count: int
    #: Nodes that acted and answered, this one included; None: one node, no broker.
    nodes: int | None = None
    complete: bool = True

    def answer(self, name: str) -> dict[str, object]:
        """``{name: count}``, and with several nodes ``nodes_answered``, ``complete``."""
        if self.nodes is None:
            return {name: self.count}
        return {name: self.count, "nodes_answered": self.nodes, "complete": self.complete}


def split_conn(value: object) -> tuple[str | None, int] | None:
    """``(node, id)`` of a connection id: an int or its decimal string (node None: the
    node asked), or ``"<node>:<id>"``; None when it is neither."""
    node: str | None = None
    if isinstance(value, str) and ":" in value:
        node, _, value = value.rpartition(":")
        if not node or len(node) > _MAX_NODE:
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (node, value) if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return (node, int(value)) if len(value) <= _MAX_DIGITS else None
    return None
