"""The database handle: an asyncpg pool on ``DATABASE_URL`` or on an embedded Postgres.

Without ``DATABASE_URL`` the service starts Postgres itself through ``pgserver`` (the
server binaries come as a wheel) under ``CHAT_PGDATA``, so a newcomer installs nothing.
Several workers share that one server: ``pgserver`` starts it once and stops it when
the last process that asked for it exits.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any

import asyncpg
import orjson

from examples.chat.config import Settings
from examples.chat.migrations import migrate

__all__ = ["connect_pool", "embedded_url", "ping"]

log = logging.getLogger("linkd.service.chat.db")

# A query that hangs (database gone without a reset) must not hang readiness forever.
_PING_TIMEOUT = 2.0


def embedded_url(settings: Settings) -> str:
    """Start (or find) the embedded Postgres and return its URL. Blocking."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); pgserver copes.
        warnings.simplefilter("ignore")
        # Imported here: a service on DATABASE_URL never needs it.
        from pgserver.postgres_server import get_server

    settings.pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(settings.pgdata, cleanup_mode="stop")
    return str(server.get_uri())


async def _init_connection(conn: Any) -> None:
    # JSONB in and out as Python values (orjson both ways).
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: orjson.dumps(v).decode(),
        decoder=orjson.loads,
        schema="pg_catalog",
    )


async def connect_pool(settings: Settings) -> Any:
    """A pool on the configured database, migrated. Returns an ``asyncpg.Pool``."""
    url = settings.database_url
    if url is None:
        log.info("DATABASE_URL not set: starting the embedded Postgres in %s", settings.pgdata)
        url = await asyncio.to_thread(embedded_url, settings)
    conn = await asyncpg.connect(url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        log.info("database migrated to version %d", applied[-1])
    return await asyncpg.create_pool(
        url, min_size=1, max_size=settings.pool_size, init=_init_connection
    )


async def ping(pool: Any) -> bool:
    """Whether the database answers a trivial query now."""
    try:
        async with asyncio.timeout(_PING_TIMEOUT):
            return bool(await pool.fetchval("SELECT true"))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
