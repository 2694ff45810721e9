"""Heartbeat pings, pong timeout (1011), and the single sweeper that drives every timer."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest
import websockets

from engine.core.sweeper import Sweeper
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio


async def test_silent_client_gets_ping_then_1011() -> None:
    async with running_engine(heartbeat=0.2, heartbeat_timeout=0.2) as engine:
        async with RawWs(engine.port) as raw:
            started = time.monotonic()
            ping = await raw.recv_frame(timeout=1.0)
            assert ping.opcode == 0x9
            assert 0.15 <= time.monotonic() - started < 0.6
            # Do not answer: the pong deadline passes.
            close = await raw.recv_frame(timeout=1.0)
            assert close.opcode == 0x8 and close.close_code == 1011
            assert 0.35 <= time.monotonic() - started < 1.0
            raw.send_frame(0x8, struct.pack("!H", 1011))
            await raw.expect_eof(timeout=1.0)
        assert engine.metrics.ws_closes.get(1011) == 1


async def test_silent_client_that_ignores_close_is_dropped() -> None:
    async with (
        running_engine(heartbeat=0.2, heartbeat_timeout=0.2, close_timeout=0.3) as engine,
        RawWs(engine.port) as raw,
    ):
        assert (await raw.recv_frame(timeout=1.0)).opcode == 0x9
        assert await raw.recv_close_code(timeout=1.0) == 1011
        await raw.expect_disconnect(timeout=1.0)


async def test_raw_client_answering_pongs_stays_connected() -> None:
    async with (
        running_engine(heartbeat=0.2, heartbeat_timeout=0.2) as engine,
        RawWs(engine.port) as raw,
    ):
        pings = 0
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            try:
                frame = await raw.recv_frame(timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            assert frame.opcode == 0x9, f"unexpected frame {frame}"
            pings += 1
            raw.send_frame(0xA, frame.payload)
        assert pings >= 3  # ~every 0.2 s of silence
        raw.send_text("still here")
        assert (await raw.recv_frame()).payload == b"still here"


async def test_real_client_answers_pings_and_stays_connected() -> None:
    async with running_engine(heartbeat=0.2, heartbeat_timeout=0.2) as engine:
        uri = f"ws://127.0.0.1:{engine.port}/echo"
        # The client's own keepalive is off: only the server pings.
        async with websockets.connect(uri, ping_interval=None) as ws:
            await asyncio.sleep(1.2)
            await ws.send("alive")
            assert await asyncio.wait_for(ws.recv(), 1.0) == "alive"
        assert engine.metrics.ws_closes.get(1011) is None


async def test_traffic_postpones_the_ping() -> None:
    async with (
        running_engine(heartbeat=0.3, heartbeat_timeout=0.3) as engine,
        RawWs(engine.port) as raw,
    ):
        for i in range(8):  # 0.8 s of chatter every 0.1 s
            raw.send_text(f"m{i}")
            frame = await raw.recv_frame()
            assert frame.opcode == 0x1, "pinged although the client was not idle"
            await asyncio.sleep(0.1)


def live_timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timers in asyncio's heap that will run (cancelled ones wait there to be popped:
    this test's own reads with a timeout leave some)."""
    return sum(1 for h in getattr(loop, "_scheduled", []) if not h.cancelled())


async def test_one_sweeper_and_no_per_connection_timers() -> None:
    async with running_engine(heartbeat=5.0, heartbeat_timeout=5.0) as engine:
        assert isinstance(engine.state.sweeper, Sweeper)
        loop = asyncio.get_running_loop()
        # A warm-up connection, so lazily created shared machinery already exists.
        async with RawWs(engine.port) as warm:
            warm.send_text("w")
            await warm.recv_frame()
        await asyncio.sleep(0.1)
        tasks_before = len(asyncio.all_tasks())
        timers_before = live_timers(loop)
        sweep_before = len(engine.state.sweeper)
        clients = [RawWs(engine.port) for _ in range(50)]
        for client in clients:
            await client.connect()
        try:
            for client in clients:  # every connection is fully up
                client.send_text("hi")
                assert (await client.recv_frame()).payload == b"hi"
            assert len(engine.state.ws_connections) == 50
            await asyncio.sleep(0.1)
            assert len(asyncio.all_tasks()) <= tasks_before
            if hasattr(loop, "_scheduled"):  # asyncio's timer heap (uvloop hides it)
                # +1: the sweeper's own tick, armed again now that it has entries.
                assert live_timers(loop) <= timers_before + 1
            # Every connection's heartbeat lives in the sweeper instead.
            assert len(engine.state.sweeper) >= sweep_before + 50
        finally:
            for client in clients:
                client.writer.close()


async def test_a_quiet_connection_drops_its_frame_parser_and_parses_on_after() -> None:
    """The parser the first message made is dropped ``SHED_AFTER`` s later if nothing
    arrived since (an idle listener's memory); a busy connection keeps it; the next
    message after a drop is parsed by a new one."""
    from engine.ws.timers import SHED_AFTER

    async with (
        running_engine(heartbeat=60.0) as engine,
        RawWs(engine.port) as quiet,
        RawWs(engine.port) as busy,
    ):
        for raw in (quiet, busy):
            raw.send_text("hello")
            assert (await raw.recv_frame()).payload == b"hello"
        conns = {ws.id: ws for ws in engine.state.ws_connections}
        quiet_ws, busy_ws = sorted(conns.values(), key=lambda ws: ws.id)
        assert quiet_ws._conn._proto is not None and busy_ws._conn._proto is not None
        deadline = time.monotonic() + SHED_AFTER + 1.0
        while time.monotonic() < deadline:
            busy.send_text("tick")
            assert (await busy.recv_frame()).payload == b"tick"
            await asyncio.sleep(0.2)
        assert quiet_ws._conn._proto is None, "the quiet connection kept its parser"
        assert busy_ws._conn._proto is not None, "the busy one lost it mid-traffic"
        quiet.send_text("again")
        assert (await quiet.recv_frame()).payload == b"again"
        assert quiet_ws._conn._proto is not None
