"""linkd_client recovery against the fake engine: positions from events, the exact
``recover`` parameter of a reconnection, replays and verdicts, duplicates and gaps."""

from __future__ import annotations

import asyncio

import pytest

from linkd_client import Client, Event, Stream
from tests.client.support import FakeEngine, new_client

pytestmark = pytest.mark.asyncio


async def reconnect(client: Client, fake: FakeEngine, emit: list[list[object]]) -> None:
    """Cut the client's TCP connection, emit ``emit`` meanwhile, wait for the new one."""
    count = len(fake.conns)
    await client.send("drop", {"emit": emit})
    await fake.wait_connections(count + 1)
    await client.wait_open(5)


async def test_reconnection_sends_the_positions_it_holds(fake: FakeEngine) -> None:
    async with new_client(f"{fake.url}?token=t&v=2", token="u-1") as client:
        await client.request("join", {"room": "a"})
        await client.request("join", {"room": "b"})
        for room in ("a", "a", "b", "a"):
            await fake.emit(room, "x")
        await fake.emit_user("u-1", "note")
        await client.request("echo")
        await reconnect(client, fake, [])
        await reconnect(client, fake, [])  # the parameter is replaced, not repeated
    first, second, third = fake.handshakes
    a, b, user = fake.history("a").epoch, fake.history("b").epoch, fake.user_history("u-1").epoch
    assert "recover" not in first.query
    assert second.recover == {"rooms": {"a": [a, 3], "b": [b, 1]}, "user": [user, 1]}
    assert third.query["token"] == ["t"] and third.query["v"] == ["2"]
    assert third.query["recover"] == second.query["recover"]
    # The user stream's verdict at the second connection set it again: same position.
    assert third.recover == second.recover


async def test_missed_events_then_a_verdict_then_live_ones(fake: FakeEngine) -> None:
    fake.auto_join = ("room",)
    verdicts: list[tuple[Stream, bool]] = []
    got: list[Event] = []
    async with new_client(fake.url) as client:
        client.on("*", got.append)
        client.on_recovered(lambda stream, ok: verdicts.append((stream, ok)))
        await fake.emit("room", "m", 1)
        await client.request("echo")
        await reconnect(client, fake, [["room", "m", 2], ["room", "m", 3]])
        await fake.emit("room", "m", 4)
        await client.request("echo")
    epoch = fake.history("room").epoch
    assert [(e["type"], e.get("seq")) for e in got] == [
        ("m", 1),
        ("m", 2),
        ("m", 3),
        ("linkd.recovered", None),
        ("m", 4),
    ]
    verdict = got[3]["data"]
    assert verdict == {"room": "room", "recovered": True, "epoch": epoch, "seq": 3, "missed": 2}
    assert verdicts == [(Stream("room", "room"), True)]
    assert client.positions() == {"rooms": {"room": [epoch, 4]}}
    assert client.stats.recovered == 1 and client.stats.duplicates == 0


async def test_beyond_the_history_the_verdict_says_not_recovered(fake: FakeEngine) -> None:
    fake.history_size = 2
    verdicts: list[tuple[Stream, bool]] = []
    got: list[object] = []
    async with new_client(fake.url) as client:
        client.on("m", lambda e: got.append(e["data"]))
        client.on_recovered(lambda stream, ok: verdicts.append((stream, ok)))
        await client.request("join", {"room": "r"})
        await fake.emit("r", "m", 1)
        await client.request("echo")
        await reconnect(client, fake, [["r", "m", n] for n in (2, 3, 4, 5)])
        await client.request("join", {"room": "r"})
    assert got == [1, 4, 5]  # what the history still held is delivered
    assert verdicts == [(Stream("room", "r"), False)]
    assert client.positions()["rooms"]["r"] == [fake.history("r").epoch, 5]
    assert client.stats.not_recovered == 1


async def test_a_new_epoch_is_not_recovered_and_restarts_the_position(fake: FakeEngine) -> None:
    fake.auto_join = ("r",)
    verdicts: list[bool] = []
    async with new_client(fake.url) as client:
        client.on_recovered(lambda stream, ok: verdicts.append(ok))
        await fake.emit("r", "m")
        await client.request("echo")
        fake.history("r").epoch = "restarted"  # the history was lost meanwhile
        await reconnect(client, fake, [])
        await fake.emit("r", "m")
        await client.request("echo")
    assert verdicts == [False]
    assert client.positions()["rooms"]["r"] == ["restarted", 2]


async def test_user_stream_is_recovered_at_connect(fake: FakeEngine) -> None:
    verdicts: list[tuple[Stream, bool]] = []
    notes: list[object] = []
    async with new_client(fake.url, token="u-7") as client:
        client.on("note", lambda e: notes.append(e["data"]))
        client.on_recovered(lambda stream, ok: verdicts.append((stream, ok)))
        await fake.emit_user("u-7", "note", 1)
        await client.request("echo")
        await reconnect(client, fake, [])
        await fake.emit_user("u-7", "note", 2)
        await client.request("echo")
    assert notes == [1, 2]
    assert verdicts == [(Stream("user", "u-7"), True)]
    assert client.positions()["user"] == [fake.user_history("u-7").epoch, 2]


async def test_duplicates_are_dropped_and_counted(fake: FakeEngine) -> None:
    got: list[object] = []
    async with new_client(fake.url) as client:
        client.on("m", lambda e: got.append(e["data"]))
        await client.request("join", {"room": "r"})
        one = await fake.emit("r", "m", 1)
        two = await fake.emit("r", "m", 2)
        conn = fake.conns[0]
        await conn.send(two)  # again
        await conn.send(one)  # older
        await fake.emit("r", "m", 3)
        await client.request("echo")
    assert got == [1, 2, 3]
    assert client.stats.duplicates == 2
    assert client.stats.events == 3


async def test_a_gap_is_delivered_and_filled_by_the_next_recovery(fake: FakeEngine) -> None:
    fake.auto_join = ("r",)
    got: list[object] = []
    async with new_client(fake.url) as client:
        client.on("m", lambda e: got.append(e["data"]))
        conn = await fake.wait_connections(1)
        await fake.emit("r", "m", 1)
        conn.rooms.discard("r")  # the engine drops 2 (a lossy slow-consumer policy)
        await fake.emit("r", "m", 2)
        conn.rooms.add("r")
        await fake.emit("r", "m", 3)
        await client.request("echo")
        assert client.positions()["rooms"]["r"][1] == 1  # held before the gap
        await reconnect(client, fake, [])  # replays 2 and 3
        await client.request("echo")
    assert got == [1, 3, 2]  # 3 is not delivered twice
    assert client.stats.gaps == 1 and client.stats.duplicates == 1
    assert client.positions()["rooms"]["r"][1] == 3


async def test_async_recovered_callback_and_verdict_dispatched_to_handlers(
    fake: FakeEngine,
) -> None:
    fake.auto_join = ("r",)
    called = asyncio.Event()
    seen: list[Event] = []

    async def on_recovered(stream: Stream, recovered: bool) -> None:
        called.set()

    async with new_client(fake.url) as client:
        client.on("linkd.recovered", seen.append)
        client.on_recovered(on_recovered)
        await fake.emit("r", "m")
        await client.request("echo")
        await reconnect(client, fake, [])
        await asyncio.wait_for(called.wait(), 5)
    assert [e["data"]["room"] for e in seen] == ["r"]


async def test_recover_false_sends_no_parameter(fake: FakeEngine) -> None:
    fake.auto_join = ("r",)
    verdicts: list[bool] = []
    async with new_client(fake.url, recover=False) as client:
        client.on_recovered(lambda stream, ok: verdicts.append(ok))
        await fake.emit("r", "m")
        await client.request("echo")
        await reconnect(client, fake, [["r", "m", None]])
        await client.request("echo")
    assert all("recover" not in h.query for h in fake.handshakes)
    assert verdicts == []
