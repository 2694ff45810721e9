"""HTTP actions served by a worker: what reaches it, what the client gets back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from engine import Engine
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio

CHAT = m.Registration(
    "chat",
    http=[
        m.HttpRoute("get-room", "GET", "/chat/rooms/:id"),
        m.HttpRoute("post-message", "POST", "/chat/rooms/:id/messages"),
        m.HttpRoute("raw", "GET", "/chat/raw"),
        m.HttpRoute("fail", "GET", "/chat/fail/:code"),
        m.HttpRoute("secret", "GET", "/chat/secret", auth="required"),
        m.HttpRoute("maybe", "GET", "/chat/maybe", auth="optional"),
    ],
    ws=m.WsRoute("/ws/chat", catch_all=True),
)
PRIVATE = m.Registration("private", ws=m.WsRoute("/ws/private", catch_all=True, auth="required"))


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


async def chat_http(worker: FakeWorker, request: m.HttpRequest) -> m.Reply:
    if request.action == "raw":
        return m.Reply(
            request.id,
            status=201,
            headers=[("content-type", "text/plain"), ("x-raw", "yes")],
            body=b"raw \x00 bytes",
        )
    if request.action == "fail":
        code = request.params["code"]
        details = None
        if code == "VALIDATION_ERROR":
            details = orjson.dumps({"fields": {"text": "too long"}})
        return m.Reply(request.id, error=m.ErrorInfo(code, f"worker says {code}", details))
    return m.Reply(
        request.id,
        status=202 if request.action == "post-message" else None,
        headers=[("x-action", request.action)],
        json=orjson.dumps({"action": request.action, "id": request.params.get("id")}),
    )


@asynccontextmanager
async def chat_engine(ipc_path: str) -> AsyncIterator[tuple[Engine, FakeWorker]]:
    async with running_engine(ipc_path=ipc_path) as engine, FakeWorker(ipc_path, CHAT) as worker:
        worker.on("http", chat_http)
        await worker.start()
        yield engine, worker


async def test_request_fields_reach_the_worker(ipc_path: str) -> None:
    async with chat_engine(ipc_path) as (engine, worker), RawHttp(engine.port) as client:
        body = orjson.dumps({"text": "hi", "n": [1, 2]})
        resp = await client.request(
            "POST",
            "/chat/rooms/42/messages?since=3&tag=a%20b",
            [("Content-Type", "application/json"), ("X-Trace", "t-1"), ("X-Trace", "t-2")],
            body,
        )
        assert resp.status == 202
        (request,) = worker.requests
        assert isinstance(request, m.HttpRequest)
        assert request.action == "post-message"
        assert request.method == "POST"
        assert request.path == "/chat/rooms/42/messages"
        assert request.params == {"id": "42"}
        assert request.query == "since=3&tag=a%20b"
        assert request.body == body
        assert orjson.loads(request.body) == {"text": "hi", "n": [1, 2]}
        # Lower-case names, in order, repeated headers kept.
        assert ("content-type", "application/json") in request.headers
        traces = [v for k, v in request.headers if k == "x-trace"]
        assert traces == ["t-1", "t-2"]
        assert all(k == k.lower() for k, _ in request.headers)
        assert request.remote is not None and request.remote.startswith("127.0.0.1:")
        assert request.auth is None


async def test_reply_json_status_and_headers(ipc_path: str) -> None:
    async with chat_engine(ipc_path) as (engine, _), RawHttp(engine.port) as client:
        resp = await client.request("GET", "/chat/rooms/abc")
        assert resp.status == 200
        assert resp.header("content-type") == "application/json"
        assert resp.header("x-action") == "get-room"
        assert resp.json() == {"action": "get-room", "id": "abc"}
        # Same connection, next request (keep-alive): the 202 of the POST route.
        resp = await client.request("POST", "/chat/rooms/abc/messages", body=b"{}")
        assert resp.status == 202
        assert resp.json() == {"action": "post-message", "id": "abc"}


async def test_reply_raw_body(ipc_path: str) -> None:
    async with chat_engine(ipc_path) as (engine, _), RawHttp(engine.port) as client:
        resp = await client.request("GET", "/chat/raw")
        assert resp.status == 201
        assert resp.header("content-type") == "text/plain"
        assert resp.header_values("content-type") == ["text/plain"]
        assert resp.header("x-raw") == "yes"
        assert resp.body == b"raw \x00 bytes"


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        ("FORBIDDEN", 403, "worker says FORBIDDEN"),
        ("NOT_FOUND", 404, "worker says NOT_FOUND"),
        ("BAD_REQUEST", 400, "worker says BAD_REQUEST"),
        ("UNAUTHORIZED", 401, "worker says UNAUTHORIZED"),
        ("INTERNAL", 500, "internal error"),
        ("NO_SUCH_CODE", 500, "internal error"),
    ],
)
async def test_reply_error_maps_to_status(
    ipc_path: str, code: str, status: int, message: str
) -> None:
    async with chat_engine(ipc_path) as (engine, _), RawHttp(engine.port) as client:
        resp = await client.request("GET", f"/chat/fail/{code}")
        assert resp.status == status
        assert resp.header("content-type") == "application/json"
        expected_code = "INTERNAL" if code == "NO_SUCH_CODE" else code
        assert resp.json() == {"error": {"code": expected_code, "message": message}}


async def test_validation_error_carries_details(ipc_path: str) -> None:
    async with chat_engine(ipc_path) as (engine, _), RawHttp(engine.port) as client:
        resp = await client.request("GET", "/chat/fail/VALIDATION_ERROR")
        assert resp.status == 422
        assert resp.json() == {
            "error": {
                "code": "VALIDATION_ERROR",
                "message": "worker says VALIDATION_ERROR",
                "details": {"fields": {"text": "too long"}},
            }
        }


async def test_auth_required_route_is_401_without_reaching_the_worker(ipc_path: str) -> None:
    async with chat_engine(ipc_path) as (engine, worker), RawHttp(engine.port) as client:
        resp = await client.request("GET", "/chat/secret", [("Authorization", "Bearer abc")])
        assert resp.status == 401
        assert resp.json()["error"]["code"] == "UNAUTHORIZED"
        # An "optional" route is served without a token.
        resp = await client.request("GET", "/chat/maybe")
        assert resp.status == 200
        assert [r.action for r in worker.requests if isinstance(r, m.HttpRequest)] == ["maybe"]


async def test_auth_required_ws_path_is_401_before_upgrade(ipc_path: str) -> None:
    async with (
        running_engine(ipc_path=ipc_path) as engine,
        FakeWorker(ipc_path, PRIVATE) as worker,
    ):
        await worker.start()
        async with RawWs(engine.port, "/ws/private") as ws:
            assert ws.status == 401
            assert orjson.loads(ws.response_body)["error"]["code"] == "UNAUTHORIZED"
        assert worker.requests == []


async def test_unknown_path_of_a_service_is_404(ipc_path: str) -> None:
    async with chat_engine(ipc_path) as (engine, worker), RawHttp(engine.port) as client:
        assert (await client.request("GET", "/chat/nothing")).status == 404
        assert (await client.request("DELETE", "/chat/rooms/1")).status == 405
        assert worker.requests == []
