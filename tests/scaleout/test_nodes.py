"""Three engine nodes sharing rooms through a real Redis, each with its own SDK worker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.helpers.proc import EngineProcess
from tests.integration.support import Client, demo_engine
from tests.scaleout.conftest import RedisServer


@contextlib.contextmanager
def nodes(redis_url: str, n: int = 3, *extra: str) -> Iterator[list[EngineProcess]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(demo_engine("--redis", redis_url, *extra)) for _ in range(n)]


def room_name() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


def recover_param(positions: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(positions)).rstrip(b"=").decode()


async def events_of(client: Client, kind: str, n: int) -> list[dict[str, Any]]:
    return [await client.event(kind, timeout=10.0) for _ in range(n)]


@pytest.fixture(scope="module")
def three(redis_url: str) -> Iterator[list[EngineProcess]]:
    with nodes(redis_url) as engines:
        yield engines


@pytest.mark.asyncio
async def test_clients_on_three_nodes_receive_every_emit_in_the_same_order(
    three: list[EngineProcess],
) -> None:
    room = room_name()
    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(Client.open(e.port)) for e in three]
        for sub in subs:
            await sub.call("demo.join", {"room": room})
        pubs = [await stack.enter_async_context(Client.open(e.port)) for e in three[:2]]
        n = 60

        async def emit_all(pub: Client, tag: str) -> None:
            for i in range(n):
                await pub.send("demo.emit", {"room": room, "event": "tick", "data": f"{tag}{i}"})

        await asyncio.gather(emit_all(pubs[0], "a"), emit_all(pubs[1], "b"))
        got = [await events_of(sub, "tick", 2 * n) for sub in subs]
    orders = [[e["data"] for e in events] for events in got]
    assert orders[0] == orders[1] == orders[2]  # one order on every node
    assert sorted(orders[0]) == sorted([f"a{i}" for i in range(n)] + [f"b{i}" for i in range(n)])
    # Each publisher's own events stay in its order.
    assert [d for d in orders[0] if d.startswith("a")] == [f"a{i}" for i in range(n)]
    for events in got:
        assert [e["seq"] for e in events] == list(range(1, 2 * n + 1))
        assert {e["room"] for e in events} == {room} and len({e["epoch"] for e in events}) == 1


@pytest.mark.asyncio
async def test_a_client_recovers_on_another_node_what_was_emitted_meanwhile(
    three: list[EngineProcess],
) -> None:
    room = room_name()
    async with Client.open(three[0].port) as first:
        await first.call("demo.join", {"room": room})
        async with Client.open(three[1].port) as pub:
            await pub.call("demo.emit", {"room": room, "event": "news", "data": 0})
            seen = await first.event("news", timeout=10.0)
    async with Client.open(three[1].port) as pub, Client.open(three[2].port) as watcher:
        await watcher.call("demo.join", {"room": room})
        for i in range(1, 6):
            await pub.call("demo.emit", {"room": room, "event": "news", "data": i})
        await events_of(watcher, "news", 5)  # all five published
        param = recover_param({"rooms": {room: [seen["epoch"], seen["seq"]]}})
        async with Client.open(three[2].port, f"/ws/demo?recover={param}") as back:
            await back.call("demo.join", {"room": room})
            missed = await events_of(back, "news", 5)
            verdict = await back.event("linkd.recovered", timeout=10.0)
            await pub.call("demo.emit", {"room": room, "event": "news", "data": 6})
            live = await back.event("news", timeout=10.0)
    assert [e["data"] for e in missed] == [1, 2, 3, 4, 5]
    assert [e["seq"] for e in missed] == [2, 3, 4, 5, 6]
    assert verdict["data"] == {
        "room": room,
        "recovered": True,
        "epoch": seen["epoch"],
        "seq": 6,
        "missed": 5,
    }
    assert (live["data"], live["seq"]) == (6, 7)


@pytest.mark.asyncio
async def test_exclusions_apply_on_the_publishing_node_only(three: list[EngineProcess]) -> None:
    room = room_name()
    async with Client.open(three[0].port) as a, Client.open(three[1].port) as b:
        for client in (a, b):
            await client.call("demo.join", {"room": room})
        # demo's on_connect announces "user.joined" to the lobby except the newcomer:
        # connection ids are per node, so the same id on another node is not excluded.
        async with Client.open(three[0].port) as newcomer:
            await newcomer.no_event("user.joined", 0.5)
            assert (await a.event("user.joined", timeout=10.0))["room"] == "lobby"
            assert (await b.event("user.joined", timeout=10.0))["room"] == "lobby"


@pytest.mark.asyncio
async def test_health_reports_redis(three: list[EngineProcess]) -> None:
    status, body = await asyncio.to_thread(three[0].request, "GET", "/health")
    assert status == 200
    assert orjson.loads(body)["status"] == "healthy" and orjson.loads(body)["redis"] == "connected"


@pytest.mark.asyncio
async def test_an_emit_before_the_ack_still_arrives_before_the_ack(
    three: list[EngineProcess],
) -> None:
    # With Redis the event goes out and comes back; the ack waits for it.
    room = room_name()
    async with Client.open(three[0].port) as client:
        for i in range(5):
            # A new id each time: a repeated one would be answered from memory
            # (idempotent requests, docs/clients.md) without running the handler.
            msg_id = f"j{i}"
            await client.send("demo.join", {"room": room, "announce": True}, msg_id)
            await client.ack(msg_id, 10.0)
            seen = [
                f.get("type")
                for f in client.frames
                if f.get("type") == "demo.announce" or f.get("id") == msg_id
            ]
            assert seen[-2:] == ["demo.announce", "demo.join"]


@pytest.mark.asyncio
async def test_redis_outage_keeps_local_delivery_and_cross_node_delivery_resumes(
    own_redis: RedisServer,
) -> None:
    room = room_name()
    with nodes(own_redis.url, 2) as (a, b):
        async with Client.open(a.port) as local, Client.open(b.port) as remote:
            for client in (local, remote):
                await client.call("demo.join", {"room": room})
            await local.call("demo.emit", {"room": room, "event": "e", "data": "before"})
            assert (await remote.event("e", timeout=10.0))["data"] == "before"
            assert (await local.event("e", timeout=10.0))["data"] == "before"

            own_redis.stop()
            await local.call("demo.emit", {"room": room, "event": "e", "data": "during"})
            during = await local.event("e", timeout=10.0)
            assert during["data"] == "during" and "seq" not in during  # local, unnumbered
            status, body = await asyncio.to_thread(a.request, "GET", "/health")
            assert status == 200 and orjson.loads(body)["status"] == "degraded"

            own_redis.start()
            try:
                async with asyncio.timeout(30):
                    while True:  # both nodes reconnect with backoff and subscribe again
                        await local.call("demo.emit", {"room": room, "event": "e", "data": "after"})
                        with contextlib.suppress(TimeoutError):
                            got = await remote.event("e", timeout=1.0)
                            if got["data"] == "after":
                                break
            except TimeoutError:
                health = [await asyncio.to_thread(n.request, "GET", "/health") for n in (a, b)]
                logs = "\n".join(n.output()[-3000:] for n in (a, b))
                pytest.fail(f"cross-node delivery did not resume: {health}\n{logs}")
            status, body = await asyncio.to_thread(a.request, "GET", "/health")
            assert orjson.loads(body)["status"] == "healthy"


@pytest.mark.asyncio
async def test_beyond_redis_retention_recovery_says_incomplete(redis_url: str) -> None:
    room = room_name()
    # --history-ttl: Redis trims the size approximately (MAXLEN ~, blocks of ~100), the
    # age is exact: events older than the TTL are never replayed.
    with nodes(redis_url, 2, "--history-ttl", "1") as (a, b):
        async with Client.open(a.port) as first:
            await first.call("demo.join", {"room": room})
            async with Client.open(b.port) as pub:
                await pub.call("demo.emit", {"room": room, "event": "e", "data": 0})
                seen = await first.event("e", timeout=10.0)
                for i in range(1, 6):  # first is still connected: wait for each below
                    await pub.call("demo.emit", {"room": room, "event": "e", "data": i})
                await events_of(first, "e", 5)
        await asyncio.sleep(1.3)  # every missed event is now older than the TTL
        param = recover_param({"rooms": {room: [seen["epoch"], seen["seq"]]}})
        async with Client.open(b.port, f"/ws/demo?recover={param}") as back:
            await back.call("demo.join", {"room": room})
            verdict = await back.event("linkd.recovered", timeout=10.0)
            kept = [f for f in back.frames if f.get("type") == "e"]
    # Five missed, all expired: nothing replayed, and never presented as complete.
    assert verdict["data"]["recovered"] is False
    assert verdict["data"]["seq"] == seen["seq"] + 5 and verdict["data"]["missed"] == 0
    assert kept == []
