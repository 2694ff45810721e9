"""Lossy slow-consumer policies on real sockets: drop_oldest, conflate, and mixed streams.

A client that stops reading fills its kernel buffers, then the transport's, then the
engine-side backlog that lossy policies keep. These tests send far more than that,
let the client read again, and check what it got: in order, no duplicates, the
newest messages kept, every loss counted, memory bounded, the connection still open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from engine.hub.fanout import prepare
from engine.ws.protocol import WsProtocol
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config, running_engine

CAP = 256 * 1024
PAD = "x" * 2000


class Joiner(WebSocketEndpoint):
    """Each text message names a room to join; answered with "ok"."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        self.engine.state.hub.join(ws, str(data))
        ws.send("ok")


def policy_engine(**overrides: object) -> Engine:
    config = make_config(
        limits={"max_outbound_bytes": CAP, "write_high_water": 16 * 1024},
        **overrides,
    )
    engine = Engine(config)
    engine.websocket("/ws", Joiner(engine))
    return engine


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - engine state
            await asyncio.sleep(0.005)


async def joined(engine: Engine, *rooms: str) -> tuple[RawWs, WsProtocol]:
    ws = RawWs(engine.port, "/ws", rcvbuf=4096)
    await ws.connect()
    assert ws.status == 101
    for room in rooms:
        ws.send_text(room)
        assert (await ws.recv_frame()).payload == b"ok"
    (proto,) = engine.state.ws_connections
    return ws, proto


def event(kind: str, seq: int, room: str = "feed") -> str:
    return orjson.dumps({"type": kind, "data": {"seq": seq, "room": room, "pad": PAD}}).decode()


async def flood(engine: Engine, proto: WsProtocol, n: int, emit: Callable[[int], None]) -> int:
    """Emit until the backlog is shedding and ``n`` messages went out; returns the count."""
    sent = 0
    peak = 0
    while sent < n:
        for _ in range(50):
            emit(sent)
            sent += 1
        peak = max(peak, proto._backlog.size if proto._backlog is not None else 0)
        await asyncio.sleep(0)  # let the corker flush, as between IPC reads
    assert peak <= CAP  # the backlog never holds more than the cap
    return sent


async def read_until(ws: RawWs, last: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while True:
        frame = await ws.recv_frame(timeout=5.0)
        assert frame.opcode == 0x1, f"unexpected frame {frame.opcode} {frame.payload[:40]!r}"
        msg = orjson.loads(frame.payload)
        got.append(msg)
        if last(msg):
            return got


@pytest.mark.asyncio
async def test_drop_oldest_keeps_the_newest_in_order_and_the_connection_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = policy_engine(slow_consumer_paths=(("/ws", "drop_oldest"),))
    async with running_engine(engine):
        ws, proto = await joined(engine, "feed")
        ws.pause_reading()
        hub = engine.state.hub
        with caplog.at_level(logging.INFO, logger="linkd.ws"):
            n = await flood(
                engine,
                proto,
                8000,
                lambda i: hub.emit(prepare(event("tick", i)), room="feed", event="tick"),
            )
            shed = engine.metrics.shed_messages.get("drop_oldest", 0)
            assert shed > 0
            assert not proto.closed
            ws.resume_reading()
            got = await read_until(ws, lambda m: m["data"]["seq"] == n - 1)
            seqs = [m["data"]["seq"] for m in got]
            assert seqs == sorted(set(seqs))  # in order, no duplicates
            assert len(seqs) + shed == n  # every message delivered or counted as shed
            assert seqs[-1] == n - 1 and seqs[0] == 0  # the oldest went first, not the head
            await wait_for(lambda: proto._backlog is None)
        assert engine.metrics.slow_consumer_events == {"drop_oldest": 1}  # one episode
        assert engine.metrics.slow_consumers == 0
        warnings = [r.getMessage() for r in caplog.records if "slow consumer" in r.getMessage()]
        assert len(warnings) == 1 and "drop_oldest" in warnings[0] and "/ws" in warnings[0]
        assert any("caught up" in r.getMessage() for r in caplog.records)
        # Still a working connection.
        ws.send_text("other")
        assert (await ws.recv_frame()).payload == b"ok"
        await ws.__aexit__(None, None, None)


@pytest.mark.asyncio
async def test_conflate_keeps_the_latest_value_of_each_room_and_event() -> None:
    engine = policy_engine(slow_consumer_events=(("price.*", "conflate"),))
    async with running_engine(engine):
        ws, proto = await joined(engine, "AAPL", "MSFT")
        ws.pause_reading()
        hub = engine.state.hub

        def emit(i: int) -> None:
            room = ("AAPL", "MSFT")[i % 2]
            hub.emit(prepare(event("price.tick", i, room)), room=room, event="price.tick")

        n = await flood(engine, proto, 8000, emit)
        replaced = engine.metrics.shed_messages.get("conflate", 0)
        assert replaced > 0
        ws.resume_reading()
        latest = {"AAPL": n - 2, "MSFT": n - 1}
        got: list[dict[str, Any]] = []
        pending = set(latest.values())
        while pending:
            got += await read_until(ws, lambda m: m["data"]["seq"] in pending)
            pending.discard(got[-1]["data"]["seq"])
        for room in latest:  # each key's values in order; across keys a newer value
            mine = [m["data"]["seq"] for m in got if m["data"]["room"] == room]
            assert mine == sorted(set(mine))  # takes its predecessor's place in line
        assert len(got) + replaced == n
        assert {m["data"]["room"]: m["data"]["seq"] for m in got} == latest
        assert engine.metrics.slow_consumers == 0
        await ws.__aexit__(None, None, None)


@pytest.mark.asyncio
async def test_a_message_that_must_not_be_lost_closes_a_full_backlog_with_1013() -> None:
    # Typing indicators may be dropped; chat messages may not: when one of those is
    # the oldest in a full backlog, the client is disconnected (and will recover).
    engine = policy_engine(
        slow_consumer_paths=(("/ws", "drop_oldest"),),
        slow_consumer_events=(("chat.*", "disconnect"),),
    )
    async with running_engine(engine):
        ws, proto = await joined(engine, "room")
        ws.pause_reading()
        hub = engine.state.hub

        def emit(i: int) -> None:
            kind = "chat.message" if i % 10 == 0 else "user.typing"
            hub.emit(prepare(event(kind, i)), room="room", event=kind)

        sent = 0
        while not proto.closed and sent < 20_000:
            for _ in range(50):
                emit(sent)
                sent += 1
            await asyncio.sleep(0)
        assert proto.closed
        assert engine.metrics.slow_consumers == 1
        assert engine.metrics.slow_consumer_events["disconnect"] == 1
        ws.resume_reading()
        code = await ws.recv_close_code(timeout=5.0)
        assert code == 1013
        await ws.__aexit__(None, None, None)


@pytest.mark.asyncio
async def test_a_fast_client_on_a_lossy_path_loses_nothing() -> None:
    engine = policy_engine(slow_consumer_paths=(("/ws", "drop_oldest"),))
    async with running_engine(engine):
        ws, _ = await joined(engine, "feed")
        hub = engine.state.hub
        n = 3000

        async def reader() -> list[int]:
            got = await read_until(ws, lambda m: m["data"]["seq"] == n - 1)
            return [m["data"]["seq"] for m in got]

        task = asyncio.create_task(reader())
        for i in range(n):
            hub.emit(prepare(event("tick", i)), room="feed", event="tick")
            if i % 20 == 0:
                await asyncio.sleep(0.001)
        assert await task == list(range(n))
        assert engine.metrics.shed_messages == {}
        await ws.__aexit__(None, None, None)


def test_unknown_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown slow-consumer policy 'drop_newest'"):
        make_config(slow_consumer_paths=(("/ws", "drop_newest"),))
