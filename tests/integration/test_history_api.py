"""``ctx.history`` through a real engine and real worker processes: the events recovery
keeps, read from a WebSocket handler and from an HTTP action (docs/sdk.md, "Room history")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.helpers.proc import EngineProcess
from tests.integration.support import Client, demo_engine

PUB = "tests.helpers.services.pub"


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with demo_engine(services=[PUB]) as eng:
        yield eng


def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


async def say(client: Client, where: str, *texts: str) -> list[dict[str, Any]]:
    """Send ``texts`` to room ``where`` (the client is in it): the events it received."""
    got = []
    for text in texts:
        await client.call("pub.say", {"room": where, "text": text})
        got.append(await client.event("chat.message"))
    return got


@pytest.mark.asyncio
async def test_history_is_what_clients_received_oldest_first(engine: EngineProcess) -> None:
    where = room()
    async with Client.open(engine.port, "/ws/pub") as client:
        await client.call("pub.join", {"room": where})
        before = time.time()
        received = await say(client, where, "a", "b", "c", "d", "e")
        page = await client.call("pub.history", {"room": where})
    epoch = received[0]["epoch"]
    assert page["room"] == where and page["epoch"] == epoch and page["seq"] == 5
    assert page["complete"] is True and page["more"] is False
    assert [e["seq"] for e in page["events"]] == [1, 2, 3, 4, 5]
    assert [e["data"]["text"] for e in page["events"]] == ["a", "b", "c", "d", "e"]
    assert {e["type"] for e in page["events"]} == {"chat.message"}
    assert {e["epoch"] for e in page["events"]} == {epoch}
    for event in page["events"]:
        assert before - 1 <= event["time"] <= time.time() + 1


@pytest.mark.asyncio
async def test_pages_follow_each_other_with_since(engine: EngineProcess) -> None:
    where = room()
    async with Client.open(engine.port, "/ws/pub") as client:
        await client.call("pub.join", {"room": where})
        received = await say(client, where, *"abcde")
        epoch = received[0]["epoch"]
        first = await client.call("pub.history", {"room": where, "since": 1, "limit": 2})
        second = await client.call("pub.history", {"room": where, "since": 3, "limit": 2})
        last = await client.call("pub.history", {"room": where, "since": 5, "epoch": epoch})
        newest = await client.call("pub.history", {"room": where, "limit": 2})
    assert [e["seq"] for e in first["events"]] == [2, 3]
    assert first["complete"] is True and first["more"] is True
    assert [e["seq"] for e in second["events"]] == [4, 5]
    assert second["complete"] is True and second["more"] is False
    assert last["events"] == [] and last["complete"] is True and last["more"] is False
    # since=None: the newest, not from the first event of the room.
    assert [e["seq"] for e in newest["events"]] == [4, 5]
    assert newest["complete"] is False and newest["more"] is False


@pytest.mark.asyncio
async def test_a_position_of_another_epoch_is_never_complete(engine: EngineProcess) -> None:
    where = room()
    async with Client.open(engine.port, "/ws/pub") as client:
        await client.call("pub.join", {"room": where})
        await say(client, where, "a", "b")
        other = await client.call("pub.history", {"room": where, "since": 1, "epoch": "old"})
        future = await client.call("pub.history", {"room": where, "since": 9})
    for page in (other, future):
        assert page["complete"] is False
        assert [e["seq"] for e in page["events"]] == [1, 2]  # from the oldest kept


@pytest.mark.asyncio
async def test_a_room_never_used_has_no_epoch_and_nothing_missing(engine: EngineProcess) -> None:
    async with Client.open(engine.port, "/ws/pub") as client:
        page = await client.call("pub.history", {"room": room()})
        since = await client.call("pub.history", {"room": room(), "since": 3})
    assert page["epoch"] is None and page["seq"] == 0 and page["events"] == []
    assert page["complete"] is True
    assert since["complete"] is False  # seq 3 of a stream that does not exist


@pytest.mark.asyncio
async def test_an_http_action_reads_history_too(engine: EngineProcess) -> None:
    where = room()
    async with Client.open(engine.port, "/ws/pub") as client:
        await client.call("pub.join", {"room": where})
        await say(client, where, "x", "y", "z")
    status, body = engine.get(f"/pub/history/{where}?since=1")
    assert status == 200, body
    page = orjson.loads(body)
    assert [e["data"]["text"] for e in page["events"]] == ["y", "z"]
    assert page["complete"] is True


@pytest.mark.asyncio
async def test_bad_arguments_are_refused_clearly(engine: EngineProcess) -> None:
    async with Client.open(engine.port, "/ws/pub") as client:
        for args in ({"limit": 0}, {"limit": 1001}, {"since": -1}):
            frame = await client.request("pub.history", {"room": room(), **args})
            # ValueError in the handler: the service's log names it, the client gets
            # a clean INTERNAL (nothing of the message leaks).
            assert frame["error"]["code"] == "INTERNAL", frame
    log = engine.output()
    assert "limit must be an int from 1 to 1000, not 0" in log
    assert "since must be None or a seq" in log


def test_retention_cuts_are_reported_incomplete() -> None:
    with demo_engine("--history-size", "3", services=[PUB]) as eng:
        import asyncio

        async def run() -> tuple[dict[str, Any], dict[str, Any]]:
            where = room()
            async with Client.open(eng.port, "/ws/pub") as client:
                await client.call("pub.join", {"room": where})
                await say(client, where, *"abcde")
                return (
                    await client.call("pub.history", {"room": where, "since": 0}),
                    await client.call("pub.history", {"room": where}),
                )

        since_zero, newest = asyncio.run(run())
    assert [e["seq"] for e in since_zero["events"]] == [3, 4, 5]
    assert since_zero["complete"] is False  # 1 and 2 are gone
    assert [e["seq"] for e in newest["events"]] == [3, 4, 5]
    assert newest["complete"] is False
