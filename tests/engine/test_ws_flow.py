"""Inbound flow control, handler ordering, and the slow-consumer policy (1013)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable

import pytest
import websockets

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from engine.ws.protocol import WsProtocol
from tests.helpers.raw_ws import Frame, RawWs
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio


async def wait_for(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Poll engine state (there is no event to wait on for these) until ``predicate``."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def only_connection(engine: Engine) -> WsProtocol:
    (proto,) = engine.state.ws_connections
    return proto


class Gated(WebSocketEndpoint):
    """An async handler that blocks on an event before each message is recorded."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.handled: list[str | bytes] = []
        self.started = 0

    async def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        self.started += 1
        await self.gate.wait()
        self.handled.append(data)


async def test_inbound_queue_pauses_reading_and_preserves_order() -> None:
    endpoint = Gated()
    engine = Engine(make_config(limits={"max_inbound_queue": 16}))
    engine.websocket("/gated", endpoint)
    async with running_engine(engine), RawWs(engine.port, "/gated") as raw:
        for i in range(100):
            raw.send_text(f"m{i:03d}")
        await raw.writer.drain()
        await wait_for(lambda: engine.metrics.ws_messages_in >= 16)
        proto = only_connection(engine)
        await wait_for(lambda: bool(proto._paused))
        assert endpoint.started == 1  # the first handler is still blocked
        # Reading is paused: bytes sent now stay in the kernel, unparsed.
        seen = engine.metrics.ws_messages_in
        for i in range(100, 120):
            raw.send_text(f"m{i:03d}")
        await raw.writer.drain()
        await asyncio.sleep(0.2)
        assert engine.metrics.ws_messages_in == seen
        assert len(proto._inbox) == seen - 1  # bounded by what one read brought in
        endpoint.gate.set()
        await wait_for(lambda: len(endpoint.handled) == 120)
        assert endpoint.handled == [f"m{i:03d}" for i in range(120)]
        assert not proto._paused
        # The connection still works after resuming.
        raw.send_text("last")
        await wait_for(lambda: endpoint.handled[-1:] == ["last"])


class Ordered(WebSocketEndpoint):
    def __init__(self) -> None:
        self.log: list[str] = []
        self.codes: list[int] = []
        self.disconnected = asyncio.Event()

    async def on_connect(self, ws: WebSocket) -> None:
        self.log.append("connect-start")
        await asyncio.sleep(0.05)
        self.log.append("connect-end")

    async def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        assert isinstance(data, str)
        # Later messages sleep less: out-of-order handling would show up.
        await asyncio.sleep(0.002 * (20 - int(data)))
        self.log.append(data)
        ws.send(data)

    async def on_disconnect(self, ws: WebSocket, code: int) -> None:
        self.codes.append(code)
        self.disconnected.set()


async def test_async_handlers_in_order_after_on_connect() -> None:
    endpoint = Ordered()
    engine = Engine(make_config())
    engine.websocket("/ordered", endpoint)
    async with running_engine(engine):
        # The first frame arrives with the upgrade request, before on_connect ends.
        first = b"\x81\x81\x00\x00\x00\x000"
        async with RawWs(engine.port, "/ordered", initial_data=first) as raw:
            for i in range(1, 20):
                raw.send_text(str(i))
            echoed = [(await raw.recv_frame()).payload.decode() for _ in range(20)]
            assert echoed == [str(i) for i in range(20)]
            raw.send_frame(0x8, struct.pack("!H", 4000))
            assert await raw.recv_close_code() == 4000
        await asyncio.wait_for(endpoint.disconnected.wait(), 2.0)
    assert endpoint.log == ["connect-start", "connect-end", *(str(i) for i in range(20))]
    assert endpoint.codes == [4000]


async def test_on_disconnect_gets_the_code_with_real_client() -> None:
    endpoint = Ordered()
    engine = Engine(make_config())
    engine.websocket("/ordered", endpoint)
    async with running_engine(engine):
        async with websockets.connect(f"ws://127.0.0.1:{engine.port}/ordered") as ws:
            await ws.send("3")
            assert await ws.recv() == "3"
            await ws.close(1000)
        await asyncio.wait_for(endpoint.disconnected.wait(), 2.0)
    assert endpoint.codes == [1000]


async def test_on_disconnect_after_protocol_error() -> None:
    endpoint = Ordered()
    engine = Engine(make_config())
    engine.websocket("/ordered", endpoint)
    async with running_engine(engine):
        async with RawWs(engine.port, "/ordered") as raw:
            raw.send_frame(0x1, b"x", mask=False)
            assert await raw.recv_close_code() == 1002
        await asyncio.wait_for(endpoint.disconnected.wait(), 2.0)
    assert endpoint.codes == [1002]


async def read_all(raw: RawWs, out: list[Frame], stop: asyncio.Event) -> None:
    while True:
        try:
            frame = await raw.recv_frame(timeout=0.5)
        except TimeoutError:
            if stop.is_set():
                return
            continue
        out.append(frame)
        if frame.opcode == 0x8:
            return


async def test_slow_consumer_gets_1013_and_others_get_everything() -> None:
    limits = {"max_outbound_bytes": 256 * 1024}
    async with running_engine(limits=limits, close_timeout=5.0) as engine:
        slow = RawWs(engine.port, rcvbuf=4096)
        fast = RawWs(engine.port)
        await slow.connect()
        await fast.connect()
        try:
            slow.pause_reading()
            fast_frames: list[Frame] = []
            stop = asyncio.Event()
            reader = asyncio.create_task(read_all(fast, fast_frames, stop))
            message = "x" * 1000
            sent = 0
            # Broadcast in batches well under the cap, yielding between them, until the
            # slow client's unsent bytes pass the cap (or an absurd amount was sent).
            while engine.metrics.slow_consumers == 0 and sent < 40_000:
                for _ in range(50):
                    engine.broadcast(message)
                    sent += 1
                await asyncio.sleep(0.001)
            assert engine.metrics.slow_consumers == 1
            for _ in range(200):  # the fast client keeps receiving after that
                engine.broadcast(message)
                sent += 1
                if sent % 50 == 0:
                    await asyncio.sleep(0.001)
            assert len(engine.state.ws_connections) == 2  # slow one is closing, not gone
            # Now the slow client reads: data frames, then the close frame with 1013.
            slow.resume_reading()
            frames = 0
            while True:
                frame = await slow.recv_frame(timeout=2.0)
                if frame.opcode == 0x8:
                    assert frame.close_code == 1013
                    break
                assert frame.opcode == 0x1 and frame.payload == message.encode()
                frames += 1
            assert 0 < frames < sent
            slow.send_frame(0x8, struct.pack("!H", 1013))
            await slow.expect_disconnect(timeout=2.0)
            await wait_for(lambda: len(fast_frames) == sent, within=5.0)
            stop.set()
            await reader
            assert all(f.opcode == 0x1 and f.payload == message.encode() for f in fast_frames)
            assert engine.metrics.slow_consumers == 1
            assert engine.metrics.ws_closes.get(1013) == 1
            assert len(engine.state.ws_connections) == 1
        finally:
            for client in (slow, fast):
                client.writer.close()


async def test_slow_consumer_that_never_reads_is_dropped() -> None:
    limits = {"max_outbound_bytes": 64 * 1024}
    async with (
        running_engine(limits=limits, close_timeout=0.3) as engine,
        RawWs(engine.port, rcvbuf=4096) as slow,
    ):
        slow.pause_reading()
        sent = 0
        while engine.metrics.slow_consumers == 0 and sent < 40_000:
            for _ in range(20):
                engine.broadcast(b"y" * 1000)
                sent += 1
            await asyncio.sleep(0.001)
        assert engine.metrics.slow_consumers == 1
        # Its TCP connection is dropped after close_timeout, memory is released.
        await wait_for(lambda: not engine.state.ws_connections, within=2.0)
        slow.resume_reading()
        await slow.expect_disconnect(timeout=2.0)


async def test_drain_waits_for_the_socket() -> None:
    # 10 MB: more than the kernel buffers of a loopback connection can absorb.
    count, size = 1000, 10_000
    drained = asyncio.Event()

    class Drainer(WebSocketEndpoint):
        async def on_message(self, ws: WebSocket, data: str | bytes) -> None:
            for _ in range(count):
                ws.send(b"z" * size)
            await ws.drain()
            drained.set()

    engine = Engine(make_config(limits={"max_outbound_bytes": 64 << 20}))
    engine.websocket("/drain", Drainer())
    async with running_engine(engine), RawWs(engine.port, "/drain", rcvbuf=4096) as raw:
        raw.pause_reading()
        raw.send_text("go")
        await asyncio.sleep(0.3)
        assert not drained.is_set(), "drain() returned while megabytes were still unsent"
        raw.resume_reading()
        for _ in range(count):
            assert len((await raw.recv_frame()).payload) == size
        await asyncio.wait_for(drained.wait(), 2.0)


async def test_on_disconnect_comes_after_queued_messages() -> None:
    endpoint = Gated()
    codes: list[tuple[int, int]] = []

    def on_disconnect(ws: WebSocket, code: int) -> None:
        codes.append((code, len(endpoint.handled)))

    endpoint.on_disconnect = on_disconnect  # type: ignore[method-assign]
    engine = Engine(make_config())
    engine.websocket("/gated", endpoint)
    async with running_engine(engine), RawWs(engine.port, "/gated") as raw:
        for i in range(5):
            raw.send_text(str(i))
        raw.send_frame(0x8, struct.pack("!H", 1000))
        assert await raw.recv_close_code() == 1000
        await raw.expect_disconnect()
        await wait_for(lambda: not engine.state.ws_connections)
        assert codes == []  # the handler still holds queued messages
        endpoint.gate.set()
        await wait_for(lambda: bool(codes))
        assert endpoint.handled == [str(i) for i in range(5)]
        assert codes == [(1000, 5)]
