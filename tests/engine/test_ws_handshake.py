"""The opening handshake over real sockets: subprotocols, trailing bytes, rejections."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Sequence

import pytest
import websockets
from websockets.typing import Subprotocol

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from protocol.http.upgrade import accept_token
from tests.helpers.raw_ws import RawWs, deflate_message, encode_client_frame
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio

OFFERS = [Subprotocol("chat.v1"), Subprotocol("chat.v2")]


class Chat(WebSocketEndpoint):
    def __init__(self) -> None:
        self.offers: list[list[str]] = []
        self.chosen: list[str | None] = []

    def select_subprotocol(self, offered: Sequence[str]) -> str | None:
        self.offers.append(list(offered))
        return "chat.v2" if "chat.v2" in offered else None

    def on_connect(self, ws: WebSocket) -> None:
        self.chosen.append(ws.subprotocol)

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        ws.send(data)


def chat_engine() -> tuple[Engine, Chat]:
    engine = Engine(make_config())
    endpoint = Chat()
    engine.websocket("/chat", endpoint)
    return engine, endpoint


async def test_subprotocol_selected_with_real_client() -> None:
    engine, endpoint = chat_engine()
    async with running_engine(engine):
        uri = f"ws://127.0.0.1:{engine.port}/chat"
        async with websockets.connect(uri, subprotocols=OFFERS) as ws:
            assert ws.subprotocol == "chat.v2"
            await ws.send("hi")
            assert await ws.recv() == "hi"
    assert endpoint.offers == [["chat.v1", "chat.v2"]]
    assert endpoint.chosen == ["chat.v2"]


async def test_subprotocol_header_in_101() -> None:
    engine, endpoint = chat_engine()
    async with running_engine(engine):
        headers = [("Sec-WebSocket-Protocol", "chat.v2, other")]
        async with RawWs(engine.port, "/chat", headers=headers) as raw:
            assert raw.status == 101
            assert raw.response_headers["sec-websocket-protocol"] == "chat.v2"
        headers = [("Sec-WebSocket-Protocol", "other")]
        async with RawWs(engine.port, "/chat", headers=headers) as raw:
            assert raw.status == 101
            assert "sec-websocket-protocol" not in raw.response_headers
    assert endpoint.chosen == ["chat.v2", None]


async def test_no_subprotocol_by_default() -> None:
    async with running_engine() as engine:
        headers = [("Sec-WebSocket-Protocol", "chat.v2")]
        async with RawWs(engine.port, headers=headers) as raw:
            assert raw.status == 101
            assert "sec-websocket-protocol" not in raw.response_headers


async def test_handshake_and_first_frame_in_one_write() -> None:
    first = encode_client_frame(0x1, b"sent with the upgrade")
    second = encode_client_frame(0x2, b"\x01\x02")
    async with running_engine() as engine, RawWs(engine.port, initial_data=first + second) as raw:
        assert raw.status == 101
        frame = await raw.recv_frame(timeout=1.0)
        assert frame.opcode == 0x1 and frame.payload == b"sent with the upgrade"
        frame = await raw.recv_frame(timeout=1.0)
        assert frame.opcode == 0x2 and frame.payload == b"\x01\x02"


async def test_handshake_and_partial_frame_in_one_write() -> None:
    frame_bytes = encode_client_frame(0x1, b"split across writes")
    async with running_engine() as engine, RawWs(engine.port, initial_data=frame_bytes[:5]) as raw:
        await asyncio.sleep(0.05)
        raw.send_raw(frame_bytes[5:])
        frame = await raw.recv_frame(timeout=1.0)
        assert frame.payload == b"split across writes"


async def test_handshake_and_close_frame_in_one_write() -> None:
    close = encode_client_frame(0x8, b"\x03\xe8")
    async with running_engine() as engine, RawWs(engine.port, initial_data=close) as raw:
        assert raw.status == 101
        assert await raw.recv_close_code(timeout=1.0) == 1000
        await raw.expect_eof(timeout=1.0)


async def test_accept_header_matches_key() -> None:
    async with running_engine() as engine:
        key = base64.b64encode(os.urandom(16)).decode()
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
        request = (
            "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        writer.write(request.encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)).decode("latin-1")
        writer.close()
        status, *lines = head.strip().split("\r\n")
        assert status.startswith("HTTP/1.1 101")
        headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines)}
        assert headers["sec-websocket-accept"] == accept_token(key)
        assert headers["upgrade"].lower() == "websocket"


async def test_unknown_path_is_404_before_upgrade() -> None:
    async with running_engine() as engine:
        raw = RawWs(engine.port, "/nowhere")
        try:
            assert await raw.connect() == 404
        finally:
            raw.writer.close()


async def test_unsupported_version_is_426() -> None:
    async with running_engine() as engine:
        # RawWs always sends 13; a second, unknown version makes the set unsupported.
        raw = RawWs(engine.port, headers=[("Sec-WebSocket-Version", "8")])
        try:
            status = await raw.connect()
        finally:
            raw.writer.close()
        assert status == 426
        assert raw.response_headers.get("sec-websocket-version") == "13"


async def test_compressed_first_frame_in_the_handshake_write() -> None:
    first = encode_client_frame(0x1, deflate_message(b"early and compressed " * 20), rsv1=True)
    async with (
        running_engine() as engine,
        RawWs(engine.port, extensions="permessage-deflate", initial_data=first) as raw,
    ):
        assert "sec-websocket-extensions" in raw.response_headers
        frame = await raw.recv_frame(timeout=1.0)
        assert frame.rsv1 and frame.inflate() == b"early and compressed " * 20
