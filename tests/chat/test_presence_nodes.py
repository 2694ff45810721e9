"""Presence once per watcher across engine nodes: the watcher on one node, the user on
another (two real engines sharing a real Redis, real chat workers, real Postgres)."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator

import pytest

from tests.chat.support import ChatClient, chat_engine, make_room
from tests.helpers.proc import EngineProcess
from tests.scaleout.conftest import RedisServer

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def two_nodes(database_url: str) -> Iterator[tuple[EngineProcess, EngineProcess]]:
    server = RedisServer()
    server.start()
    try:
        with contextlib.ExitStack() as stack:
            a, b = (
                stack.enter_context(chat_engine(database_url, "--redis", server.url, workers=1))
                for _ in range(2)
            )
            yield a, b
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


async def test_a_watcher_on_another_node_gets_one_online_and_one_offline(
    two_nodes: tuple[EngineProcess, EngineProcess], database_url: str
) -> None:
    a, b = two_nodes
    watcher_id, ivy = str(uuid.uuid4()), str(uuid.uuid4())
    shared = sorted(
        [await make_room(database_url, {watcher_id: "owner", ivy: "member"}) for _ in range(3)]
    )

    def changes(client: ChatClient) -> list[tuple[str, list[str]]]:
        return [
            (f["type"], f["data"]["roomIds"])
            for f in client.frames
            if f.get("type") in ("user.online", "user.offline") and f["data"]["userId"] == ivy
        ]

    async with ChatClient.as_user(a.port, watcher_id, "Watcher") as watcher:
        async with ChatClient.as_user(b.port, ivy, "Ivy"):
            online = await watcher.event_where("user.online", userId=ivy)
            assert online["data"]["roomIds"] == shared
        await watcher.event_where("user.offline", userId=ivy)
        # Ivy comes back: what her first visit produced arrived before this.
        async with ChatClient.as_user(b.port, ivy, "Ivy"):
            await watcher.event_where("user.online", userId=ivy)
        assert changes(watcher) == [
            ("user.online", shared),
            ("user.offline", shared),
            ("user.online", shared),
        ]
