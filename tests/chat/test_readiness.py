"""Readiness follows the database, and an outage reaches clients as 503 /
SERVICE_UNAVAILABLE without the driver's words. Its own engine and database: it
takes the database away."""

from __future__ import annotations

import asyncio
import http.client
from collections.abc import Iterator

import orjson
import pytest

from tests.chat.support import ALICE, GENERAL, ChatClient, database_name, execute, token
from tests.helpers.proc import EngineProcess
from tests.integration.support import wait_http

pytestmark = pytest.mark.asyncio


@pytest.fixture
def outage(pg_admin: str, database_url: str) -> Iterator[str]:
    """Call it to cut the chat database off (no new connections, existing ones killed);
    it is restored afterwards."""
    name = database_name(database_url)
    yield name
    asyncio.run(execute(pg_admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))


async def cut_off(admin: str, name: str) -> None:
    await execute(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await execute(
        admin,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        name,
    )


def get(eng: EngineProcess, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(eng.host, eng.port, timeout=10)
    try:
        conn.request("GET", path, headers={"authorization": f"Bearer {token(ALICE)}"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def test_ready_reflects_the_database(chat: EngineProcess, pg_admin: str, outage: str) -> None:
    async with ChatClient.as_user(chat.port, ALICE, "Alice") as alice:
        assert (await asyncio.to_thread(get, chat, "/chat/ready"))[0] == 200
        await cut_off(pg_admin, outage)

        await asyncio.to_thread(wait_http, chat, "/chat/ready", status=503)
        # Liveness is about the process, not its database.
        assert (await asyncio.to_thread(get, chat, "/chat/live"))[0] == 200

        status, body = await asyncio.to_thread(get, chat, "/chat/rooms")
        assert status == 503
        error = orjson.loads(body)["error"]
        assert error["code"] == "SERVICE_UNAVAILABLE"
        frame = await alice.request("chat.history", {"room": GENERAL})
        assert frame["error"]["code"] == "SERVICE_UNAVAILABLE"
        for text in (body.decode(), frame["error"]["message"]):
            assert "asyncpg" not in text and "Traceback" not in text and outage not in text

        await execute(pg_admin, f'ALTER DATABASE "{outage}" ALLOW_CONNECTIONS true')
        await asyncio.to_thread(wait_http, chat, "/chat/ready", status=200)
        page = await alice.call("chat.history", {"room": GENERAL})
        assert page["hasMore"] is False
