"""The example in docs/embedding.md works as documented."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import orjson
import pytest
import websockets

from examples.embedding import build_engine, tick
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio


async def test_embedding_example_route_and_broadcast() -> None:
    engine, ticker = build_engine(dataclasses.replace(make_config(), echo_paths=()))
    async with running_engine(engine):
        reader, writer = await asyncio.open_connection("127.0.0.1", engine.port)
        writer.write(b"GET /time HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert "time" in orjson.loads(await reader.readexactly(length))
        writer.close()

        uri = f"ws://127.0.0.1:{engine.port}/ticker"
        async with websockets.connect(uri) as a, websockets.connect(uri) as b:
            await a.send("ping")
            assert await a.recv() == "pong"
            ticking = asyncio.create_task(tick(engine, ticker, interval=0.05))
            try:
                for ws in (a, b):
                    event = orjson.loads(await asyncio.wait_for(ws.recv(), 2))
                    assert event["type"] == "tick"
            finally:
                ticking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticking
        await asyncio.sleep(0.05)
        assert ticker.subscribers == set()
