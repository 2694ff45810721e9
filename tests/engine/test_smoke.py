"""End-to-end smoke: HTTP health, echo over a real client, close handshake."""

from __future__ import annotations

import pytest
import websockets

from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio


async def test_health_and_echo() -> None:
    async with running_engine() as engine:
        uri = f"ws://127.0.0.1:{engine.port}/echo"
        async with websockets.connect(uri) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\xff")
            assert await ws.recv() == b"\x00\xff"
        async with RawWs(engine.port) as raw:
            raw.send_frame(0x8, b"\x03\xe8bye")
            assert await raw.recv_close_code() == 1000
            await raw.expect_eof()
