"""Refusals never vanish, over real sockets and a real IPC socket.

- A service client's messages without an ``id`` refused by a rate limit are counted
  and reported: one ``linkd.rate_limited`` event per episode, not one per message.
- Joins past ``--max-rooms-per-connection`` are refused on every join path (worker
  commands, the embedding API, joins that recover a stream), and the client, the log
  and the metrics hear of it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs, encode_client_frame
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio

SERVICE = m.Registration(
    "svc", ws=m.WsRoute("/ws/svc", types=["echo", "typing", "join", "leave", "marker"])
)


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


async def handle(worker: FakeWorker, request: m.Message) -> m.Reply:
    """echo → its data; join/leave ROOM → the command, then the ack."""
    data = orjson.loads(request.json).get("data")
    if request.type == "join":
        worker.send(m.Join(request.conn, data))
    elif request.type == "leave":
        worker.send(m.Leave(request.conn, data))
    return reply_json(request, data)


@asynccontextmanager
async def service(ipc_path: str, **config: Any) -> AsyncIterator[tuple[Engine, FakeWorker]]:
    async with (
        running_engine(ipc_path=ipc_path, **config) as engine,
        FakeWorker(ipc_path, SERVICE) as worker,
    ):
        worker.on("message", handle)
        await worker.start()
        yield engine, worker


def frames(*messages: Any) -> bytes:
    return b"".join(
        encode_client_frame(0x1, msg if isinstance(msg, bytes) else orjson.dumps(msg))
        for msg in messages
    )


async def recv_json(ws: RawWs, timeout: float = 2.0) -> Any:  # noqa: ASYNC109
    frame = await ws.recv_frame(timeout)
    assert frame.opcode == 0x1, frame
    return orjson.loads(frame.payload)


async def until_marker(ws: RawWs) -> list[Any]:
    """Every frame received before the ack of a marker message sent now."""
    ws.send_raw(frames({"type": "marker", "id": "marker"}))
    seen = []
    while (frame := await recv_json(ws)).get("id") != "marker":
        seen.append(frame)
    return seen


async def metrics_text(engine: Engine) -> str:
    async with RawHttp(engine.port) as http:
        return (await http.request("GET", "/metrics")).body.decode()


def forwarded(worker: FakeWorker) -> list[Any]:
    return [orjson.loads(r.json).get("data") for r in worker.requests if isinstance(r, m.Message)]


# ------------------------------------------------------- rate-limit reports
async def test_refused_messages_without_id_are_reported_once_with_their_count(
    ipc_path: str,
) -> None:
    async with (
        service(ipc_path, ws_rate=1.0, ws_burst=1.0, ws_abuse_limit=100) as (engine, worker),
        RawWs(engine.port, "/ws/svc") as ws,
    ):
        ws.send_raw(
            frames(
                {"type": "echo", "data": 1, "id": "a"},  # passes: the burst
                {"type": "typing", "data": 2},
                {"type": "typing", "data": 3},
                b"not json",
                {"type": "echo", "data": 4, "id": "b"},  # refused, with its id: answered
                {"type": "typing", "data": 5},
            )
        )
        got = [await recv_json(ws) for _ in range(3)]
        reports = [g for g in got if g["type"] == "linkd.rate_limited"]
        assert len(reports) == 1
        # Everything this read refused without an id: three typings and the non-JSON.
        assert reports[0]["data"]["dropped"] == 4
        assert 0 < reports[0]["data"]["retryAfter"] <= 1.0
        errors = {g["id"]: g for g in got if "id" in g}
        assert errors["a"] == {"id": "a", "type": "echo", "data": 1}
        assert errors["b"]["error"]["code"] == "RATE_LIMITED"
        assert forwarded(worker) == [1]
        await asyncio.sleep(1.0)  # a token back: the marker passes
        assert await until_marker(ws) == []  # nothing else came: once, not per message
        assert engine.metrics.ws_rate_limited == 5


async def test_refusals_that_go_on_are_summed_into_at_most_one_report_a_second(
    ipc_path: str,
) -> None:
    async with (
        service(ipc_path, ws_rate=0.5, ws_burst=1.0, ws_abuse_limit=100) as (engine, _),
        RawWs(engine.port, "/ws/svc") as ws,
    ):
        typing = {"type": "typing", "data": True}
        ws.send_raw(frames(typing, typing, typing))  # one passes, two refused
        first = await recv_json(ws)
        assert first["type"] == "linkd.rate_limited" and first["data"]["dropped"] == 2
        reported = time.monotonic()
        for _ in range(4):  # four more refusals, in four reads
            await asyncio.sleep(0.05)
            ws.send_raw(frames(typing))
        second = await recv_json(ws)
        assert second["type"] == "linkd.rate_limited"
        assert second["data"]["dropped"] == 4
        assert time.monotonic() - reported >= 0.9


async def test_type_limit_refusal_without_id_is_reported_too(ipc_path: str) -> None:
    async with (
        service(
            ipc_path, ws_rate=0, ws_type_limits=(("typing", 1.0, 1.0),), ws_abuse_limit=100
        ) as (engine, worker),
        RawWs(engine.port, "/ws/svc") as ws,
    ):
        ws.send_raw(frames(*({"type": "typing", "data": i} for i in range(4))))
        report = await recv_json(ws)
        assert report["type"] == "linkd.rate_limited"
        assert report["data"]["dropped"] == 3
        assert forwarded(worker)[:1] == [0]


async def test_abuse_still_closes_1008_and_no_report_is_owed_after(ipc_path: str) -> None:
    async with (
        service(ipc_path, ws_rate=1.0, ws_burst=1.0, ws_abuse_limit=3) as (engine, _),
        RawWs(engine.port, "/ws/svc") as ws,
    ):
        ws.send_raw(frames(*({"type": "typing", "data": i} for i in range(10))))
        seen = []
        while (frame := await ws.recv_frame()).opcode != 0x8:
            seen.append(orjson.loads(frame.payload))
        assert frame.close_code == 1008
        assert all(s["type"] == "linkd.rate_limited" for s in seen)
        assert engine.metrics.ws_abuse_closes == 1


# --------------------------------------------------------------- rooms cap
async def test_joins_past_the_cap_are_refused_reported_logged_and_counted(
    ipc_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "linkd")
    async with (
        service(ipc_path, max_rooms_per_connection=3) as (engine, _),
        RawWs(engine.port, "/ws/svc") as ws,
    ):
        for i in range(1, 6):
            ws.send_raw(frames({"type": "join", "data": f"r{i}", "id": i}))
        got = [await recv_json(ws) for _ in range(7)]
        # The refusal is applied (and sent) before the ack of the message that asked.
        assert [g.get("id", g["type"]) for g in got] == [
            1,
            2,
            3,
            "linkd.join_refused",
            4,
            "linkd.join_refused",
            5,
        ]
        refused = [g["data"] for g in got if g["type"] == "linkd.join_refused"]
        assert refused == [{"room": "r4", "limit": 3}, {"room": "r5", "limit": 3}]
        (conn,) = engine.state.ws_connections
        assert engine.state.hub.rooms_of(conn) == ["r1", "r2", "r3"]
        assert "r4" not in engine.state.hub.rooms
        assert engine.metrics.ws_joins_refused == 2
        assert "linkd_ws_joins_refused_total 2.0" in await metrics_text(engine)

        # Joining a room it is in is not a new room; leaving one makes room.
        ws.send_raw(frames({"type": "join", "data": "r1", "id": 6}))
        assert (await recv_json(ws))["id"] == 6
        ws.send_raw(frames({"type": "leave", "data": "r2", "id": 7}))
        ws.send_raw(frames({"type": "join", "data": "r4", "id": 8}))
        assert [(await recv_json(ws))["id"] for _ in range(2)] == [7, 8]
        assert engine.state.hub.rooms_of(conn) == ["r1", "r3", "r4"]
        assert await until_marker(ws) == []
    lines = [r.getMessage() for r in caplog.records if "rooms" in r.getMessage()]
    refusal_lines = [line for line in lines if "refus" in line]
    assert len(refusal_lines) == 1, lines  # one line per connection per episode
    assert "3" in refusal_lines[0] and "r4" in refusal_lines[0]


async def test_embedding_api_join_says_when_it_was_refused() -> None:
    async with running_engine(max_rooms_per_connection=2) as engine, RawWs(engine.port) as ws:
        (conn,) = engine.state.ws_connections
        hub = engine.state.hub
        assert [hub.join(conn, room) for room in ("a", "b", "a", "c")] == [
            True,
            True,
            True,
            False,
        ]
        assert hub.rooms_of(conn) == ["a", "b"]
        event = orjson.loads((await ws.recv_frame()).payload)
        assert event == {"type": "linkd.join_refused", "data": {"room": "c", "limit": 2}}


async def test_cap_zero_means_no_cap() -> None:
    async with running_engine(max_rooms_per_connection=0) as engine, RawWs(engine.port):
        (conn,) = engine.state.ws_connections
        assert all(engine.state.hub.join(conn, f"room{i}") for i in range(3000))
        assert len(engine.state.hub.rooms_of(conn)) == 3000


class JoinOnConnect(WebSocketEndpoint):
    """Joins the rooms of ``?rooms=a,b`` at connect (as the chat joins a user's rooms)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def on_connect(self, ws: WebSocket) -> None:
        for part in ws.request.query.split("&"):
            if part.startswith("rooms="):
                for room in part[6:].split(","):
                    self.engine.state.hub.join(ws, room)


async def test_a_join_that_would_recover_a_stream_is_capped_too() -> None:
    engine = Engine(make_config(max_rooms_per_connection=2))
    engine.websocket("/ws", JoinOnConnect(engine))
    positions = {room: ["E0", 1] for room in ("a", "b", "c")}
    recover = base64.urlsafe_b64encode(orjson.dumps({"rooms": positions})).rstrip(b"=")
    async with (
        running_engine(engine),
        RawWs(engine.port, f"/ws?rooms=a,b,c&recover={recover.decode()}") as ws,
    ):
        got = [orjson.loads((await ws.recv_frame()).payload) for _ in range(3)]
        verdicts = [g["data"]["room"] for g in got if g["type"] == "linkd.recovered"]
        assert sorted(verdicts) == ["a", "b"]  # no recovery for the refused room
        assert [g["data"] for g in got if g["type"] == "linkd.join_refused"] == [
            {"room": "c", "limit": 2}
        ]
        assert engine.state.hub.pending == {}
