"""Presence across engine nodes: tabs on several nodes, one online/offline; a node killed
with SIGKILL leaves presence within its lease."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Iterator

import jwt
import pytest

from tests.helpers.proc import EngineProcess
from tests.integration.support import Client, demo_engine
from tests.scaleout.conftest import RedisServer

SECRET = "a-development-secret-of-32-bytes!"
FLAGS = ("--jwt-secret", SECRET, "--presence-grace", "0.5", "--presence-lease", "2")


def path(user: str) -> str:
    claims = {"sub": user, "preferred_username": user.title(), "exp": int(time.time()) + 600}
    token = jwt.encode(claims, SECRET, "HS256")
    return f"/ws/demo?token={token}"


@pytest.fixture
def three(own_redis: RedisServer) -> Iterator[list[EngineProcess]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(demo_engine("--redis", own_redis.url, *FLAGS)) for _ in range(3)]


async def changes(watcher: Client, within: float) -> list[tuple[str, bool]]:
    """presence.changed events that arrive within ``within`` seconds."""
    seen = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while True:
                event = await watcher.event("presence.changed", timeout=within)
                seen.append((event["data"]["userId"], event["data"]["online"]))
    return seen


@pytest.mark.asyncio
async def test_tabs_on_two_nodes_make_one_online_and_one_offline(
    three: list[EngineProcess],
) -> None:
    a, b, c = three
    room = f"room-{uuid.uuid4().hex[:6]}"
    async with Client.open(c.port) as watcher, contextlib.AsyncExitStack() as stack:
        await watcher.call("demo.join", {"room": "presence-watch"})
        tab_b = await stack.enter_async_context(Client.open(b.port, path("carol")))
        async with Client.open(a.port, path("carol")) as tab_a:
            await tab_a.call("demo.join", {"room": room})
            await tab_b.call("demo.join", {"room": room})
            assert await changes(watcher, 2.0) == [("carol", True)]
            answer = await watcher.call("demo.presence", {"room": room, "user": "carol"})
            assert answer == {
                "users": [{"userId": "carol", "username": "Carol", "connections": 2}],
                "online": True,
            }
        assert await changes(watcher, 1.0) == []  # still a tab on node b
        answer = await watcher.call("demo.presence", {"room": room, "user": "carol"})
        assert answer["users"] == [{"userId": "carol", "username": "Carol", "connections": 1}]
        await tab_b.ws.close()
        assert await changes(watcher, 3.0) == [("carol", False)]
        answer = await watcher.call("demo.presence", {"room": room, "user": "carol"})
        assert answer == {"users": [], "online": False}


@pytest.mark.asyncio
async def test_a_killed_node_leaves_presence_within_its_lease(
    three: list[EngineProcess],
) -> None:
    a, b, c = three
    room = f"room-{uuid.uuid4().hex[:6]}"
    async with Client.open(c.port) as watcher, contextlib.AsyncExitStack() as stack:
        # The watcher listens before anyone connects: no online event can be missed.
        await watcher.call("demo.join", {"room": "presence-watch"})
        erin = await stack.enter_async_context(Client.open(b.port, path("erin")))
        await erin.call("demo.join", {"room": room})
        victim = await stack.enter_async_context(Client.open(a.port, path("dave")))
        await victim.call("demo.join", {"room": room})
        assert sorted(await changes(watcher, 2.0)) == [("dave", True), ("erin", True)]
        users = (await watcher.call("demo.presence", {"room": room, "user": "dave"}))["users"]
        assert [u["userId"] for u in users] == ["dave", "erin"]

        a.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while True:  # every node answers the same: ask node b
            users = (await erin.call("demo.presence", {"room": room, "user": "dave"}))["users"]
            if [u["userId"] for u in users] == ["erin"]:
                break
            assert time.monotonic() - killed < 6.0, users
            await asyncio.sleep(0.1)
        dropped = time.monotonic() - killed
        event = await watcher.event("presence.changed", timeout=6.0)
        assert event["data"]["userId"] == "dave" and event["data"]["online"] is False
        offline = time.monotonic() - killed
        assert await changes(watcher, 1.0) == []  # once
    print(f"killed node: out of room presence in {dropped:.2f}s, offline in {offline:.2f}s")
    assert dropped <= 2.0 * 1.34 + 1.0  # the lease (2 s) plus a renewal period, plus slack
