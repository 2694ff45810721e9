"""Close codes the engine sends when a client breaks the protocol or a limit."""

from __future__ import annotations

import struct

import pytest
import websockets

from engine import Config, Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio


async def test_1009_message_over_max_message_bytes() -> None:
    async with running_engine(limits={"max_message_bytes": 1024}) as engine:
        async with RawWs(engine.port) as raw:
            raw.send_frame(0x2, b"a" * 1024)
            ok = await raw.recv_frame()
            assert ok.opcode == 0x2 and len(ok.payload) == 1024
            raw.send_frame(0x2, b"a" * 1025)
            assert await raw.recv_close_code() == 1009
            await raw.expect_disconnect()
        assert engine.metrics.ws_closes.get(1009) == 1


async def test_1009_announced_length_without_payload() -> None:
    # The limit is checked from the header: no need to send (or buffer) the payload.
    async with (
        running_engine(limits={"max_message_bytes": 1024}) as engine,
        RawWs(engine.port) as raw,
    ):
        raw.send_raw(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 2**40) + b"\x00" * 4)
        assert await raw.recv_close_code() == 1009


async def test_1009_real_client_sees_it() -> None:
    async with running_engine(limits={"max_message_bytes": 1024}) as engine:
        uri = f"ws://127.0.0.1:{engine.port}/echo"
        async with websockets.connect(uri) as ws:
            await ws.send("x" * 2000)
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1009


async def test_1007_invalid_utf8() -> None:
    async with running_engine() as engine, RawWs(engine.port) as raw:
        raw.send_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80")
        assert await raw.recv_close_code() == 1007
        await raw.expect_disconnect()


async def test_1007_invalid_utf8_across_fragments() -> None:
    async with running_engine() as engine, RawWs(engine.port) as raw:
        raw.send_frame(0x1, b"ok\xe2\x82", fin=False)
        raw.send_frame(0x0, b"(")
        assert await raw.recv_close_code() == 1007


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([(0x1, b"hi", {"mask": False})], id="unmasked"),
        pytest.param([(0x3, b"hi", {})], id="reserved-opcode"),
        pytest.param([(0xC, b"", {})], id="reserved-control-opcode"),
        pytest.param([(0x9, b"ping", {"fin": False})], id="fragmented-control"),
        pytest.param([(0x0, b"orphan", {})], id="continuation-without-start"),
        pytest.param([(0x1, b"a", {"rsv1": True})], id="rsv1-without-deflate"),
    ],
)
async def test_1002_protocol_errors(frames: list[tuple[int, bytes, dict[str, bool]]]) -> None:
    async with running_engine() as engine:
        async with RawWs(engine.port) as raw:
            for opcode, payload, kwargs in frames:
                raw.send_frame(opcode, payload, **kwargs)
            assert await raw.recv_close_code() == 1002
            await raw.expect_disconnect()
        assert engine.metrics.ws_closes.get(1002) == 1


async def test_1002_rsv2_set() -> None:
    async with running_engine() as engine, RawWs(engine.port) as raw:
        raw.send_raw(bytes([0x80 | 0x20 | 0x1, 0x80 | 2]) + b"\x00\x00\x00\x00hi")
        assert await raw.recv_close_code() == 1002


async def test_messages_before_a_protocol_error_are_answered_first() -> None:
    async with running_engine() as engine, RawWs(engine.port) as raw:
        raw.send_text("before")
        raw.send_frame(0x3, b"bad")
        first = await raw.recv_frame()
        assert first.opcode == 0x1 and first.payload == b"before"
        assert await raw.recv_close_code() == 1002


class TextOnly(WebSocketEndpoint):
    accept_binary = False

    def __init__(self) -> None:
        self.received: list[str | bytes] = []
        self.codes: list[int] = []

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        self.received.append(data)
        ws.send(data)

    def on_disconnect(self, ws: WebSocket, code: int) -> None:
        self.codes.append(code)


async def test_1003_binary_refused_by_endpoint() -> None:
    engine = Engine(make_config())
    endpoint = TextOnly()
    engine.websocket("/text", endpoint)
    async with running_engine(engine) as engine:
        assert isinstance(engine.config, Config)
        async with RawWs(engine.port, "/text") as raw:
            raw.send_text("fine")
            assert (await raw.recv_frame()).payload == b"fine"
            raw.send_frame(0x2, b"\x00\x01")
            raw.send_text("after the binary")  # discarded: we already sent our close
            assert await raw.recv_close_code() == 1003
            raw.send_frame(0x8, struct.pack("!H", 1003))
            await raw.expect_disconnect()
        assert endpoint.received == ["fine"]
        assert endpoint.codes == [1003]
