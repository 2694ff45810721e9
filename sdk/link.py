"""Link: the engine connection a context issues commands on, as contexts see it.

Its own module so that what contexts use (context.py, watchers.py) can import it
without importing each other; sdk/worker.py implements it.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Link"]


class Link(Protocol):
    """The engine connection a context issues commands on (implemented by the worker)."""

    def command(self, msg: Any) -> None:
        """Write one command now; raises ServiceUnavailableError when disconnected."""

    async def flush(self) -> None:
        """Wait while the socket's write buffer is above its high-water mark."""

    async def query(
        self,
        what: str,
        *,
        conn: int | None = None,
        room: str | None = None,
        user: str | None = None,
        since: int | None = None,
        epoch: str | None = None,
        limit: int | None = None,
    ) -> Any:
        """Ask the engine; returns the decoded JSON result."""

    async def publish(self, name: str, data: bytes) -> Any:
        """Publish a service event (JSON ``data``); returns the engine's decoded answer."""
