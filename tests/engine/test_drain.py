"""Shutdown closes WebSockets in batches (no reconnect stampede) with a resume hint."""

from __future__ import annotations

import asyncio
import struct

import pytest

from engine import Engine
from engine.server import DRAIN_REASON
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config


@pytest.mark.asyncio
async def test_stop_closes_websockets_in_batches_with_1001_and_a_hint() -> None:
    engine = Engine(make_config(drain_batch=10, drain_interval=0.2))
    await engine.start()
    clients = [RawWs(engine.port, "/echo") for _ in range(35)]
    for ws in clients:
        await ws.connect()
    loop = asyncio.get_running_loop()

    async def closed_at(ws: RawWs) -> tuple[float, int, bytes]:
        frame = await ws.recv_frame(timeout=10.0)
        assert frame.opcode == 0x8
        (code,) = struct.unpack("!H", frame.payload[:2])
        ws.send_frame(0x8, frame.payload[:2])  # answer, as a client would
        return loop.time(), code, frame.payload[2:]

    waiting = [asyncio.create_task(closed_at(ws)) for ws in clients]
    started = loop.time()
    await engine.stop(grace=10.0)
    results = await asyncio.gather(*waiting)
    assert {(code, reason) for _, code, reason in results} == {(1001, DRAIN_REASON.encode())}
    offsets = sorted(t - started for t, _, _ in results)
    # Four batches (10, 10, 10, 5), 0.2 s apart: the last client hears it >= 0.6 s later.
    assert offsets[-1] >= 0.55
    assert offsets[9] < offsets[10] - 0.1  # the first batch went out well before the second
    for ws in clients:
        await ws.__aexit__(None, None, None)
