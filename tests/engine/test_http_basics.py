"""HTTP/1.1 on a real socket: built-in endpoints, routing errors, keep-alive, pipelining,
chunked bodies, 100-continue and handler failures, asserted on the bytes received."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from engine import Engine
from engine.api.request import Request, Response
from tests.helpers.http_client import RawHttp, build_request
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio

SECRET = "secret-detail-4f1c"


async def echo_body(request: Request) -> Response:
    return Response(200, [("content-type", "application/octet-stream")], request.body)


async def sleep_then_tag(request: Request) -> Response:
    """Body ``tag:seconds``: sleeps that long, answers ``tag``."""
    tag, _, delay = request.body.decode().partition(":")
    await asyncio.sleep(float(delay))
    return Response.text(tag)


async def ok(request: Request) -> Response:
    return Response.text("ok")


async def boom_async(request: Request) -> Response:
    raise RuntimeError(SECRET)


def boom_sync(request: Request) -> Awaitable[Response]:
    raise ValueError(SECRET)


async def not_a_response(request: Request) -> Any:
    return {"not": "a Response"}


def app(**overrides: Any) -> Engine:
    engine = Engine(make_config(**overrides))
    engine.route("POST", "/body", echo_body)
    engine.route("POST", "/sleep", sleep_then_tag)
    engine.route("POST", "/x", ok)
    engine.route("GET", "/boom", boom_async)
    engine.route("GET", "/boom-sync", boom_sync)
    engine.route("GET", "/weird", not_a_response)
    return engine


# ------------------------------------------------------------ built-in endpoints
async def test_get_health_returns_json_status_and_version() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        resp = await c.request("GET", "/health")
        assert resp.status == 200
        assert resp.header("content-type") == "application/json"
        assert resp.header("content-length") == str(len(resp.body))
        assert resp.json() == {"status": "healthy", "version": engine.config.version}
        assert isinstance(engine.config.version, str) and engine.config.version


async def test_head_health_has_content_length_and_no_body() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        get = await c.request("GET", "/health")
        head = await c.request("HEAD", "/health")
        assert head.status == 200
        assert head.header("content-length") == str(len(get.body))
        assert head.header_values("content-length") == [str(len(get.body))]
        assert head.raw.endswith(b"\r\n\r\n")
        # Had the HEAD response carried a body, these bytes would precede the next
        # status line and the parse below would fail.
        after = await c.request("GET", "/health")
        assert after.status == 200
        assert after.json()["status"] == "healthy"


async def test_get_metrics_returns_prometheus_text() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        assert (await c.request("GET", "/health")).status == 200
        resp = await c.request("GET", "/metrics")
        assert resp.status == 200
        assert (resp.header("content-type") or "").startswith("text/plain")
        text = resp.body.decode()
        assert "# TYPE linkd_connections gauge" in text
        assert 'linkd_connections{kind="http"} 1.0' in text
        assert 'linkd_http_requests_total{status="200"} 1.0' in text


# ---------------------------------------------------------------- routing errors
async def test_unknown_path_is_404_json_and_connection_stays_usable() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        resp = await c.request("GET", "/no/such/path")
        assert resp.status == 404
        assert resp.header("content-type") == "application/json"
        assert not resp.closes
        error = resp.json()["error"]
        assert error["code"] == "NOT_FOUND"
        assert isinstance(error["message"], str)
        again = await c.request("GET", "/health")
        assert again.status == 200


async def test_wrong_method_on_routed_path_is_405_with_allow() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        resp = await c.request("GET", "/x")
        assert resp.status == 405
        assert resp.header("allow") == "POST"
        assert resp.json()["error"]["code"] == "METHOD_NOT_ALLOWED"
        posted = await c.request("POST", "/x")
        assert (posted.status, posted.body) == (200, b"ok")


# ------------------------------------------------------- keep-alive, pipelining
async def test_keep_alive_serves_sequential_requests_on_one_connection() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        for i in range(5):
            health = await c.request("GET", "/health")
            assert health.status == 200 and not health.closes
            body = f"request {i}".encode()
            echoed = await c.request("POST", "/body", body=body)
            assert (echoed.status, echoed.body) == (200, body)
        # Still one connection from the server's point of view.
        metrics = await c.request("GET", "/metrics")
        assert 'linkd_connections{kind="http"} 1.0' in metrics.body.decode()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        # The first takes longest: answering in completion order would give c, b, a.
        await c.send(
            build_request("POST", "/sleep", body=b"a:0.3")
            + build_request("POST", "/sleep", body=b"b:0.1")
            + build_request("POST", "/sleep", body=b"c:0")
        )
        responses = await c.read_responses(3)
        assert [r.status for r in responses] == [200, 200, 200]
        assert [r.body for r in responses] == [b"a", b"b", b"c"]
        assert (await c.request("GET", "/health")).status == 200


async def test_http10_request_is_answered_then_closed() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        await c.send(b"GET /health HTTP/1.0\r\n\r\n")
        resp = await c.read_response()
        assert resp.status == 200
        assert resp.json()["status"] == "healthy"
        await c.expect_eof(1.0)


async def test_connection_close_request_is_answered_then_closed() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        resp = await c.request("GET", "/health", [("Connection", "close")])
        assert resp.status == 200
        assert resp.closes
        await c.expect_eof(1.0)


async def test_half_closed_client_still_gets_its_response() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        await c.send(build_request("POST", "/sleep", body=b"late:0.1"))
        await c.send_eof()
        resp = await c.read_response()
        assert (resp.status, resp.body) == (200, b"late")
        await c.expect_eof(1.0)


# --------------------------------------------------------------------- bodies
async def test_chunked_request_body_reaches_handler_reassembled() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        await c.send(
            b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
        )
        for part in (b"lo\r\n", b"6;ext=1\r\n worl", b"d\r\n", b"1\r\n!\r\n", b"0\r\n\r\n"):
            await asyncio.sleep(0.01)  # separate segments, so the server sees pieces
            await c.send(part)
        resp = await c.read_response()
        assert resp.status == 200
        assert resp.body == b"hello world!"
        assert (await c.request("GET", "/health")).status == 200


async def test_expect_100_continue_gets_interim_response_before_body() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        await c.send(
            b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await c.read_response(within=1.0)
        assert interim.status == 100
        await c.send(b"hello")
        final = await c.read_response()
        assert (final.status, final.body) == (200, b"hello")


# ------------------------------------------------------------ handler failures
@pytest.mark.parametrize("path", ["/boom", "/boom-sync"])
async def test_raising_handler_is_500_without_details_and_engine_keeps_serving(
    path: str,
) -> None:
    async with running_engine(app()) as engine:
        async with RawHttp(engine.port) as c:
            resp = await c.request("GET", path)
            assert resp.status == 500
            assert resp.json() == {"error": {"code": "INTERNAL", "message": "internal error"}}
            assert b"Traceback" not in c.received
            assert SECRET.encode() not in c.received
            again = await c.request("GET", "/health")
            assert again.status == 200
        async with RawHttp(engine.port) as fresh:
            assert (await fresh.request("GET", "/health")).status == 200


async def test_handler_returning_non_response_is_500() -> None:
    async with running_engine(app()) as engine, RawHttp(engine.port) as c:
        resp = await c.request("GET", "/weird")
        assert resp.status == 500
        assert resp.json() == {"error": {"code": "INTERNAL", "message": "internal error"}}
        assert (await c.request("GET", "/health")).status == 200
