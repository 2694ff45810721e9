"""Member: what the hub needs of a connection (engine/ws/protocol.py is the one).

A protocol, so hub/ never imports ws/: the connection depends on the hub's
interface, not the other way round.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from engine.brokers.history import RecoverRequest
from engine.limits.slow import Policy
from protocol.ws import OutboundMessage

__all__ = ["Member"]


class Member(Protocol):
    id: int
    user_id: str | None
    auth: dict[str, Any] | None
    #: Owned by the hub: a short list, a set past eight (None until the first join).
    rooms: list[str] | set[str] | None
    #: Stream positions to recover (``?recover=``), consumed as the rooms are joined.
    recover: RecoverRequest | None

    @property
    def closed(self) -> bool: ...

    @property
    def max_rooms(self) -> int: ...

    @property
    def join_refusals(self) -> int: ...

    def join_refused(self, room: str, limit: int) -> None: ...

    def end_join_refusals(self) -> None: ...

    def send_prepared(
        self, message: OutboundMessage, policy: Policy | None = None, key: str | None = None
    ) -> bool: ...

    def send_now(
        self, message: OutboundMessage, policy: Policy | None = None, key: str | None = None
    ) -> bool: ...

    @classmethod
    def fan_now(
        cls,
        message: OutboundMessage,
        targets: Iterable[Member],
        policy: Policy | None = None,
        key: str | None = None,
    ) -> tuple[int, int]:
        """``send_now`` to every target: (taken, of them written and left uncounted)."""
        ...

    @classmethod
    def fan_corked(
        cls,
        message: OutboundMessage,
        targets: Iterable[Member],
        policy: Policy | None = None,
        key: str | None = None,
    ) -> tuple[int, int]:
        """``send_prepared`` to every target: (taken, of them corked and left uncounted)."""
        ...

    def close(self, code: int = ..., reason: str = "") -> None: ...

    def abort(self) -> None: ...
