"""Settings of the chat service, read from the environment once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPO_ROOT", "Settings"]

#: The repository root: the embedded database's default home and the JS client's.
REPO_ROOT = Path(__file__).resolve().parents[2]

_TRUE = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True, slots=True)
class Settings:
    """What the service needs to know about its surroundings.

    Attributes:
        database_url: a ``postgresql://`` URL; None starts the embedded Postgres.
        pgdata: the embedded Postgres's data folder (``CHAT_PGDATA``).
        demo: demo mode (``CHAT_DEMO``): the page lists the seeded users and the
            service mints development tokens for them, to clients on this machine
            only (``POST /chat/demo/token``); the start log warns that it is on.
        jwt_secret: the engine's HMAC secret (``LINKD_JWT_SECRET``), for demo tokens.
        jwt_audience / jwt_issuer: the ``aud`` / ``iss`` the engine requires, if any.
        pool_size: connections per worker process (``CHAT_POOL_SIZE``).
    """

    database_url: str | None
    pgdata: Path
    demo: bool
    jwt_secret: str | None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    pool_size: int = 5

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        pgdata = env.get("CHAT_PGDATA") or str(REPO_ROOT / ".data" / "chat-pgdata")
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            pgdata=Path(pgdata).expanduser().resolve(),
            demo=env.get("CHAT_DEMO", "").strip().lower() in _TRUE,
            jwt_secret=env.get("LINKD_JWT_SECRET") or None,
            jwt_audience=env.get("LINKD_JWT_AUDIENCE") or None,
            jwt_issuer=env.get("LINKD_JWT_ISSUER") or None,
            pool_size=max(1, int(env.get("CHAT_POOL_SIZE") or 5)),
        )
