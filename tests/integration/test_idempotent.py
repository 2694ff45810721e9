"""Idempotent requests (issue 13 item 5): a message repeating a recent id runs once.

Real engine, real SDK worker (``tests/helpers/services/idem.py``, whose handlers count
their runs), real WebSocket clients. Each test uses keys of its own, so the counts of
one do not leak into another on the shared worker.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio

from engine import Engine
from engine.services import replay
from linkd_client import Client as LinkdClient
from linkd_client import ConnectionLostError
from sdk import Service, WebSocketOptions, WsContext, WsGroup
from tests.helpers.proc import EngineProcess
from tests.helpers.server import running_engine
from tests.integration.support import Client, demo_engine, ipc_dir

IDEM = "tests.helpers.services.idem"
SECRET = "a-development-secret-of-32-bytes!"
_keys = itertools.count(1)


def key() -> str:
    return f"k{next(_keys)}"


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


def as_user(sub: str) -> str:
    return f"/ws/idem?token={token(sub)}"


async def ask(client: Client, type: str, data: Any, msg_id: Any) -> dict[str, Any]:
    """Send ``{type, data, id}`` (again: the same text) and return its ack."""
    client.acks.pop(msg_id, None)  # a repeat's ack is a new frame to wait for
    await client.send(type, data, msg_id)
    return await client.ack(msg_id)


async def runs(client: Client, k: str) -> int:
    n: int = await client.call("idem.runs", {"key": k})
    return n


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    # A short request timeout for the TIMEOUT test; the slow handlers nap less.
    flags = ("--jwt-secret", SECRET, "--request-timeout", "1")
    with demo_engine(*flags, services=(IDEM,)) as eng:
        yield eng


@pytest.mark.asyncio
async def test_the_same_id_twice_on_one_connection_runs_once(engine: EngineProcess) -> None:
    k = key()
    before = (await engine.ametrics()).get("linkd_ws_replayed_acks_total", 0.0)
    async with Client.open(engine.port, "/ws/idem") as client:
        first = await ask(client, "idem.bump", {"key": k}, "a1")
        again = await ask(client, "idem.bump", {"key": k}, "a1")
        assert first == again == {"id": "a1", "type": "idem.bump", "data": {"key": k, "n": 1}}
        # Integer ids too; and a new id is a new request.
        assert (await ask(client, "idem.bump", {"key": k}, 7))["data"]["n"] == 2
        assert (await ask(client, "idem.bump", {"key": k}, 7))["data"]["n"] == 2
        assert (await ask(client, "idem.bump", {"key": k}, "a2"))["data"]["n"] == 3
        assert await runs(client, k) == 3
    after = (await engine.ametrics())["linkd_ws_replayed_acks_total"]
    assert after - before == 2


@pytest.mark.asyncio
async def test_a_user_retrying_after_a_reconnect_runs_once(engine: EngineProcess) -> None:
    k = key()
    async with Client.open(engine.port, as_user("u-ann")) as first:
        ack = await ask(first, "idem.bump", {"key": k}, "r1")
    async with Client.open(engine.port, as_user("u-ann")) as second:
        assert await ask(second, "idem.bump", {"key": k}, "r1") == ack
        assert await runs(second, k) == 1


@pytest.mark.asyncio
async def test_an_anonymous_client_after_a_reconnect_is_a_new_connection(
    engine: EngineProcess,
) -> None:
    # Without a user, the key is the connection: its retries after a reconnect run.
    k = key()
    async with Client.open(engine.port, "/ws/idem") as first:
        assert (await ask(first, "idem.bump", {"key": k}, "n1"))["data"]["n"] == 1
    async with Client.open(engine.port, "/ws/idem") as second:
        assert (await ask(second, "idem.bump", {"key": k}, "n1"))["data"]["n"] == 2


@pytest.mark.asyncio
async def test_another_user_with_the_same_id_runs(engine: EngineProcess) -> None:
    k = key()
    async with (
        Client.open(engine.port, as_user("u-bea")) as bea,
        Client.open(engine.port, as_user("u-cid")) as cid,
    ):
        assert (await ask(bea, "idem.bump", {"key": k}, "s1"))["data"]["n"] == 1
        assert (await ask(cid, "idem.bump", {"key": k}, "s1"))["data"]["n"] == 2
        assert (await ask(bea, "idem.bump", {"key": k}, "s1"))["data"]["n"] == 1
        assert await runs(cid, k) == 2


@pytest.mark.asyncio
async def test_a_reused_id_with_another_message_runs(engine: EngineProcess) -> None:
    # Two tabs of one user numbering from 1 reuse ids: only the same message repeats.
    k, other = key(), key()
    async with (
        Client.open(engine.port, as_user("u-dan")) as tab1,
        Client.open(engine.port, as_user("u-dan")) as tab2,
    ):
        assert (await ask(tab1, "idem.bump", {"key": k}, 1))["data"] == {"key": k, "n": 1}
        assert (await ask(tab2, "idem.bump", {"key": other}, 1))["data"] == {"key": other, "n": 1}
        assert (await ask(tab2, "idem.again", {"key": k}, 1))["data"] == {"key": k, "n": 2}
        # The newest message of an id is the one remembered.
        assert (await ask(tab1, "idem.bump", {"key": other}, 1))["data"] == {"key": other, "n": 1}
        assert await runs(tab1, k) == 2
        assert await runs(tab1, other) == 1


@pytest.mark.asyncio
async def test_a_handler_that_opted_out_runs_every_time(engine: EngineProcess) -> None:
    k = key()
    async with Client.open(engine.port, as_user("u-eve")) as client:
        assert (await ask(client, "idem.again", {"key": k}, "o1"))["data"]["n"] == 1
        assert (await ask(client, "idem.again", {"key": k}, "o1"))["data"]["n"] == 2
        assert await runs(client, k) == 2


@pytest.mark.asyncio
async def test_a_repeat_while_the_first_runs_waits_for_its_answer(engine: EngineProcess) -> None:
    k = key()
    data = {"key": k, "t": 0.5}
    async with (
        Client.open(engine.port, as_user("u-fay")) as old,
        Client.open(engine.port, as_user("u-fay")) as new,
    ):
        await old.send("idem.slow", data, "f1")
        assert (await old.event("idem.started"))["data"] == {"key": k}
        await new.send("idem.slow", data, "f1")
        first, repeat = await asyncio.gather(old.ack("f1"), new.ack("f1"))
        assert first == repeat == {"id": "f1", "type": "idem.slow", "data": {"key": k, "n": 1}}
        await new.no_event("idem.started", 0.2)  # the handler did not start again
        assert await runs(new, k) == 1


@pytest.mark.asyncio
async def test_the_retry_of_a_request_cut_off_by_a_drop_gets_its_answer(
    engine: EngineProcess,
) -> None:
    # The connection drops while the handler runs; the client reconnects and retries.
    k = key()
    data = {"key": k, "t": 0.5}
    async with Client.open(engine.port, as_user("u-gus")) as old:
        await old.send("idem.slow", data, "g1")
        await old.event("idem.started")
    async with Client.open(engine.port, as_user("u-gus")) as new:
        ack = await ask(new, "idem.slow", data, "g1")
        assert ack["data"] == {"key": k, "n": 1}
        assert await runs(new, k) == 1


@pytest.mark.asyncio
async def test_handler_errors_are_remembered(engine: EngineProcess) -> None:
    k = key()
    async with Client.open(engine.port, as_user("u-hal")) as client:
        first = await ask(client, "idem.fail", {"key": k}, "e1")
        assert first["error"]["code"] == "NOT_FOUND"
        assert await ask(client, "idem.fail", {"key": k}, "e1") == first
        assert await runs(client, k) == 1


@pytest.mark.asyncio
async def test_a_timeout_is_not_remembered(engine: EngineProcess) -> None:
    # TIMEOUT: the engine cannot tell whether the handler ran, so a retry runs.
    k = key()
    data = {"key": k, "t": 1.3}
    async with Client.open(engine.port, as_user("u-ivy")) as client:
        assert (await ask(client, "idem.slow", data, "t1"))["error"]["code"] == "TIMEOUT"
        assert (await ask(client, "idem.slow", data, "t1"))["error"]["code"] == "TIMEOUT"
        assert await runs(client, k) == 2


@pytest.mark.asyncio
async def test_a_big_ack_is_not_remembered(engine: EngineProcess) -> None:
    k = key()
    big = {"key": k, "size": replay.MAX_ACK_BYTES}  # the frame is a little bigger
    small = {"key": k, "size": replay.MAX_ACK_BYTES // 2}
    async with Client.open(engine.port, as_user("u-jon")) as client:
        assert (await ask(client, "idem.big", big, "b1"))["data"]["n"] == 1
        assert (await ask(client, "idem.big", big, "b1"))["data"]["n"] == 2
        assert (await ask(client, "idem.big", small, "b2"))["data"]["n"] == 3
        assert (await ask(client, "idem.big", small, "b2"))["data"]["n"] == 3


@pytest.mark.asyncio
async def test_the_python_client_retries_with_its_own_id(engine: EngineProcess) -> None:
    k = key()
    url = f"ws://127.0.0.1:{engine.port}/ws/idem"
    async with LinkdClient(url, token=token("u-kim")) as client:
        sent = asyncio.create_task(client.request("idem.slow", {"key": k, "t": 0.5}, id="p1"))
        await asyncio.sleep(0.2)  # in the handler by now
        assert client._ws is not None
        await client._ws.close(4999)  # what a network drop does to the request
        with pytest.raises(ConnectionLostError):
            await sent
    async with LinkdClient(url, token=token("u-kim")) as client:
        assert await client.request("idem.slow", {"key": k, "t": 0.5}, id="p1") == {
            "key": k,
            "n": 1,
        }
        assert await client.request("idem.runs", {"key": k}) == 1


# --------------------------------------------------------------------- expiry
@pytest_asyncio.fixture
async def short_memory(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Engine]:
    """An in-process engine whose replay cache forgets after 0.5 s, with a real worker."""
    monkeypatch.setattr(replay, "REMEMBER_SECONDS", 0.5)
    with ipc_dir() as directory:
        ipc = str(Path(directory) / "l.sock")
        async with running_engine(ipc_path=ipc, services=(IDEM,), workers=1) as eng:
            deadline = time.monotonic() + 20
            while not ((entry := eng.state.registry.services.get("idem")) and entry.live_workers()):
                assert time.monotonic() < deadline, "the idem worker never registered"
                await asyncio.sleep(0.05)
            assert eng.state.registry.replay.ttl == 0.5
            yield eng


@pytest.mark.asyncio
async def test_a_remembered_ack_is_forgotten_after_its_time(short_memory: Engine) -> None:
    k = key()
    async with Client.open(short_memory.port, "/ws/idem") as client:
        assert (await ask(client, "idem.bump", {"key": k}, "x1"))["data"]["n"] == 1
        assert (await ask(client, "idem.bump", {"key": k}, "x1"))["data"]["n"] == 1
        await asyncio.sleep(0.7)
        assert (await ask(client, "idem.bump", {"key": k}, "x1"))["data"]["n"] == 2
        assert (await ask(client, "idem.bump", {"key": k}, "x1"))["data"]["n"] == 2


# ------------------------------------------------------------ the cache's bounds
@pytest.mark.asyncio
async def test_the_cache_is_bounded_by_count_and_bytes() -> None:
    now = [0.0]
    cache = replay.ReplayCache(lambda: now[0], ttl=60, max_entries=3, max_bytes=10_000)
    for i in range(5):
        assert cache.claim(("/p", "u", i), 1) is None
        cache.finish(("/p", "u", i), 1, b"ack%d" % i, remember=True)
    assert len(cache) == 3  # the oldest two went first
    assert cache.claim(("/p", "u", 0), 1) is None
    assert cache.claim(("/p", "u", 4), 1) == b"ack4"
    big = b"x" * 4000
    for i in range(10, 13):
        assert cache.claim(("/p", "u", i), 1) is None
        cache.finish(("/p", "u", i), 1, big, remember=True)
    assert cache.remembered_bytes <= 10_000
    assert cache.claim(("/p", "u", 10), 1) is None  # pushed out by bytes
    assert cache.claim(("/p", "u", 12), 1) == big
    now[0] = 61.0
    assert cache.claim(("/p", "u", 12), 1) is None  # expired
    assert len(cache) == 0 and cache.remembered_bytes == 0


def test_the_opt_out_reaches_the_registration() -> None:
    service = Service("optout", websocket=WebSocketOptions(path="/ws/optout"))

    async def fn(ctx: WsContext) -> None:
        return None

    def handlers(group: WsGroup) -> None:
        group.on("typing", {"idempotent": False}, fn)
        group.on("send", {"idempotent": True}, fn)
        group.on("ping", idempotent=False)(fn)

    service.ws.group("chat", handlers)
    service.ws.on("plain", fn)
    with pytest.raises(TypeError, match="unknown option 'idempotant'"):
        service.ws.on("typo", {"idempotant": False}, fn)
    ws = service.registration().ws
    assert ws is not None and ws.not_idempotent == ["chat.ping", "chat.typing"]
