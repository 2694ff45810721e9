"""linkd_client against the fake engine: requests and acks, error acks, timeouts, sends,
event handlers and iterators, tokens."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from linkd_client import ClientError, ConnectionLostError, Event
from tests.client.support import FakeEngine, new_client

pytestmark = pytest.mark.asyncio


async def test_request_resolves_with_the_data_of_its_ack(fake: FakeEngine) -> None:
    async with new_client(fake.url) as client:
        got = await asyncio.gather(*(client.request("echo", {"n": i}) for i in range(5)))
    assert got == [{"n": i} for i in range(5)]
    ids = [m["id"] for m in fake.received]
    assert len(set(ids)) == 5 and all(isinstance(i, str) for i in ids)
    assert [m["type"] for m in fake.received] == ["echo"] * 5


async def test_error_ack_raises_client_error(fake: FakeEngine) -> None:
    error = {"code": "VALIDATION_ERROR", "message": "invalid", "details": {"room": "required"}}
    async with new_client(fake.url) as client:
        with pytest.raises(ClientError) as caught:
            await client.request("fail", {**error, "retryAfter": 1.5})
        assert await client.request("echo", 1) == 1  # the connection is still usable
    assert caught.value.code == "VALIDATION_ERROR"
    assert caught.value.message == "invalid"
    assert caught.value.details == {"room": "required"}
    assert caught.value.error["retryAfter"] == 1.5


async def test_request_times_out_and_a_late_ack_is_not_an_event(fake: FakeEngine) -> None:
    seen: list[Event] = []
    async with new_client(fake.url, request_timeout=0.05) as client:
        client.on("*", seen.append)
        with pytest.raises(TimeoutError):
            await client.request("ignore")
        with pytest.raises(TimeoutError):
            await client.request("ignore", timeout=0.01)
        # An ack for an id nobody waits for any more is dropped, not dispatched.
        await fake.conns[0].send({"id": fake.received[0]["id"], "type": "ignore", "data": 1})
        assert await client.request("echo", 2) == 2
    assert seen == []
    assert client._pending == {}


async def test_request_fails_when_the_connection_drops(fake: FakeEngine) -> None:
    async with new_client(fake.url) as client:
        waiting = asyncio.create_task(client.request("ignore"))
        await asyncio.sleep(0.01)
        fake.conns[0].ws.transport.abort()
        with pytest.raises(ConnectionLostError):
            await waiting
        await client.wait_open(5)
        assert await client.request("echo", "again") == "again"
    # Not resent on the new connection.
    assert [m["type"] for m in fake.received] == ["ignore", "echo"]


async def test_requests_and_sends_fail_fast_when_not_connected(fake: FakeEngine) -> None:
    client = new_client(fake.url)
    with pytest.raises(ConnectionLostError):
        await client.request("echo")
    with pytest.raises(ConnectionLostError):
        await client.send("echo")
    async with client:
        pass
    with pytest.raises(ConnectionLostError):
        await client.request("echo")
    assert fake.received == []


async def test_send_is_fire_and_forget(fake: FakeEngine) -> None:
    async with new_client(fake.url) as client:
        await client.send("ignore", {"a": 1})
        await client.request("echo")  # after the send, in order
    assert fake.received[0] == {"type": "ignore", "data": {"a": 1}}


async def test_handlers_by_type_catch_all_async_and_unsubscribe(fake: FakeEngine) -> None:
    typed: list[Any] = []
    every: list[str] = []
    done = asyncio.Event()

    async def slow(event: Event) -> None:
        await asyncio.sleep(0)
        typed.append(("async", event["data"]))
        done.set()

    def failing(event: Event) -> None:
        raise RuntimeError("a handler bug must not break the client")

    async with new_client(fake.url) as client:
        client.on("ping", failing)
        remove = client.on("ping", lambda e: typed.append(e["data"]))
        client.on("ping", slow)
        client.on("*", lambda e: every.append(e["type"]))
        await client.request("join", {"room": "r"})
        await fake.emit("r", "ping", 1)
        await fake.emit("r", "other", 2)
        await client.request("echo")
        await asyncio.wait_for(done.wait(), 5)
        remove()
        await fake.emit("r", "ping", 3)
        await client.request("echo")
        await asyncio.sleep(0.01)
    assert typed == [1, ("async", 1), ("async", 3)]
    assert every == ["ping", "other", "ping"]
    assert client.stats.events == 3


async def test_events_iterator_spans_reconnections_and_ends_at_close(fake: FakeEngine) -> None:
    client = new_client(fake.url)
    events = client.events()  # subscribed now, before anything arrives
    async with client:
        await client.request("join", {"room": "r"})
        await fake.emit("r", "a")
        await client.send("drop", {"emit": [["r", "b", None]]})
        await fake.wait_connections(2)
        await client.wait_open(5)
        await client.request("join", {"room": "r"})  # replays b
        await fake.emit("r", "c")
        await client.request("echo")
    got = [e["type"] async for e in events]
    assert got == ["a", "b", "linkd.recovered", "c"]


async def test_token_source_is_called_before_each_attempt(fake: FakeEngine) -> None:
    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        return f"t{calls}"

    async with new_client(fake.url, token=token) as client:
        await client.send("drop")
        await fake.wait_connections(2)
        await client.wait_open(5)
    auth = [h.headers["authorization"] for h in fake.handshakes]
    assert auth == ["Bearer t1", "Bearer t2"]


async def test_static_token_and_no_token(fake: FakeEngine) -> None:
    async with new_client(fake.url, token="abc"):
        pass
    async with new_client(fake.url):
        pass
    assert fake.handshakes[0].headers["authorization"] == "Bearer abc"
    assert "authorization" not in fake.handshakes[1].headers
