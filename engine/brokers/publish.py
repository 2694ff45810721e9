"""Publish: one event on its way to a target, as one value from the IPC ``emit`` to the
socket write (docs/architecture.md, "Path of a publish").

The target is resolved once, here (``Publish.to``); the hub, the brokers and the
fan-out loop read the fields and never decide it again. The value lives beside the
brokers, not in the hub, because brokers carry it and may not import the hub
(scripts/check_imports.py: arrows point down).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Kind", "Publish"]

#: A room, a user (every tab), one connection of this node, or everyone.
Kind = Literal["r", "u", "c", "*"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    """One event to one target, with what its delivery needs.

    Built once per publish and per node: by ``Publish.to`` where it enters (the IPC
    connection, the embedding API), again by a broker that numbers it (``stamped``)
    or receives it from another node (Redis: the wire format carries the fields).
    Fan-out reads it once per publish, never per recipient.
    """

    kind: Kind
    #: The room or the user id; "" for a connection and for everyone.
    name: str = ""
    #: The connection id (kind ``"c"``): an int from the IPC message to ``Hub.by_id``.
    conn: int | None = None
    #: A complete JSON event ``{"type", "data"}``, UTF-8; numbered (``"room"``/``"user"``,
    #: ``"seq"``, ``"epoch"`` appended) once a broker has stamped it. Any bytes when
    #: ``binary``.
    payload: bytes
    #: Connection ids that do not get it (a numbered one sends them ``linkd.skip``).
    exclude: tuple[int, ...] = ()
    #: The event's type: selects its slow-consumer policy and, with the target, its
    #: conflation key (engine/limits/slow.py).
    event: str | None = None
    #: Its number in its stream, when the hub must order it against a recovery in
    #: flight (Redis); None when nothing can be held back (local, or unnumbered).
    seq: int | None = None
    #: ``time.perf_counter()`` when it reached this node (the fan-out latency metric).
    started: float = field(default_factory=time.perf_counter)
    #: Write each recipient's frame at once instead of corking it to the end of the
    #: loop iteration: lower latency for a lone publish on an idle engine, more system
    #: calls on a busy one. Decided by the caller that knows (the IPC connection).
    write_now: bool = False
    #: One binary frame (a service's ``emit`` of bytes): never numbered, never kept
    #: (the JSON stream cannot hold it; brokers carry it, unnumbered).
    binary: bool = False

    @classmethod
    def to(
        cls,
        payload: bytes,
        *,
        room: str | None = None,
        user: str | None = None,
        conn: int | None = None,
        everyone: bool = False,
        exclude: Iterable[int] = (),
        event: str | None = None,
        write_now: bool = False,
        binary: bool = False,
    ) -> Publish:
        """The publish of ``payload`` to its one target: a room first, then a user,
        everyone, one connection (when a caller names several).

        Raises ValueError without a target.
        """
        if room is not None:
            kind: Kind = "r"
            name = room
        elif user is not None:
            kind, name = "u", user
        elif everyone:
            kind, name = "*", ""
        elif conn is not None:
            kind, name = "c", ""
        else:
            raise ValueError("a publish needs a target: room, user, conn or everyone")
        return cls(
            kind=kind,
            name=name,
            conn=conn if kind == "c" else None,
            payload=payload,
            exclude=tuple(exclude),
            event=event,
            write_now=write_now,
            binary=binary,
        )

    @property
    def stream(self) -> str:
        """``"r:room"``, ``"u:user"``, ``"c:id"``, ``"*:"``: the stream a room or user
        event is numbered in, and the prefix of its conflation key."""
        if self.kind == "c":
            return f"c:{self.conn}"
        return f"{self.kind}:{self.name}"

    def stamped(self, payload: bytes, seq: int | None = None) -> Publish:
        """The same publish as a broker numbered it (``payload`` stamped, ``seq``)."""
        return dataclasses.replace(self, payload=payload, seq=seq)

    def later(self) -> Publish:
        """The same publish delivered after the moment it was decided on (a broker's
        fallback from its queue): never written through, that was true only then."""
        return dataclasses.replace(self, write_now=False) if self.write_now else self
