"""Slow-consumer policies: what happens to a connection that cannot keep up.

``disconnect`` (the default) closes it with 1013 once its unsent bytes pass
``Limits.max_outbound_bytes``: nothing is ever lost silently, the client reconnects
and catches up. For streams where only the latest matters (cursors, prices, typing
indicators) two lossy policies keep the connection instead:

``drop_oldest``
    once the transport is above its high-water mark, messages wait in an engine-side
    backlog; when that is full the oldest waiting message is dropped.
``conflate``
    like ``drop_oldest``, and a waiting message is replaced in place by a newer one
    with the same key (the target and the event type: ``room:prices`` +
    ``price.tick``), so the client gets the latest value of each key.

A policy is chosen per WebSocket path and may be overridden per event type
(fnmatch patterns), e.g. ``/ws/feed=drop_oldest`` and ``cursor.*=conflate``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from fnmatch import fnmatchcase

__all__ = ["Policy", "PolicyTable", "parse_rule"]

_MAX_CACHED_EVENTS = 4096


class Policy(IntEnum):
    DISCONNECT = 0
    DROP_OLDEST = 1
    CONFLATE = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, name: str) -> Policy:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            choices = ", ".join(p.label for p in cls)
            raise ValueError(f"unknown slow-consumer policy {name!r} (one of {choices})") from None


def parse_rule(text: str) -> tuple[str, Policy]:
    """``"PATTERN=POLICY"`` → ``(pattern, Policy)``."""
    pattern, sep, name = text.rpartition("=")
    if not sep or not pattern:
        raise ValueError(f"expected PATTERN=POLICY, got {text!r}")
    return pattern, Policy.parse(name)


class PolicyTable:
    """Resolves the policy of a path and of an event type (cached: emits are hot)."""

    __slots__ = ("_cache", "_events", "_paths", "default", "lossy")

    def __init__(
        self,
        default: Policy = Policy.DISCONNECT,
        paths: Iterable[tuple[str, Policy]] = (),
        events: Iterable[tuple[str, Policy]] = (),
    ) -> None:
        self.default = default
        self._paths = dict(paths)
        self._events = list(events)
        self._cache: dict[str, Policy | None] = {}
        #: Whether any connection may ever need the backlog (else the fast path only).
        self.lossy = (
            default is not Policy.DISCONNECT
            or any(p is not Policy.DISCONNECT for p in self._paths.values())
            or any(p is not Policy.DISCONNECT for _, p in self._events)
        )

    def for_path(self, path: str) -> Policy:
        return self._paths.get(path, self.default)

    def for_event(self, event: str | None) -> Policy | None:
        """The first matching event rule's policy, or None (the path's applies)."""
        if event is None or not self._events:
            return None
        try:
            return self._cache[event]
        except KeyError:
            pass
        found = next((p for pattern, p in self._events if fnmatchcase(event, pattern)), None)
        if len(self._cache) >= _MAX_CACHED_EVENTS:
            self._cache.clear()  # event types are few; a flood of random ones must not grow it
        self._cache[event] = found
        return found
