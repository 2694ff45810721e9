"""Hostile WebSocket traffic over real sockets: what one client sends is bounded.

Fragment floods (1009), frame floods (1008), and the message rate of raw endpoints
as backpressure: an echo client over the rate is slowed down, never loses a message.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import pytest

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from engine.ws.protocol import WsProtocol
from tests.helpers.proc import engine_process
from tests.helpers.raw_ws import RawWs, encode_client_frame
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024
TEXT, BINARY, CONT, PING = 0x1, 0x2, 0x0, 0x9


async def drain_until_close(ws: RawWs, timeout: float = 5.0) -> tuple[list[int], int | None]:  # noqa: ASYNC109
    """Opcodes of the frames before the close frame, and its code."""
    opcodes = []
    while True:
        frame = await ws.recv_frame(timeout)
        if frame.opcode == 0x8:
            return opcodes, frame.close_code
        opcodes.append(frame.opcode)


# ------------------------------------------------------------ fragments
async def test_empty_continuation_flood_is_closed_1009_quickly_and_rss_stays_flat() -> None:
    """100 000 empty continuation frames (0 bytes toward the message size) in one go."""
    with engine_process(["--echo", "/echo"]) as eng:
        async with RawWs(eng.port) as ws:
            ws.send_text("warm-up")
            assert (await ws.recv_frame()).payload == b"warm-up"
            before = eng.rss()
            started = time.monotonic()
            ws.send_raw(
                encode_client_frame(TEXT, b"", fin=False)
                + encode_client_frame(CONT, b"", fin=False) * 100_000
            )
            assert await ws.recv_close_code(timeout=5.0) == 1009
            took = time.monotonic() - started
            growth = eng.rss() - before
        print(f"100k empty fragments: closed 1009 after {took * 1000:.0f} ms, RSS {growth:+d} B")
        assert took < 2.0
        assert growth < 2 * MiB
        metrics = await eng.ametrics()
        assert metrics['linkd_ws_closes_total{code="1009"}'] == 1
        assert metrics["linkd_ws_messages_received_total"] == 1  # the warm-up only


async def test_a_normally_fragmented_message_still_echoes() -> None:
    async with running_engine() as engine, RawWs(engine.port) as ws:
        parts = [f"part{i:02d};".encode() for i in range(50)]
        for i, part in enumerate(parts):
            ws.send_frame(TEXT if i == 0 else CONT, part, fin=i == len(parts) - 1)
            if i % 10 == 0:
                ws.send_frame(PING, b"%d" % i)  # control frames in between are fine too
        pongs = [await ws.recv_frame() for _ in range(5)]
        assert [f.opcode for f in pongs] == [0xA] * 5
        echoed = await ws.recv_frame()
        assert (echoed.opcode, echoed.payload) == (TEXT, b"".join(parts))


async def test_a_message_over_the_fragment_limit_is_refused_1009() -> None:
    async with (
        running_engine(limits={"max_message_fragments": 16}) as engine,
        RawWs(engine.port) as ws,
    ):
        for i in range(17):
            ws.send_frame(BINARY if i == 0 else CONT, b"x", fin=i == 16)
        assert await ws.recv_close_code() == 1009
        await ws.expect_disconnect()


# --------------------------------------------------------------- frames
async def test_ping_flood_is_closed_1008_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "linkd.ws")
    async with running_engine() as engine, RawWs(engine.port) as ws:  # default frame rate
        burst = int(engine.state.config.ws_frame_burst)
        # A flood the engine reads whole before it fails (an unread rest would reset
        # the connection before the close frame is read here).
        ws.send_raw(encode_client_frame(PING, b"") * (burst + 500))
        opcodes, code = await drain_until_close(ws)
        assert code == 1008
        # Answered up to the budget (the burst, plus what the rate paid back meanwhile).
        assert set(opcodes) == {0xA}
        assert burst - 5 <= len(opcodes) < burst + 500
        await ws.expect_disconnect()
        assert engine.metrics.ws_abuse_closes == 1
    lines = [r.getMessage() for r in caplog.records if "1008" in r.getMessage()]
    assert len(lines) == 1 and "frames" in lines[0] and "127.0.0.1" in lines[0]


async def test_empty_fragment_flood_within_the_fragment_limit_is_refused_1008() -> None:
    """Many short messages of empty fragments: each under the fragment limit, but the
    frames per second are not."""
    async with (
        running_engine(ws_frame_rate=100.0, ws_frame_burst=200.0) as engine,
        RawWs(engine.port) as ws,
    ):
        message = (
            encode_client_frame(BINARY, b"", fin=False)
            + encode_client_frame(CONT, b"", fin=False) * 10
            + encode_client_frame(CONT, b"!")
        )
        ws.send_raw(message * 100)  # 1 100 charged frames against a burst of 200
        opcodes, code = await drain_until_close(ws)
        assert code == 1008
        assert 15 <= len(opcodes) <= 25  # the messages that fit in the burst were echoed


async def test_frames_within_the_rate_keep_the_connection_open() -> None:
    async with (
        running_engine(ws_frame_rate=1000.0, ws_frame_burst=50.0) as engine,
        RawWs(engine.port) as ws,
    ):
        for _ in range(4):  # 160 pings in all, over three times the burst
            ws.send_raw(encode_client_frame(PING, b"") * 40)
            for _ in range(40):
                assert (await ws.recv_frame()).opcode == 0xA
            await asyncio.sleep(0.06)  # 60 frames' worth of refill at 1000/s
        ws.send_text("still here")
        assert (await ws.recv_frame()).payload == b"still here"
        assert engine.metrics.ws_abuse_closes == 0


async def test_frame_rate_zero_turns_the_limit_off() -> None:
    async with running_engine(ws_frame_rate=0.0) as engine, RawWs(engine.port) as ws:
        ws.send_raw(encode_client_frame(PING, b"") * 20_000)
        ws.send_text("done")
        while (frame := await ws.recv_frame()).opcode == 0xA:
            pass
        assert frame.payload == b"done"


# ------------------------------------------------- throttling, not dropping
async def test_echo_over_the_rate_is_slowed_down_and_loses_nothing() -> None:
    """``engine --echo /echo --ws-rate 1000 --ws-burst 50``: 1000 messages sent at once
    all come back, in order, at the rate: the engine stopped reading instead of
    dropping (Autobahn 9.7.5 hung on a dropped echo)."""
    n, rate = 1000, 1000.0
    with engine_process(["--echo", "/echo", "--ws-rate", str(rate), "--ws-burst", "50"]) as eng:
        async with RawWs(eng.port) as ws:
            started = time.monotonic()
            ws.send_raw(b"".join(encode_client_frame(TEXT, b"m%d" % i) for i in range(n)))
            for i in range(n):
                assert (await ws.recv_frame()).payload == b"m%d" % i
            took = time.monotonic() - started
            ws.send_text("after")
            assert (await ws.recv_frame()).payload == b"after"
        metrics = await eng.ametrics()
    # The burst is at least rate x the timer resolution (0.25 s): 250 go at once.
    print(f"{n} echoes at --ws-rate {rate:g}: {took:.2f} s")
    assert took >= (n - 250) / rate * 0.9
    assert metrics["linkd_ws_rate_limited_messages_total"] == 0
    assert metrics["linkd_ws_abuse_closes_total"] == 0
    assert metrics["linkd_ws_throttled_total"] >= 1


async def test_embedded_async_endpoint_is_throttled_in_order() -> None:
    class Slowish(WebSocketEndpoint):
        async def on_message(self, ws: WebSocket, data: str | bytes) -> None:
            await asyncio.sleep(0)
            ws.send(data)

    engine = Engine(make_config(ws_rate=500.0, ws_burst=20.0))
    engine.websocket("/slowish", Slowish())
    n = 300
    async with running_engine(engine), RawWs(engine.port, "/slowish") as ws:
        started = time.monotonic()
        ws.send_raw(b"".join(encode_client_frame(TEXT, b"%d" % i) for i in range(n)))
        assert [(await ws.recv_frame()).payload for _ in range(n)] == [b"%d" % i for i in range(n)]
        took = time.monotonic() - started
        assert engine.metrics.ws_rate_limited == 0
    # Burst 20, raised to rate x resolution (500 x 0.05 = 25).
    assert took >= (n - 25) / 500.0 * 0.9


async def test_a_throttled_connection_still_completes_its_close_at_shutdown() -> None:
    engine = Engine(make_config(ws_rate=5.0, ws_burst=1.0))
    async with running_engine(engine), RawWs(engine.port) as ws:
        ws.send_raw(b"".join(encode_client_frame(TEXT, b"%d" % i) for i in range(50)))
        assert (await ws.recv_frame()).payload == b"0"
        stopping = asyncio.create_task(engine.stop(grace=5.0))
        frames = []
        while (frame := await ws.recv_frame()).opcode != 0x8:
            frames.append(frame.payload)
        assert frame.close_code == 1001
        assert len(frames) <= 3  # still throttled: not the 49 others at once
        ws.send_frame(0x8, (1000).to_bytes(2, "big"))
        started = time.monotonic()
        await ws.expect_disconnect()  # the engine read our close behind the throttled data
        await asyncio.wait_for(stopping, 2.0)
        assert time.monotonic() - started < 1.0


async def test_closed_connections_are_freed_at_once_not_at_their_old_deadline() -> None:
    """Connections closed 1009 halfway through a large message: none stays alive
    (the timer wheel used to keep each, and its partial frame, until its heartbeat)."""
    async with running_engine(echo_paths=("/echo",), heartbeat=60.0) as engine:
        for _ in range(10):
            async with RawWs(engine.port) as ws:
                chunk = b"a" * 65536
                ws.send_raw(encode_client_frame(TEXT, chunk, fin=False))
                for _ in range(17):
                    ws.send_raw(encode_client_frame(CONT, chunk, fin=False))
                assert await ws.recv_close_code(timeout=5.0) == 1009
        deadline = time.monotonic() + 3.0
        while engine.metrics.ws_open:
            assert time.monotonic() < deadline, "the connections did not close"
            await asyncio.sleep(0.02)
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, WsProtocol)]
        assert alive == []


async def test_a_read_full_of_frames_is_parsed_a_turn_at_a_time() -> None:
    """40 000 pings in one go (frame budget off): the loop is never held for all of
    them; every pong still comes back, in order, and another client is served."""
    loop = asyncio.get_running_loop()
    gaps: list[float] = []

    async def watch(until: asyncio.Event) -> None:
        last = loop.time()
        while not until.is_set():
            await asyncio.sleep(0.001)
            now = loop.time()
            gaps.append(now - last)
            last = now

    n = 40_000
    async with (
        running_engine(echo_paths=("/echo",), ws_frame_rate=0.0) as engine,
        RawWs(engine.port) as flood,
        RawWs(engine.port) as other,
    ):
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        pings = b"".join(encode_client_frame(PING, i.to_bytes(4, "big")) for i in range(n))
        flood.send_raw(pings)
        other.send_text("served")
        assert (await other.recv_frame(timeout=10.0)).payload == b"served"
        for i in range(n):
            frame = await flood.recv_frame(timeout=10.0)
            assert frame.opcode == 0xA and frame.payload == i.to_bytes(4, "big")
        done.set()
        await watcher
    # One turn is FRAMES_PER_TURN frames (~1-3 ms); the whole read would be ~200 ms.
    assert max(gaps) < 0.05, f"the loop was held {max(gaps) * 1000:.0f} ms"
