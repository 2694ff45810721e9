"""A database outage is ``SERVICE_UNAVAILABLE`` (503) to clients, not an internal error.

The driver's own message never reaches a client (it may name hosts or users); the
service log keeps it.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import asyncpg

from sdk import HttpContext, ServiceUnavailableError, WsContext
from sdk.ws import Next

__all__ = ["OUTAGES", "guard_outages"]

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


async def guard_outages(ctx: HttpContext | WsContext, next: Next) -> Any:
    """Middleware for messages (``service.ws.use``) and actions (``service.use``):
    outages become ``SERVICE_UNAVAILABLE`` (503)."""
    try:
        return await next()
    except OUTAGES as exc:
        what = ctx.type if isinstance(ctx, WsContext) else ctx.action
        log.warning("%s: database unavailable: %r", what, exc)
        raise ServiceUnavailableError(_UNAVAILABLE) from None
