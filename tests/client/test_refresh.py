"""Token refresh through the clients' callbacks, against a real engine, a real worker
(tests/helpers/services/media.py) and real signed tokens: the Python client and
clients/js/linkd.js (under Node, when it has a WebSocket) refresh before the first
token's ``exp`` and stay connected past it, in their room, without reconnecting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from linkd_client import Client, ClientError
from linkd_client.tokens import refresh_delay, token_expiry
from tests.client.support import new_client
from tests.client.test_js import NODE_ARGS
from tests.helpers.proc import EngineProcess
from tests.integration.support import demo_engine
from tests.integration.test_refresh import MEDIA, SECRET, exp_of, token

SCENARIO = "tests/client/linkd_refresh.cjs"


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with demo_engine("--jwt-secret", SECRET, "--jwt-leeway", "0", services=(MEDIA,)) as eng:
        yield eng


def test_the_expiry_is_read_from_the_token() -> None:
    tok = token(ttl=100.0)
    assert token_expiry(tok) == exp_of(tok)
    assert token_expiry("not-a-jwt") is None
    assert token_expiry("a.!!!.c") is None
    assert refresh_delay(1000.0, 900.0, 30.0) == 70.0
    assert refresh_delay(1000.0, 990.0, 30.0) == 5.0  # short-lived: halfway
    assert refresh_delay(1000.0, 1001.0, 30.0) == 0.0


@pytest.mark.asyncio
async def test_python_client_refreshes_through_its_callback(engine: EngineProcess) -> None:
    first = token(ttl=3.0, v=1)
    calls: list[str] = []

    async def fresh() -> str:
        calls.append("called")
        return token(ttl=600.0, v=2)

    client = new_client(f"ws://127.0.0.1:{engine.port}/ws/media", token=first, refresh_token=fresh)
    notes: list[Any] = []
    client.on("media.note", lambda event: notes.append(event["data"]))
    async with client:
        await client.request("join", {"room": "py-room"})
        await asyncio.sleep(max(0.0, exp_of(first) - time.time()) + 0.8)
        assert calls == ["called"]
        assert client.state == "open" and client.stats.reconnects == 0
        assert (await client.request("me"))["claims"]["v"] == 2
        await client.request("emit", {"room": "py-room", "data": "after"})
        for _ in range(100):
            if notes:
                break
            await asyncio.sleep(0.02)
        assert notes == ["after"]
        # By hand, and refused: a token of another user leaves the connection as it was.
        with pytest.raises(ClientError) as refused:
            await client.refresh(token(sub="mallory"))
        assert refused.value.code == "FORBIDDEN"
        assert (await client.request("me"))["userId"] == "alice"


@pytest.mark.asyncio
async def test_without_a_callback_the_token_still_expires(engine: EngineProcess) -> None:
    first = token(ttl=1.0)
    client: Client = new_client(f"ws://127.0.0.1:{engine.port}/ws/media", token=first)
    async with client:
        for _ in range(300):
            if client.state == "closed":
                break
            await asyncio.sleep(0.02)
        assert client.close_code == 1008


@pytest.mark.skipif(NODE_ARGS is None, reason="no Node with a WebSocket")
@pytest.mark.asyncio
async def test_js_client_refreshes_through_its_callback(engine: EngineProcess) -> None:
    assert NODE_ARGS is not None
    first = token(ttl=3.0, v=1)
    proc = await asyncio.create_subprocess_exec(
        *NODE_ARGS,
        SCENARIO,
        f"ws://127.0.0.1:{engine.port}/ws/media?token={first}",
        token(ttl=600.0, v=2),
        str(int(exp_of(first))),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    got = orjson.loads(out.splitlines()[-1])
    assert got["calls"] == 1
    assert got["me"]["claims"]["v"] == 2
    assert got["notes"] == ["after"]
    assert got["reconnects"] == 0
