"""Fragmented messages over real sockets, with control frames interleaved (RFC 6455 §5.4)."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.raw_ws import RawWs, deflate_message, encode_client_frame
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio


async def test_fragments_with_interleaved_pings_pong_comes_first() -> None:
    async with running_engine() as engine, RawWs(engine.port) as raw:
        raw.send_frame(0x1, b"frag-1 ", fin=False)
        raw.send_frame(0x9, b"ping-a")
        raw.send_frame(0x0, b"frag-2 ", fin=False)
        await asyncio.sleep(0.02)  # also across separate reads
        raw.send_frame(0x9, b"ping-b")
        raw.send_frame(0x0, b"frag-3")
        first = await raw.recv_frame()
        assert (first.opcode, first.payload) == (0xA, b"ping-a")
        second = await raw.recv_frame()
        assert (second.opcode, second.payload) == (0xA, b"ping-b")
        echoed = await raw.recv_frame()
        assert echoed.opcode == 0x1 and echoed.fin
        assert echoed.payload == b"frag-1 frag-2 frag-3"


async def test_binary_fragments_byte_by_byte_delivery() -> None:
    async with running_engine() as engine, RawWs(engine.port) as raw:
        data = (
            encode_client_frame(0x2, b"\x00" * 10, fin=False)
            + encode_client_frame(0x9, b"p")
            + encode_client_frame(0x0, b"\xff" * 10)
        )
        for i in range(len(data)):
            raw.send_raw(data[i : i + 1])
            await raw.writer.drain()
        pong = await raw.recv_frame()
        assert (pong.opcode, pong.payload) == (0xA, b"p")
        echoed = await raw.recv_frame()
        assert echoed.opcode == 0x2 and echoed.payload == b"\x00" * 10 + b"\xff" * 10


async def test_compressed_fragments_with_interleaved_ping() -> None:
    text = "a compressed message split in three fragments " * 20
    body = deflate_message(text.encode())
    third = len(body) // 3
    async with (
        running_engine() as engine,
        RawWs(engine.port, extensions="permessage-deflate") as raw,
    ):
        raw.send_frame(0x1, body[:third], fin=False, rsv1=True)
        raw.send_frame(0x9, b"keepalive?")
        raw.send_frame(0x0, body[third : 2 * third], fin=False)
        raw.send_frame(0x0, body[2 * third :])
        pong = await raw.recv_frame()
        assert (pong.opcode, pong.payload) == (0xA, b"keepalive?")
        echoed = await raw.recv_frame()
        assert echoed.opcode == 0x1, f"expected the echo, got opcode {echoed.opcode}"
        assert echoed.inflate().decode() == text
