"""Binary frames through the clients (``send_binary``/``on_binary``, ``sendBinary``/
``onBinary``) against a real engine and the media service's ``on_binary`` handler."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.client.support import new_client
from tests.client.test_js import NODE_ARGS
from tests.helpers.proc import EngineProcess
from tests.integration.support import demo_engine

MEDIA = "tests.helpers.services.media"

JS = """
const { LinkdClient } = require("./clients/js/linkd.js");
const client = new LinkdClient({ url: process.argv[1] });
const timer = setTimeout(() => process.exit(2), 10000);
client.onBinary((data) => {
  console.log(JSON.stringify(Array.from(new Uint8Array(data))));
  clearTimeout(timer);
  client.close();
});
client.onState((state) => {
  if (state === "open") client.sendBinary(new Uint8Array([1, 2, 255]));
});
client.connect();
"""


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with demo_engine(services=(MEDIA,)) as eng:
        yield eng


@pytest.mark.asyncio
async def test_python_client_sends_and_receives_binary(engine: EngineProcess) -> None:
    got: asyncio.Queue[bytes] = asyncio.Queue()
    events: list[object] = []
    client = new_client(f"ws://127.0.0.1:{engine.port}/ws/media")
    client.on_binary(got.put_nowait)
    client.on("*", events.append)
    async with client:
        await client.send_binary(b"\x00\x01\xff")
        assert await asyncio.wait_for(got.get(), 5) == b"\xff\x01\x00"
        assert await client.request("me") is None  # JSON beside binary, as before
        assert events == [] and client.stats.events == 0  # a binary frame is no event


@pytest.mark.skipif(NODE_ARGS is None, reason="no Node with a WebSocket")
@pytest.mark.asyncio
async def test_js_client_sends_and_receives_binary(engine: EngineProcess) -> None:
    assert NODE_ARGS is not None
    proc = await asyncio.create_subprocess_exec(
        *NODE_ARGS,
        "-e",
        JS,
        f"ws://127.0.0.1:{engine.port}/ws/media",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["[255,2,1]"]
