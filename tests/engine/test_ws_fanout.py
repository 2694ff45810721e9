"""Fan-out: one broadcast, encoded once, decoded by every kind of client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import zlib
from collections.abc import AsyncIterator, Sized

import pytest
import websockets

from tests.helpers.raw_ws import Frame, RawWs
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio

TAIL = b"\x00\x00\xff\xff"
MESSAGE = "".join(f"event {i}: price=10{i % 7}.25 qty={i * 3}\n" for i in range(60))


def inflate_fresh(frame: Frame, window_bits: int = 15) -> bytes:
    return zlib.decompressobj(-window_bits).decompress(frame.payload + TAIL)


@contextlib.asynccontextmanager
async def raw_clients(port: int, n: int, extensions: str | None) -> AsyncIterator[list[RawWs]]:
    clients = [RawWs(port, extensions=extensions) for _ in range(n)]
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        yield clients
    finally:
        for client in clients:
            client.writer.close()


async def wait_connections(engine_conns: Sized, n: int) -> None:
    async with asyncio.timeout(2.0):
        while len(engine_conns) < n:  # noqa: ASYNC110 - engine state, no event to wait on
            await asyncio.sleep(0.005)


async def test_broadcast_to_50_deflate_clients_shares_one_frame() -> None:
    async with running_engine() as engine:
        port = engine.port
        async with (
            raw_clients(port, 50, "permessage-deflate") as deflated,
            raw_clients(port, 3, "permessage-deflate; server_max_window_bits=10") as small,
            raw_clients(port, 3, None) as plain,
            websockets.connect(f"ws://127.0.0.1:{port}/echo", compression="deflate") as real,
        ):
            for client in deflated:
                ext = client.response_headers["sec-websocket-extensions"]
                assert "server_no_context_takeover" in ext
            await wait_connections(engine.state.ws_connections, 57)
            for _ in range(3):
                assert engine.broadcast(MESSAGE) == 57
            expected = MESSAGE.encode()

            frames = [[await c.recv_frame() for _ in range(3)] for c in deflated]
            first = frames[0][0]
            assert first.rsv1 and first.opcode == 0x1 and first.fin
            assert len(first.payload) < len(expected)
            for per_client in frames:
                for frame in per_client:
                    # Byte-identical for everybody with equal parameters, every time.
                    assert frame == first
                    assert inflate_fresh(frame) == expected

            for client in small:
                for _ in range(3):
                    frame = await client.recv_frame()
                    assert frame.rsv1
                    assert inflate_fresh(frame, 10) == expected

            for client in plain:
                for _ in range(3):
                    frame = await client.recv_frame()
                    assert not frame.rsv1 and frame.payload == expected

            for _ in range(3):
                assert await asyncio.wait_for(real.recv(), 2.0) == MESSAGE
        assert engine.metrics.ws_messages_out == 3 * 57


async def test_broadcast_with_server_context_takeover() -> None:
    async with running_engine(deflate={"server_no_context_takeover": False}) as engine:
        port = engine.port
        async with (
            raw_clients(port, 2, "permessage-deflate") as keeping,
            raw_clients(port, 2, "permessage-deflate; server_no_context_takeover") as resetting,
            websockets.connect(f"ws://127.0.0.1:{port}/echo", compression="deflate") as real,
        ):
            for client in keeping:
                ext = client.response_headers["sec-websocket-extensions"]
                assert "server_no_context_takeover" not in ext
            await wait_connections(engine.state.ws_connections, 5)
            for _ in range(3):
                assert engine.broadcast(MESSAGE) == 5
            expected = MESSAGE.encode()

            for client in keeping:
                inflater = zlib.decompressobj(-15)  # one context for the whole connection
                sizes = []
                for _ in range(3):
                    frame = await client.recv_frame()
                    assert frame.rsv1
                    assert inflater.decompress(frame.payload + TAIL) == expected
                    sizes.append(len(frame.payload))
                # Context takeover is really used: repeats refer back to the first copy.
                assert sizes[1] < sizes[0] // 2

            shared = None
            for client in resetting:
                for _ in range(3):
                    frame = await client.recv_frame()
                    assert inflate_fresh(frame) == expected
                    shared = shared or frame
                    assert frame == shared

            for _ in range(3):
                assert await asyncio.wait_for(real.recv(), 2.0) == MESSAGE


async def test_broadcast_binary_and_small_messages() -> None:
    async with (
        running_engine() as engine,
        raw_clients(engine.port, 5, "permessage-deflate") as clients,
    ):
        await wait_connections(engine.state.ws_connections, 5)
        engine.broadcast(b"\x00\x01tiny")
        engine.broadcast(bytes(4096))
        for client in clients:
            tiny = await client.recv_frame()
            assert tiny.opcode == 0x2 and not tiny.rsv1 and tiny.payload == b"\x00\x01tiny"
            big = await client.recv_frame()
            assert big.opcode == 0x2 and big.rsv1 and inflate_fresh(big) == bytes(4096)


async def test_broadcast_skips_closing_connections() -> None:
    async with running_engine() as engine, raw_clients(engine.port, 3, None) as clients:
        await wait_connections(engine.state.ws_connections, 3)
        clients[0].send_frame(0x8, b"\x03\xe8")
        assert await clients[0].recv_close_code() == 1000
        await clients[0].expect_disconnect()
        assert engine.broadcast("after") == 2
        for client in clients[1:]:
            assert (await client.recv_frame()).payload == b"after"


@pytest.mark.parametrize("write_now", [True, False], ids=["written-at-once", "corked"])
async def test_fanout_counts_every_message_and_byte_once(write_now: bool) -> None:
    """The fan-out counts the messages (and, written at once, the bytes) of all its
    recipients in one go; plain and compressed recipients are counted exactly."""
    from engine.brokers.publish import Publish
    from engine.hub.fanout import prepare

    async with (
        running_engine() as engine,
        raw_clients(engine.port, 5, None) as plain,
        raw_clients(engine.port, 3, "permessage-deflate") as deflated,
    ):
        await wait_connections(engine.state.ws_connections, 8)
        metrics = engine.metrics
        messages, sent = metrics.ws_messages_out, metrics.ws_bytes_out
        payload = MESSAGE.encode()
        publish = Publish.to(payload, everyone=True, write_now=write_now)
        assert engine.state.hub.fan(publish, prepare(MESSAGE), engine.state.ws_connections) == 8
        wire = 0
        for client in (*plain, *deflated):
            frame = await client.recv_frame()
            n = len(frame.payload)
            wire += n + (2 if n < 126 else 4)  # a server frame: header, no mask
        assert metrics.ws_messages_out - messages == 8
        assert metrics.ws_bytes_out - sent == wire


@pytest.mark.parametrize("write_now", [True, False], ids=["written-at-once", "corked"])
async def test_a_reader_gets_all_and_a_stalled_one_gets_1013(write_now: bool) -> None:
    """The fan-out's own loops (``fan_now``, ``fan_corked``) keep the outbound cap: a recipient that
    stopped reading is closed with 1013 once its unsent bytes pass the cap (then
    dropped, as it reads nothing), while one that reads gets every message, in order."""
    from engine.brokers.publish import Publish
    from engine.hub.fanout import prepare

    limits = {"write_high_water": 16384, "write_low_water": 4096, "max_outbound_bytes": 65536}
    async with (
        running_engine(limits=limits, close_timeout=0.3) as engine,
        raw_clients(engine.port, 1, None) as (reader,),
        raw_clients(engine.port, 1, None) as (stalled,),
    ):
        await wait_connections(engine.state.ws_connections, 2)
        stalled_sock = stalled.writer.get_extra_info("socket")
        stalled_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.writer.transport.pause_reading()  # it reads nothing from now on
        got: list[int] = []
        published = 0

        async def read() -> None:
            while not got or got[-1] < published - 1 or engine.metrics.slow_consumers == 0:
                frame = await reader.recv_frame()
                got.append(int(frame.payload[:8]))

        reading = asyncio.create_task(read())
        body = "x" * 8000
        # Until the kernel's buffers and then the cap are full (a few MB on loopback).
        while engine.metrics.slow_consumers == 0 and published < 5000:
            message = prepare(f"{published:08d}{body}")
            publish = Publish.to(message.payload, everyone=True, write_now=write_now)
            engine.state.hub.fan(publish, message, engine.state.ws_connections)
            published += 1
            await asyncio.sleep(0)  # the reader's turn
        assert engine.metrics.slow_consumers == 1
        await asyncio.wait_for(reading, 10.0)
        assert got == list(range(published))
        async with asyncio.timeout(5.0):  # 1013 sent, TCP dropped after close_timeout
            while len(engine.state.ws_connections) > 1:  # noqa: ASYNC110 - engine state
                await asyncio.sleep(0.01)
        assert engine.metrics.ws_closes.get(1013) == 1
