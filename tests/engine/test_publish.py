"""A publish is one value (engine/brokers/publish.py): its target resolved once, and its
"write now" option decided by the IPC connection for a lone emit on an idle engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from engine import Engine
from engine.brokers.publish import Publish
from engine.hub.fanout import prepare
from engine.ws.protocol import WsProtocol
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.server import running_engine

ROOMS = m.Registration("rooms", ws=m.WsRoute("/ws/rooms", catch_all=True))


def test_the_target_is_resolved_once_rooms_first() -> None:
    assert (Publish.to(b"{}", room="a", user="u", conn=3).kind, "a") == ("r", "a")
    by_user = Publish.to(b"{}", user="u", everyone=True, conn=3)
    assert (by_user.kind, by_user.name, by_user.conn) == ("u", "u", None)
    assert Publish.to(b"{}", everyone=True, conn=3).kind == "*"
    direct = Publish.to(b"{}", conn=42, exclude=[1, 2], event="e")
    assert (direct.kind, direct.conn, direct.exclude, direct.stream) == ("c", 42, (1, 2), "c:42")
    assert Publish.to(b"{}", room="lobby").stream == "r:lobby"
    with pytest.raises(ValueError, match="needs a target"):
        Publish.to(b"{}")


def test_a_broker_stamps_a_copy_and_a_deferred_delivery_is_corked() -> None:
    publish = Publish.to(b'{"type":"e"}', room="r", exclude=[7], write_now=True)
    stamped = publish.stamped(b'{"type":"e","room":"r","seq":1}', 1)
    assert (stamped.payload, stamped.seq, stamped.exclude) == (
        b'{"type":"e","room":"r","seq":1}',
        1,
        (7,),
    )
    assert stamped.started == publish.started and publish.seq is None
    assert stamped.write_now and not stamped.later().write_now
    corked = Publish.to(b"{}", room="r")
    assert corked.later() is corked


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


async def joiner(worker: FakeWorker, request: m.Message) -> m.Reply:
    """Any message joins its connection to the room named by its data."""
    worker.send(m.Join(request.conn, orjson.loads(request.json)["data"]))
    return reply_json(request, request.conn)


@asynccontextmanager
async def rooms(ipc_path: str) -> AsyncIterator[tuple[Engine, FakeWorker]]:
    async with (
        running_engine(ipc_path=ipc_path) as engine,
        FakeWorker(ipc_path, ROOMS) as worker,
    ):
        worker.on("message", joiner)
        await worker.start()
        yield engine, worker


async def member(engine: Engine, room: str) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{engine.port}/ws/rooms")
    await ws.send(orjson.dumps({"type": "join", "data": room, "id": 1}).decode())
    assert orjson.loads(await ws.recv())["id"] == 1  # the join came before its ack
    return ws


async def received(ws: ClientConnection) -> Any:
    frame = orjson.loads(await ws.recv(decode=True))
    return frame["data"]


@pytest.mark.asyncio
async def test_a_lone_emit_is_written_now_several_in_one_read_are_corked(
    ipc_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    fan_now, send_prepared = WsProtocol.fan_now.__func__, WsProtocol.send_prepared  # type: ignore[attr-defined]

    def spy_now(cls: type[WsProtocol], message: Any, targets: Any, *args: Any) -> Any:
        calls.extend("now" for _ in targets)  # the loop is inside: one call per fan-out
        return fan_now(cls, message, targets, *args)

    def spy_prepared(self: WsProtocol, *args: Any) -> bool:
        calls.append("corked")
        return send_prepared(self, *args)

    monkeypatch.setattr(WsProtocol, "fan_now", classmethod(spy_now))
    monkeypatch.setattr(WsProtocol, "send_prepared", spy_prepared)
    async with rooms(ipc_path) as (engine, worker):
        a, b = await member(engine, "feed"), await member(engine, "feed")
        await worker.query("members", room="feed")  # every command applied
        calls.clear()
        worker.send(m.Emit(orjson.dumps({"type": "t", "data": 1}), room="feed", event="t"))
        assert [await received(a), await received(b)] == [1, 1]
        assert calls == ["now", "now"]  # one emit in its read, nothing corked: at once
        calls.clear()
        two = [m.Emit(orjson.dumps({"type": "t", "data": n}), room="feed") for n in (2, 3)]
        worker.send_raw(b"".join(worker.conn.send(msg) for msg in two))  # one read
        for ws in (a, b):
            assert [await received(ws), await received(ws)] == [2, 3]
        assert calls == ["corked"] * 4  # two emits in one read: one write per member
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_the_embedding_api_builds_the_value_too() -> None:
    async with running_engine() as engine, connect(f"ws://127.0.0.1:{engine.port}/echo") as ws:
        (conn,) = engine.state.ws_connections
        hub = engine.state.hub
        hub.join(conn, "room")
        assert hub.emit(prepare("to nobody"), room="room", exclude=[conn.id]) == 0
        assert hub.emit(prepare("direct"), conn=conn.id) == 1
        assert hub.emit(prepare("nowhere")) == 0  # no target: nobody
        assert engine.broadcast(b"\x00binary") == 1
        assert await ws.recv() == "direct"
        assert await ws.recv() == b"\x00binary"
