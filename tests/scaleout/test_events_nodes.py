"""History and events between services across engine nodes through Redis: a handler on
one node reads the room history written on another, and an event published on a node
without a subscriber reaches the subscriber's workers on another node, with its
redelivery when the worker handling it is SIGKILLed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.proc import EngineProcess
from tests.integration.support import Client, demo_engine
from tests.scaleout.conftest import RedisServer

PUB = "tests.helpers.services.pub"
CONSUMER = "tests.helpers.services.consumer"


@pytest.fixture
def nodes(own_redis: RedisServer) -> Iterator[tuple[EngineProcess, EngineProcess]]:
    """Node a runs only ``pub``; node b runs ``pub`` and two ``consumer`` workers."""
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(demo_engine("--redis", own_redis.url, services=[PUB]))
        b = stack.enter_context(
            demo_engine("--redis", own_redis.url, services=[PUB, CONSUMER], workers=2)
        )
        yield a, b


@pytest.mark.asyncio
async def test_history_written_on_one_node_is_read_on_another(
    nodes: tuple[EngineProcess, EngineProcess],
) -> None:
    a, b = nodes
    room = f"room-{uuid.uuid4().hex[:8]}"
    async with Client.open(a.port, "/ws/pub") as writer, Client.open(b.port, "/ws/pub") as reader:
        await writer.call("pub.join", {"room": room})
        for text in ("one", "two", "three"):
            await writer.call("pub.say", {"room": room, "text": text})
        received = [await writer.event("chat.message") for _ in range(3)]
        page = await reader.call("pub.history", {"room": room})
        after = await reader.call("pub.history", {"room": room, "since": 1, "limit": 1})
        foreign = await reader.call("pub.history", {"room": room, "since": 1, "epoch": "x"})
    assert page["epoch"] == received[0]["epoch"] and page["seq"] == 3
    assert [e["data"]["text"] for e in page["events"]] == ["one", "two", "three"]
    assert page["complete"] is True and page["more"] is False
    assert [e["seq"] for e in after["events"]] == [2]
    assert after["complete"] is True and after["more"] is True
    assert foreign["complete"] is False and [e["seq"] for e in foreign["events"]] == [1, 2, 3]
    status, _ = b.get(f"/pub/history/{room}")
    assert status == 200


@pytest.mark.asyncio
async def test_events_cross_nodes_and_survive_a_killed_worker(
    nodes: tuple[EngineProcess, EngineProcess],
) -> None:
    a, b = nodes
    total = 20
    async with (
        Client.open(a.port, "/ws/pub") as publisher,
        Client.open(b.port, "/ws/pub") as watcher,
    ):
        await watcher.call("pub.join", {"room": "events-watch"})
        flood = await publisher.call(
            "pub.flood", {"name": "job.created", "n": total, "data": {"sleep": 0.3}}
        )
        assert flood["queued"] == total  # in Redis, for the consumer on node b
        done: list[dict[str, Any]] = []
        victim: dict[str, Any] | None = None
        async with asyncio.timeout(40.0):
            while {d["n"] for d in done} != set(range(total)):
                frame = await watcher.events.get()
                if frame.get("type") == "consumer.started" and victim is None:
                    victim = frame["data"]
                    os.kill(victim["pid"], signal.SIGKILL)
                elif frame.get("type") == "consumer.done":
                    done.append(frame["data"])
    assert victim is not None
    again = [d for d in done if d["n"] == victim["n"]]
    assert again and again[0]["attempt"] >= 2 and again[0]["pid"] != victim["pid"]
