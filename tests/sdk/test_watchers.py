"""``ctx.to_watchers(rooms)`` / ``ctx.watchers(rooms)``: one event per watching user,
with the rooms it shares with the subject, found through the engine's presence queries
(a FakeEngine over a real Unix socket)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from protocol.ipc import messages as m
from sdk import PresenceContext, Service, WsContext
from sdk.testing import EnginePeer

from .helpers import chat_service, running

pytestmark = pytest.mark.asyncio

R1, R2, R3 = "room-1", "room-2", "room-3"


def user(user_id: str) -> dict[str, Any]:
    return {"userId": user_id, "username": user_id.title()}


def watched_service(
    act: Callable[[PresenceContext], Awaitable[Any]],
) -> tuple[Service, list[Any]]:
    """A service whose connections join the rooms of their ``?rooms=a,b`` and whose
    on_presence runs ``act(ctx)``, keeps its result and then emits ``done`` (a marker:
    every emit of ``act`` reached the engine before it)."""
    service = chat_service()
    results: list[Any] = []

    @service.ws.on_connect
    async def connected(ctx: WsContext) -> None:
        for room in ctx.query.get("rooms", [""])[0].split(","):
            if room:
                await ctx.join(room)

    @service.ws.on_presence
    async def presence(ctx: PresenceContext) -> None:
        try:
            results.append(await act(ctx))
        except Exception as exc:
            results.append(exc)
        await ctx.to_user("marker").emit("done")

    return service, results


async def connect(peer: EnginePeer, conn: int, rooms: list[str], who: str | None) -> None:
    reply = await peer.connect(
        conn, query=f"rooms={','.join(rooms)}", auth=user(who) if who else None
    )
    assert reply.error is None


async def presence_done(peer: EnginePeer, subject: str, online: bool = True) -> list[m.Emit]:
    """Announce ``subject``'s change; the emits its handler made (the marker excluded)."""
    start = len(peer.received)
    peer.presence(subject, online, subject.title())
    await peer.wait_for(lambda _: any(is_marker(x) for x in peer.received[start:]))
    return [x for x in peer.received[start:] if isinstance(x, m.Emit) and not is_marker(x)]


def is_marker(msg: Any) -> bool:
    return isinstance(msg, m.Emit) and msg.user == "marker"


def queries(peer: EnginePeer) -> list[str | None]:
    return [x.room for x in peer.received if isinstance(x, m.Query) and x.what == "presence"]


async def test_each_watcher_gets_one_event_with_the_rooms_it_shares() -> None:
    async def act(ctx: PresenceContext) -> Any:
        event = "user.online" if ctx.online else "user.offline"
        return await ctx.to_watchers([R1, R2, R3]).emit(event, {"userId": ctx.user_id})

    service, results = watched_service(act)
    async with running(service) as run:
        await connect(run.peer, 1, [R1, R2, R3], "alice")
        await connect(run.peer, 2, [R1, R2, R3], "alice")  # a second tab: still one user
        await connect(run.peer, 3, [R2], "carol")
        await connect(run.peer, 4, [R1, R2], None)  # anonymous: not a user, not a watcher
        await connect(run.peer, 5, [R1, R2, R3], "bob")  # the subject

        emits = await presence_done(run.peer, "bob")
        assert [(e.user, e.room, e.conn, e.everyone, e.event) for e in emits] == [
            ("alice", None, None, False, "user.online"),
            ("carol", None, None, False, "user.online"),
        ]
        assert [orjson.loads(e.payload) for e in emits] == [
            {"type": "user.online", "data": {"userId": "bob", "roomIds": [R1, R2, R3]}},
            {"type": "user.online", "data": {"userId": "bob", "roomIds": [R2]}},
        ]
        # The helper answers who it notified; one presence query per room.
        assert results == [{"alice": [R1, R2, R3], "carol": [R2]}]
        assert queries(run.peer) == [R1, R2, R3]

        emits = await presence_done(run.peer, "bob", online=False)
        assert [(e.user, e.event) for e in emits] == [
            ("alice", "user.offline"),
            ("carol", "user.offline"),
        ]


async def test_a_callable_gives_each_watcher_its_own_data() -> None:
    async def act(ctx: PresenceContext) -> Any:
        return await ctx.to_watchers([R3, R1, R3]).emit(
            "user.online",
            lambda watcher, rooms: {"for": watcher, "roomId": rooms[0], "roomIds": rooms},
        )

    service, results = watched_service(act)
    async with running(service) as run:
        await connect(run.peer, 1, [R1, R3], "alice")
        await connect(run.peer, 2, [R1], "carol")
        emits = await presence_done(run.peer, "bob")
        # Rooms keep the order given, repeats dropped (one query each).
        assert [orjson.loads(e.payload)["data"] for e in emits] == [
            {"for": "alice", "roomId": R3, "roomIds": [R3, R1]},
            {"for": "carol", "roomId": R1, "roomIds": [R1]},
        ]
        assert queries(run.peer) == [R3, R1]
        assert results == [{"alice": [R3, R1], "carol": [R1]}]


async def test_rooms_and_watchers_are_capped_with_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = {"max_rooms": 100, "max_watchers": 1000}

    async def act(ctx: PresenceContext) -> Any:
        watchers = ctx.to_watchers(
            [R1, R2, R3], max_rooms=limits["max_rooms"], max_watchers=limits["max_watchers"]
        )
        return await watchers.emit("user.online", {})

    service, results = watched_service(act)
    async with running(service) as run:
        await connect(run.peer, 1, [R1], "alice")
        await connect(run.peer, 2, [R2], "carol")
        await connect(run.peer, 3, [R3], "dave")
        with caplog.at_level(logging.WARNING, logger="linkd.service.chat"):
            limits["max_rooms"] = 2
            emits = await presence_done(run.peer, "bob")
            assert [e.user for e in emits] == ["alice", "carol"]
            assert queries(run.peer) == [R1, R2]  # R3 is never asked about
            assert caplog.messages == [
                "to_watchers of user 'bob': 3 rooms, only the first 2 are queried (max_rooms=2)"
            ]
            caplog.clear()

            limits.update(max_rooms=100, max_watchers=1)
            emits = await presence_done(run.peer, "bob")
            assert [e.user for e in emits] == ["alice"]
            assert caplog.messages == [
                "to_watchers of user 'bob': 3 watchers, only the first 1 are notified "
                "(max_watchers=1)"
            ]
        assert results == [{"alice": [R1], "carol": [R2]}, {"alice": [R1]}]


async def test_a_failed_query_sends_nothing_and_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    async def act(ctx: PresenceContext) -> Any:
        return await ctx.to_watchers([R1, R2]).emit("user.online", {})

    service, results = watched_service(act)
    async with running(service) as run:
        await connect(run.peer, 1, [R1, R2], "alice")
        answer = run.peer._answer

        def failing(query: m.Query) -> m.Result:
            if query.room == R2:
                info = m.ErrorInfo(code="SERVICE_UNAVAILABLE", message="presence is unavailable")
                return m.Result(id=query.id, error=info)
            return answer(query)

        monkeypatch.setattr(run.peer, "_answer", failing)
        assert await presence_done(run.peer, "bob") == []
        [error] = results
        assert type(error).__name__ == "ServiceUnavailableError"


async def test_watchers_of_the_caller_from_a_message_handler() -> None:
    service = chat_service()
    seen: list[Any] = []

    @service.ws.on_connect
    async def connected(ctx: WsContext) -> None:
        for room in ctx.query.get("rooms", [""])[0].split(","):
            if room:
                await ctx.join(room)

    @service.ws.on("who")
    async def who(ctx: WsContext) -> Any:
        rooms = ctx.message["rooms"]
        mine = await ctx.watchers(rooms)  # the caller is the subject
        theirs = await ctx.watchers(rooms, of="alice")
        try:
            await ctx.watchers(R1)
        except TypeError as exc:
            seen.append(str(exc))
        return {"mine": mine, "theirs": theirs}

    async with running(service) as run:
        await connect(run.peer, 1, [R1, R2], "alice")
        await connect(run.peer, 2, [R2], "bob")
        reply = await run.peer.message(2, "who", {"rooms": [R1, R2]}, auth=user("bob"))
        assert reply.error is None
        assert orjson.loads(reply.json or b"") == {
            "mine": {"alice": [R1, R2]},
            "theirs": {"bob": [R2]},
        }
        # Nothing was emitted: watchers() only asks.
        assert not any(isinstance(x, m.Emit) for x in run.peer.received)
        assert seen == ["rooms must be an iterable of room names, not one str"]


async def test_emit_refuses_data_it_cannot_add_room_ids_to() -> None:
    async def act(ctx: PresenceContext) -> Any:
        not_a_mapping: Any = ["not", "a", "mapping"]
        return await ctx.to_watchers([R1]).emit("user.online", not_a_mapping)

    service, results = watched_service(act)
    async with running(service) as run:
        await connect(run.peer, 1, [R1], "alice")
        assert await presence_done(run.peer, "bob") == []
        [error] = results
        assert isinstance(error, TypeError)
        assert "a mapping (roomIds is added to it) or a callable" in str(error)


async def test_no_watchers_no_emit_and_one_query_per_room() -> None:
    async def act(ctx: PresenceContext) -> Any:
        return await ctx.to_watchers([R1, R2]).emit("user.offline", {"userId": ctx.user_id})

    service, results = watched_service(act)
    async with running(service) as run:
        await connect(run.peer, 1, [R1], "bob")  # only the subject is there
        assert await presence_done(run.peer, "bob", online=False) == []
        assert results == [{}]
        assert queries(run.peer) == [R1, R2]


async def test_presence_queries_go_out_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    rooms = [f"room-{i}" for i in range(20)]

    async def act(ctx: PresenceContext) -> Any:
        return await ctx.to_watchers(rooms).emit("user.online", {})

    service, results = watched_service(act)

    @service.ws.on("ping")
    async def ping(ctx: WsContext) -> Any:
        return "pong"

    async with running(service) as run:
        await connect(run.peer, 1, rooms, "alice")
        # Hold the engine's answers: what the worker asks meanwhile is one batch.
        held: list[m.Result] = []
        send = run.peer.send

        def holding(msg: Any) -> None:
            if isinstance(msg, m.Result):
                held.append(msg)
            else:
                send(msg)

        monkeypatch.setattr(run.peer, "send", holding)
        run.peer.presence("bob", True)
        await run.peer.wait_for(lambda _: len(queries(run.peer)) >= 8)
        # A round trip through the worker after it sent its queries: none was held back.
        assert (await run.peer.message(1, "ping", auth=user("alice"))).error is None
        assert len(queries(run.peer)) == 8
        while len(queries(run.peer)) < len(rooms):
            before = len(queries(run.peer))
            for result in held:
                send(result)
            held.clear()

            def grew(_: Any, n: int = before) -> bool:
                return len(queries(run.peer)) > n

            await run.peer.wait_for(grew)
            assert len(queries(run.peer)) - before <= 8
        for result in held:
            send(result)
        await run.peer.wait_for(is_marker)
        assert results == [{"alice": rooms}]
        assert queries(run.peer) == rooms
