"""HTTP actions: params/query/body, Response objects, errors, health/ready/live."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from protocol.ipc import messages as m
from sdk import HttpContext, NotFoundError, Response, Service

from .helpers import running, until

pytestmark = pytest.mark.asyncio


def json_of(reply: m.Reply) -> Any:
    assert reply.error is None, reply.error
    return orjson.loads(reply.json or b"")


async def test_action_sees_params_query_body_headers_and_auth() -> None:
    service = Service("chat")
    seen: list[HttpContext] = []

    @service.action("post-message", route="/chat/rooms/:id/messages", method="POST", auth=True)
    async def post_message(ctx: HttpContext) -> Any:
        seen.append(ctx)
        text = ctx.body["text"]
        return {"room": ctx.params["id"], "text": text, "tags": ctx.query["tag"]}

    async with running(service) as run:
        reply = await run.peer.http(
            "post-message",
            method="POST",
            path="/chat/rooms/r1/messages",
            params={"id": "r1"},
            query="tag=a&tag=b&empty=",
            headers=[("content-type", "application/json"), ("x-multi", "1"), ("x-multi", "2")],
            body=b'{"text": "hi"}',
            remote="127.0.0.1:4000",
            auth={"userId": "u9", "roles": []},
        )
        assert json_of(reply) == {"room": "r1", "text": "hi", "tags": ["a", "b"]}
        assert reply.status is None  # 200 by default
        ctx = seen[0]
        assert ctx.query_string == "tag=a&tag=b&empty="
        assert ctx.query["empty"] == [""]
        assert ctx.headers.get("Content-Type") == "application/json"
        assert ctx.headers["X-MULTI"] == "1" and ctx.headers.getall("x-multi") == ["1", "2"]
        assert "content-type" in ctx.headers and "nope" not in ctx.headers
        assert ctx.body == {"text": "hi"} and ctx.raw_body == b'{"text": "hi"}'
        assert ctx.json() == {"text": "hi"}  # the older name, still there
        assert ctx.remote_address == "127.0.0.1:4000"
        assert ctx.user is not None and ctx.user.id == "u9" and ctx.user.username is None
        assert ctx.method == "POST" and ctx.path == "/chat/rooms/r1/messages"

        # auth=True without identity: refused even if the engine forwarded it.
        reply = await run.peer.http("post-message", method="POST", body=b"{}")
        assert reply.error is not None and reply.error.code == "UNAUTHORIZED"
        # Bad JSON body → BAD_REQUEST.
        reply = await run.peer.http(
            "post-message",
            headers=[("content-type", "application/json")],
            body=b"{nope",
            auth={"userId": "u"},
        )
        assert reply.error == m.ErrorInfo("BAD_REQUEST", "the body is not valid JSON")


async def test_response_objects_set_status_headers_and_raw_bodies() -> None:
    service = Service("svc")

    @service.action("created", method="POST")
    async def created(ctx: HttpContext) -> Response:
        return Response(201, json={"id": 1}, headers=[("location", "/svc/1")])

    @service.action("page")
    async def page(ctx: HttpContext) -> Response:
        return Response(body="<h1>hi</h1>", headers={"content-type": "text/html"})

    @service.action("empty")
    async def empty(ctx: HttpContext) -> Response:
        return Response(204)

    @service.action("null")
    async def null(ctx: HttpContext) -> Response:
        return Response(json=None)

    @service.action("missing")
    async def missing(ctx: HttpContext) -> None:
        raise NotFoundError("no such thing")

    @service.action("crash")
    async def crash(ctx: HttpContext) -> None:
        raise KeyError("secret")

    async with running(service) as run:
        assert await run.peer.http("created", method="POST") == m.Reply(
            id=1, status=201, headers=[("location", "/svc/1")], json=b'{"id":1}'
        )
        reply = await run.peer.http("page")
        assert (reply.status, reply.body, reply.json) == (200, b"<h1>hi</h1>", None)
        assert reply.headers == [("content-type", "text/html")]
        reply = await run.peer.http("empty")
        assert (reply.status, reply.body, reply.json) == (204, b"", None)
        assert (await run.peer.http("null")).json == b"null"
        reply = await run.peer.http("missing")
        assert reply.error == m.ErrorInfo("NOT_FOUND", "no such thing")
        reply = await run.peer.http("crash")
        assert reply.error == m.ErrorInfo("INTERNAL", "internal error")
        reply = await run.peer.http("no-such-action")
        assert reply.error is not None and reply.error.code == "NOT_FOUND"

    with pytest.raises(ValueError, match="not both"):
        Response(json=1, body=b"x")


async def test_health_live_and_ready_follow_after_start_and_readiness_checks() -> None:
    service = Service("chat", version="2.0.0")
    started = asyncio.Event()
    healthy = True

    @service.after_start
    async def warm_up(svc: Service) -> None:
        await started.wait()

    @service.readiness
    async def database(  # the ready route calls every check
    ) -> bool:
        return healthy

    async with running(service) as run:
        assert json_of(await run.peer.http("health")) == {
            "status": "ok",
            "service": "chat",
            "version": "2.0.0",
        }
        assert json_of(await run.peer.http("live")) == {"status": "ok"}
        reply = await run.peer.http("ready")
        assert reply.status == 503 and orjson.loads(reply.json or b"") == {"status": "not ready"}

        started.set()
        await until(lambda: service.started)
        reply = await run.peer.http("ready")
        assert reply.status is None and json_of(reply) == {"status": "ready"}

        healthy = False
        assert (await run.peer.http("ready")).status == 503


async def test_reply_larger_than_the_engine_max_frame_becomes_internal() -> None:
    service = Service("big")

    @service.action("big")
    async def big(ctx: HttpContext) -> str:
        return "x" * 5000

    @service.action("small")
    async def small(ctx: HttpContext) -> str:
        return "x" * 100

    async with running(service, engine={"max_frame": 4096}) as run:
        reply = await run.peer.http("big")
        assert reply.error == m.ErrorInfo("INTERNAL", "reply too large")
        assert json_of(await run.peer.http("small")) == "x" * 100
