"""WebSocket messages served by a worker: routing by type, acks, error events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from engine import Engine
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio

CHAT = m.Registration(
    "chat",
    ws=m.WsRoute(
        "/ws/chat", types=["chat.send", "echo", "nothing", "fail"], prefixes=["room.", "dm."]
    ),
)
MISC = m.Registration("misc", ws=m.WsRoute("/ws/misc", catch_all=True))


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


async def chat_message(worker: FakeWorker, request: m.Message) -> m.Reply:
    envelope = orjson.loads(request.json)
    data = envelope.get("data")
    if request.type == "echo":
        return m.Reply(request.id, json=orjson.dumps(data))
    if request.type == "nothing":
        return m.Reply(request.id)
    if request.type == "fail":
        details = orjson.dumps({"field": "text"}) if data == "VALIDATION_ERROR" else None
        return m.Reply(request.id, error=m.ErrorInfo(data, f"worker says {data}", details))
    return reply_json(request, {"handled": request.type, "by": worker.registration.name})


@asynccontextmanager
async def services(ipc_path: str) -> AsyncIterator[tuple[Engine, FakeWorker, FakeWorker]]:
    async with (
        running_engine(ipc_path=ipc_path) as engine,
        FakeWorker(ipc_path, CHAT) as chat,
        FakeWorker(ipc_path, MISC) as misc,
    ):
        chat.on("message", chat_message)
        misc.on("message", chat_message)
        await chat.start()
        await misc.start()
        yield engine, chat, misc


def client(engine: Engine, path: str = "/ws/chat") -> connect:
    return connect(f"ws://127.0.0.1:{engine.port}{path}")


async def send(ws: ClientConnection, value: Any) -> None:
    await ws.send(value if isinstance(value, str) else orjson.dumps(value).decode())


async def recv(ws: ClientConnection, timeout: float = 2.0) -> Any:  # noqa: ASYNC109
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


def messages_of(worker: FakeWorker) -> list[m.Message]:
    return [r for r in worker.requests if isinstance(r, m.Message)]


async def test_ack_carries_id_type_and_data(ipc_path: str) -> None:
    async with services(ipc_path) as (engine, chat, _), client(engine) as ws:
        text = '{"type":"echo", "data":{"x":[1,2.5,"é"]},"id":7}'
        await ws.send(text)
        assert await recv(ws) == {"id": 7, "type": "echo", "data": {"x": [1, 2.5, "é"]}}
        await send(ws, {"type": "echo", "data": "s", "id": "abc"})
        assert await recv(ws) == {"id": "abc", "type": "echo", "data": "s"}
        first = messages_of(chat)[0]
        # The worker gets the client's text untouched, its type, and the connection id.
        assert first.json == text.encode()
        assert first.type == "echo"
        assert isinstance(first.conn, int)
        assert first.remote is not None and first.remote.startswith("127.0.0.1:")
        assert messages_of(chat)[1].conn == first.conn


async def test_handler_returning_nothing_acks_null(ipc_path: str) -> None:
    async with services(ipc_path) as (engine, _, _), client(engine) as ws:
        await send(ws, {"type": "nothing", "data": 1, "id": 1})
        assert await recv(ws) == {"id": 1, "type": "nothing", "data": None}


async def test_error_ack(ipc_path: str) -> None:
    async with services(ipc_path) as (engine, _, _), client(engine) as ws:
        await send(ws, {"type": "fail", "data": "FORBIDDEN", "id": 1})
        assert await recv(ws) == {
            "id": 1,
            "type": "fail",
            "error": {"code": "FORBIDDEN", "message": "worker says FORBIDDEN"},
        }
        await send(ws, {"type": "fail", "data": "VALIDATION_ERROR", "id": 2})
        assert await recv(ws) == {
            "id": 2,
            "type": "fail",
            "error": {
                "code": "VALIDATION_ERROR",
                "message": "worker says VALIDATION_ERROR",
                "details": {"field": "text"},
            },
        }
        await send(ws, {"type": "fail", "data": "INTERNAL", "id": 3})
        assert await recv(ws) == {
            "id": 3,
            "type": "fail",
            "error": {"code": "INTERNAL", "message": "internal error"},
        }


async def test_without_id_no_ack_on_success_error_event_on_failure(ipc_path: str) -> None:
    async with services(ipc_path) as (engine, chat, _), client(engine) as ws:
        await send(ws, {"type": "echo", "data": "silent"})
        await send(ws, {"type": "fail", "data": "NOT_FOUND"})
        await send(ws, {"type": "echo", "data": "last", "id": 9})
        # The first produced nothing: the next frame is the error of the second.
        assert await recv(ws) == {
            "type": "fail",
            "error": {"code": "NOT_FOUND", "message": "worker says NOT_FOUND"},
        }
        assert await recv(ws) == {"id": 9, "type": "echo", "data": "last"}
        assert [r.type for r in messages_of(chat)] == ["echo", "fail", "echo"]


async def test_unknown_type_never_reaches_the_worker(ipc_path: str) -> None:
    async with services(ipc_path) as (engine, chat, _), client(engine) as ws:
        await send(ws, {"type": "chat.other", "data": 1, "id": 4})
        reply = await recv(ws)
        assert reply["id"] == 4
        assert reply["type"] == "chat.other"
        assert reply["error"]["code"] == "UNKNOWN_MESSAGE_TYPE"
        await send(ws, {"type": "nope"})
        reply = await recv(ws)
        assert reply["type"] == "nope"
        assert reply["error"]["code"] == "UNKNOWN_MESSAGE_TYPE"
        assert "id" not in reply
        assert messages_of(chat) == []


@pytest.mark.parametrize(
    ("text", "event_type"),
    [
        ("{not json", "error"),
        ('{"data": 1, "id": 1}', "error"),
        ('{"type": 5, "id": 1}', "error"),
        ('["echo"]', "error"),
        ('{"type": "echo", "id": [1]}', "echo"),
        ('{"type": "echo", "id": {"a": 1}}', "echo"),
    ],
    ids=["bad-json", "no-type", "type-not-string", "not-an-object", "id-list", "id-object"],
)
async def test_malformed_message_gets_error_event_and_connection_stays(
    ipc_path: str, text: str, event_type: str
) -> None:
    async with services(ipc_path) as (engine, chat, _), client(engine) as ws:
        await ws.send(text)
        event = await recv(ws)
        assert event == {"type": event_type, "error": event["error"]}
        assert event["error"]["code"] == "BAD_REQUEST"
        assert isinstance(event["error"]["message"], str)
        assert messages_of(chat) == []
        # Still open, still served.
        await send(ws, {"type": "echo", "data": "after", "id": 2})
        assert await recv(ws) == {"id": 2, "type": "echo", "data": "after"}


async def test_routing_exact_types_and_prefixes(ipc_path: str) -> None:
    async with services(ipc_path) as (engine, chat, _), client(engine) as ws:
        routed = ["chat.send", "room.join", "room.", "dm.alice.typing"]
        refused = ["chat.sen", "chat.send.x", "room", "xroom.join", "ROOM.join", "dm"]
        for i, message_type in enumerate(routed + refused):
            await send(ws, {"type": message_type, "id": i})
        for i, message_type in enumerate(routed):
            assert await recv(ws) == {
                "id": i,
                "type": message_type,
                "data": {"handled": message_type, "by": "chat"},
            }
        for i, message_type in enumerate(refused, len(routed)):
            reply = await recv(ws)
            assert (reply["id"], reply["type"]) == (i, message_type)
            assert reply["error"]["code"] == "UNKNOWN_MESSAGE_TYPE"
        assert [r.type for r in messages_of(chat)] == routed


async def test_routing_catch_all(ipc_path: str) -> None:
    async with services(ipc_path) as (engine, chat, misc), client(engine, "/ws/misc") as ws:
        types = ["anything", "chat.send", "", "x.y.z"]
        for i, message_type in enumerate(types):
            await send(ws, {"type": message_type, "id": i})
        for i, message_type in enumerate(types):
            assert await recv(ws) == {
                "id": i,
                "type": message_type,
                "data": {"handled": message_type, "by": "misc"},
            }
        assert [r.type for r in messages_of(misc)] == types
        assert messages_of(chat) == []


async def test_binary_frame_closes_1003(ipc_path: str) -> None:
    async with services(ipc_path) as (engine, chat, _), RawWs(engine.port, "/ws/chat") as ws:
        assert ws.status == 101
        ws.send_frame(0x2, b'{"type":"echo","id":1}')
        assert await ws.recv_close_code() == 1003
        assert messages_of(chat) == []


async def test_per_connection_allows_that_many_in_flight(ipc_path: str) -> None:
    parallel = m.Registration("par", ws=m.WsRoute("/ws/par", catch_all=True, per_connection=2))
    release = asyncio.Event()

    async def hold(worker: FakeWorker, request: m.Message) -> m.Reply:
        await release.wait()
        return reply_json(request, orjson.loads(request.json)["id"])

    async with (
        running_engine(ipc_path=ipc_path) as engine,
        FakeWorker(ipc_path, parallel) as worker,
    ):
        worker.on("message", hold)
        await worker.start()
        async with client(engine, "/ws/par") as ws:
            for i in range(3):
                await send(ws, {"type": "hold", "id": i})
            await worker.wait_requests(2)
            await asyncio.sleep(0.1)
            assert len(worker.requests) == 2  # two at once, the third waits
            release.set()
            acks = [await recv(ws) for _ in range(3)]
            assert sorted(a["id"] for a in acks) == [0, 1, 2]
            assert len(worker.requests) == 3


async def test_reply_with_invalid_utf8_never_reaches_the_client(ipc_path: str) -> None:
    """``reply.json`` is UTF-8 JSON text (docs/ipc.md §3); the engine must not forward
    other bytes in a text frame (like ``emit.payload``, which it checks)."""

    async def bad(worker: FakeWorker, request: m.Message) -> m.Reply:
        return m.Reply(request.id, json=b'"\xff\xfe"')

    async with services(ipc_path) as (engine, chat, _), RawWs(engine.port, "/ws/chat") as ws:
        chat.on("message:echo", bad)
        ws.send_text('{"type":"echo","id":1}')
        frame = await ws.recv_frame()
        assert frame.opcode == 0x1
        frame.payload.decode("utf-8")  # a text frame must hold UTF-8 (RFC 6455 §5.6)
