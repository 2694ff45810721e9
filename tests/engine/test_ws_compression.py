"""permessage-deflate over real sockets: negotiation, threshold, large round trips, bombs."""

from __future__ import annotations

import asyncio
import os
import time
import zlib

import pytest
import websockets

from tests.helpers.raw_ws import RawWs, deflate_bomb, deflate_message
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio

TAIL = b"\x00\x00\xff\xff"


async def test_real_client_negotiates_deflate_and_round_trips_large_messages() -> None:
    async with running_engine() as engine:
        uri = f"ws://127.0.0.1:{engine.port}/echo"
        async with websockets.connect(uri, compression="deflate", max_size=2**21) as ws:
            assert ws.response is not None
            ext = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert ext.startswith("permessage-deflate")
            assert "server_no_context_takeover" in ext
            text = "".join(f"line {i} of a compressible message\n" for i in range(20_000))
            assert len(text) > 512 * 1024
            await ws.send(text)
            assert await ws.recv() == text
            blob = os.urandom(300_000)  # incompressible binary
            await ws.send(blob)
            assert await ws.recv() == blob
            for i in range(20):  # client context takeover over many messages
                msg = f"message {i} " * 50
                await ws.send(msg)
                assert await ws.recv() == msg


async def test_compression_disabled_sends_no_extension_header() -> None:
    async with running_engine(deflate={"enabled": False}) as engine:
        async with RawWs(engine.port, extensions="permessage-deflate") as raw:
            assert raw.status == 101
            assert "sec-websocket-extensions" not in raw.response_headers
            raw.send_text("y" * 1000)
            frame = await raw.recv_frame()
            assert not frame.rsv1
            assert frame.payload == b"y" * 1000
        uri = f"ws://127.0.0.1:{engine.port}/echo"
        async with websockets.connect(uri, compression="deflate") as ws:
            assert ws.response is not None
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            await ws.send("z" * 1000)
            assert await ws.recv() == "z" * 1000


async def test_no_offer_no_compression() -> None:
    async with running_engine() as engine, RawWs(engine.port) as raw:
        assert "sec-websocket-extensions" not in raw.response_headers
        raw.send_text("w" * 1000)
        frame = await raw.recv_frame()
        assert not frame.rsv1 and frame.payload == b"w" * 1000


async def test_compression_threshold() -> None:
    async with (
        running_engine(limits={"compression_threshold": 256}) as engine,
        RawWs(engine.port, extensions="permessage-deflate") as raw,
    ):
        assert raw.response_headers["sec-websocket-extensions"].startswith("permessage-deflate")
        raw.send_text("a" * 255)
        small = await raw.recv_frame()
        assert not small.rsv1
        assert small.payload == b"a" * 255
        raw.send_text("b" * 256)
        big = await raw.recv_frame()
        assert big.rsv1
        assert len(big.payload) < 256
        assert big.inflate() == b"b" * 256
        # A compressed message from the client is inflated before the echo.
        raw.send_frame(0x1, deflate_message(b"c" * 5000), rsv1=True)
        echoed = await raw.recv_frame()
        assert echoed.rsv1 and echoed.inflate() == b"c" * 5000


async def test_server_frames_decode_with_a_fresh_inflater_each() -> None:
    # server_no_context_takeover is insisted on by default: every compressed frame
    # must inflate on its own.
    async with (
        running_engine() as engine,
        RawWs(engine.port, extensions="permessage-deflate") as raw,
    ):
        for _ in range(5):
            raw.send_text("same text again " * 30)
        for _ in range(5):
            frame = await raw.recv_frame()
            assert frame.rsv1
            assert zlib.decompressobj(-15).decompress(frame.payload + TAIL) == (
                b"same text again " * 30
            )


async def test_decompression_bomb_gets_1009_quickly() -> None:
    # Deflate's best ratio is about 1:1030, so 100 MiB of zeros is a ~100 KiB frame;
    # the engine must refuse it after inflating about max_message_bytes (1 MiB).
    bomb = deflate_bomb(100)
    assert len(bomb) < 128 * 1024
    async with running_engine() as engine:
        async with RawWs(engine.port, extensions="permessage-deflate") as raw:
            started = time.monotonic()
            raw.send_frame(0x2, bomb, rsv1=True)
            assert await raw.recv_close_code(timeout=2.0) == 1009
            await raw.expect_disconnect(timeout=2.0)
            assert time.monotonic() - started < 1.0
        assert engine.metrics.ws_closes.get(1009) == 1
        # The engine still serves new connections.
        async with RawWs(engine.port, extensions="permessage-deflate") as raw:
            raw.send_text("still alive")
            frame = await raw.recv_frame()
            assert frame.payload == b"still alive"


async def test_compressed_message_over_limit_fragmented() -> None:
    async with (
        running_engine(limits={"max_message_bytes": 4096}) as engine,
        RawWs(engine.port, extensions="permessage-deflate") as raw,
    ):
        body = deflate_message(bytes(8192))
        raw.send_frame(0x2, body[:4], fin=False, rsv1=True)
        await asyncio.sleep(0.01)
        raw.send_frame(0x0, body[4:])
        assert await raw.recv_close_code() == 1009
