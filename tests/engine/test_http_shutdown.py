"""Graceful stop seen from HTTP clients on a real socket: in-flight responses are still
delivered (with ``connection: close``), idle connections are closed, nothing new is
accepted."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine import Engine
from engine.api.request import Request, Response
from tests.helpers.http_client import RawHttp, build_request
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio


def slow_app(started: asyncio.Event, delay: float) -> Engine:
    async def slow(request: Request) -> Response:
        started.set()
        await asyncio.sleep(delay)
        return Response.text("finished")

    engine = Engine(make_config())
    engine.route("GET", "/slow", slow)
    return engine


async def test_stop_delivers_in_flight_response_with_connection_close() -> None:
    started = asyncio.Event()
    engine = slow_app(started, delay=0.3)
    async with running_engine(engine), RawHttp(engine.port) as c:
        await c.send(build_request("GET", "/slow"))
        await asyncio.wait_for(started.wait(), 2.0)
        t0 = time.monotonic()
        stopping = asyncio.create_task(engine.stop(grace=3.0))
        resp = await c.read_response(within=2.0)
        assert (resp.status, resp.body) == (200, b"finished")
        assert resp.closes
        await c.expect_eof(2.0)
        await asyncio.wait_for(stopping, 3.0)
        # Stop ended with the last connection, not at the end of the grace period.
        assert time.monotonic() - t0 < 2.0


async def test_stop_closes_idle_keep_alive_connection_at_once() -> None:
    engine = Engine(make_config(keep_alive_timeout=30.0))
    async with running_engine(engine), RawHttp(engine.port) as c:
        assert (await c.request("GET", "/health")).status == 200
        stopping = asyncio.create_task(engine.stop(grace=3.0))
        elapsed = await c.expect_eof(2.0)
        assert elapsed < 1.0
        await asyncio.wait_for(stopping, 3.0)


async def test_stopped_engine_refuses_new_connections() -> None:
    engine = Engine(make_config())
    async with running_engine(engine):
        port = engine.port
        await engine.stop(grace=1.0)
        with pytest.raises(OSError):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
