"""HTTP/1.1 timeouts on a real socket: header (slowloris), body, keep-alive idle, and a
connection that never sends a byte. Timeouts are a fraction of a second; the sweeper in
``make_config`` ticks every 50 ms, so each bound below leaves room for one late tick."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine import Engine
from engine.api.request import Request, Response
from tests.helpers.http_client import RawHttp
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio


async def echo_body(request: Request) -> Response:
    return Response(200, [], request.body)


async def test_slow_header_drip_gets_408_from_first_byte_then_close() -> None:
    engine = Engine(make_config(header_timeout=0.5))
    async with running_engine(engine), RawHttp(engine.port) as c:
        started = time.monotonic()
        await c.send(b"GET /health HTTP/1.1\r\n")
        # Drip a header line every 0.1 s. Had each byte restarted the timer, the 408
        # could not come before 0.35 + 0.5 s.
        for i in range(3):
            await asyncio.sleep(0.1)
            await c.send(f"X-Drip-{i}: 1\r\n".encode())
        resp = await c.read_response(within=2.0)
        elapsed = time.monotonic() - started
        assert resp.status == 408
        assert resp.closes
        assert resp.json()["error"]["code"] == "REQUEST_TIMEOUT"
        assert 0.45 <= elapsed < 0.8, elapsed
        await c.expect_eof(1.0)


async def test_connection_that_sends_nothing_is_closed_after_header_timeout() -> None:
    engine = Engine(make_config(header_timeout=0.3, keep_alive_timeout=30.0))
    async with running_engine(engine), RawHttp(engine.port) as c:
        elapsed = await c.expect_eof(2.0)
        assert 0.25 <= elapsed < 1.0, elapsed


async def test_stalled_body_gets_408_after_body_timeout_then_close() -> None:
    engine = Engine(make_config(header_timeout=5.0, body_timeout=0.4))
    engine.route("POST", "/body", echo_body)
    async with running_engine(engine), RawHttp(engine.port) as c:
        await c.send(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        started = time.monotonic()
        resp = await c.read_response(within=2.0)
        elapsed = time.monotonic() - started
        assert resp.status == 408
        assert resp.closes
        assert resp.json()["error"]["code"] == "REQUEST_TIMEOUT"
        assert 0.35 <= elapsed < 1.0, elapsed
        await c.expect_eof(1.0)


async def test_body_arriving_in_time_is_not_cut_by_body_timeout() -> None:
    engine = Engine(make_config(header_timeout=5.0, body_timeout=0.4))
    engine.route("POST", "/body", echo_body)
    async with running_engine(engine), RawHttp(engine.port) as c:
        await c.send(b"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc")
        await asyncio.sleep(0.2)
        await c.send(b"def")
        resp = await c.read_response(within=2.0)
        assert (resp.status, resp.body) == (200, b"abcdef")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/health", id="built-in-endpoint"),
        pytest.param("POST", "/body", id="routed-async-handler"),
    ],
)
async def test_idle_keep_alive_connection_is_closed_silently(method: str, path: str) -> None:
    engine = Engine(make_config(keep_alive_timeout=0.3, header_timeout=5.0))
    engine.route("POST", "/body", echo_body)
    async with running_engine(engine), RawHttp(engine.port) as c:
        resp = await c.request(method, path, body=b"x" if method == "POST" else b"")
        assert resp.status == 200
        assert not resp.closes
        elapsed = await c.expect_eof(2.0)  # EOF with no byte before it (no 408)
        assert 0.25 <= elapsed < 1.0, elapsed


async def test_active_keep_alive_connection_outlives_header_timeout() -> None:
    engine = Engine(make_config(header_timeout=0.3, keep_alive_timeout=5.0))
    async with running_engine(engine), RawHttp(engine.port) as c:
        # Each request arrives whole and is answered at once; the connection is never
        # idle longer than 0.1 s, yet it lives well past the 0.3 s header timeout.
        for _ in range(8):
            assert (await c.request("GET", "/health")).status == 200
            await asyncio.sleep(0.1)
        assert (await c.request("GET", "/health")).status == 200


async def test_idle_timeout_still_fires_after_another_client_disconnected() -> None:
    engine = Engine(make_config(header_timeout=0.3, keep_alive_timeout=0.6))
    engine.route("POST", "/body", echo_body)
    async with running_engine(engine):
        async with RawHttp(engine.port):
            pass  # connects and leaves before any of its deadlines is due
        async with RawHttp(engine.port) as c:
            resp = await c.request("POST", "/body", body=b"x")
            assert resp.status == 200
            elapsed = await c.expect_eof(2.0)
            assert 0.5 <= elapsed < 1.2, elapsed


async def test_keep_alive_timer_restarts_after_each_response() -> None:
    engine = Engine(make_config(keep_alive_timeout=0.3, header_timeout=5.0))
    async with running_engine(engine), RawHttp(engine.port) as c:
        # 0.2 s gaps add up past 0.3 s: only an idle timer reset per response survives.
        for _ in range(3):
            assert (await c.request("GET", "/health")).status == 200
            await asyncio.sleep(0.2)
        assert (await c.request("GET", "/health")).status == 200
