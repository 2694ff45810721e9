"""Helpers for the chat tests: a real Postgres, a real engine with real chat workers.

Postgres: the server on 127.0.0.1:5432 when one answers (trust auth, user postgres or
root, database ``test``), else (or with ``CHAT_TEST_EMBEDDED=1``) an embedded one
started with ``pgserver``. Each module
gets a database of its own (``chat_<random>``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import jwt
from websockets.asyncio.client import connect

from tests.helpers.proc import EngineProcess, clean_env, engine_process
from tests.integration.support import Client, ipc_dir, kill_tree, processes_using, wait_http

__all__ = [
    "ALICE",
    "BOB",
    "CHARLIE",
    "GENERAL",
    "PRESENCE_GRACE",
    "PRIVATE",
    "RANDOM",
    "SECRET",
    "ChatClient",
    "admin_url",
    "chat_engine",
    "database_name",
    "execute",
    "fetch",
    "make_room",
    "scratch_database",
    "token",
]

ALICE = "11111111-1111-1111-1111-111111111111"
BOB = "22222222-2222-2222-2222-222222222222"
CHARLIE = "33333333-3333-3333-3333-333333333333"
GENERAL = "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa"
RANDOM = "bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb"
PRIVATE = "cccccccc-cccc-cccc-cccc-cccccccccccc"

#: The engine's HMAC secret in these tests (32 bytes: PyJWT warns below that).
SECRET = "chat-tests-" + "s" * 32
#: Seconds a user stays online after their last tab closed (small: tests wait for it).
PRESENCE_GRACE = 0.2

_LOCAL_SERVER = ("127.0.0.1", 5432)


async def _try_local() -> str | None:
    if os.environ.get("CHAT_TEST_EMBEDDED"):
        return None  # force the embedded server (to test that path)
    for user in ("postgres", "root"):
        url = f"postgresql://{user}@{_LOCAL_SERVER[0]}:{_LOCAL_SERVER[1]}/test"
        try:
            conn = await asyncpg.connect(url, timeout=2)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            continue
        await conn.close()
        return url
    return None


@contextlib.contextmanager
def admin_url() -> Iterator[str]:
    """A URL of a Postgres database we may CREATE DATABASE from."""
    url = asyncio.run(_try_local())
    if url is not None:
        yield url
        return
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); pgserver copes.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    with tempfile.TemporaryDirectory(prefix="chat-pg-") as tmp:
        server = get_server(f"{tmp}/pgdata", cleanup_mode="delete")
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()


def _with_database(url: str, name: str) -> str:
    # The path names the database; the embedded server's URL has its socket in the query.
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


@contextlib.contextmanager
def scratch_database(admin: str) -> Iterator[str]:
    """A fresh, empty database on the server of ``admin``; dropped afterwards."""
    name = f"chat_{secrets.token_hex(6)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(admin, name)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def chat_engine(
    database_url: str, *extra: str, workers: int = 2, demo: bool = True
) -> Iterator[EngineProcess]:
    """An engine process supervising ``workers`` chat workers, all ready."""
    with contextlib.ExitStack() as stack:
        ipc = f"{stack.enter_context(ipc_dir())}/l.sock"
        env = clean_env(LINKD_JWT_SECRET=SECRET, DATABASE_URL=database_url)
        if demo:
            env["CHAT_DEMO"] = "1"
        args = [
            "--ipc",
            ipc,
            "--service",
            "examples.chat.service",
            "--workers",
            str(workers),
            "--presence-grace",
            str(PRESENCE_GRACE),
            "--ipc-heartbeat",
            "1",
            "--ws-rate",
            "0",
            *extra,
        ]
        eng = stack.enter_context(engine_process(args, env=env))
        stack.callback(lambda: kill_tree(processes_using(ipc)))
        wait_http(eng, "/chat/ready", timeout=30)
        # Every worker has registered (ready answers from one of them only).
        deadline = time.monotonic() + 30
        while eng.output().count("registered service chat") < workers:
            if time.monotonic() > deadline:
                raise AssertionError(f"workers did not register:\n{eng.output()}")
            time.sleep(0.05)
        yield eng


def token(user_id: str, username: str | None = None, **claims: Any) -> str:
    """A token the engine accepts for ``user_id``."""
    now = int(time.time())
    body: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + 600, **claims}
    if username is not None:
        body["preferred_username"] = username
    return jwt.encode(body, SECRET, algorithm="HS256")


async def execute(url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def fetch(url: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def make_room(url: str, members: dict[str, str], *, type: str = "public") -> str:
    """Test set-up straight in the database: a room with ``{user id: role}`` members
    (users are created as needed, named after their id). Returns the room id."""
    room = str(uuid.uuid4())
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            for user_id in members:
                await conn.execute(
                    "INSERT INTO users (id, username) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    uuid.UUID(user_id),
                    f"u-{user_id[:8]}",
                )
            await conn.execute(
                "INSERT INTO rooms (id, name, type) VALUES ($1, $2, $3)",
                uuid.UUID(room),
                f"room-{room[:8]}",
                type,
            )
            for user_id, role in members.items():
                await conn.execute(
                    "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, $3)",
                    uuid.UUID(room),
                    uuid.UUID(user_id),
                    role,
                )
    finally:
        await conn.close()
    return room


class ChatClient(Client):
    """A real WebSocket client of ``/ws/chat``, signed in as one user."""

    user_id: str

    @classmethod
    @contextlib.asynccontextmanager
    async def as_user(
        cls, port: int, user_id: str, username: str | None = None
    ) -> AsyncIterator[ChatClient]:
        async with connect(
            f"ws://127.0.0.1:{port}/ws/chat?token={token(user_id, username)}",
            ping_interval=None,
            open_timeout=5,
            close_timeout=2,
            max_queue=None,
            compression=None,
        ) as ws:
            client = cls(ws)
            client.user_id = user_id
            try:
                # Messages wait for on_connect: once this answers, the connection is
                # in its user's rooms and sees their events.
                await client.call("chat.rooms")
                yield client
            finally:
                client._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client._reader

    async def error(self, type: str, data: Any = None) -> dict[str, Any]:
        """``request`` that expects an error; returns the ack's ``error``."""
        frame = await self.request(type, data)
        assert "error" in frame, f"{type} {data!r} succeeded: {frame}"
        error: dict[str, Any] = frame["error"]
        return error

    async def event_where(
        self,
        type: str,
        timeout: float = 5.0,  # noqa: ASYNC109
        **match: Any,
    ) -> dict[str, Any]:
        """The next ``type`` event whose data has every ``match`` item (others skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            frame = await self.event(type, max(left, 0.0))
            data = frame.get("data") or {}
            if all(data.get(k) == v for k, v in match.items()):
                return frame

    async def no_event_where(self, type: str, within: float, **match: Any) -> None:
        """Fail if a matching ``type`` event arrives within ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            frame = await self.event_where(type, within, **match)
            raise AssertionError(f"unexpected event {frame}")
