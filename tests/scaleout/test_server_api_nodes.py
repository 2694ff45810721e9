"""The server API across two engine nodes sharing a real Redis (issue 15 item 1).

A publish on node A's API reaches a client on node B in one order with worker emits,
its offset is exactly the number the client sees (racing callers included) and a
recovery from it replays the rest; ``disconnect``, ``subscribe`` and ``unsubscribe``
called on node A act on connections of node B (a user's, or one named ``node:id``),
and a publish sent after a subscribe's answer reaches the new member. With Redis
down the API still answers, for this node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import orjson
import pytest

from tests.helpers.proc import EngineProcess, free_port
from tests.integration.support import Client, demo_engine
from tests.scaleout.conftest import RedisServer

pytestmark = pytest.mark.asyncio

KEY = "scaleout-api-key"
SECRET = "a-development-secret-of-32-bytes!"

Node = tuple[EngineProcess, int]  # the engine and its admin port (the API)


def api(port: int, method: str, body: object) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
    try:
        headers = {"authorization": f"apikey {KEY}", "content-type": "application/json"}
        conn.request("POST", f"/api/{method}", orjson.dumps(body), headers)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, (method, resp.status, data)
        return orjson.loads(data)
    finally:
        conn.close()


async def acall(port: int, method: str, body: object) -> Any:
    return await asyncio.to_thread(api, port, method, body)


def as_user(user: str, recover: dict[str, Any] | None = None) -> str:
    claims = {"sub": user, "preferred_username": user.title(), "exp": int(time.time()) + 600}
    path = f"/ws/demo?token={jwt.encode(claims, SECRET, 'HS256')}"
    if recover is not None:
        param = base64.urlsafe_b64encode(orjson.dumps(recover)).rstrip(b"=").decode()
        path += f"&recover={param}"
    return path


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def api_node(redis_url: str) -> Iterator[Node]:
    admin = free_port()
    args = ("--redis", redis_url, "--admin-listen", f"127.0.0.1:{admin}", "--api-key", KEY)
    with demo_engine(*args, "--jwt-secret", SECRET) as eng:
        yield eng, admin


@pytest.fixture(scope="module")
def two() -> Iterator[list[Node]]:
    # A Redis of their own: every node on a Redis answers a user's command, so the
    # counts below hold only if no other test's engines share it.
    server = RedisServer()
    server.start()
    try:
        with api_node(server.url) as a, api_node(server.url) as b:
            yield [a, b]
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


async def node_id(admin: int) -> str:
    node = (await acall(admin, "info", {}))["node"]
    assert isinstance(node, str)
    return node


async def test_api_publishes_interleave_with_worker_emits_and_recover_from_an_offset(
    two: list[Node],
) -> None:
    (a, a_admin), (b, _) = two
    room = fresh("room")
    async with Client.open(b.port) as sub, Client.open(a.port) as worker_side:
        await sub.call("demo.join", {"room": room})
        offsets: dict[str, int] = {}
        for i in range(10):  # the API on node A, then a worker of node A: interleaved
            got = await acall(a_admin, "publish", {"room": room, "event": "tick", "data": f"a{i}"})
            offsets[f"a{i}"] = got["offset"]["seq"]
            await worker_side.call("demo.emit", {"room": room, "event": "tick", "data": f"w{i}"})
        events = [await sub.event("tick", timeout=10.0) for _ in range(20)]
    assert [e["data"] for e in events] == [x for i in range(10) for x in (f"a{i}", f"w{i}")]
    assert [e["seq"] for e in events] == list(range(1, 21))
    epoch = events[0]["epoch"]
    assert {e["epoch"] for e in events} == {epoch}
    assert {e["data"]: e["seq"] for e in events if e["data"] in offsets} == offsets
    # A client that saw up to the API's offset of a4 recovers, on node B, the rest.
    position = [epoch, offsets["a4"]]
    async with Client.open(b.port, as_user("rita", {"rooms": {room: position}})) as back:
        await back.call("demo.join", {"room": room})
        replayed = [await back.event("tick", timeout=10.0) for _ in range(20 - offsets["a4"])]
        verdict = (await back.event("linkd.recovered", timeout=10.0))["data"]
    assert [e["data"] for e in replayed] == [e["data"] for e in events[offsets["a4"] :]]
    assert verdict == {"room": room, "recovered": True, "epoch": epoch, "seq": 20, "missed": 11}


async def test_racing_api_publishes_each_get_their_own_offset_rooms_and_users(
    two: list[Node],
) -> None:
    (_, a_admin), (b, b_admin) = two
    room, user = fresh("race"), fresh("user")
    async with Client.open(b.port, as_user(user)) as sub:
        await sub.call("demo.join", {"room": room})

        async def publish(i: int, target: dict[str, str]) -> tuple[int, int]:
            port = a_admin if i % 2 else b_admin  # racing on both nodes' APIs
            got = await acall(port, "publish", {**target, "event": "race", "data": i})
            return i, got["offset"]["seq"]

        for target in ({"room": room}, {"user": user}):
            answers = await asyncio.gather(*(publish(i, target) for i in range(24)))
            seen = [await sub.event("race", timeout=10.0) for _ in range(24)]
            assert [e["seq"] for e in seen] == list(range(1, 25))  # one order, no gap
            assert dict(answers) == {e["data"]: e["seq"] for e in seen}  # each its own


async def test_disconnect_through_node_a_closes_a_users_tabs_on_both_nodes(
    two: list[Node],
) -> None:
    (a, a_admin), (b, _) = two
    user = fresh("dora")
    async with (
        Client.open(a.port, as_user(user)) as on_a,
        Client.open(b.port, as_user(user)) as on_b,
    ):
        await on_b.call("demo.whoami")  # connected and known to node B's hub
        got = await acall(a_admin, "disconnect", {"user": user, "code": 4001, "reason": "banned"})
        assert got == {"disconnected": 2, "nodes_answered": 2, "complete": True}
        assert await on_a.wait_closed(timeout=5.0) == (4001, "banned")
        assert await on_b.wait_closed(timeout=5.0) == (4001, "banned")
    nobody = {"disconnected": 0, "nodes_answered": 2, "complete": True}
    assert await acall(a_admin, "disconnect", {"user": user}) == nobody


async def test_subscribe_through_node_a_then_publish_reaches_node_b_and_unsubscribe_stops_it(
    two: list[Node],
) -> None:
    (a, a_admin), (b, b_admin) = two
    user = fresh("sam")
    async with Client.open(b.port, as_user(user)) as on_b, Client.open(a.port) as witness:
        await on_b.call("demo.whoami")
        busy = {"rooms": [fresh("busy") for _ in range(400)], "event": "busy"}
        for i in range(5):  # the publish right after the answer: never before the join
            room = fresh(f"sub{i}")
            # Node B's queue to Redis is busy (400 publishes): its subscription
            # to the room waits behind them, and so must its answer.
            burst = asyncio.create_task(acall(b_admin, "broadcast", busy))
            await asyncio.sleep(0.01)
            got = await acall(a_admin, "subscribe", {"user": user, "room": room})
            assert got == {"subscribed": 1, "nodes_answered": 2, "complete": True}
            sent = await acall(a_admin, "publish", {"room": room, "event": "hi", "data": i})
            event = await on_b.event("hi", timeout=5.0)
            assert (event["data"], event["seq"]) == (i, sent["offset"]["seq"]) == (i, 1)
            await burst
        await witness.call("demo.join", {"room": room})
        got = await acall(a_admin, "unsubscribe", {"user": user, "room": room})
        assert got == {"unsubscribed": 1, "nodes_answered": 2, "complete": True}
        await acall(a_admin, "publish", {"room": room, "event": "hi", "data": "after"})
        assert (await witness.event("hi", timeout=5.0))["data"] == "after"  # it went out
        await on_b.no_event("hi", within=0.3)  # ... and node B's connection left the room
        assert (await acall(a_admin, "rooms", {"prefix": room}))["rooms"] == [
            {"room": room, "members": 1}
        ]


async def test_a_connection_of_node_b_named_node_colon_id_through_node_a(
    two: list[Node],
) -> None:
    (_, a_admin), (b, b_admin) = two
    b_node, room = await node_id(b_admin), fresh("conn")
    await acall(a_admin, "publish", {"room": room, "event": "old", "data": 1})
    before = await acall(a_admin, "publish", {"room": room, "event": "old", "data": 2})
    epoch = before["offset"]["epoch"]
    async with Client.open(b.port, as_user("vic", {"rooms": {room: [epoch, 1]}})) as client:
        me = f"{b_node}:{(await client.call('demo.whoami'))['socket']}"
        # Joined through node A's API: the join recovers what the client missed.
        got = await acall(a_admin, "subscribe", {"connection": me, "room": room})
        assert got == {"subscribed": 1, "nodes_answered": 1, "complete": True}
        assert (await client.event("old", timeout=5.0))["data"] == 2
        verdict = (await client.event("linkd.recovered", timeout=5.0))["data"]
        assert (verdict["recovered"], verdict["seq"], verdict["missed"]) == (True, 2, 1)
        got = await acall(a_admin, "publish", {"connection": me, "event": "direct", "data": 7})
        assert got == {"delivered": 1, "nodes_answered": 1, "complete": True}
        assert (await client.event("direct", timeout=5.0))["data"] == 7
        got = await acall(a_admin, "unsubscribe", {"connection": me, "room": room})
        assert got["unsubscribed"] == 1
        got = await acall(a_admin, "disconnect", {"connection": me, "code": 4002, "reason": "x"})
        assert got == {"disconnected": 1, "nodes_answered": 1, "complete": True}
        assert await client.wait_closed(timeout=5.0) == (4002, "x")
    # A node nobody runs: no connection, at once.
    nowhere = {"disconnected": 0, "nodes_answered": 0, "complete": True}
    assert await acall(a_admin, "disconnect", {"connection": "0badc0ffee00:1"}) == nowhere
    info = await acall(a_admin, "info", {})
    assert info["broker"] == "connected" and {info["node"], b_node} <= set(info["nodes"])


async def test_with_redis_down_the_api_answers_for_this_node(own_redis: RedisServer) -> None:
    with api_node(own_redis.url) as (eng, admin):
        async with Client.open(eng.port, as_user("una")) as client:
            await client.call("demo.join", {"room": "down"})
            own_redis.stop()
            deadline = time.monotonic() + 10.0
            while (await acall(admin, "info", {}))["broker"] != "unreachable":
                assert time.monotonic() < deadline, "the node never saw Redis go"
                await asyncio.sleep(0.05)
            got = await acall(admin, "publish", {"room": "down", "event": "e", "data": 1})
            assert got == {}  # delivered here, unnumbered: no offset to give
            event = await client.event("e", timeout=5.0)
            assert event["data"] == 1 and "seq" not in event
            got = await acall(admin, "subscribe", {"user": "una", "room": "other"})
            assert got == {"subscribed": 1, "nodes_answered": 1, "complete": False}
            got = await acall(admin, "disconnect", {"user": "una", "code": 4003})
            assert got == {"disconnected": 1, "nodes_answered": 1, "complete": False}
            assert (await client.wait_closed(timeout=5.0))[0] == 4003
