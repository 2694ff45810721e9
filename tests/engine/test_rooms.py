"""A connection's rooms: a short list, then a set past eight; both behave the same."""

from __future__ import annotations

import pytest

from engine.hub.fanout import prepare
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine


@pytest.mark.asyncio
async def test_joining_many_rooms_and_leaving_some_keeps_membership_exact() -> None:
    async with running_engine() as engine, RawWs(engine.port, "/echo") as ws:
        (conn,) = engine.state.ws_connections
        hub = engine.state.hub
        names = [f"room{i:02d}" for i in range(12)]
        for name in [*names, "room00", "room11"]:  # joining twice changes nothing
            hub.join(conn, name)
        assert hub.rooms_of(conn) == names
        for name in ("room00", "room05", "room11", "nowhere"):
            hub.leave(conn, name)
        left = [n for n in names if n not in ("room00", "room05", "room11")]
        assert hub.rooms_of(conn) == left
        assert sorted(r for r, members in hub.rooms.items() if conn in members) == left
        assert hub.emit(prepare("to room05"), room="room05") == 0
        assert hub.emit(prepare("to room06"), room="room06") == 1
        assert (await ws.recv_frame()).payload == b"to room06"
        for name in left[:6]:
            hub.leave(conn, name)
        assert hub.rooms_of(conn) == left[6:]
    assert hub.rooms == {}  # closing left them all
