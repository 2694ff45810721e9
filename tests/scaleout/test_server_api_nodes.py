"""The server API across two engine nodes sharing a real Redis (issue 15 item 1): a
publish on node A's API reaches a client on node B in one order with worker emits, its
offset is the number the client sees, and ``info`` sees both nodes."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.helpers.proc import EngineProcess, free_port
from tests.integration.support import Client, demo_engine

pytestmark = pytest.mark.asyncio

KEY = "scaleout-api-key"


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


@pytest.fixture(scope="module")
def two(redis_url: str) -> Iterator[list[tuple[EngineProcess, int]]]:
    with contextlib.ExitStack() as stack:
        out = []
        for _ in range(2):
            admin = free_port()
            args = ("--redis", redis_url, "--admin-listen", f"127.0.0.1:{admin}", "--api-key", KEY)
            out.append((stack.enter_context(demo_engine(*args)), admin))
        yield out


async def test_api_publishes_on_node_a_interleave_with_worker_emits_on_node_b(
    two: list[tuple[EngineProcess, int]],
) -> None:
    (_, a_admin), (b, _) = two
    room = f"room-{uuid.uuid4().hex[:8]}"
    async with Client.open(b.port) as sub, Client.open(b.port) as pub:
        await sub.call("demo.join", {"room": room})
        offsets: dict[str, int] = {}
        for i in range(10):
            got = await acall(
                a_admin, "publish", {"room": room, "event": "tick", "data": f"api{i}"}
            )
            offsets[f"api{i}"] = got["offset"]["seq"]
            await pub.call("demo.emit", {"room": room, "event": "tick", "data": f"w{i}"})
        events = [await sub.event("tick", timeout=10.0) for _ in range(20)]
    assert [e["data"] for e in events] == [x for i in range(10) for x in (f"api{i}", f"w{i}")]
    assert [e["seq"] for e in events] == list(range(1, 21))
    assert len({e["epoch"] for e in events}) == 1
    for e in events:
        if e["data"] in offsets:  # the API's answer names the number the client saw
            assert offsets[e["data"]] == e["seq"]
    epoch = events[0]["epoch"]
    # The history read through node A is the one recovery reads: the same numbers.
    page = await acall(a_admin, "history", {"room": room, "since": 0, "epoch": epoch})
    assert [e["seq"] for e in page["events"]] == list(range(1, 21)) and page["complete"]


async def test_subscribe_disconnect_and_presence_per_node_and_info_sees_both(
    two: list[tuple[EngineProcess, int]],
) -> None:
    (_, a_admin), (b, b_admin) = two
    room = f"room-{uuid.uuid4().hex[:8]}"
    async with Client.open(b.port) as client:
        me = (await client.call("demo.whoami"))["socket"]
        assert await acall(b_admin, "subscribe", {"connection": me, "room": room}) == {
            "subscribed": 1
        }
        # Subscribed on node B by B's API, published through node A's.
        await acall(a_admin, "publish", {"room": room, "event": "hello", "data": 1})
        got = await client.event("hello", timeout=10.0)
        assert (got["data"], got["seq"]) == (1, 1)
        rooms = await acall(b_admin, "rooms", {"prefix": room})
        assert rooms["rooms"] == [{"room": room, "members": 1}]
        assert (await acall(a_admin, "rooms", {"prefix": room}))["rooms"] == []  # per node
        assert await acall(b_admin, "disconnect", {"connection": me, "code": 4002}) == {
            "disconnected": 1
        }
        code, _ = await client.wait_closed(timeout=10.0)
        assert code == 4002
    info = await acall(a_admin, "info", {})
    assert info["broker"] == "connected"
    other = (await acall(b_admin, "info", {}))["node"]
    assert info["node"] != other
    assert {info["node"], other} <= set(info["nodes"])
    # Presence is cluster-wide through Redis: an unknown room is empty, not an error.
    assert await acall(a_admin, "presence", {"room": room}) == {"room": room, "users": []}
