"""A database outage is ``SERVICE_UNAVAILABLE`` (503) to clients, not an internal error.

The driver's own message never reaches a client (it may name hosts or users); the
service log keeps it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg

from sdk import HttpContext, ServiceUnavailableError, WsContext
from sdk.ws import Next

__all__ = ["OUTAGES", "guard_action", "guard_messages"]

log = logging.getLogger("linkd.service.chat")

#: Errors that mean "the database is not there", as opposed to a bug in a query.
OUTAGES: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.ObjectNotInPrerequisiteStateError,
)

_UNAVAILABLE: Final = "the chat database is unavailable, try again shortly"


async def guard_messages(ctx: WsContext, next: Next) -> Any:
    """WebSocket middleware: outages become ``SERVICE_UNAVAILABLE``."""
    try:
        return await next()
    except OUTAGES as exc:
        log.warning("%s: database unavailable: %r", ctx.type, exc)
        raise ServiceUnavailableError(_UNAVAILABLE) from None


def guard_action(
    fn: Callable[[HttpContext], Awaitable[Any]],
) -> Callable[[HttpContext], Awaitable[Any]]:
    """The same for an HTTP action (503)."""

    @functools.wraps(fn)
    async def guarded(ctx: HttpContext) -> Any:
        try:
            return await fn(ctx)
        except OUTAGES as exc:
            log.warning("%s: database unavailable: %r", ctx.action, exc)
            raise ServiceUnavailableError(_UNAVAILABLE) from None

    return guarded
