"""Connection caps at the upgrade (before any 101): per address, new per second, in all."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from engine import Config, Engine
from engine.api.endpoint import WebSocketEndpoint
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio

#: Every cap off; each test turns on the one it checks.
NO_CAPS: dict[str, Any] = {
    "max_connections": 0,
    "max_connections_per_ip": 0,
    "new_connections_per_ip": 0,
}


async def upgrade(port: int, path: str = "/echo", **kwargs: Any) -> RawWs:
    ws = RawWs(port, path, **kwargs)
    await ws.connect()
    return ws


async def close_all(clients: list[RawWs]) -> None:
    for ws in clients:
        await ws.__aexit__(None, None, None)


def assert_refused(ws: RawWs, status: int, code: str) -> dict[str, Any]:
    assert ws.status == status
    assert ws.response_headers["content-type"] == "application/json"
    retry_after = ws.response_headers["retry-after"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    assert ws.response_headers.get("connection") == "close"
    error: dict[str, Any] = orjson.loads(ws.response_body)["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["retryAfter"] > 0
    return error


async def wait_open(engine: Engine, n: int) -> None:
    async with asyncio.timeout(2):
        while len(engine.state.ws_connections) != n:  # noqa: ASYNC110 - engine state
            await asyncio.sleep(0.01)


async def metrics_text(engine: Engine) -> str:
    async with RawHttp(engine.port) as http:
        return (await http.request("GET", "/metrics")).body.decode()


async def test_per_ip_cap_429_and_closing_one_frees_a_slot() -> None:
    async with running_engine(**{**NO_CAPS, "max_connections_per_ip": 2}) as engine:
        clients = [await upgrade(engine.port) for _ in range(2)]
        try:
            assert [ws.status for ws in clients] == [101, 101]
            refused = await upgrade(engine.port)
            assert_refused(refused, 429, "RATE_LIMITED")
            await refused.expect_eof()  # a refused client does not keep its socket
            await close_all([refused])
            # The refusal came before the 101: the open connections are untouched.
            clients[0].send_text("still here")
            assert (await clients[0].recv_frame()).payload == b"still here"

            await close_all(clients[:1])
            await wait_open(engine, 1)
            clients[0] = await upgrade(engine.port)
            assert clients[0].status == 101
            assert len(engine.state.ws_connections) == 2
        finally:
            await close_all(clients)
        assert engine.metrics.ws_refused["per_ip"] == 1
        assert 'linkd_ws_refused_connections_total{reason="per_ip"} 1.0' in (
            await metrics_text(engine)
        )


async def test_new_connection_rate_429_then_allowed_after_retry_after() -> None:
    config = {**NO_CAPS, "new_connections_per_ip": 2.0, "new_connections_burst": 3.0}
    async with running_engine(**config) as engine:
        clients = [await upgrade(engine.port) for _ in range(3)]
        await close_all(clients)  # closing does not give the budget back
        refused = await upgrade(engine.port)
        error = assert_refused(refused, 429, "RATE_LIMITED")
        assert error["retryAfter"] <= 0.5
        assert refused.response_headers["retry-after"] == "1"  # whole seconds, rounded up
        await close_all([refused])
        await asyncio.sleep(error["retryAfter"])
        again = await upgrade(engine.port)
        assert again.status == 101
        await close_all([again])
        assert engine.metrics.ws_refused["rate"] == 1
        assert 'linkd_ws_refused_connections_total{reason="rate"} 1.0' in (
            await metrics_text(engine)
        )


async def test_global_cap_503_overloaded() -> None:
    async with running_engine(**{**NO_CAPS, "max_connections": 2}) as engine:
        clients = [await upgrade(engine.port) for _ in range(2)]
        try:
            refused = await upgrade(engine.port)
            assert_refused(refused, 503, "OVERLOADED")
            await close_all([refused])
            await close_all(clients[:1])
            await wait_open(engine, 1)
            clients[0] = await upgrade(engine.port)
            assert clients[0].status == 101
        finally:
            await close_all(clients)
        assert engine.metrics.ws_refused == {"per_ip": 0, "rate": 0, "global": 1}
        assert 'linkd_ws_refused_connections_total{reason="global"} 1.0' in (
            await metrics_text(engine)
        )


async def test_caps_come_before_authentication() -> None:
    # A path that requires a token: over the cap the answer is 429, not 401, so a
    # flood of upgrades costs no signature checks.
    config = {**NO_CAPS, "new_connections_per_ip": 1.0, "new_connections_burst": 1.0}
    async with running_engine(jwt_secret="s" * 32, **config) as engine:

        class Private(WebSocketEndpoint):
            auth_policy = "required"

        engine.websocket("/private", Private())
        first = await upgrade(engine.port, "/private")
        assert first.status == 401  # spent the one token
        second = await upgrade(engine.port, "/private")
        assert_refused(second, 429, "RATE_LIMITED")
        await close_all([first, second])


async def test_http_requests_and_unknown_paths_are_not_counted() -> None:
    config = {**NO_CAPS, "new_connections_per_ip": 1.0, "new_connections_burst": 1.0}
    async with running_engine(**config) as engine:
        async with RawHttp(engine.port) as http:
            for _ in range(5):
                assert (await http.request("GET", "/health")).status == 200
        for _ in range(3):
            missing = await upgrade(engine.port, "/nowhere")
            assert missing.status == 404
            await close_all([missing])
        ws = await upgrade(engine.port)
        assert ws.status == 101
        await close_all([ws])


async def test_refusals_are_logged_without_flooding(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "linkd.http")
    async with running_engine(**{**NO_CAPS, "max_connections": 1}) as engine:
        holder = await upgrade(engine.port)
        for _ in range(30):
            refused = await upgrade(engine.port)
            assert refused.status == 503
            await close_all([refused])
        await close_all([holder])
        assert engine.metrics.ws_refused["global"] == 30
    lines = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert 1 <= len(lines) <= 10  # a burst of 5, then about one a second
    assert "127.0.0.1" in lines[0] and "--max-connections 1" in lines[0]  # before any path


async def test_defaults_let_an_ordinary_client_through() -> None:
    defaults = Config()
    caps = {name: getattr(defaults, name) for name in NO_CAPS}
    async with running_engine(**caps) as engine:
        clients = [await upgrade(engine.port) for _ in range(10)]
        assert all(ws.status == 101 for ws in clients)
        await close_all(clients)
