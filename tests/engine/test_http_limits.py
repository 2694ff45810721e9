"""HTTP/1.1 limits and malformed input on a real socket: 413, 431 and 400, each a JSON
error followed by the server closing the connection."""

from __future__ import annotations

from typing import Any

import pytest

from engine import Engine
from engine.api.request import Request, Response
from tests.helpers.http_client import HttpResponse, RawHttp, build_request
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio

MAX_BODY = 1000
MAX_HEADER = 1024


def app(calls: list[bytes], **overrides: Any) -> Engine:
    """An engine whose ``POST /body`` echoes the body and records that it ran."""

    async def echo_body(request: Request) -> Response:
        calls.append(request.body)
        return Response(200, [], request.body)

    engine = Engine(
        make_config(
            limits={"max_body_bytes": MAX_BODY, "max_header_bytes": MAX_HEADER}, **overrides
        )
    )
    engine.route("POST", "/body", echo_body)
    return engine


def assert_error(resp: HttpResponse, status: int, code: str) -> None:
    assert resp.status == status
    assert resp.header("content-type") == "application/json"
    assert resp.closes, "an error that ends the connection must say connection: close"
    error = resp.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


# ------------------------------------------------------------------------ 413
async def test_content_length_above_limit_is_413_before_body_is_sent() -> None:
    calls: list[bytes] = []
    async with running_engine(app(calls)) as engine, RawHttp(engine.port) as c:
        # Only the head: the answer must not wait for a body that never comes.
        await c.send(
            f"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
        )
        resp = await c.read_response(within=2.0)
        assert_error(resp, 413, "PAYLOAD_TOO_LARGE")
        await c.expect_eof(2.0)
    assert calls == []


async def test_content_length_at_limit_is_accepted() -> None:
    calls: list[bytes] = []
    async with running_engine(app(calls)) as engine, RawHttp(engine.port) as c:
        body = b"x" * MAX_BODY
        resp = await c.request("POST", "/body", body=body)
        assert (resp.status, resp.body) == (200, body)
    assert calls == [body]


async def test_expect_100_continue_above_limit_gets_413_and_no_100() -> None:
    calls: list[bytes] = []
    async with running_engine(app(calls)) as engine, RawHttp(engine.port) as c:
        await c.send(
            b"POST /body HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {MAX_BODY * 10}\r\n\r\n".encode()
        )
        resp = await c.read_response(within=2.0)
        assert_error(resp, 413, "PAYLOAD_TOO_LARGE")
        await c.expect_eof(2.0)
        assert b" 100 " not in c.received
    assert calls == []


async def test_chunked_body_growing_past_limit_is_413_and_closed() -> None:
    calls: list[bytes] = []
    async with running_engine(app(calls)) as engine, RawHttp(engine.port) as c:
        chunk = b"y" * 600  # each chunk fits; the sum does not
        await c.send(
            b"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(chunk)
            + chunk
            + b"\r\n"
        )
        await c.assert_silent(0.1)  # 600 bytes are within the limit: no verdict yet
        await c.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        resp = await c.read_response(within=2.0)
        assert_error(resp, 413, "PAYLOAD_TOO_LARGE")
        await c.expect_eof(2.0)
    assert calls == []


# ------------------------------------------------------------------------ 431
async def test_request_line_too_long_is_431_and_closed() -> None:
    async with running_engine(app([])) as engine, RawHttp(engine.port) as c:
        target = "/" + "a" * (MAX_HEADER * 4)
        await c.send(build_request("GET", target))
        resp = await c.read_response(within=2.0)
        assert_error(resp, 431, "HEADERS_TOO_LARGE")
        await c.expect_eof(2.0)


async def test_headers_above_max_header_bytes_are_431_and_closed() -> None:
    async with running_engine(app([])) as engine, RawHttp(engine.port) as c:
        headers = [(f"X-Filler-{i}", "v" * 100) for i in range(40)]  # ~4.6 KiB > 1 KiB
        await c.send(build_request("GET", "/health", headers))
        resp = await c.read_response(within=2.0)
        assert_error(resp, 431, "HEADERS_TOO_LARGE")
        await c.expect_eof(2.0)


async def test_unterminated_head_above_max_header_bytes_is_431_and_closed() -> None:
    async with running_engine(app([])) as engine, RawHttp(engine.port) as c:
        # No blank line ever arrives: the server must give up once the limit is passed.
        await c.send(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"z" * (MAX_HEADER * 2))
        resp = await c.read_response(within=2.0)
        assert_error(resp, 431, "HEADERS_TOO_LARGE")
        await c.expect_eof(2.0)


async def test_headers_just_under_max_header_bytes_are_accepted() -> None:
    async with running_engine(app([])) as engine, RawHttp(engine.port) as c:
        headers = [("X-Filler", "v" * 600)]
        request = build_request("GET", "/health", headers)
        assert len(request) < MAX_HEADER
        await c.send(request)
        resp = await c.read_response()
        assert resp.status == 200


# ------------------------------------------------------------------------ 400
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="no-method-target-version"),
        pytest.param(b"GET /health HTTP/9.9 extra\r\nHost: t\r\n\r\n", id="bad-request-line"),
        pytest.param(b"GET /health HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n", id="bad-header"),
        pytest.param(b"GET /health HTTP/1.1\r\nHost: t\r\nBad Name: v\r\n\r\n", id="space-in-name"),
        pytest.param(
            b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", id="bad-length"
        ),
    ],
)
async def test_malformed_request_is_400_json_and_closed(raw: bytes) -> None:
    calls: list[bytes] = []
    async with running_engine(app(calls)) as engine, RawHttp(engine.port) as c:
        await c.send(raw)
        resp = await c.read_response(within=2.0)
        assert_error(resp, 400, "BAD_REQUEST")
        # A fixed message, never the parser's own words.
        assert resp.json()["error"]["message"] == "malformed HTTP request"
        await c.expect_eof(2.0)
    assert calls == []


async def test_malformed_request_after_a_good_one_is_400_and_closed() -> None:
    async with running_engine(app([])) as engine, RawHttp(engine.port) as c:
        assert (await c.request("GET", "/health")).status == 200
        await c.send(b"\x00\x01\x02 nonsense\r\n\r\n")
        resp = await c.read_response(within=2.0)
        assert_error(resp, 400, "BAD_REQUEST")
        await c.expect_eof(2.0)
