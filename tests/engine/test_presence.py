"""Presence and the per-user connection cap, on real sockets with an in-process endpoint."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import orjson
import pytest

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from engine.brokers.presence import Presence
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config

SECRET = "a-development-secret-of-32-bytes!"


def token(sub: str, name: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 600}
    if name:
        claims["preferred_username"] = name
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Rooms(WebSocketEndpoint):
    """Joins the room named by the first message."""

    auth_policy = "optional"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        self.engine.state.hub.join(ws, str(data))
        ws.send("joined")


@asynccontextmanager
async def presence_engine(**overrides: Any) -> AsyncIterator[tuple[Engine, list[tuple[Any, ...]]]]:
    overrides.setdefault("presence_grace", 0.3)
    engine = Engine(make_config(jwt_secret=SECRET, **overrides))
    engine.websocket("/ws", Rooms(engine))
    events: list[tuple[Any, ...]] = []
    engine.on_presence(lambda user, name, online: events.append((user, name, online)))
    await engine.start()
    try:
        yield engine, events
    finally:
        await engine.stop(grace=1.0)


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


async def wait_until(predicate: Any) -> float:
    """Poll ``predicate`` (engine state) every 10 ms for up to 5 s; returns the seconds."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(5.0):
        while not predicate():  # noqa: ASYNC110 - engine state, no event to wait on
            await asyncio.sleep(0.01)
    return loop.time() - started


@pytest.mark.asyncio
async def test_two_tabs_make_one_online_and_one_offline_after_the_grace() -> None:
    async with presence_engine(presence_grace=1.0) as (engine, events):
        async with RawWs(engine.port, f"/ws?token={token('alice', 'Alice')}") as tab1:
            assert tab1.status == 101
            await wait_until(lambda: events)
            assert events == [("alice", "Alice", True)]
            assert engine.is_online("alice")
            async with RawWs(engine.port, f"/ws?token={token('alice', 'Alice')}") as tab2:
                assert tab2.status == 101
                await wait_until(lambda: engine.state.hub.connections_of("alice") == 2)
            await wait_until(lambda: engine.state.hub.connections_of("alice") == 1)
            await settle(0.2)  # one tab left: still online, nothing announced
            assert events == [("alice", "Alice", True)]
        await wait_until(lambda: engine.state.hub.connections_of("alice") == 0)
        assert engine.is_online("alice")  # inside the grace period
        took = await wait_until(lambda: len(events) == 2)
        assert events == [("alice", "Alice", True), ("alice", "Alice", False)]
        assert 0.5 < took < 3.0
        assert not engine.is_online("alice")


@pytest.mark.asyncio
async def test_a_reconnect_within_the_grace_period_does_not_flap() -> None:
    async with presence_engine(presence_grace=1.0) as (engine, events):
        async with RawWs(engine.port, f"/ws?token={token('bob')}") as ws:
            assert ws.status == 101
            await wait_until(lambda: events)
        async with RawWs(engine.port, f"/ws?token={token('bob')}") as ws:  # a reload
            assert ws.status == 101
            await settle(1.5)  # well past the first grace period
            assert events == [("bob", None, True)]
        await wait_until(lambda: len(events) == 2)
        assert events == [("bob", None, True), ("bob", None, False)]


@pytest.mark.asyncio
async def test_anonymous_connections_are_not_users() -> None:
    async with presence_engine() as (engine, events), RawWs(engine.port, "/ws") as ws:
        assert ws.status == 101
        ws.send_text("lobby")
        assert (await ws.recv_frame()).payload == b"joined"
        assert events == []
        assert engine.room_presence("lobby") == []
        assert engine.state.hub.members("lobby") != []


@pytest.mark.asyncio
async def test_room_presence_counts_each_users_connections_in_that_room() -> None:
    async with presence_engine() as (engine, _):
        a, b = token("alice", "Alice"), token("bob", "Bob")
        async with (
            RawWs(engine.port, f"/ws?token={a}") as a1,
            RawWs(engine.port, f"/ws?token={a}") as a2,
            RawWs(engine.port, f"/ws?token={b}") as b1,
            RawWs(engine.port, f"/ws?token={b}") as b2,
        ):
            for ws, room in ((a1, "general"), (a2, "general"), (b1, "general"), (b2, "random")):
                ws.send_text(room)
                assert (await ws.recv_frame()).payload == b"joined"
            assert engine.room_presence("general") == [
                {"userId": "alice", "username": "Alice", "connections": 2},
                {"userId": "bob", "username": "Bob", "connections": 1},
            ]
            assert engine.room_presence("random") == [
                {"userId": "bob", "username": "Bob", "connections": 1}
            ]
        await settle()
        assert engine.room_presence("general") == []


@pytest.mark.asyncio
async def test_max_connections_per_user_refuses_one_too_many_with_429() -> None:
    async with presence_engine(max_connections_per_user=2) as (engine, _):
        alice = token("alice")
        async with (
            RawWs(engine.port, f"/ws?token={alice}") as one,
            RawWs(engine.port, f"/ws?token={alice}") as two,
            RawWs(engine.port, f"/ws?token={token('bob')}") as other_user,
        ):
            assert one.status == two.status == other_user.status == 101
            async with RawWs(engine.port, f"/ws?token={alice}") as third:
                assert third.status == 429
                body = third.response_body
            assert orjson.loads(body) == {
                "error": {
                    "code": "TOO_MANY_CONNECTIONS",
                    "message": "this user already has 2 open connections (the limit)",
                }
            }
            assert engine.metrics.ws_refused["per_user"] == 1
        await settle()
        async with RawWs(engine.port, f"/ws?token={alice}") as again:  # slots freed
            assert again.status == 101


def test_presence_listener_errors_do_not_stop_the_others() -> None:
    loop = asyncio.new_event_loop()
    try:
        presence = Presence(loop, grace=0)
        heard: list[bool] = []

        def broken(user: str, name: str | None, online: bool) -> None:
            raise RuntimeError("listener bug")

        presence.listeners += [broken, lambda u, n, online: heard.append(online)]
        presence.connected("u", None)
        presence.connected("u", None)  # a second tab is not a transition
        presence.disconnected("u")
        assert heard == [True, False]
        presence.disconnected("u")  # not online: nothing
        assert heard == [True, False]
    finally:
        loop.close()


@pytest.mark.parametrize("grace", [-1.0])
def test_negative_grace_is_refused(grace: float) -> None:
    with pytest.raises(ValueError, match="presence_grace"):
        make_config(presence_grace=grace)
