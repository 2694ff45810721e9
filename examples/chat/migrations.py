"""Schema migrations, applied at start, once each, even with several workers starting.

Each migration runs in its own transaction under a transaction-level advisory lock, and
is recorded in ``chat_schema_migrations``; a worker that finds a version recorded skips
it. Migrations are append-only: never edit one that has shipped, add the next.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from examples.chat.seed import SEED_SQL

__all__ = ["MIGRATIONS", "migrate"]

log = logging.getLogger("linkd.service.chat.migrations")

#: ``(version, name, sql)`` in order.
MIGRATIONS: Final[tuple[tuple[int, str, str], ...]] = (
    (1, "schema", (Path(__file__).with_name("schema.sql")).read_text()),
    (2, "seed", SEED_SQL),
)

# Any constant will do as long as nothing else in the database uses it.
_LOCK_KEY: Final = 0x6C696E6B_63686174  # "linkchat"

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS chat_schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


async def migrate(conn: Any) -> list[int]:
    """Apply the migrations this database lacks; returns the versions applied.

    Args:
        conn: an asyncpg connection.
    """
    applied: list[int] = []
    for version, name, sql in MIGRATIONS:
        async with conn.transaction():
            # Serialises workers (and the bookkeeping table's creation) until commit.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(_BOOKKEEPING)
            done = await conn.fetchval(
                "SELECT true FROM chat_schema_migrations WHERE version = $1", version
            )
            if done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO chat_schema_migrations (version, name) VALUES ($1, $2)",
                version,
                name,
            )
            log.info("applied migration %d (%s)", version, name)
            applied.append(version)
    return applied
