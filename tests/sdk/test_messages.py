"""WebSocket messages: routing, middleware, replies, errors, commands, connect/disconnect."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from protocol.ipc import messages as m
from sdk import (
    ForbiddenError,
    InternalError,
    UnauthorizedError,
    ValidationError,
    WsContext,
    WsMessage,
)

from .helpers import chat_service, running, until

pytestmark = pytest.mark.asyncio

AUTH = {"userId": "u1", "username": "ann", "roles": ["admin"], "claims": {"sub": "u1"}}


def payload(emit: m.Emit) -> Any:
    return orjson.loads(emit.payload)


async def test_message_reaches_its_handler_and_the_return_value_is_the_ack() -> None:
    service = chat_service()
    seen: list[WsContext] = []

    @service.ws.on("echo")
    async def echo(ctx: WsContext) -> Any:
        seen.append(ctx)
        return {"echo": ctx.message, "user": ctx.user.id if ctx.user else None}

    async with running(service) as run:
        reply = await run.peer.message(7, "echo", {"x": 1}, client_id="msg-1", auth=AUTH)
        assert reply.error is None
        assert orjson.loads(reply.json or b"") == {"echo": {"x": 1}, "user": "u1"}
        ctx = seen[0]
        assert ctx.type == "echo" and ctx.message == {"x": 1}
        assert ctx.envelope == WsMessage(type="echo", data={"x": 1}, id="msg-1")
        assert ctx.data is ctx.message and ctx.message_type == "echo"  # the aliases
        assert ctx.socket.id == "7" and ctx.socket.conn == 7
        assert ctx.auth == AUTH
        assert ctx.user is not None and ctx.user.roles == ["admin"]
        assert ctx.user.claims == {"sub": "u1"} and ctx.user.username == "ann"
        assert ctx.logger is service.logger

        # None → null ack; without a client id, no ack data is shipped at all.
        reply = await run.peer.message(7, "echo", None, client_id=None)
        assert reply.json is None and reply.error is None


async def test_none_result_acks_null() -> None:
    service = chat_service()

    @service.ws.on("nothing")
    async def nothing(ctx: WsContext) -> None:
        return None

    async with running(service) as run:
        reply = await run.peer.message(1, "nothing", client_id=5)
        assert reply.json == b"null"


async def test_middleware_runs_global_then_scoped_around_the_handler() -> None:
    service = chat_service(auth="optional")
    order: list[str] = []

    def mw(name: str) -> Callable[[WsContext, Callable[[], Awaitable[Any]]], Awaitable[None]]:
        async def middleware(ctx: WsContext, call_next: Callable[[], Awaitable[Any]]) -> None:
            order.append(f"{name}>")
            result = await call_next()
            order.append(f"<{name}:{result}")

        return middleware

    service.ws.use("chat.*", mw("scoped1"))
    service.ws.use(mw("global1"))
    service.ws.use("other.*", mw("never"))
    service.ws.use(mw("global2"))

    with service.ws.group("chat") as ws:
        ws.use(mw("group"))

        @ws.on("send")
        async def send(ctx: WsContext) -> str:
            order.append("handler")
            return "r"

    async def replace(ctx: WsContext, call_next: Callable[[], Awaitable[Any]]) -> None:
        await call_next()
        ctx.result = {"wrapped": ctx.result}

    service.ws.use("chat.send", replace)

    async with running(service) as run:
        reply = await run.peer.message(1, "chat.send", {})
        assert order == [
            "global1>",
            "global2>",
            "scoped1>",
            "group>",
            "handler",
            # "replace" was added last: it is the innermost layer, so all see its result.
            "<group:{'wrapped': 'r'}",
            "<scoped1:{'wrapped': 'r'}",
            "<global2:{'wrapped': 'r'}",
            "<global1:{'wrapped': 'r'}",
        ]
        assert orjson.loads(reply.json or b"") == {"wrapped": "r"}


async def test_middleware_can_refuse_before_the_handler() -> None:
    service = chat_service()
    called: list[str] = []

    async def guard(ctx: WsContext, call_next: Callable[[], Awaitable[Any]]) -> None:
        if ctx.message != "ok":
            raise ForbiddenError("not allowed")
        await call_next()

    service.ws.use(guard)

    @service.ws.on("t")
    async def handler(ctx: WsContext) -> str:
        called.append("handler")
        return "done"

    async with running(service) as run:
        reply = await run.peer.message(1, "t", "no")
        assert reply.error == m.ErrorInfo("FORBIDDEN", "not allowed")
        assert called == []
        reply = await run.peer.message(1, "t", "ok")
        assert reply.json == b'"done"'


async def test_group_routes_by_prefix_and_applies_its_auth() -> None:
    service = chat_service()

    with service.ws.group("chat", auth=True) as ws:

        @ws.on("send")
        async def send(ctx: WsContext) -> str:
            return "sent"

        @ws.on("peek", auth=False)
        async def peek(ctx: WsContext) -> str:
            return "peeked"

    @service.ws.on("send")
    async def plain(ctx: WsContext) -> str:
        return "plain"

    async with running(service) as run:
        assert (await run.peer.message(1, "chat.send", auth=AUTH)).json == b'"sent"'
        assert (await run.peer.message(1, "send")).json == b'"plain"'
        reply = await run.peer.message(1, "chat.send")
        assert reply.error is not None and reply.error.code == "UNAUTHORIZED"
        assert (await run.peer.message(1, "chat.peek")).json == b'"peeked"'
        # A type under the prefix without a handler, and no catch-all.
        reply = await run.peer.message(1, "chat.nope", auth=AUTH)
        assert reply.error is not None and reply.error.code == "UNKNOWN_MESSAGE_TYPE"


async def test_catch_all_takes_types_without_a_handler() -> None:
    service = chat_service()

    @service.ws.on("known")
    async def known(ctx: WsContext) -> str:
        return "known"

    @service.ws.on_message
    async def anything(ctx: WsContext) -> Any:
        return {"caught": ctx.type, "data": ctx.message}

    async with running(service) as run:
        assert (await run.peer.message(1, "known")).json == b'"known"'
        reply = await run.peer.message(1, "whatever.else", [1, 2])
        assert orjson.loads(reply.json or b"") == {"caught": "whatever.else", "data": [1, 2]}


async def test_errors_become_error_replies_and_internal_details_stay_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = chat_service()

    @service.ws.on("forbidden")
    async def forbidden(ctx: WsContext) -> None:
        raise ForbiddenError("members only")

    @service.ws.on("invalid")
    async def invalid(ctx: WsContext) -> None:
        raise ValidationError("bad input", fields={"room": "must be a UUID"})

    @service.ws.on("crash")
    async def crash(ctx: WsContext) -> None:
        raise RuntimeError("password=hunter2")

    @service.ws.on("internal")
    async def internal(ctx: WsContext) -> None:
        raise InternalError("db down")

    @service.ws.on("unserializable")
    async def unserializable(ctx: WsContext) -> object:
        return object()

    @service.ws.on("unauth")
    async def unauth(ctx: WsContext) -> None:
        raise UnauthorizedError()

    async with running(service) as run:
        with caplog.at_level(logging.ERROR, logger="linkd.service.chat"):
            reply = await run.peer.message(1, "forbidden")
            assert reply.error == m.ErrorInfo("FORBIDDEN", "members only")
            reply = await run.peer.message(1, "invalid")
            assert reply.error is not None and reply.error.code == "VALIDATION_ERROR"
            assert reply.error.message == "bad input"
            assert orjson.loads(reply.error.details or b"") == {"room": "must be a UUID"}
            assert caplog.records == []

            reply = await run.peer.message(1, "crash")
            assert reply.error == m.ErrorInfo("INTERNAL", "internal error")
            assert "hunter2" not in repr(reply)
            record = caplog.records[-1]
            assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])

            reply = await run.peer.message(1, "internal")
            assert reply.error == m.ErrorInfo("INTERNAL", "db down")
            reply = await run.peer.message(1, "unserializable")
            assert reply.error == m.ErrorInfo("INTERNAL", "internal error")
            reply = await run.peer.message(1, "unauth")
            assert reply.error == m.ErrorInfo("UNAUTHORIZED", "authentication required")
            reply = await run.peer.message(1, "nobody-handles-this")
            assert reply.error is not None and reply.error.code == "UNKNOWN_MESSAGE_TYPE"


async def test_commands_are_written_in_order_before_the_reply() -> None:
    service = chat_service()

    @service.ws.on("join")
    async def join(ctx: WsContext) -> Any:
        room = ctx.message["room"]
        await ctx.join(room)
        await ctx.join("lobby")
        await ctx.to(room).except_(ctx.socket.id).except_(99).emit("chat.joined", {"who": 1})
        await ctx.leave("lobby")
        await ctx.send("chat.welcome", {"room": room})
        await ctx.to_user("u2").emit("chat.dm", "hi")
        await ctx.broadcast("chat.news", None)
        await ctx.everyone().except_(ctx.socket).emit("chat.all", 1)
        rooms = await ctx.rooms()
        members = await ctx.members(room)
        await ctx.close(4000, "bye")
        return {"rooms": rooms, "members": members}

    async with running(service) as run:
        run.peer.rooms[5] = {"r1"}
        reply = await run.peer.message(3, "join", {"room": "r1"})
        assert orjson.loads(reply.json or b"") == {"rooms": ["r1"], "members": ["3", "5"]}
        sent = [x for x in run.peer.received if not isinstance(x, m.Ping | m.Pong)]
        kinds = [type(x).__name__ for x in sent]
        assert kinds == [
            "Join",
            "Join",
            "Emit",
            "Leave",
            "Emit",
            "Emit",
            "Emit",
            "Emit",
            "Query",
            "Query",
            "Close",
            "Reply",
        ]
        assert sent[0] == m.Join(conn=3, room="r1")
        assert sent[3] == m.Leave(conn=3, room="lobby")
        emit = sent[2]
        assert emit.room == "r1" and emit.exclude == [3, 99]
        assert payload(emit) == {"type": "chat.joined", "data": {"who": 1}}
        assert sent[4].conn == 3 and payload(sent[4])["type"] == "chat.welcome"
        assert sent[5].user == "u2"
        assert sent[6].everyone and sent[6].exclude == [] and payload(sent[6])["data"] is None
        assert sent[7].everyone and sent[7].exclude == [3]
        assert sent[8] == m.Query(id=sent[8].id, what="rooms", conn=3)
        assert sent[9] == m.Query(id=sent[9].id, what="members", room="r1")
        assert sent[10] == m.Close(conn=3, code=4000, reason="bye")


async def test_connect_and_disconnect_handlers() -> None:
    service = chat_service()
    events: list[Any] = []

    @service.ws.on_connect
    async def connected(ctx: WsContext) -> None:
        if ctx.query.get("room") == ["closed"]:
            raise ForbiddenError("room closed")
        events.append(
            (
                "connect",
                ctx.socket.id,
                ctx.socket.remote_address,
                ctx.path,
                ctx.query,
                ctx.headers.get("X-Test"),
                ctx.user.id if ctx.user else None,
                ctx.message,
            )
        )
        await ctx.join("everyone")

    @service.ws.on_disconnect
    async def disconnected(ctx: WsContext, code: int, rooms: list[str]) -> None:
        events.append(("disconnect", ctx.socket.id, code, rooms, ctx.user and ctx.user.id))
        await ctx.to("everyone").emit("left", ctx.socket.id)

    async with running(service) as run:
        reg = run.peer.hello
        assert reg is not None and reg.service.ws is not None
        assert reg.service.ws.on_connect and reg.service.ws.on_disconnect
        reply = await run.peer.connect(
            4,
            path="/ws/chat",
            query="room=a&x=",
            headers=[("x-test", "yes")],
            remote="10.0.0.1:5555",
            auth=AUTH,
        )
        assert reply == m.Reply(id=reply.id)
        assert events[0] == (
            "connect",
            "4",
            "10.0.0.1:5555",
            "/ws/chat",
            {"room": ["a"], "x": [""]},
            "yes",
            "u1",
            None,
        )
        assert m.Join(conn=4, room="everyone") in run.peer.received

        reply = await run.peer.connect(5, query="room=closed")
        assert reply.error == m.ErrorInfo("FORBIDDEN", "room closed")

        run.peer.send(m.Disconnect(conn=4, code=1001, rooms=["everyone"], auth=AUTH))
        emit = await run.peer.wait_type(m.Emit)
        assert payload(emit) == {"type": "left", "data": "4"}
        assert events[-1] == ("disconnect", "4", 1001, ["everyone"], "u1")  # who it was


async def test_requests_run_concurrently_up_to_the_service_concurrency() -> None:
    service = chat_service()
    service.concurrency = 3
    active = 0
    peak = 0
    release = asyncio.Event()

    @service.ws.on("work")
    async def work(ctx: WsContext) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await release.wait()
        active -= 1
        return int(ctx.message)

    async with running(service) as run:
        futures = [run.peer.start(run.peer.message_request(1, "work", i)) for i in range(8)]
        await until(lambda: active >= 3)
        await asyncio.sleep(0.05)
        assert active == 3
        release.set()
        replies = await asyncio.gather(*futures)
        assert sorted(int(r.json or b"") for r in replies) == list(range(8))
        assert peak == 3
