"""The seed's comparison table (HTTP action ↔ WebSocket), one test per row.

Each row is served by ``tests/helpers/services/table.py``, written exactly the way the
table writes it, run by a real engine process supervising a real worker process, and
called by real clients: raw HTTP/1.1 and a WebSocket speaking ``{type, data, id}``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import orjson
import pytest

from tests.helpers.http_client import HttpResponse, RawHttp
from tests.helpers.proc import EngineProcess
from tests.integration.support import Client, demo_engine

pytestmark = pytest.mark.asyncio

TABLE = "tests.helpers.services.table"
SECRET = "seed-table-secret-of-at-least-32-bytes"
ONION = ["global1>", "global2>", "scoped>", "handler", "<scoped", "<global2", "<global1"]


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with demo_engine("--jwt-secret", SECRET, services=(TABLE,)) as eng:
        yield eng


def token(sub: str = "u-1", name: str = "ann", roles: tuple[str, ...] = ("admin",)) -> str:
    now = int(time.time())
    claims = {"sub": sub, "preferred_username": name, "roles": list(roles), "exp": now + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def http(
    eng: EngineProcess,
    method: str,
    target: str,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
) -> HttpResponse:
    async with RawHttp(eng.port) as conn:
        return await conn.request(method, target, headers, body)


def bearer(tok: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {tok}")]


def json_body(value: Any) -> tuple[bytes, list[tuple[str, str]]]:
    return orjson.dumps(value), [("content-type", "application/json")]


# ----------------------------------------------------------------------- the rows
async def test_row_service_action_and_ws_on_take_name_opts_fn(engine: EngineProcess) -> None:
    """``service.action("name", opts, fn)`` ↔ ``service.ws.on("name", opts, fn)``."""
    # opts["route"], opts["method"] and opts["auth"] all took effect.
    resp = await http(engine, "GET", "/table/items/42", headers=bearer(token()))
    assert (resp.status, resp.json()) == (200, {"id": "42", "user": "u-1"})
    assert (await http(engine, "GET", "/table/items/42")).status == 401
    assert (await http(engine, "POST", "/table/items/42", headers=bearer(token()))).status == 405
    async with Client.open(engine.port, f"/ws/table?token={token()}") as ws:
        assert await ws.call("item.get", {"id": "42"}) == {"id": "42", "user": "u-1"}
    async with Client.open(engine.port, "/ws/table") as anonymous:
        frame = await anonymous.request("item.get", {"id": "42"})
        assert frame["error"]["code"] == "UNAUTHORIZED"
        # service.ws.on("name", fn) and service.action("name", fn): no opts.
        assert await anonymous.call("ping") == "pong"
    resp = await http(engine, "GET", "/table/ping")
    assert (resp.status, resp.json()) == (200, "pong")


async def test_row_ctx_body_and_ctx_message(engine: EngineProcess) -> None:
    """``ctx.body`` (the parsed HTTP body) ↔ ``ctx.message`` (the client's ``data``)."""
    body, headers = json_body({"room": "r1", "n": [1, 2]})
    resp = await http(engine, "POST", "/table/echo", body, headers)
    assert (resp.status, resp.json()) == (200, {"got": {"room": "r1", "n": [1, 2]}})
    form = [("content-type", "application/x-www-form-urlencoded")]
    resp = await http(engine, "POST", "/table/echo", b"room=r1&tag=a&tag=b&empty=", form)
    assert resp.json() == {"got": {"room": "r1", "tag": ["a", "b"], "empty": ""}}
    async with Client.open(engine.port, "/ws/table") as ws:
        got = await ws.call("echo", {"room": "r1", "n": [1, 2]})
        assert got == {"got": {"room": "r1", "n": [1, 2]}, "room": "r1"}


async def test_row_ctx_db(engine: EngineProcess) -> None:
    """``ctx.db.users.whereEquals()`` on both sides: one handle, the service's own."""
    bob = {"id": "u-2", "username": f"bob-{uuid.uuid4().hex[:8]}"}
    body, headers = json_body(bob)
    assert (await http(engine, "POST", "/table/users", body, headers)).status == 200
    resp = await http(engine, "GET", f"/table/users/{bob['username']}")
    assert resp.json() == [bob]
    async with Client.open(engine.port, "/ws/table") as ws:
        # What the HTTP action wrote, the WebSocket handler reads.
        assert await ws.call("users.find", {"username": bob["username"]}) == [bob]
        assert await ws.call("users.find", {"username": "ann"}) == [
            {"id": "u-1", "username": "ann"}
        ]


async def test_row_ctx_auth(engine: EngineProcess) -> None:
    """``ctx.auth`` ↔ ``ctx.auth``: the verified token, the same on both sides."""
    tok = token("u-7", "eve", ("editor",))
    resp = await http(engine, "GET", "/table/whoami", headers=bearer(tok))
    assert resp.status == 200
    auth = resp.json()
    assert {k: auth[k] for k in ("userId", "username", "roles")} == {
        "userId": "u-7",
        "username": "eve",
        "roles": ["editor"],
    }
    assert auth["claims"]["sub"] == "u-7"
    async with Client.open(engine.port, f"/ws/table?token={tok}") as ws:
        assert await ws.call("whoami") == auth


async def test_row_service_group_and_ws_group_take_prefix_cb(engine: EngineProcess) -> None:
    """``service.group("prefix", cb)`` ↔ ``service.ws.group("prefix", cb)``."""
    # The route prefix applied, and the group's middleware ran inside the global ones.
    resp = await http(engine, "GET", "/table/admin/stats")
    assert resp.status == 200
    assert resp.json()["trace"] == [
        "global1>",
        "global2>",
        "admin>",
        "<admin",
        "<global2",
        "<global1",
    ]
    assert (await http(engine, "GET", "/table/stats")).status == 404
    async with Client.open(engine.port, "/ws/table") as ws:
        frame = await ws.request("chat.send", {"text": "hi"})
        assert frame["data"] == {
            "sent": "hi",
            "type": "chat.send",
            "trace": ["global1>", "global2>", "chat>", "<chat", "<global2", "<global1"],
        }


async def test_row_service_use_and_ws_use_wrap_in_the_same_onion(engine: EngineProcess) -> None:
    """``service.use(middleware)`` ↔ ``service.ws.use(middleware)``: same order both sides."""
    resp = await http(engine, "GET", "/table/traced")
    assert (resp.status, resp.json()) == (200, {"trace": ONION})
    async with Client.open(engine.port, "/ws/table") as ws:
        assert await ws.call("traced.ws") == {"trace": ONION}


async def test_row_return_data_is_the_reply_and_the_ack(engine: EngineProcess) -> None:
    """``return data`` ↔ ``return data`` (ack)."""
    resp = await http(engine, "GET", "/table/data")
    assert (resp.status, resp.header("content-type"), resp.json()) == (
        200,
        "application/json",
        {"ok": True, "n": 1},
    )
    async with Client.open(engine.port, "/ws/table") as ws:
        await ws.send("data", None, id="ack-1")
        assert await ws.ack("ack-1") == {
            "id": "ack-1",
            "type": "data",
            "data": {"ok": True, "n": 1},
        }


# ------------------------------------------------- what ``return data`` cannot be
async def test_a_return_value_json_cannot_encode_is_a_clean_internal_error(
    engine: EngineProcess,
) -> None:
    resp = await http(engine, "GET", "/table/unencodable")
    assert (resp.status, resp.json()) == (
        500,
        {"error": {"code": "INTERNAL", "message": "internal error"}},
    )
    # ctx.body of a body that is neither JSON nor a form is bytes: returning it as is
    # is the same mistake.
    resp = await http(engine, "POST", "/table/echo", b"hi", [("content-type", "text/plain")])
    assert resp.status == 500
    async with Client.open(engine.port, "/ws/table") as ws:
        frame = await ws.request("unencodable")
        assert frame["error"] == {"code": "INTERNAL", "message": "internal error"}
        assert await ws.call("ping") == "pong"  # the connection goes on
    log = engine.output()
    assert "action 'unencodable' returned a value JSON cannot encode: set at ['when']" in log
    assert "action 'echo-body' returned a value JSON cannot encode: bytes at ['got']" in log
    assert "handler of 'unencodable' returned a value JSON cannot encode: set at ['when']" in log


async def test_a_malformed_json_body_is_bad_request(engine: EngineProcess) -> None:
    resp = await http(
        engine, "POST", "/table/echo", b"{nope", [("content-type", "application/json")]
    )
    assert resp.status == 400
    assert resp.json()["error"]["code"] == "BAD_REQUEST"
    assert "Traceback" not in engine.output()
