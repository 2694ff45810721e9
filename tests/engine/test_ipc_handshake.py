"""Worker handshake: hello → welcome, or reject / disconnect for every way it can go wrong."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from protocol.ipc import PROTOCOL_VERSION
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio

CHAT = m.Registration(
    "chat",
    version="1.2.3",
    http=[m.HttpRoute("get-room", "GET", "/chat/rooms/:id")],
    ws=m.WsRoute("/ws/chat", types=["chat.send"]),
)


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


def ipc_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "linkd.ipc"]


async def room_handler(worker: FakeWorker, request: m.HttpRequest) -> m.Reply:
    return reply_json(request, {"room": request.params["id"], "worker": worker.pid})


async def assert_chat_serves(port: int, pid: int) -> None:
    async with RawHttp(port) as client:
        resp = await client.request("GET", "/chat/rooms/7")
    assert resp.status == 200
    assert resp.json() == {"room": "7", "worker": pid}


async def test_welcome_fields(ipc_path: str) -> None:
    async with (
        running_engine(ipc_path=ipc_path, ipc_max_frame=65536, ipc_heartbeat=3.5) as engine,
        FakeWorker(ipc_path, CHAT) as first,
        FakeWorker(ipc_path, CHAT) as second,
    ):
        welcome = await first.start()
        assert welcome == m.Welcome(
            version=PROTOCOL_VERSION, worker=welcome.worker, max_frame=65536, heartbeat=3.5
        )
        other = await second.start()
        assert other.worker != welcome.worker
        assert first.conn.peer_max_frame == 65536
        first.on("http", room_handler)
        second.on("http", room_handler)
        async with RawHttp(engine.port) as client:
            assert (await client.request("GET", "/chat/rooms/1")).status == 200


async def test_first_message_not_hello_disconnects(
    ipc_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="linkd.ipc")
    async with running_engine(ipc_path=ipc_path), FakeWorker(ipc_path, CHAT) as worker:
        await worker.connect()
        worker.send_unchecked(m.Ping(1))
        await worker.wait_closed(2.0)
        assert worker.welcome is None and worker.reject is None
        assert any("UNEXPECTED" in line for line in ipc_warnings(caplog))


async def test_unknown_version_gets_reject_version(
    ipc_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="linkd.ipc")
    async with (
        running_engine(ipc_path=ipc_path) as engine,
        FakeWorker(ipc_path, CHAT, versions=[99]) as worker,
    ):
        await worker.connect()
        answer = await worker.hello()
        assert isinstance(answer, m.Reject), f"expected reject VERSION, got {answer!r}"
        assert answer.code == "VERSION"
        await worker.wait_closed(2.0)
        assert any("VERSION" in line for line in ipc_warnings(caplog))
        # Nothing was registered.
        assert "chat" not in engine.state.registry.services
        async with RawHttp(engine.port) as client:
            assert (await client.request("GET", "/chat/rooms/1")).status == 404


async def test_http_route_conflict_is_rejected(ipc_path: str) -> None:
    thief = m.Registration("thief", http=[m.HttpRoute("steal", "GET", "/chat/rooms/:room")])
    async with (
        running_engine(ipc_path=ipc_path) as engine,
        FakeWorker(ipc_path, CHAT, pid=1) as first,
        FakeWorker(ipc_path, thief) as second,
    ):
        first.on("http", room_handler)
        await first.start()
        await second.connect()
        answer = await second.hello()
        assert isinstance(answer, m.Reject)
        assert answer.code == "ROUTE_CONFLICT"
        await second.wait_closed(2.0)
        assert "thief" not in engine.state.registry.services
        await assert_chat_serves(engine.port, 1)


async def test_ws_path_conflict_is_rejected(ipc_path: str) -> None:
    # Its HTTP route is free, its WebSocket path is not: nothing of it is mounted.
    thief = m.Registration(
        "thief",
        http=[m.HttpRoute("free", "GET", "/thief/free")],
        ws=m.WsRoute("/ws/chat", catch_all=True),
    )
    async with (
        running_engine(ipc_path=ipc_path) as engine,
        FakeWorker(ipc_path, CHAT, pid=1) as first,
        FakeWorker(ipc_path, thief) as second,
    ):
        first.on("http", room_handler)
        await first.start()
        await second.connect()
        answer = await second.hello()
        assert isinstance(answer, m.Reject)
        assert answer.code == "ROUTE_CONFLICT"
        await second.wait_closed(2.0)
        async with RawHttp(engine.port) as client:
            assert (await client.request("GET", "/thief/free")).status == 404
        async with RawWs(engine.port, "/ws/chat") as ws:
            assert ws.status == 101
            ws.send_text('{"type":"chat.send","id":1}')
            frame = await ws.recv_frame()
            assert frame.opcode == 0x1
        assert [r.TYPE for r in first.requests] == ["message"]


async def test_ws_path_of_an_engine_endpoint_is_a_conflict(ipc_path: str) -> None:
    echo_thief = m.Registration("echo-thief", ws=m.WsRoute("/echo", catch_all=True))
    async with running_engine(ipc_path=ipc_path), FakeWorker(ipc_path, echo_thief) as worker:
        await worker.connect()
        answer = await worker.hello()
        assert isinstance(answer, m.Reject)
        assert answer.code == "ROUTE_CONFLICT"


async def test_no_hello_in_time_disconnects(
    ipc_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="linkd.ipc")
    async with (
        running_engine(ipc_path=ipc_path, header_timeout=0.3) as engine,
        FakeWorker(ipc_path, CHAT) as silent,
        FakeWorker(ipc_path, CHAT, pid=1) as ok,
    ):
        started = time.monotonic()
        await silent.connect()
        # A worker that says hello in time is not affected.
        ok.on("http", room_handler)
        await ok.start()
        await silent.wait_closed(2.0)
        elapsed = time.monotonic() - started
        assert 0.25 <= elapsed < 1.0
        assert any("no hello in time" in line for line in ipc_warnings(caplog))
        await asyncio.sleep(0.4)  # past the header timeout of the good one too
        assert not ok.is_closed
        await assert_chat_serves(engine.port, 1)
