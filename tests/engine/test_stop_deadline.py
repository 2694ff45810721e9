"""``Engine.stop(grace)``: one deadline for every phase (issue 10 #11), in process.

A worker that never answers and ignores ``drain``; a request timeout far beyond the
grace. The stop still ends on time, the HTTP client still gets an answer (503), the
WebSocket still gets 1001, and the stuck worker's socket is dropped.
The process-level version (SIGTERM, supervised workers killed) is in
tests/integration/test_shutdown_deadline.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from engine import Engine
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config

pytestmark = pytest.mark.asyncio

REG = m.Registration(
    "stuck",
    http=[m.HttpRoute("hang", "GET", "/stuck/hang")],
    ws=m.WsRoute("/ws/stuck", catch_all=True),
)


async def stalled_engine(tmp_path: Any, grace: float) -> tuple[Engine, FakeWorker]:
    path = short_socket_path(tmp_path)
    engine = Engine(make_config(ipc_path=path, request_timeout=60.0, shutdown_grace=grace))
    await engine.start()
    worker = FakeWorker(path, REG)  # ignores drain: it never closes by itself
    await worker.__aenter__()

    async def never(w: FakeWorker, request: Any) -> None:
        return None  # no reply, ever

    worker.on("http", never)
    worker.on("message", never)
    await worker.start()
    return engine, worker


@pytest.mark.parametrize("grace", [1.0, 0.0])
async def test_stop_ends_at_its_deadline_and_still_answers(tmp_path: Any, grace: float) -> None:
    engine, worker = await stalled_engine(tmp_path, grace)
    try:
        async with RawHttp(engine.port) as client, RawWs(engine.port, "/ws/stuck") as ws:
            assert ws.status == 101
            ws.send_text('{"type":"wait","id":1}')
            pending = asyncio.create_task(client.request("GET", "/stuck/hang"))
            await worker.wait_requests(2)  # both calls are on the worker
            loop = asyncio.get_running_loop()
            began = loop.time()
            await engine.stop()
            took = loop.time() - began
            resp = await pending
            assert await ws.recv_close_code(timeout=2.0) == 1001
        assert took < grace + 0.5, f"stop took {took:.2f}s for a {grace}s grace"
        assert resp.status == 503
        assert resp.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        await worker.wait_closed(2.0)  # dropped at the deadline
    finally:
        await worker.close(raise_handler_errors=False)
        await engine.stop()


async def test_an_idle_engine_stops_as_soon_as_its_workers_left(tmp_path: Any) -> None:
    path = short_socket_path(tmp_path)
    engine = Engine(make_config(ipc_path=path))
    await engine.start()
    async with FakeWorker(path, REG, close_on_drain=True) as worker:
        await worker.start()
        started = time.monotonic()
        await engine.stop(grace=10.0)
        assert time.monotonic() - started < 1.0  # the grace is a bound, not a wait
        await worker.wait_closed(2.0)
