"""Registration built from the decorators, its mistakes, and the hello on the wire."""

from __future__ import annotations

import os

import pytest

from protocol.ipc import messages as m
from sdk import HttpContext, Service, WebSocketOptions, WsContext
from sdk.__main__ import find_services

from .helpers import chat_service, running


def build() -> Service:
    service = chat_service(auth="optional", binary=False, per_connection=2)

    @service.action("get-room", route="/chat/rooms/:id", method="get", auth=True)
    async def get_room(ctx: HttpContext) -> object:
        return None

    @service.action("search", auth="optional")
    async def search(ctx: HttpContext) -> object:
        return None

    @service.ws.on("ping")
    async def ping(ctx: WsContext) -> object:
        return "pong"

    with service.ws.group("chat", auth=True) as ws:

        @ws.on("send")
        async def send(ctx: WsContext) -> object:
            return None

    @service.ws.on_message
    async def other(ctx: WsContext) -> object:
        return None

    @service.ws.on_connect
    async def connected(ctx: WsContext) -> None:
        pass

    return service


def test_registration_lists_routes_types_prefixes_and_flags() -> None:
    reg = build().registration()
    assert reg.name == "chat"
    assert reg.version == "1.2.3"
    assert reg.concurrency == 64
    routes = {(r.action, r.method, r.path, r.auth) for r in reg.http}
    assert routes == {
        ("get-room", "GET", "/chat/rooms/:id", "required"),
        ("search", "GET", "/chat/search", "optional"),
        ("health", "GET", "/chat/health", "none"),
        ("ready", "GET", "/chat/ready", "none"),
        ("live", "GET", "/chat/live", "none"),
    }
    assert reg.ws == m.WsRoute(
        path="/ws/chat",
        types=["ping"],  # chat.send is covered by the prefix
        prefixes=["chat."],
        catch_all=True,
        auth="optional",
        on_connect=True,
        on_disconnect=False,
        binary=False,
        per_connection=2,
    )


def test_websocket_auth_accepts_bools() -> None:
    assert chat_service(auth=True).registration().ws == m.WsRoute("/ws/chat", auth="required")
    assert chat_service(auth=False).registration().ws == m.WsRoute("/ws/chat", auth="none")
    assert Service("plain").registration().ws is None


def test_registration_mistakes_fail_early() -> None:
    service = Service("svc")
    with pytest.raises(ValueError, match="already exists"):
        service.action("health")
        service.action("health")(_noop_http)
    with pytest.raises(TypeError, match="async"):
        service.action("sync")(lambda ctx: None)  # type: ignore[type-var]

    service.action("a", route="/x")(_noop_http)
    with pytest.raises(ValueError, match="already action"):
        service.action("b", route="/x")(_noop_http)
    with pytest.raises(ValueError, match="start with /"):
        service.action("c", route="x")(_noop_http)

    service.ws.on("t")(_noop_ws)
    with pytest.raises(ValueError, match="already has a handler"):
        service.ws.on("t")(_noop_ws)
    with pytest.raises(ValueError, match="websocket=WebSocketOptions"):
        service.registration()

    no_auth = Service("x", websocket=WebSocketOptions("/ws", auth="none"))
    no_auth.ws.group("g", auth=True)
    with pytest.raises(ValueError, match="auth='none'"):
        no_auth.registration()

    with pytest.raises(ValueError, match="auth must be"):
        Service("y", websocket=WebSocketOptions("/ws", auth="yes"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="service name"):
        Service("bad/name")


async def _noop_http(ctx: HttpContext) -> None:
    return None


async def _noop_ws(ctx: WsContext) -> None:
    return None


@pytest.mark.asyncio
async def test_hello_on_the_wire_carries_the_registration() -> None:
    service = build()
    async with running(service) as run:
        hello = run.peer.hello
        assert hello is not None
        assert hello.versions == [2]
        assert hello.pid == os.getpid()
        assert hello.max_frame == 8 * 1024 * 1024
        assert hello.service == service.registration()
        assert run.worker.connected.is_set()


def test_find_services() -> None:
    from tests.sdk import sample_app

    assert find_services("tests.sdk.sample_app") == [sample_app.service]
    assert find_services("tests.sdk.sample_app:service") == [sample_app.service]
    with pytest.raises(LookupError, match="not a Service"):
        find_services("tests.sdk.sample_app:hello")
    with pytest.raises(LookupError, match="no Service"):
        find_services("tests.sdk.helpers")
