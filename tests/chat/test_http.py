"""The chat service's HTTP actions, through a real engine and real chat workers."""

from __future__ import annotations

import http.client
import uuid
from typing import Any

import jwt
import orjson
import pytest

from tests.chat.support import ALICE, BOB, CHARLIE, GENERAL, PRIVATE, RANDOM, SECRET, token
from tests.helpers.proc import EngineProcess


def call(
    eng: EngineProcess,
    method: str,
    path: str,
    *,
    user: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(eng.host, eng.port, timeout=10)
    try:
        headers = {}
        if user is not None:
            headers["authorization"] = f"Bearer {token(user)}"
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        if data is not None:
            headers["content-type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def call_json(eng: EngineProcess, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    status, _, body = call(eng, method, path, **kw)
    return status, orjson.loads(body) if body else None


# ------------------------------------------------------------------ health
def test_health_ready_live(chat: EngineProcess) -> None:
    assert call_json(chat, "GET", "/chat/health") == (
        200,
        {"status": "ok", "service": "chat", "version": "1.0.0"},
    )
    assert call_json(chat, "GET", "/chat/ready") == (200, {"status": "ready"})
    assert call_json(chat, "GET", "/chat/live") == (200, {"status": "ok"})


# ------------------------------------------------------------------ rooms
def test_list_rooms_of_each_seeded_user(chat: EngineProcess) -> None:
    status, body = call_json(chat, "GET", "/chat/rooms", user=ALICE)
    assert status == 200
    rooms = {r["id"]: r for r in body["rooms"]}
    assert set(rooms) == {GENERAL, RANDOM, PRIVATE}
    assert {r["role"] for r in rooms.values()} == {"owner"}
    assert rooms[GENERAL]["name"] == "General"
    assert rooms[GENERAL]["memberCount"] == 3
    assert rooms[PRIVATE]["type"] == "private"
    assert all("joinedAt" in r for r in rooms.values())

    _, body = call_json(chat, "GET", "/chat/rooms", user=BOB)
    assert {r["id"]: r["role"] for r in body["rooms"] if r["id"] in (GENERAL, RANDOM, PRIVATE)} == {
        GENERAL: "member",
        RANDOM: "member",
        PRIVATE: "member",
    }
    _, body = call_json(chat, "GET", "/chat/rooms", user=CHARLIE)
    assert [r["id"] for r in body["rooms"] if r["id"] in (GENERAL, RANDOM, PRIVATE)] == [GENERAL]


def test_rooms_need_a_token(chat: EngineProcess) -> None:
    for method, path in (("GET", "/chat/rooms"), ("GET", f"/chat/rooms/{GENERAL}")):
        status, body = call_json(chat, method, path)
        assert status == 401
        assert body["error"]["code"] == "UNAUTHORIZED"
    status, _ = call_json(chat, "POST", "/chat/rooms", body={"name": "x1"})
    assert status == 401


def test_rooms_refuse_a_token_whose_subject_is_not_a_uuid(chat: EngineProcess) -> None:
    conn = http.client.HTTPConnection(chat.host, chat.port, timeout=10)
    bad = jwt.encode({"sub": "ada", "exp": 2**31 - 1}, SECRET, algorithm="HS256")
    conn.request("GET", "/chat/rooms", headers={"authorization": f"Bearer {bad}"})
    resp = conn.getresponse()
    assert resp.status == 403
    assert orjson.loads(resp.read())["error"]["code"] == "FORBIDDEN"
    conn.close()


def test_get_room(chat: EngineProcess) -> None:
    status, room = call_json(chat, "GET", f"/chat/rooms/{GENERAL}", user=CHARLIE)
    assert status == 200
    assert room["id"] == GENERAL
    assert room["name"] == "General"
    assert room["type"] == "public"
    assert room["memberCount"] == 3
    assert room["role"] == "member"
    assert {m["userId"]: m["role"] for m in room["members"]} == {
        ALICE: "owner",
        BOB: "member",
        CHARLIE: "member",
    }


def test_get_public_room_as_a_non_member(chat: EngineProcess) -> None:
    status, room = call_json(chat, "GET", f"/chat/rooms/{RANDOM}", user=CHARLIE)
    assert status == 200
    assert room["role"] is None
    assert room["memberCount"] == 2


def test_get_private_room(chat: EngineProcess) -> None:
    status, body = call_json(chat, "GET", f"/chat/rooms/{PRIVATE}", user=CHARLIE)
    assert status == 403
    assert body["error"]["code"] == "FORBIDDEN"
    status, room = call_json(chat, "GET", f"/chat/rooms/{PRIVATE}", user=BOB)
    assert status == 200
    assert room["memberCount"] == 2


@pytest.mark.parametrize("room", [str(uuid.uuid4()), "not-a-uuid", GENERAL.upper()[:-1]])
def test_get_unknown_room(chat: EngineProcess, room: str) -> None:
    status, body = call_json(chat, "GET", f"/chat/rooms/{room}", user=ALICE)
    assert status == 404
    assert body["error"]["code"] == "NOT_FOUND"


def test_create_room(chat: EngineProcess) -> None:
    status, room = call_json(
        chat,
        "POST",
        "/chat/rooms",
        user=CHARLIE,
        body={"name": "  Book club ", "description": "Monthly reads", "type": "private"},
    )
    assert status == 201
    assert room["name"] == "Book club"
    assert room["description"] == "Monthly reads"
    assert room["type"] == "private"
    assert room["role"] == "owner"
    assert room["memberCount"] == 1
    assert room["createdBy"] == CHARLIE
    # The creator owns it, others cannot see it.
    _, mine = call_json(chat, "GET", "/chat/rooms", user=CHARLIE)
    assert {r["id"]: r["role"] for r in mine["rooms"]}[room["id"]] == "owner"
    assert call_json(chat, "GET", f"/chat/rooms/{room['id']}", user=ALICE)[0] == 403


def test_create_room_defaults_to_public(chat: EngineProcess) -> None:
    status, room = call_json(chat, "POST", "/chat/rooms", user=BOB, body={"name": "Lunch"})
    assert status == 201
    assert room["type"] == "public"
    assert room["description"] is None


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({}, "name", "required"),
        ({"name": "x"}, "name", "must be 2 to 100 characters"),
        ({"name": "  x  "}, "name", "must be 2 to 100 characters"),
        ({"name": "x" * 101}, "name", "must be 2 to 100 characters"),
        ({"name": 42}, "name", "must be a string"),
        ({"name": "ok", "description": "d" * 501}, "description", "must be 0 to 500 characters"),
        ({"name": "ok", "type": "direct"}, "type", "must be one of public, private"),
        ({"name": "ok", "type": "secret"}, "type", "must be one of public, private"),
        ([1, 2], "body", "must be an object"),
    ],
)
def test_create_room_validation(chat: EngineProcess, body: Any, field: str, problem: str) -> None:
    status, answer = call_json(chat, "POST", "/chat/rooms", user=ALICE, body=body)
    assert status == 422
    assert answer["error"]["code"] == "VALIDATION_ERROR"
    assert answer["error"]["details"] == {field: problem}
    assert field in answer["error"]["message"]


def test_create_room_validation_names_every_bad_field(chat: EngineProcess) -> None:
    status, answer = call_json(
        chat, "POST", "/chat/rooms", user=ALICE, body={"name": "", "type": "nope"}
    )
    assert status == 422
    assert set(answer["error"]["details"]) == {"name", "type"}


def test_create_room_with_a_body_that_is_not_json(chat: EngineProcess) -> None:
    status, answer = call_json(chat, "POST", "/chat/rooms", user=ALICE, raw=b"{nope")
    assert status == 400
    assert answer["error"]["code"] == "BAD_REQUEST"


# ------------------------------------------------------------------ page
def test_page_is_html(chat: EngineProcess) -> None:
    for path in ("/chat/", "/chat"):
        status, headers, body = call(chat, "GET", path)
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert b"<title>Linkd chat</title>" in body
        assert b'src="/chat/static/linkd.js"' in body
        assert "script-src 'self'" in headers["content-security-policy"]


@pytest.mark.parametrize(
    ("name", "content_type", "marker"),
    [
        ("chat.js", "text/javascript; charset=utf-8", b"LinkdClient"),
        ("linkd.js", "text/javascript; charset=utf-8", b"class LinkdClient"),
        ("chat.css", "text/css; charset=utf-8", b".messages"),
    ],
)
def test_static_files(chat: EngineProcess, name: str, content_type: str, marker: bytes) -> None:
    status, headers, body = call(chat, "GET", f"/chat/static/{name}")
    assert status == 200
    assert headers["content-type"] == content_type
    assert headers["x-content-type-options"] == "nosniff"
    assert marker in body


@pytest.mark.parametrize(
    "name",
    ["service.py", "..%2Fservice.py", "..%2F..%2Fpyproject.toml", "index.html", "%2Fetc%2Fpasswd"],
)
def test_static_files_come_from_a_whitelist(chat: EngineProcess, name: str) -> None:
    status, _, body = call(chat, "GET", f"/chat/static/{name}")
    assert status == 404
    assert b"import" not in body and b"root:" not in body


# ------------------------------------------------------------------ demo mode
def test_config_lists_the_demo_users(chat: EngineProcess) -> None:
    status, config = call_json(chat, "GET", "/chat/config")
    assert status == 200
    assert config["demo"] is True
    assert config["wsPath"] == "/ws/chat"
    assert [u["username"] for u in config["users"]] == ["Alice", "Bob", "Charlie"]
    assert [u["id"] for u in config["users"]] == [ALICE, BOB, CHARLIE]


def test_demo_token_is_accepted_by_the_engine(chat: EngineProcess) -> None:
    status, answer = call_json(chat, "POST", "/chat/demo/token", body={"userId": BOB})
    assert status == 200
    assert answer["user"] == {"id": BOB, "username": "Bob"}
    claims = jwt.decode(answer["token"], SECRET, algorithms=["HS256"])
    assert claims["sub"] == BOB
    assert claims["preferred_username"] == "Bob"
    conn = http.client.HTTPConnection(chat.host, chat.port, timeout=10)
    conn.request("GET", "/chat/rooms", headers={"authorization": f"Bearer {answer['token']}"})
    resp = conn.getresponse()
    assert resp.status == 200
    rooms = {r["id"] for r in orjson.loads(resp.read())["rooms"]}
    assert {GENERAL, RANDOM, PRIVATE} <= rooms
    conn.close()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"userId": str(uuid.uuid4())}, 404, "NOT_FOUND"),
        ({"userId": "alice"}, 422, "VALIDATION_ERROR"),
        ({}, 422, "VALIDATION_ERROR"),
    ],
)
def test_demo_token_only_for_seeded_users(
    chat: EngineProcess, body: Any, status: int, code: str
) -> None:
    got, answer = call_json(chat, "POST", "/chat/demo/token", body=body)
    assert got == status
    assert answer["error"]["code"] == code
    if code == "VALIDATION_ERROR":
        assert "userId" in answer["error"]["details"]
