"""The TypeScript SDK's forms in Python, against a FakeEngine over a real Unix socket:
positional ``(name, opts, fn)``, callback groups, HTTP middleware, ``ctx.body`` by
content type, ``ctx.message``, and values that cannot go on the wire.

(tests/integration/test_seed_table.py runs the seed's table itself through a real engine.)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from protocol.ipc import messages as m
from sdk import (
    HttpContext,
    HttpGroup,
    Response,
    Service,
    ValidationError,
    WsContext,
    WsGroup,
    parse_body,
)
from sdk.errors import BadRequestError

from .helpers import chat_service, running

AUTH = {"userId": "u1", "username": "ann", "roles": []}
JSON = [("content-type", "application/json")]
FORM = [("content-type", "application/x-www-form-urlencoded")]

Next = Callable[[], Awaitable[Any]]


def json_of(reply: m.Reply) -> Any:
    assert reply.error is None, reply.error
    return orjson.loads(reply.json or b"")


async def ok(ctx: Any) -> Any:
    return "ok"


# ------------------------------------------------------------------ registration
def test_action_takes_the_typescript_positional_forms() -> None:
    service = Service("svc")
    assert service.action("a", {"route": "/x/:id", "method": "post", "auth": True}, ok) is ok
    assert service.action("b", ok) is ok
    decorated = service.action("c", {"route": "/c", "method": "PUT"})(ok)
    assert decorated is ok
    service.action("d", route="/d", auth="optional")(ok)  # the keyword decorator stays
    got = {a.name: (a.method, a.path, a.auth) for a in service.actions.values()}
    assert got["a"] == ("POST", "/x/:id", "required")
    assert got["b"] == ("GET", "/svc/b", "none")
    assert got["c"] == ("PUT", "/c", "none")
    assert got["d"] == ("GET", "/d", "optional")


def test_ws_on_takes_the_typescript_positional_forms() -> None:
    service = chat_service()
    assert service.ws.on("a", {"auth": True, "concurrent": True}, ok) is ok
    assert service.ws.on("b", ok) is ok
    service.ws.on("c", {"auth": True})(ok)
    service.ws.on("d", auth=True)(ok)
    routes = service.ws.handlers
    assert [t for t in routes if routes[t].auth_required] == ["a", "c", "d"]
    assert service.ws.concurrent == {"a"}


@pytest.mark.parametrize(
    ("register", "error"),
    [
        (lambda s: s.action("x", {"route": "/x"}, route="/y"), "not both"),
        (lambda s: s.action("x", {"roles": ["admin"]}, ok), "unknown option 'roles'"),
        (lambda s: s.action("x", ok, ok), r"\(name, opts, fn\) or \(name, fn\)"),
        (lambda s: s.action("x", "GET", ok), "options must be a dict"),
        (lambda s: s.ws.on("x", {"validate": None}, ok), "unknown option 'validate'"),
        (lambda s: s.ws.on("x", {"auth": True}, auth=True), "not both"),
        (lambda s: s.group("/g", ok), "plain def, not async def"),
        (lambda s: s.ws.group("g", ok), "plain def, not async def"),
        (lambda s: s.group("/g", print, print), r"group\(prefix, cb\) or"),
        (lambda s: s.ws.group("g", print, print), r"ws.group\(prefix, cb\) or"),
        (lambda s: s.action("x", {"route": "/x"}, lambda ctx: None), "must be an async function"),
    ],
)
def test_registration_mistakes_fail_at_once(register: Callable[[Service], Any], error: str) -> None:
    with pytest.raises(TypeError, match=error):
        register(chat_service())


def test_http_group_prefixes_routes_and_defaults_auth() -> None:
    service = Service("svc")

    def admin(g: HttpGroup) -> None:
        g.action("stats", {"route": "/stats"}, ok)
        g.action("open", {"route": "/open", "auth": False}, ok)
        g.action("named", ok)  # default route: <prefix>/<name>
        g.action("root", {"route": ""}, ok)
        g.group("users", lambda users: users.action("list", {"route": "/"}, ok))

    group = service.group("svc/admin/", {"auth": True}, admin)
    assert group.prefix == "/svc/admin"
    with service.group("/svc/public") as pub:
        pub.action("hello", {"route": "/hello"}, ok)
    got = {a.name: (a.path, a.auth) for a in service.actions.values()}
    assert got["stats"] == ("/svc/admin/stats", "required")
    assert got["open"] == ("/svc/admin/open", "none")
    assert got["named"] == ("/svc/admin/named", "required")
    assert got["root"] == ("/svc/admin", "required")
    assert got["list"] == ("/svc/admin/users/", "required")  # nested: auth inherited
    assert got["hello"] == ("/svc/public/hello", "none")
    with pytest.raises(ValueError, match="must start with /"):
        service.group("/g", lambda g: g.action("bad", {"route": "bad"}, ok))


def test_ws_group_callback_form_registers_on_the_group() -> None:
    service = chat_service()
    seen: list[WsGroup] = []

    def chat(ws: WsGroup) -> None:
        seen.append(ws)
        ws.on("send", ok)
        ws.on("open", {"auth": False}, ok)

    group = service.ws.group("chat", {"auth": True}, chat)
    service.ws.group("room", lambda ws: ws.on("join", ok))
    assert seen == [group]
    routes = service.ws.handlers
    assert routes["chat.send"].auth_required and not routes["chat.open"].auth_required
    assert not routes["room.join"].auth_required
    assert service.ws.prefixes == ["chat.", "room."]


# ------------------------------------------------------------ HTTP middleware
@pytest.mark.asyncio
async def test_http_middleware_wraps_in_the_websocket_onion_order() -> None:
    service = Service("svc")
    order: list[str] = []

    def mw(name: str) -> Callable[[HttpContext, Next], Awaitable[None]]:
        async def middleware(ctx: HttpContext, call_next: Next) -> None:
            order.append(f"{name}>")
            result = await call_next()
            order.append(f"<{name}:{result}")

        return middleware

    service.use("/svc/admin/*", mw("by-route"))
    service.use(mw("global1"))
    service.use("other-*", mw("never"))
    service.use(mw("global2"))
    service.use("stat?", mw("by-name"))

    def admin(g: HttpGroup) -> None:
        g.use(mw("group"))
        g.action("stats", {"route": "/stats"}, handler)

    async def handler(ctx: HttpContext) -> str:
        order.append("handler")
        return "r"

    async def replace(ctx: HttpContext, call_next: Next) -> None:
        await call_next()
        ctx.result = {"wrapped": ctx.result}

    service.group("/svc/admin", admin)
    service.use(replace)  # global, added last: inside global2, outside every scoped one
    async with running(service) as run:
        reply = await run.peer.http("stats")
        assert json_of(reply) == {"wrapped": "r"}
        assert order == [
            "global1>",
            "global2>",
            "by-route>",
            "by-name>",
            "group>",
            "handler",
            "<group:r",
            "<by-name:r",
            "<by-route:r",
            "<global2:{'wrapped': 'r'}",
            "<global1:{'wrapped': 'r'}",
        ]


@pytest.mark.asyncio
async def test_http_middleware_can_refuse_and_skips_health_routes() -> None:
    service = Service("svc")

    async def guard(ctx: HttpContext, call_next: Next) -> None:
        if ctx.auth is None:
            raise ValidationError("who", fields={"token": "missing"})
        await call_next()

    service.use(guard)
    service.action("a", ok)
    async with running(service) as run:
        reply = await run.peer.http("a")
        assert reply.error is not None and reply.error.code == "VALIDATION_ERROR"
        assert json_of(await run.peer.http("a", auth=AUTH)) == "ok"
        # The guard would refuse a probe: health routes run without middleware.
        assert json_of(await run.peer.http("live")) == {"status": "ok"}


# --------------------------------------------------------------------- ctx.body
@pytest.mark.parametrize(
    ("content_type", "raw", "body"),
    [
        ("application/json", b'{"a": [1, null]}', {"a": [1, None]}),
        ("Application/JSON; charset=utf-8", b"[1]", [1]),
        ("application/problem+json", b'"x"', "x"),
        ("application/json", b"", None),
        (
            "application/x-www-form-urlencoded",
            b"a=1&b=x+y%21&a=2&empty=&a=3",
            {"a": ["1", "2", "3"], "b": "x y!", "empty": ""},
        ),
        ("application/x-www-form-urlencoded; charset=UTF-8", b"", {}),
        ("text/plain", b"hi", b"hi"),
        (None, b'{"a": 1}', b'{"a": 1}'),  # no content type: not guessed
        ("application/octet-stream", b"\x00\xff", b"\x00\xff"),
    ],
)
def test_ctx_body_is_parsed_by_content_type(
    content_type: str | None, raw: bytes, body: Any
) -> None:
    assert parse_body(content_type, raw) == body


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("application/json", b"{nope"),
        ("application/vnd.api+json", b"\xff"),
        ("application/x-www-form-urlencoded", b"a=\xff"),
    ],
)
def test_a_body_that_does_not_parse_is_bad_request(content_type: str, raw: bytes) -> None:
    with pytest.raises(BadRequestError):
        parse_body(content_type, raw)


@pytest.mark.asyncio
async def test_ctx_body_through_the_worker_and_400_before_any_middleware() -> None:
    service = Service("svc")
    reached: list[str] = []

    async def mw(ctx: HttpContext, call_next: Next) -> None:
        reached.append("mw")
        await call_next()

    service.use(mw)

    @service.action("echo", method="POST")
    async def echo(ctx: HttpContext) -> Any:
        # ctx.json(): the older helper, JSON whatever the content type.
        json = ctx.json() if ctx.headers.get("content-type") == "application/json" else None
        return {"body": ctx.body, "raw": ctx.raw_body.decode(), "json": json}

    async with running(service) as run:
        reply = await run.peer.http("echo", method="POST", json={"a": 1})
        assert json_of(reply) == {"body": {"a": 1}, "raw": '{"a":1}', "json": {"a": 1}}
        reply = await run.peer.http("echo", method="POST", headers=FORM, body=b"a=1&a=2&b=")
        assert json_of(reply) == {
            "body": {"a": ["1", "2"], "b": ""},
            "raw": "a=1&a=2&b=",
            "json": None,
        }
        assert reached == ["mw", "mw"]
        reply = await run.peer.http("echo", method="POST", headers=JSON, body=b"{nope")
        assert reply.error == m.ErrorInfo("BAD_REQUEST", "the body is not valid JSON")
        assert reached == ["mw", "mw"]  # refused before the middleware


# ------------------------------------------------------------------ ctx.message
@pytest.mark.asyncio
async def test_ctx_message_is_the_clients_data_and_middleware_may_replace_it() -> None:
    service = chat_service()

    async def normalise(ctx: WsContext, call_next: Next) -> None:
        ctx.message = {**ctx.message, "room": ctx.message["room"].lower()}
        await call_next()

    service.ws.use(normalise)

    @service.ws.on("join")
    async def join(ctx: WsContext) -> Any:
        assert ctx.envelope is not None
        return {"room": ctx.message["room"], "alias": ctx.data["room"], "id": ctx.envelope.id}

    async with running(service) as run:
        reply = await run.peer.message(1, "join", {"room": "LOBBY"}, client_id="j1")
        assert json_of(reply) == {"room": "lobby", "alias": "lobby", "id": "j1"}


# ------------------------------------------------------- values the wire cannot carry
@pytest.mark.asyncio
async def test_values_that_cannot_be_encoded_are_a_clean_internal_error_and_one_clear_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = chat_service()

    async def returns_set(ctx: Any) -> Any:
        return {"items": [1, {"when": {1}}]}

    async def returns_bytes(ctx: HttpContext) -> Any:
        return {"got": ctx.body}

    async def json_response(ctx: HttpContext) -> Any:
        return Response(201, json={1: "int key"})

    async def body_response(ctx: HttpContext) -> Any:
        return Response(body={"not": "bytes"})  # type: ignore[arg-type]

    async def forgot_await(ctx: Any) -> Any:
        return returns_set(ctx)

    async def bad_details(ctx: Any) -> Any:
        raise ValidationError("bad", fields={"room": object()})

    async def emits_set(ctx: WsContext) -> Any:
        await ctx.send("x", {"s": {1}})

    async def returns_response(ctx: WsContext) -> Any:
        return Response(200)

    service.action("set", returns_set)
    service.action("bytes", {"method": "POST"}, returns_bytes)
    service.action("json-response", json_response)
    service.action("body-response", body_response)
    service.action("forgot-await", forgot_await)
    service.ws.on("set", returns_set)
    service.ws.on("details", bad_details)
    service.ws.on("emit", emits_set)
    service.ws.on("response", returns_response)

    def internal(reply: m.Reply) -> bool:
        # (The engine replaces an INTERNAL error's message with "internal error".)
        return reply.error is not None and reply.error.code == "INTERNAL"

    caplog.set_level(logging.ERROR, logger="linkd.service.chat")
    async with running(service) as run:
        peer = run.peer
        assert internal(await peer.http("set"))
        assert internal(
            await peer.http("bytes", method="POST", headers=[("content-type", "text/plain")])
        )
        assert internal(await peer.http("json-response"))
        assert internal(await peer.http("body-response"))
        assert internal(await peer.http("forgot-await"))
        assert internal(await peer.message(1, "set"))
        assert internal(await peer.message(1, "details"))
        assert internal(await peer.message(1, "emit"))
        assert internal(await peer.message(1, "response"))
        # The worker goes on answering.
        assert json_of(await peer.http("live")) == {"status": "ok"}

    lines = [r.getMessage() for r in caplog.records]
    expected = [
        "action 'set' returned a value JSON cannot encode: set at ['items'][1]['when']",
        "action 'bytes' returned a value JSON cannot encode: bytes at ['got']",
        "action 'json-response' returned a value JSON cannot encode: int key at [1]",
        "action 'body-response' returned a Response whose body is dict, not bytes or str",
        "action 'forgot-await' returned a value JSON cannot encode: coroutine",
        "handler of 'set' returned a value JSON cannot encode: set at ['items'][1]['when']",
        "handler of 'details' raised ValidationError whose details JSON cannot encode",
        "handler of 'emit' failed: emit 'x': data JSON cannot encode: set at ['s']",
        "handler of 'response' returned a Response: that is for HTTP actions",
    ]
    for want in expected:
        assert sum(line.startswith(want) for line in lines) == 1, (want, lines)
    assert "a missing await?" in next(line for line in lines if "forgot-await" in line)
    # Exactly one line per failure: nothing else was logged at error level.
    assert len(lines) == len(expected)
    # Only the emit failure (raised inside the handler) carries a traceback.
    assert [r.exc_info is not None for r in caplog.records].count(True) == 1
