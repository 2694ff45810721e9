"""Presence through real SDK workers: on_presence notifications and the presence queries."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest

from tests.helpers.proc import EngineProcess
from tests.integration.support import Client, demo_engine

SECRET = "a-development-secret-of-32-bytes!"


def path(sub: str, name: str) -> str:
    token = jwt.encode(
        {"sub": sub, "preferred_username": name, "exp": int(time.time()) + 600},
        SECRET,
        algorithm="HS256",
    )
    return f"/ws/demo?token={token}"


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with demo_engine("--jwt-secret", SECRET, "--presence-grace", "0.5") as eng:
        yield eng


@pytest.mark.asyncio
async def test_presence_across_tabs_reaches_the_service_once_each_way(
    engine: EngineProcess,
) -> None:
    async with Client.open(engine.port) as watcher:
        await watcher.call("demo.join", {"room": "presence-watch"})
        async with Client.open(engine.port, path("u-carol", "Carol")) as tab1:
            online = await watcher.event("presence.changed")
            assert online["data"] == {"userId": "u-carol", "username": "Carol", "online": True}
            async with Client.open(engine.port, path("u-carol", "Carol")) as tab2:
                await tab2.call("demo.join", {"room": "general"})
                await tab1.call("demo.join", {"room": "general"})
                answer = await watcher.call("demo.presence", {"room": "general", "user": "u-carol"})
                assert answer == {
                    "users": [{"userId": "u-carol", "username": "Carol", "connections": 2}],
                    "online": True,
                }
            await watcher.no_event("presence.changed", 0.8)  # one tab is still open
        offline = await watcher.event("presence.changed", timeout=5.0)
        assert offline["data"] == {"userId": "u-carol", "username": "Carol", "online": False}
        answer = await watcher.call("demo.presence", {"room": "general", "user": "u-carol"})
        assert answer == {"users": [], "online": False}


@pytest.mark.asyncio
async def test_a_quick_reconnect_is_not_announced(engine: EngineProcess) -> None:
    async with Client.open(engine.port) as watcher:
        await watcher.call("demo.join", {"room": "presence-watch"})
        async with Client.open(engine.port, path("u-dave", "Dave")):
            assert (await watcher.event("presence.changed"))["data"]["online"] is True
        async with Client.open(engine.port, path("u-dave", "Dave")):  # a page reload
            await watcher.no_event("presence.changed", 1.0)
        offline = await watcher.event("presence.changed", timeout=5.0)
        assert offline["data"] == {"userId": "u-dave", "username": "Dave", "online": False}
