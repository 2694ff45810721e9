"""The server API (issue 15 item 1, docs/server-api.md): every method over a real admin
socket against an in-process engine with real WebSocket clients; keys, bounds, rate
limit and errors from the shared table; the client-port mount; the CLI (item 3)
against a real engine process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import orjson
import pytest

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from tests.helpers.http_client import RawHttp
from tests.helpers.proc import engine_process, free_port
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config

pytestmark = pytest.mark.asyncio

SECRET = "a-development-secret-of-32-bytes!"
KEY = "k-" + "x" * 30
OTHER_KEY = "second-key-for-rotation"


def token(sub: str, name: str | None = None) -> str:
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 600}
    if name:
        claims["preferred_username"] = name
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Idle(WebSocketEndpoint):
    """Does nothing with messages: rooms come from the server API only."""

    auth_policy = "optional"

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        ws.send("ok")


@asynccontextmanager
async def api_engine(**overrides: Any) -> AsyncIterator[Engine]:
    overrides.setdefault("api_keys", (KEY, OTHER_KEY))
    engine = Engine(make_config(jwt_secret=SECRET, admin_host="127.0.0.1", **overrides))
    engine.websocket("/ws", Idle())
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace=1.0)


async def call(
    port: int,
    method: str,
    body: object = None,
    *,
    key: str | None = KEY,
    raw: bytes | None = None,
    http_method: str = "POST",
) -> tuple[int, Any, RawHttp]:
    headers = [("content-type", "application/json")]
    if key is not None:
        headers.append(("authorization", f"apikey {key}"))
    data = raw if raw is not None else orjson.dumps(body if body is not None else {})
    async with RawHttp(port) as http:
        resp = await http.request(http_method, f"/api/{method}", headers=headers, body=data)
        return resp.status, resp.json() if resp.body else None, http


async def ok(port: int, method: str, body: object = None) -> Any:
    status, answer, _ = await call(port, method, body)
    assert status == 200, (method, status, answer)
    return answer


async def frame_json(ws: RawWs) -> Any:
    frame = await ws.recv_frame()
    assert frame.opcode == 0x1, frame
    return orjson.loads(frame.payload)


async def wait_until(predicate: Any) -> None:
    async with asyncio.timeout(5.0):
        while not predicate():  # noqa: ASYNC110 - engine state, no event to wait on
            await asyncio.sleep(0.01)


async def connected(engine: Engine, ws: RawWs, n: int) -> int:
    """The engine id of the newest connection, once ``n`` are open."""
    await wait_until(lambda: len(engine.state.hub.by_id) >= n)
    return max(engine.state.hub.by_id)


# ------------------------------------------------------------------ publishing
async def test_publish_to_room_user_connection_everyone_with_offsets_and_exclusion() -> None:
    async with (
        api_engine() as engine,
        RawWs(engine.port, f"/ws?token={token('alice')}") as alice,
        RawWs(engine.port, f"/ws?token={token('bob')}") as bob,
    ):
        port = engine.admin_port
        bob_id = await connected(engine, bob, 2)
        sub = await ok(port, "subscribe", {"user": "alice", "room": "lobby"})
        assert sub == {"subscribed": 1}
        assert await ok(port, "subscribe", {"connection": str(bob_id), "room": "lobby"}) == {
            "subscribed": 1
        }

        first = await ok(port, "publish", {"room": "lobby", "event": "news", "data": {"n": 1}})
        assert first["offset"]["seq"] == 1 and first["offset"]["epoch"]
        for ws in (alice, bob):
            got = await frame_json(ws)
            assert got["type"] == "news" and got["data"] == {"n": 1}
            assert got["room"] == "lobby" and got["seq"] == 1
            assert got["epoch"] == first["offset"]["epoch"]

        # Excluded: bob learns the number only (linkd.skip), the stream has no hole.
        second = await ok(
            port, "publish", {"room": "lobby", "event": "news", "data": 2, "exclude": [bob_id]}
        )
        assert second["offset"] == {"epoch": first["offset"]["epoch"], "seq": 2}
        assert (await frame_json(alice))["data"] == 2
        skip = await frame_json(bob)
        assert skip["type"] == "linkd.skip" and skip["seq"] == 2

        to_user = await ok(port, "publish", {"user": "bob", "event": "dm", "data": "hi"})
        assert to_user["offset"]["seq"] == 1
        got = await frame_json(bob)
        assert (got["type"], got["user"], got["data"]) == ("dm", "bob", "hi")

        assert await ok(port, "publish", {"connection": bob_id, "event": "one", "data": None}) == {
            "delivered": 1
        }
        assert (await frame_json(bob))["type"] == "one"
        assert await ok(port, "publish", {"connection": 999999, "event": "x"}) == {"delivered": 0}

        assert await ok(port, "publish", {"everyone": True, "event": "all", "data": 3}) == {}
        for ws in (alice, bob):
            assert (await frame_json(ws))["type"] == "all"

        result = await ok(
            port, "broadcast", {"rooms": ["lobby", "empty"], "event": "b", "data": [1]}
        )
        assert [r["room"] for r in result["results"]] == ["lobby", "empty"]
        assert result["results"][0]["offset"]["seq"] == 3
        assert result["results"][1]["offset"]["seq"] == 1  # numbered: kept for recovery
        for ws in (alice, bob):
            got = await frame_json(ws)
            assert (got["type"], got["seq"]) == ("b", 3)


async def test_publish_refusals_name_the_problem() -> None:
    async with api_engine() as engine:
        port = engine.admin_port
        cases: list[tuple[object, str]] = [
            ({"event": "x"}, "exactly one of"),
            ({"room": "a", "user": "b", "event": "x"}, "exactly one of"),
            ({"room": "a"}, "event is required"),
            ({"room": "a", "event": "x", "colour": 1, "size": 2}, "unknown field(s): colour, size"),
            ({"room": "a", "event": "linkd.skip"}, "linkd.*"),
            ({"room": 5, "event": "x"}, "room must be"),
            ({"connection": "7a", "event": "x"}, "connection must be a connection id"),
            ({"connection": True, "event": "x"}, "connection must be a connection id"),
            ({"room": "a", "event": "x", "exclude": ["z"]}, "exclude must be"),
            ([1, 2], "JSON object"),
        ]
        for body, message in cases:
            status, answer, _ = await call(port, "publish", body)
            assert status == 400, (body, answer)
            assert answer["error"]["code"] == "BAD_REQUEST"
            assert message in answer["error"]["message"], (body, answer)
        status, answer, _ = await call(port, "publish", raw=b'{"room": "a", "event": ')
        assert status == 400 and answer["error"] == {
            "code": "BAD_REQUEST",
            "message": "the body is not JSON",
        }
        status, answer, _ = await call(port, "broadcast", {"rooms": [], "event": "x"})
        assert status == 400 and "rooms" in answer["error"]["message"]


# --------------------------------------------------------------------- reading
async def test_presence_stats_rooms_history_info_and_unknown_rooms_are_empty() -> None:
    async with (
        api_engine() as engine,
        RawWs(engine.port, f"/ws?token={token('alice', 'Alice')}"),
        RawWs(engine.port, f"/ws?token={token('alice', 'Alice')}"),
        RawWs(engine.port, f"/ws?token={token('bob')}"),
        RawWs(engine.port, "/ws") as anonymous,
    ):
        port = engine.admin_port
        anon_id = await connected(engine, anonymous, 4)
        await ok(port, "subscribe", {"user": "alice", "room": "game:1"})
        await ok(port, "subscribe", {"user": "bob", "room": "game:1"})
        await ok(port, "subscribe", {"connection": anon_id, "room": "game:2"})
        await ok(port, "subscribe", {"user": "bob", "room": "chat"})

        presence = await ok(port, "presence", {"room": "game:1"})
        assert presence == {
            "room": "game:1",
            "users": [
                {"userId": "alice", "username": "Alice", "connections": 2},
                {"userId": "bob", "username": None, "connections": 1},
            ],
        }
        stats = await ok(port, "presence_stats", {"room": "game:1"})
        assert stats == {"room": "game:1", "users": 2, "connections": 3}
        assert await ok(port, "presence", {"room": "nowhere"}) == {"room": "nowhere", "users": []}
        assert await ok(port, "presence_stats", {"room": "nowhere"}) == {
            "room": "nowhere",
            "users": 0,
            "connections": 0,
        }

        rooms = await ok(port, "rooms", {"prefix": "game:"})
        assert rooms == {
            "rooms": [{"room": "game:1", "members": 3}, {"room": "game:2", "members": 1}],
            "more": False,
            "scope": "node",
        }
        assert [r["room"] for r in (await ok(port, "rooms"))["rooms"]] == [
            "chat",
            "game:1",
            "game:2",
        ]
        assert (await ok(port, "rooms", {"prefix": "zzz"}))["rooms"] == []

        for n in range(3):
            await ok(port, "publish", {"room": "chat", "event": "msg", "data": n})
        newest = await ok(port, "history", {"room": "chat", "limit": 2})  # the newest two
        assert newest["room"] == "chat" and newest["seq"] == 3
        assert [e["data"] for e in newest["events"]] == [1, 2] and newest["complete"] is False
        assert all("time" in e for e in newest["events"])
        page = await ok(
            port, "history", {"room": "chat", "since": 0, "epoch": newest["epoch"], "limit": 2}
        )
        assert [e["data"] for e in page["events"]] == [0, 1] and page["more"] is True
        rest = await ok(port, "history", {"room": "chat", "since": 2, "epoch": newest["epoch"]})
        assert [e["data"] for e in rest["events"]] == [2] and rest["complete"] is True
        empty = await ok(port, "history", {"room": "never-used"})
        assert empty["events"] == [] and empty["epoch"] is None
        status, answer, _ = await call(port, "history", {"room": "chat", "limit": 0})
        assert status == 400 and "limit" in answer["error"]["message"]

        info = await ok(port, "info")
        assert info["version"] == engine.config.version
        assert info["connections"]["websocket"] == 4
        assert info["users"] == 2 and info["rooms"] == 3
        assert info["uptime"] >= 0 and info["draining"] is False
        assert "nodes" not in info  # one node without Redis


# ------------------------------------------------------ acting on connections
async def test_disconnect_closes_with_the_code_and_unsubscribe_stops_delivery() -> None:
    async with (
        api_engine() as engine,
        RawWs(engine.port, f"/ws?token={token('carol')}") as one,
        RawWs(engine.port, f"/ws?token={token('carol')}") as two,
        RawWs(engine.port, f"/ws?token={token('dave')}") as dave,
    ):
        port = engine.admin_port
        dave_id = await connected(engine, dave, 3)
        await ok(port, "subscribe", {"user": "carol", "room": "r"})
        await ok(port, "subscribe", {"connection": dave_id, "room": "r"})
        assert await ok(port, "unsubscribe", {"connection": dave_id, "room": "r"}) == {
            "unsubscribed": 1
        }
        assert await ok(port, "unsubscribe", {"user": "nobody", "room": "r"}) == {"unsubscribed": 0}
        await ok(port, "publish", {"room": "r", "event": "e", "data": 1})
        assert (await frame_json(one))["data"] == 1
        assert (await frame_json(two))["data"] == 1
        await ok(port, "publish", {"user": "dave", "event": "mark"})
        assert (await frame_json(dave))["type"] == "mark"  # the room's event never came

        status, answer, _ = await call(port, "disconnect", {"user": "carol", "code": 1000 - 1})
        assert status == 400 and "cannot be sent" in answer["error"]["message"]
        got = await ok(port, "disconnect", {"user": "carol", "code": 4001, "reason": "banned"})
        assert got == {"disconnected": 2}
        for ws in (one, two):
            frame = await ws.recv_frame()
            assert frame.close_code == 4001 and frame.payload[2:] == b"banned"
        assert await ok(port, "disconnect", {"connection": dave_id}) == {"disconnected": 1}
        assert (await dave.recv_frame()).close_code == 1000
        assert await ok(port, "disconnect", {"user": "nobody"}) == {"disconnected": 0}
        status, answer, _ = await call(port, "disconnect", {"user": "a", "connection": 1})
        assert status == 400 and "exactly one of user, connection" in answer["error"]["message"]


# ------------------------------------------------------ keys, bounds, limits
async def test_keys_are_required_and_any_configured_key_works() -> None:
    async with api_engine() as engine:
        port = engine.admin_port
        for key in (None, "wrong", KEY + "x", KEY[:-1], ""):
            status, answer, _ = await call(port, "info", key=key)
            assert status == 401, key
            assert answer["error"]["code"] == "UNAUTHORIZED"
        assert (await call(port, "info", key=OTHER_KEY))[0] == 200
        async with RawHttp(port) as http:  # another scheme is no key either
            resp = await http.request(
                "POST", "/api/info", headers=[("authorization", f"Bearer {KEY}")], body=b"{}"
            )
            assert resp.status == 401
        status, answer, _ = await call(port, "info", http_method="GET")
        assert status == 405 and answer["error"]["code"] == "METHOD_NOT_ALLOWED"
        status, answer, _ = await call(port, "nope")
        assert status == 404 and answer["error"]["code"] == "NOT_FOUND"
        # The admin routes are untouched.
        async with RawHttp(port) as http:
            assert (await http.request("GET", "/health")).status == 200
        # Calls are counted by method and status; the key appears nowhere.
        async with RawHttp(port) as http:
            text = (await http.request("GET", "/metrics")).body.decode()
        assert 'linkd_api_requests_total{method="info",status="401"} 6.0' in text
        assert KEY not in text


async def test_api_without_keys_is_off() -> None:
    async with api_engine(api_keys=()) as engine:
        status, answer, _ = await call(engine.admin_port, "info")
        assert status == 404 and "off" in answer["error"]["message"]


async def test_oversize_body_is_413_and_the_connection_closes() -> None:
    async with api_engine(api_max_body=1024) as engine:
        body = orjson.dumps({"room": "r", "event": "e", "data": "x" * 2000})
        status, answer, _ = await call(engine.admin_port, "publish", raw=body)
        assert status == 413 and answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
        small = await ok(engine.admin_port, "publish", {"room": "r", "event": "e", "data": "x"})
        assert small["offset"]["seq"] == 1  # the big one was never published


async def test_rate_limit_is_429_per_key_and_per_address_for_wrong_keys() -> None:
    async with api_engine(api_rate=1.0, api_burst=3.0) as engine:
        port = engine.admin_port
        for _ in range(3):
            assert (await call(port, "info"))[0] == 200
        status, answer, _ = await call(port, "info")
        assert status == 429 and answer["error"]["code"] == "RATE_LIMITED"
        assert (await call(port, "info", key=OTHER_KEY))[0] == 200  # its own budget
        for _ in range(3):
            assert (await call(port, "info", key="guess"))[0] == 401
        assert (await call(port, "info", key="guess"))[0] == 429  # no brute force
        await asyncio.sleep(1.1)
        assert (await call(port, "info"))[0] == 200


async def test_pipelined_calls_are_answered_in_order_on_one_connection() -> None:
    async with api_engine() as engine:
        port = engine.admin_port
        head = f"POST /api/publish HTTP/1.1\r\nhost: x\r\nauthorization: apikey {KEY}\r\n"
        raw = b""
        for n in range(5):
            body = orjson.dumps({"room": "p", "event": "e", "data": n})
            raw += f"{head}content-length: {len(body)}\r\n\r\n".encode() + body
        async with RawHttp(port) as http:
            await http.send(raw)
            answers = await http.read_responses(5, within=5.0)
        assert [orjson.loads(a.body)["offset"]["seq"] for a in answers] == [1, 2, 3, 4, 5]


async def test_api_on_the_client_port_under_api() -> None:
    async with api_engine(api_on_client_port=True, api_max_body=512) as engine:
        async with RawWs(engine.port, f"/ws?token={token('erin')}") as ws:
            await connected(engine, ws, 1)
            await ok(engine.port, "subscribe", {"user": "erin", "room": "x"})
            got = await ok(engine.port, "publish", {"room": "x", "event": "e", "data": 1})
            assert got["offset"]["seq"] == 1
            assert (await frame_json(ws))["data"] == 1
        assert (await call(engine.port, "info", key="bad"))[0] == 401
        big = orjson.dumps({"room": "r", "event": "e", "data": "y" * 600})
        assert (await call(engine.port, "publish", raw=big))[0] == 413
    async with api_engine() as engine:  # off by default there
        assert (await call(engine.port, "info"))[0] == 404


# ------------------------------------------------------------------------ CLI
def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        check=False,
    )


async def test_cli_info_publish_and_errors_against_an_engine_process() -> None:
    admin = free_port()
    args = ["--admin-listen", f"127.0.0.1:{admin}", "--api-key", KEY, "--echo", "/echo"]
    url = ["--api-url", f"http://127.0.0.1:{admin}"]
    with engine_process(args):
        info = await asyncio.to_thread(cli, "info", *url, "--api-key", KEY)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["version"] == "0.1.0"
        env = {"LINKD_API_KEY": KEY}
        for seq in (1, 2):
            out = await asyncio.to_thread(cli, "publish", "news", "e", '{"n": 1}', *url, env=env)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["offset"]["seq"] == seq
        bad = await asyncio.to_thread(cli, "info", *url, "--api-key", "wrong")
        assert bad.returncode == 1
        assert "401" in bad.stderr and "UNAUTHORIZED" in bad.stderr
        junk = await asyncio.to_thread(cli, "publish", "r", "e", "{not json", *url, env=env)
        assert junk.returncode == 2 and "JSON" in junk.stderr
        nokey = await asyncio.to_thread(cli, "info", *url, env={"LINKD_API_KEY": ""})
        assert nokey.returncode == 2 and "LINKD_API_KEY" in nokey.stderr
    down = await asyncio.to_thread(cli, "info", *url, "--api-key", KEY)
    assert down.returncode == 1 and "cannot reach" in down.stderr


async def test_cli_publish_reaches_a_client_and_disconnect_closes_it() -> None:
    async with (
        api_engine() as engine,
        RawWs(engine.port, f"/ws?token={token('frank')}") as ws,
    ):
        await connected(engine, ws, 1)
        url = ["--api-url", f"http://127.0.0.1:{engine.admin_port}"]
        env = {"LINKD_API_KEY": KEY}
        await ok(engine.admin_port, "subscribe", {"user": "frank", "room": "news"})
        out = await asyncio.to_thread(
            cli, "publish", "news", "headline", '{"title": "hi"}', *url, env=env
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["offset"]["seq"] == 1
        got = await frame_json(ws)
        assert (got["type"], got["data"]) == ("headline", {"title": "hi"})
        kick = await asyncio.to_thread(
            cli, "disconnect", "frank", "--code", "4003", "--reason", "bye", *url, env=env
        )
        assert kick.returncode == 0, kick.stderr
        assert json.loads(kick.stdout) == {"disconnected": 1}
        frame = await ws.recv_frame()
        assert frame.close_code == 4003 and frame.payload[2:] == b"bye"
