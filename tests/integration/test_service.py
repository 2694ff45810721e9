"""The service contract end to end: engine process, SDK worker processes, real clients.

One engine (supervising one ``demo`` and one ``strict`` worker) serves the whole
module; each test uses its own rooms and connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.helpers.proc import EngineProcess
from tests.helpers.services.demo import SECRET
from tests.integration.support import DEMO, STRICT, Client, demo_engine


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with demo_engine(services=(DEMO, STRICT)) as eng:
        yield eng


def http_json(
    eng: EngineProcess, method: str, path: str, body: bytes | None = None
) -> tuple[int, Any]:
    status, raw = eng.request(method, path, body)
    return status, orjson.loads(raw)


# (kind raised by the handler, HTTP status, error code, message the client reads)
ERRORS = [
    ("bad_request", 400, "BAD_REQUEST", "bad thing"),
    ("validation", 422, "VALIDATION_ERROR", "invalid input"),
    ("unauthorized", 401, "UNAUTHORIZED", "who are you"),
    ("forbidden", 403, "FORBIDDEN", "not yours"),
    ("not_found", 404, "NOT_FOUND", "no such item"),
    ("rate_limited", 429, "RATE_LIMITED", "slow down"),
    ("unavailable", 503, "SERVICE_UNAVAILABLE", "database down"),
    ("crash", 500, "INTERNAL", "internal error"),
]
VALIDATION_DETAILS = {"name": "required", "age": "too low"}


def expected_error(kind: str, code: str, message: str) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if kind == "validation":
        error["details"] = VALIDATION_DETAILS
    return error


# ---------------------------------------------------------------------- HTTP
def test_http_action_sees_params_query_and_json_body(engine: EngineProcess) -> None:
    body = {"a": 1, "nested": {"b": [1, 2, None]}, "text": "héllo"}
    status, seen = http_json(engine, "POST", "/demo/items/42?x=1&x=2&empty=", orjson.dumps(body))
    assert status == 200
    assert seen == {
        "method": "POST",
        "path": "/demo/items/42",
        "params": {"id": "42"},
        "query": {"x": ["1", "2"], "empty": [""]},
        "body": body,
        "content_type": "application/json",
    }
    # Another id reaches the same action with its own params.
    status, seen = http_json(engine, "POST", "/demo/items/abc", b"[]")
    assert (status, seen["params"], seen["query"], seen["body"]) == (200, {"id": "abc"}, {}, [])


@pytest.mark.parametrize(("kind", "status", "code", "message"), ERRORS)
def test_http_error_codes_map_to_statuses(
    engine: EngineProcess, kind: str, status: int, code: str, message: str
) -> None:
    got, raw = engine.request("GET", f"/demo/fail/{kind}")
    assert got == status, raw
    assert orjson.loads(raw) == {"error": expected_error(kind, code, message)}
    # An unexpected exception leaks nothing: no traceback, no exception text.
    for leak in (b"Traceback", b"RuntimeError", SECRET.encode(), b"postgres"):
        assert leak not in raw


# ----------------------------------------------------------------- WebSocket
@pytest.mark.asyncio
async def test_websocket_error_acks(engine: EngineProcess) -> None:
    async with Client.open(engine.port) as client:
        for kind, _, code, message in ERRORS:
            msg_id = f"fail-{kind}"
            await client.send("demo.fail", {"kind": kind}, msg_id)
            ack = await client.ack(msg_id)
            assert ack == {
                "id": msg_id,
                "type": "demo.fail",
                "error": expected_error(kind, code, message),
            }
            assert SECRET not in orjson.dumps(ack).decode()
        # The connection survives every error and still gets data acks.
        assert await client.call("demo.fail", {"kind": "none"}) == {"ok": True}


@pytest.mark.asyncio
async def test_middleware_order_group_prefix_and_catch_all(engine: EngineProcess) -> None:
    async with Client.open(engine.port) as client:
        # Global middleware first (in the order added), then the scoped ones, then the
        # handler; the "after" halves unwind in reverse.
        assert await client.call("demo.mw") == {
            "trace": [
                "global1:before",
                "global2:before",
                "scoped1:before",
                "scoped2:before",
                "handler",
                "scoped2:after",
                "scoped1:after",
                "global2:after",
                "global1:after",
            ]
        }
        # ws.group("demo") + ws.on("echo") handles "demo.echo".
        ack = await client.request("demo.echo", {"x": [1, "two"]})
        assert ack == {
            "id": ack["id"],
            "type": "demo.echo",
            "data": {"echo": {"x": [1, "two"]}, "type": "demo.echo", "id": ack["id"]},
        }
        # Other types go to the catch-all, with only their own scoped middleware.
        assert await client.call("other.thing", {"n": 1}) == {
            "caught": "other.thing",
            "data": {"n": 1},
            "trace": [
                "global1:before",
                "global2:before",
                "other:before",
                "other:after",
                "global2:after",
                "global1:after",
            ],
        }
        for type in ("misc", "demo", "demo.no-such-handler"):
            data = await client.call(type, 7)
            assert (data["caught"], data["data"]) == (type, 7)
        # A message without an id gets no ack; the next one is still answered.
        await client.send("demo.echo", {"silent": True})
        assert (await client.call("demo.echo", 1))["echo"] == 1
        assert not [f for f in client.frames if f.get("id") is None and "error" in f]


@pytest.mark.asyncio
async def test_unknown_message_type_without_catch_all(engine: EngineProcess) -> None:
    async with Client.open(engine.port, "/ws/strict") as client:
        assert (await client.call("strict.ping"))["pong"] is True
        # Not routed by the service at all: the engine answers without the worker.
        ack = await client.request("nope.at-all")
        assert ack["type"] == "nope.at-all"
        assert ack["error"]["code"] == "UNKNOWN_MESSAGE_TYPE"
        assert set(ack) == {"id", "type", "error"}
        # Inside the group but without a handler: the SDK answers.
        ack = await client.request("strict.nope")
        assert ack["error"]["code"] == "UNKNOWN_MESSAGE_TYPE"
        # Without an id the error still comes back, as an event.
        await client.send("nope.silent", {})
        event = await client.event("nope.silent")
        assert event["error"]["code"] == "UNKNOWN_MESSAGE_TYPE"
        assert "id" not in event
        assert (await client.call("strict.ping"))["pong"] is True
    status, seen = await asyncio.to_thread(http_json, engine, "GET", "/strict/seen")
    assert status == 200
    assert "strict.ping" in seen and "strict.nope" in seen
    assert "nope.at-all" not in seen and "nope.silent" not in seen


@pytest.mark.asyncio
async def test_on_connect_joins_room_and_announces(engine: EngineProcess) -> None:
    async with Client.open(engine.port) as first:
        first_id = (await first.call("demo.whoami"))["socket"]
        async with Client.open(engine.port) as second:
            second_id = (await second.call("demo.whoami"))["socket"]
            joined = await first.event("user.joined")
            # A room event: numbered in the room's stream (docs/recovery.md).
            assert joined["type"] == "user.joined" and joined["data"] == {"socket": second_id}
            assert joined["room"] == "lobby" and joined["seq"] >= 1 and joined["epoch"]
            assert await second.call("demo.rooms") == ["lobby"]
            assert await first.call("demo.rooms") == ["lobby"]
            # The newcomer is excluded from its own announcement.
            await second.no_event("user.joined", 0.2)
            assert first_id != second_id


@pytest.mark.asyncio
async def test_side_effects_are_applied_before_the_ack(engine: EngineProcess) -> None:
    async with Client.open(engine.port) as member, Client.open(engine.port) as other:
        for i in range(20):
            room = f"before-ack-{i}"
            msg_id = f"join-{i}"
            await member.send("demo.join", {"room": room, "announce": True}, msg_id)
            ack = await member.ack(msg_id)
            assert ack["data"] == {"joined": room}
            # The handler's emit to the room it joined arrived before its ack.
            order = [
                f.get("id") or f.get("type")
                for f in member.frames
                if f.get("id") == msg_id or f.get("data") == {"room": room}
            ]
            assert order == ["demo.announce", msg_id]
            # Once the ack is in, an emit from anyone reaches the new member.
            assert await other.call(
                "demo.emit", {"room": room, "event": "demo.ping", "data": i}
            ) == {"emitted": room}
            assert (await member.event("demo.ping", 2.0))["data"] == i


@pytest.mark.asyncio
async def test_pipelined_messages_keep_their_order(engine: EngineProcess) -> None:
    n = 1000
    room = "pipeline"
    async with Client.open(engine.port) as receiver, Client.open(engine.port) as sender:
        await receiver.call("demo.join", {"room": room})
        started = time.monotonic()
        for i in range(n):  # no waiting for acks
            await sender.send("demo.seq", {"room": room, "i": i}, i)
        await sender.ack(n - 1, 20.0)
        received = [(await receiver.event("demo.seq", 10.0))["data"] for _ in range(n)]
        elapsed = time.monotonic() - started
        acks = [f for f in sender.frames if "id" in f]
        assert [a["id"] for a in acks] == list(range(n))
        assert all(a["data"] == a["id"] and a["type"] == "demo.seq" for a in acks)
        assert received == list(range(n))
        print(f"\n{n} pipelined messages + {n} emits in {elapsed:.2f}s")


@pytest.mark.asyncio
async def test_ordering_by_default_and_concurrent_handlers_opt_out(engine: EngineProcess) -> None:
    async with Client.open(engine.port) as client:
        # Ordered (the default): the echo waits for the slow message before it.
        await client.send("demo.slow", {"t": 0.4}, "slow")
        await client.send("demo.echo", {"x": 1}, "after-slow")
        await client.ack("after-slow", 5.0)
        acks = [f["id"] for f in client.frames if f.get("id") in ("slow", "after-slow")]
        assert acks == ["slow", "after-slow"]
        # concurrent=True: the echo overtakes the napping handler.
        await client.send("demo.nap", {"t": 0.4}, "nap")
        await client.send("demo.echo", {"x": 2}, "after-nap")
        await client.ack("nap", 5.0)
        acks = [f["id"] for f in client.frames if f.get("id") in ("nap", "after-nap")]
        assert acks == ["after-nap", "nap"]


@pytest.mark.asyncio
async def test_rooms_close_and_on_disconnect(engine: EngineProcess) -> None:
    async with Client.open(engine.port) as watcher:
        async with Client.open(engine.port) as client:
            socket_id = (await client.call("demo.whoami"))["socket"]
            await watcher.call("demo.join", {"room": f"watch:{socket_id}"})
            await client.call("demo.join", {"room": "r1"})
            await client.call("demo.join", {"room": "r2"})
            assert await client.call("demo.rooms") == ["lobby", "r1", "r2"]
            await client.call("demo.leave", {"room": "r2"})
            assert await client.call("demo.rooms") == ["lobby", "r1"]
            await client.send("demo.close", {"code": 4001, "reason": "bye"}, "closing")
            assert await client.wait_closed() == (4001, "bye")
        gone = await watcher.event("demo.disconnected")
        assert gone["data"] == {"socket": socket_id, "code": 4001, "rooms": ["lobby", "r1"]}

        # A client closing by itself: its own code reaches on_disconnect.
        async with Client.open(engine.port) as leaver:
            leaver_id = (await leaver.call("demo.whoami"))["socket"]
            await watcher.call("demo.join", {"room": f"watch:{leaver_id}"})
            await leaver.call("demo.join", {"room": "r3"})
            await leaver.ws.close(4100, "done")
        gone = await watcher.event("demo.disconnected")
        assert gone["data"] == {"socket": leaver_id, "code": 4100, "rooms": ["lobby", "r3"]}

    status, recorded = await asyncio.to_thread(http_json, engine, "GET", "/demo/disconnects")
    assert status == 200
    assert {"socket": socket_id, "code": 4001, "rooms": ["lobby", "r1"]} in recorded
