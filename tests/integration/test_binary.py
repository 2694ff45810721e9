"""Binary WebSocket messages through a real engine process and a real SDK worker
(tests/helpers/services/media.py): bytes in, bytes out, a binary emit fanned out to a
room, the error event of a failing binary handler, and 1003 where binary is not
accepted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from sdk import Service, WebSocketOptions, WsContext
from tests.helpers.proc import EngineProcess
from tests.integration.support import DEMO, demo_engine

MEDIA = "tests.helpers.services.media"


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with demo_engine(services=(MEDIA, DEMO)) as eng:
        yield eng


@contextlib.asynccontextmanager
async def client(port: int, path: str = "/ws/media") -> AsyncIterator[ClientConnection]:
    async with connect(
        f"ws://127.0.0.1:{port}{path}", ping_interval=None, open_timeout=5, close_timeout=2
    ) as ws:
        yield ws


async def call(ws: ClientConnection, type: str, data: object, id: str) -> dict[str, object]:
    await ws.send(orjson.dumps({"type": type, "data": data, "id": id}).decode())
    while True:
        frame = await asyncio.wait_for(ws.recv(), 5)
        if isinstance(frame, str):
            parsed = orjson.loads(frame)
            if parsed.get("id") == id:
                return parsed  # type: ignore[no-any-return]


async def next_binary(ws: ClientConnection) -> bytes:
    """The next binary frame (text frames in between are skipped)."""
    while True:
        frame = await asyncio.wait_for(ws.recv(), 5)
        if isinstance(frame, bytes):
            return frame


@pytest.mark.asyncio
async def test_bytes_in_bytes_out(engine: EngineProcess) -> None:
    payload = bytes(range(256)) * 4  # not UTF-8: a text frame could not carry it
    async with client(engine.port) as ws:
        await ws.send(payload)
        assert await next_binary(ws) == payload[::-1]
        # Text and binary messages of one connection are handled in arrival order.
        await ws.send(b"\x01\x02")
        await ws.send(orjson.dumps({"type": "me", "id": "m1"}).decode())
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x02\x01"
        ack = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ack == {"id": "m1", "type": "me", "data": None}


@pytest.mark.asyncio
async def test_a_binary_emit_fans_out_to_a_room(engine: EngineProcess) -> None:
    async with (
        client(engine.port) as a,
        client(engine.port) as b,
        client(engine.port) as c,
        client(engine.port) as outsider,
    ):
        for n, ws in enumerate((a, b)):
            assert (await call(ws, "join", {"room": "bin"}, f"j{n}"))["data"] == {"joined": "bin"}
        await c.send(b"join:bin")  # joined by a binary message
        await asyncio.sleep(0.2)
        blob = b"\x00\xff\xfe" + b"x" * 70_000  # over the compression threshold too
        await outsider.send(b"room:bin:" + blob)
        got = await asyncio.gather(*(next_binary(ws) for ws in (a, b, c)))
        assert got == [blob, blob, blob]
        # Text events to the room still arrive as text, after the binary one.
        await call(a, "emit", {"room": "bin", "data": "text"}, "e1")
        frame = await asyncio.wait_for(c.recv(), 5)
        assert isinstance(frame, str)
        event = orjson.loads(frame)
        assert event["type"] == "media.note" and event["seq"] >= 1


@pytest.mark.asyncio
async def test_a_failing_binary_handler_answers_an_error_event(engine: EngineProcess) -> None:
    async with client(engine.port) as ws:
        await ws.send(b"fail")
        frame = await asyncio.wait_for(ws.recv(), 5)
        assert isinstance(frame, str)
        event = orjson.loads(frame)
        assert event == {
            "type": "linkd.binary",
            "error": {"code": "INTERNAL", "message": "internal error"},
        }
        await ws.send(b"ok")  # the connection stays open
        assert await next_binary(ws) == b"ko"


@pytest.mark.asyncio
async def test_an_endpoint_without_binary_closes_1003(engine: EngineProcess) -> None:
    async with client(engine.port, "/ws/demo") as ws:
        await ws.send(b"\x00\x01")
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1003


def test_binary_needs_a_handler_and_a_handler_turns_it_on() -> None:
    bare = Service("bare", websocket=WebSocketOptions(path="/ws/bare", binary=True))
    with pytest.raises(ValueError, match="on_binary"):
        bare.registration()
    svc = Service("svc", websocket=WebSocketOptions(path="/ws/svc"))

    @svc.ws.on_binary
    async def handler(ctx: WsContext) -> None:
        return None

    ws = svc.registration().ws
    assert ws is not None and ws.binary


def redis_up() -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), 1):
        return True
    return False


@pytest.mark.skipif(not redis_up(), reason="no Redis on 127.0.0.1:6379")
@pytest.mark.asyncio
async def test_a_binary_emit_crosses_nodes_through_redis_unnumbered() -> None:
    redis = "redis://127.0.0.1:6379/0"
    with (
        demo_engine("--redis", redis, services=(MEDIA,)) as a,
        demo_engine("--redis", redis, services=(MEDIA,)) as b,
    ):
        room = f"bin-{id(a)}"
        async with client(a.port) as on_a, client(b.port) as on_b:
            await on_a.send(f"join:{room}".encode())
            await call(on_a, "me", None, "sync")  # the join took effect before this ack
            await asyncio.sleep(0.3)  # node A subscribed to the room's channel
            await on_b.send(f"room:{room}:".encode() + b"\x00\xffnode")
            assert await next_binary(on_a) == b"\x00\xffnode"
            # A JSON event to the room after it is numbered from 1: the binary one
            # took no number (it is not in the stream a recovery replays).
            await call(on_b, "emit", {"room": room, "data": "text"}, "e1")
            frame = orjson.loads(await asyncio.wait_for(on_a.recv(), 5))
            assert frame["type"] == "media.note" and frame["seq"] == 1
