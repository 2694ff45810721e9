"""The HTTP side of the WebSocket opening handshake on a real socket: every refusal is a
plain HTTP response (never a 101), with the status and headers RFC 6455 asks for.
``make_config`` mounts the echo endpoint on ``/echo``."""

from __future__ import annotations

import base64
import os

import pytest

from protocol.http.upgrade import accept_token
from tests.helpers.http_client import HttpResponse, RawHttp, build_request
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def ws_headers(
    *, key: str | None = "generate", version: str | None = "13"
) -> list[tuple[str, str]]:
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    if key is not None:
        headers.append(("Sec-WebSocket-Key", new_key() if key == "generate" else key))
    if version is not None:
        headers.append(("Sec-WebSocket-Version", version))
    return headers


def assert_refused(resp: HttpResponse, status: int, code: str, received: bytes) -> None:
    assert resp.status == status
    assert b" 101 " not in received
    assert resp.header("sec-websocket-accept") is None
    assert resp.header("content-type") == "application/json"
    assert resp.json()["error"]["code"] == code


async def test_valid_handshake_on_mounted_path_is_101() -> None:
    # The positive control for the refusals below.
    async with running_engine() as engine, RawHttp(engine.port) as c:
        key = new_key()
        await c.send(build_request("GET", "/echo", ws_headers(key=key)))
        resp = await c.read_response()
        assert resp.status == 101
        assert (resp.header("upgrade") or "").lower() == "websocket"
        assert resp.header("sec-websocket-accept") == accept_token(key)


async def test_upgrade_on_unknown_path_is_404_and_never_101() -> None:
    async with running_engine() as engine, RawHttp(engine.port) as c:
        await c.send(build_request("GET", "/not-a-socket", ws_headers()))
        resp = await c.read_response()
        assert_refused(resp, 404, "NOT_FOUND", bytes(c.received))
        # Still plain HTTP on this connection: it was not switched to WebSocket.
        after = await c.request("GET", "/health")
        assert after.status == 200
        assert b" 101 " not in c.received


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8"])
async def test_unsupported_websocket_version_is_426_naming_13(version: str) -> None:
    async with running_engine() as engine, RawHttp(engine.port) as c:
        await c.send(build_request("GET", "/echo", ws_headers(version=version)))
        resp = await c.read_response()
        assert_refused(resp, 426, "UPGRADE_REQUIRED", bytes(c.received))
        assert resp.header_values("sec-websocket-version") == ["13"]


async def test_missing_websocket_version_is_426_naming_13() -> None:
    async with running_engine() as engine, RawHttp(engine.port) as c:
        await c.send(build_request("GET", "/echo", ws_headers(version=None)))
        resp = await c.read_response()
        assert_refused(resp, 426, "UPGRADE_REQUIRED", bytes(c.received))
        assert resp.header("sec-websocket-version") == "13"


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(None, id="missing"),
        pytest.param("not base64!", id="not-base64"),
        pytest.param(base64.b64encode(b"short").decode(), id="not-16-bytes"),
    ],
)
async def test_missing_or_invalid_websocket_key_is_400(key: str | None) -> None:
    async with running_engine() as engine, RawHttp(engine.port) as c:
        await c.send(build_request("GET", "/echo", ws_headers(key=key)))
        resp = await c.read_response()
        assert_refused(resp, 400, "BAD_REQUEST", bytes(c.received))


async def test_missing_connection_upgrade_is_400() -> None:
    async with running_engine() as engine, RawHttp(engine.port) as c:
        headers = [h for h in ws_headers() if h[0] != "Connection"]
        await c.send(build_request("GET", "/echo", headers))
        resp = await c.read_response()
        assert_refused(resp, 400, "BAD_REQUEST", bytes(c.received))


async def test_post_with_upgrade_headers_is_405_allowing_get() -> None:
    async with running_engine() as engine, RawHttp(engine.port) as c:
        await c.send(build_request("POST", "/echo", ws_headers()))
        resp = await c.read_response()
        assert_refused(resp, 405, "METHOD_NOT_ALLOWED", bytes(c.received))
        assert resp.header("allow") == "GET"


async def test_http10_upgrade_is_400() -> None:
    async with running_engine() as engine, RawHttp(engine.port) as c:
        await c.send(build_request("GET", "/echo", ws_headers(), http_version="1.0"))
        resp = await c.read_response()
        assert_refused(resp, 400, "BAD_REQUEST", bytes(c.received))
