"""Closing handshake over real sockets: client-initiated, server-initiated, close timeout."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
import websockets

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio


async def test_client_close_1000_is_echoed_and_server_closes_tcp() -> None:
    async with running_engine() as engine:
        async with RawWs(engine.port) as raw:
            raw.send_frame(0x8, struct.pack("!H", 1000) + b"done")
            frame = await raw.recv_frame()
            assert frame.opcode == 0x8 and frame.close_code == 1000
            await raw.expect_eof(timeout=1.0)  # the server closes TCP first (§7.1.1)
        assert engine.metrics.ws_closes.get(1000) == 1
        assert engine.metrics.ws_open == 0


async def test_client_close_with_real_client() -> None:
    async with running_engine() as engine:
        uri = f"ws://127.0.0.1:{engine.port}/echo"
        ws = await websockets.connect(uri)
        await ws.send("x")
        assert await ws.recv() == "x"
        await asyncio.wait_for(ws.close(1000, "bye"), 1.0)
        assert ws.close_code == 1000
        received = ws.protocol.close_rcvd
        assert received is not None and received.code == 1000


async def test_engine_stop_sends_1001() -> None:
    async with running_engine() as engine:
        async with RawWs(engine.port) as raw:
            started = time.monotonic()
            stopping = asyncio.create_task(engine.stop(grace=3.0))
            assert await raw.recv_close_code(timeout=1.0) == 1001
            raw.send_frame(0x8, struct.pack("!H", 1001))
            await raw.expect_eof(timeout=1.0)
            await asyncio.wait_for(stopping, 2.0)
            # The client answered: stop did not wait for the grace period.
            assert time.monotonic() - started < 1.0
        assert engine.metrics.ws_closes.get(1001) == 1


async def test_engine_stop_with_real_client() -> None:
    async with running_engine() as engine:
        uri = f"ws://127.0.0.1:{engine.port}/echo"
        async with websockets.connect(uri) as ws:
            stopping = asyncio.create_task(engine.stop(grace=3.0))
            with pytest.raises(websockets.ConnectionClosedOK):
                await asyncio.wait_for(ws.recv(), 2.0)
            assert ws.close_code == 1001
            await asyncio.wait_for(stopping, 2.0)


async def test_close_timeout_drops_a_client_that_never_answers() -> None:
    async with running_engine(close_timeout=0.3) as engine:
        async with RawWs(engine.port) as raw:
            stopping = asyncio.create_task(engine.stop(grace=5.0))
            assert await raw.recv_close_code(timeout=1.0) == 1001
            closed_at = time.monotonic()
            # Never answer the close frame: TCP must go after close_timeout.
            await raw.expect_disconnect(timeout=2.0)
            waited = time.monotonic() - closed_at
            assert 0.2 <= waited < 1.0, waited
            await asyncio.wait_for(stopping, 2.0)
        assert engine.metrics.ws_open == 0


class Boom(WebSocketEndpoint):
    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        raise RuntimeError("handler bug")


async def test_close_timeout_after_handler_failure() -> None:
    # Any server-initiated close starts the timer, not only shutdown: here the
    # connection is closed with 1011 because its handler raised.
    engine = Engine(make_config(close_timeout=0.3))
    engine.websocket("/boom", Boom())
    async with running_engine(engine), RawWs(engine.port, "/boom") as raw:
        raw.send_text("x")
        frame = await raw.recv_frame(timeout=1.0)
        assert frame.opcode == 0x8 and frame.close_code == 1011
        assert frame.payload[2:] == b"internal error"  # no detail disclosed
        closed_at = time.monotonic()
        await raw.expect_disconnect(timeout=2.0)
        assert 0.2 <= time.monotonic() - closed_at < 1.0


async def test_eof_without_close_counts_1006() -> None:
    async with running_engine() as engine:
        raw = RawWs(engine.port)
        await raw.connect()
        raw.writer.close()
        await raw.writer.wait_closed()
        for _ in range(50):
            if engine.metrics.ws_closes.get(1006):
                break
            await asyncio.sleep(0.01)
        assert engine.metrics.ws_closes.get(1006) == 1
        assert engine.metrics.ws_open == 0
