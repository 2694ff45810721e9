"""Every chat.* handler, its validation and permission errors, through a real engine,
real chat workers and a real Postgres. One client per user unless a test needs more."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.chat.support import (
    ALICE,
    BOB,
    CHARLIE,
    GENERAL,
    PRIVATE,
    RANDOM,
    SECRET,
    ChatClient,
    make_room,
)
from tests.helpers.proc import EngineProcess

pytestmark = pytest.mark.asyncio

NOWHERE = str(uuid.uuid4())


# ------------------------------------------------------------------ connecting
async def test_connecting_needs_a_token(chat: EngineProcess) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://127.0.0.1:{chat.port}/ws/chat", open_timeout=5):
            pass
    assert info.value.response.status_code == 401


async def test_a_token_whose_subject_is_not_a_uuid_is_refused(chat: EngineProcess) -> None:
    bad = jwt.encode({"sub": "ada", "exp": 2**31 - 1}, SECRET, algorithm="HS256")
    async with connect(
        f"ws://127.0.0.1:{chat.port}/ws/chat?token={bad}", open_timeout=5, ping_interval=None
    ) as ws:
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1008


async def test_connecting_joins_the_users_rooms(chat: EngineProcess) -> None:
    async with ChatClient.as_user(chat.port, BOB, "Bob") as bob:
        rooms = (await bob.call("chat.rooms"))["rooms"]
        assert {r["id"] for r in rooms} >= {GENERAL, RANDOM, PRIVATE}
        assert {r["name"] for r in rooms} >= {"General", "Random", "Private Room"}
    async with ChatClient.as_user(chat.port, CHARLIE, "Charlie") as charlie:
        rooms = (await charlie.call("chat.rooms"))["rooms"]
        assert [r["id"] for r in rooms] == [GENERAL]


async def test_a_new_user_is_created_on_first_connection(chat: EngineProcess) -> None:
    newcomer = str(uuid.uuid4())
    async with ChatClient.as_user(chat.port, newcomer, "Dana") as dana:
        assert (await dana.call("chat.rooms")) == {"rooms": []}
        assert (await dana.error("chat.join", {"room": GENERAL}))["code"] == "FORBIDDEN"


# ------------------------------------------------------------------ unknown types
@pytest.mark.parametrize("type", ["chat.nope", "nope", "chat", "user.online"])
async def test_unknown_types(chat: EngineProcess, type: str) -> None:
    async with ChatClient.as_user(chat.port, ALICE, "Alice") as alice:
        error = await alice.error(type, {"room": GENERAL})
        assert error["code"] == "UNKNOWN_MESSAGE_TYPE"


# ------------------------------------------------------------------ validation
LONG = "x" * 4001

VALIDATION_CASES: list[tuple[str, Any, dict[str, str]]] = [
    ("chat.join", {}, {"room": "required"}),
    ("chat.join", None, {"room": "required"}),
    ("chat.join", {"room": "general"}, {"room": "must be a UUID"}),
    ("chat.join", {"room": 7}, {"room": "must be a UUID"}),
    ("chat.join", ["room"], {"data": "must be an object"}),
    ("chat.join", "room", {"data": "must be an object"}),
    ("chat.leave", {"room": "x"}, {"room": "must be a UUID"}),
    ("chat.send", {"room": GENERAL}, {"message": "required"}),
    ("chat.send", {"room": GENERAL, "message": ""}, {"message": "must be 1 to 4000 characters"}),
    ("chat.send", {"room": GENERAL, "message": LONG}, {"message": "must be 1 to 4000 characters"}),
    ("chat.send", {"room": GENERAL, "message": 5}, {"message": "must be a string"}),
    (
        "chat.send",
        {"room": GENERAL, "message": "a\x00b"},
        {"message": "must not contain NUL characters"},
    ),
    (
        "chat.send",
        {"room": GENERAL, "message": "hi", "type": "system"},
        {"type": "must be one of text, image, file"},
    ),
    (
        "chat.send",
        {"room": GENERAL, "message": "hi", "type": "video"},
        {"type": "must be one of text, image, file"},
    ),
    (
        "chat.send",
        {"room": GENERAL, "message": "hi", "metadata": [1]},
        {"metadata": "must be an object"},
    ),
    (
        "chat.send",
        {"room": GENERAL, "message": "hi", "metadata": {"k": "v" * 5000}},
        {"metadata": "must be at most 4096 bytes of JSON"},
    ),
    (
        "chat.send",
        {"room": "nope", "message": ""},
        {"room": "must be a UUID", "message": "must be 1 to 4000 characters"},
    ),
    ("chat.typing", {"room": GENERAL}, {"isTyping": "required"}),
    ("chat.typing", {"room": GENERAL, "isTyping": "yes"}, {"isTyping": "must be true or false"}),
    ("chat.typing", {"isTyping": True}, {"room": "required"}),
    ("chat.history", {"room": GENERAL, "limit": 0}, {"limit": "must be between 1 and 100"}),
    ("chat.history", {"room": GENERAL, "limit": 101}, {"limit": "must be between 1 and 100"}),
    ("chat.history", {"room": GENERAL, "limit": "5"}, {"limit": "must be an integer"}),
    ("chat.history", {"room": GENERAL, "limit": True}, {"limit": "must be an integer"}),
    ("chat.history", {"room": GENERAL, "limit": 2.5}, {"limit": "must be an integer"}),
    ("chat.history", {"room": GENERAL, "before": "last"}, {"before": "must be a UUID"}),
    (
        "chat.history",
        {"room": GENERAL, "before": str(uuid.uuid4())},
        {"before": "not a message of this room"},
    ),
    ("chat.history", {}, {"room": "required"}),
]


@pytest.mark.parametrize(("type", "data", "fields"), VALIDATION_CASES)
async def test_validation_errors_name_the_field(
    chat: EngineProcess, type: str, data: Any, fields: dict[str, str]
) -> None:
    async with ChatClient.as_user(chat.port, ALICE, "Alice") as alice:
        error = await alice.error(type, data)
        assert error["code"] == "VALIDATION_ERROR"
        assert error["details"] == fields
        for name in fields:
            assert name in error["message"]


# ------------------------------------------------------------------ permissions
async def test_join_a_room_you_are_not_a_member_of(chat: EngineProcess) -> None:
    async with ChatClient.as_user(chat.port, CHARLIE, "Charlie") as charlie:
        for room in (PRIVATE, RANDOM):  # private, and public but not a member
            error = await charlie.error("chat.join", {"room": room})
            assert error["code"] == "FORBIDDEN"
        assert (await charlie.error("chat.join", {"room": NOWHERE}))["code"] == "NOT_FOUND"
        rooms = (await charlie.call("chat.rooms"))["rooms"]
        assert [r["id"] for r in rooms] == [GENERAL]


async def test_history_of_a_room_you_are_not_a_member_of(chat: EngineProcess) -> None:
    async with ChatClient.as_user(chat.port, CHARLIE, "Charlie") as charlie:
        assert (await charlie.error("chat.history", {"room": PRIVATE}))["code"] == "FORBIDDEN"
        assert (await charlie.error("chat.history", {"room": NOWHERE}))["code"] == "NOT_FOUND"


async def test_send_typing_and_leave_need_a_joined_room(chat: EngineProcess) -> None:
    async with ChatClient.as_user(chat.port, CHARLIE, "Charlie") as charlie:
        for type, data in (
            ("chat.send", {"room": RANDOM, "message": "hi"}),
            ("chat.typing", {"room": RANDOM, "isTyping": True}),
            ("chat.leave", {"room": RANDOM}),
            ("chat.send", {"room": NOWHERE, "message": "hi"}),
        ):
            assert (await charlie.error(type, data))["code"] == "FORBIDDEN", type
        # Left: the connection may no longer send there, until it joins again.
        assert await charlie.call("chat.leave", {"room": GENERAL}) == {"success": True}
        error = await charlie.error("chat.send", {"room": GENERAL, "message": "hi"})
        assert error["code"] == "FORBIDDEN"
        error = await charlie.error("chat.typing", {"room": GENERAL, "isTyping": True})
        assert error["code"] == "FORBIDDEN"
        assert (await charlie.call("chat.join", {"room": GENERAL}))["success"] is True
        ack = await charlie.call("chat.send", {"room": GENERAL, "message": "back"})
        assert ack["success"] is True


# ------------------------------------------------------------------ handlers
async def test_join(chat: EngineProcess, database_url: str) -> None:
    room = await make_room(database_url, {ALICE: "owner", BOB: "member", CHARLIE: "admin"})
    async with (
        ChatClient.as_user(chat.port, ALICE, "Alice") as alice,
        ChatClient.as_user(chat.port, BOB, "Bob") as bob,
    ):
        ack = await bob.call("chat.join", {"room": room.upper()})  # any UUID spelling
        assert ack["success"] is True
        assert ack["memberCount"] == 3
        assert ack["room"]["id"] == room
        assert ack["room"]["role"] == "member"
        assert {u["userId"] for u in ack["online"]} == {ALICE, BOB}
        joined = await alice.event_where("user.joined", roomId=room)
        assert joined["data"] == {"userId": BOB, "username": "Bob", "roomId": room}
        await bob.no_event_where("user.joined", 0.2, roomId=room)


async def test_leave(chat: EngineProcess, database_url: str) -> None:
    room = await make_room(database_url, {ALICE: "owner", BOB: "member"})
    async with (
        ChatClient.as_user(chat.port, ALICE, "Alice") as alice,
        ChatClient.as_user(chat.port, BOB, "Bob") as bob,
    ):
        assert await bob.call("chat.leave", {"room": room}) == {"success": True}
        left = await alice.event_where("user.left", roomId=room)
        assert left["data"] == {"userId": BOB, "username": "Bob", "roomId": room}
        assert room not in {r["id"] for r in (await bob.call("chat.rooms"))["rooms"]}
        # Bob's connection no longer gets the room's messages.
        await alice.call("chat.send", {"room": room, "message": "after bob left"})
        await alice.event_where("chat.message", roomId=room)
        await bob.no_event_where("chat.message", 0.3, roomId=room)


async def test_send(chat: EngineProcess, database_url: str) -> None:
    room = await make_room(database_url, {ALICE: "owner", BOB: "member"})
    async with (
        ChatClient.as_user(chat.port, ALICE, "Alice") as alice,
        ChatClient.as_user(chat.port, BOB, "Bob") as bob,
    ):
        ack = await alice.call(
            "chat.send",
            {"room": room, "message": "a picture", "type": "image", "metadata": {"w": 640}},
        )
        assert ack["success"] is True
        uuid.UUID(ack["messageId"])
        # The whole room, the sender included, gets the stored message.
        for client in (alice, bob):
            event = (await client.event_where("chat.message", roomId=room))["data"]
            assert event["id"] == ack["messageId"]
            assert event["roomId"] == room
            assert event["userId"] == ALICE
            assert event["username"] == "Alice"
            assert event["content"] == "a picture"
            assert event["messageType"] == "image"
            assert event["metadata"] == {"w": 640}
            assert event["createdAt"]
        text = await bob.call("chat.send", {"room": room, "message": "é" * 4000})
        event = (await alice.event_where("chat.message", id=text["messageId"]))["data"]
        assert event["messageType"] == "text"
        assert event["metadata"] == {}
        assert event["content"] == "é" * 4000


async def test_typing(chat: EngineProcess, database_url: str) -> None:
    room = await make_room(database_url, {ALICE: "owner", BOB: "member"})
    async with (
        ChatClient.as_user(chat.port, ALICE, "Alice") as alice,
        ChatClient.as_user(chat.port, BOB, "Bob") as bob,
    ):
        for flag in (True, False):
            await alice.call("chat.typing", {"room": room, "isTyping": flag})
            typing = await bob.event_where("user.typing", roomId=room)
            assert typing["data"] == {
                "userId": ALICE,
                "username": "Alice",
                "roomId": room,
                "isTyping": flag,
            }
        await alice.no_event_where("user.typing", 0.2, roomId=room)


async def test_history_pages_oldest_first(chat: EngineProcess, database_url: str) -> None:
    room = await make_room(database_url, {ALICE: "owner", BOB: "member"})
    async with ChatClient.as_user(chat.port, ALICE, "Alice") as alice:
        empty = await alice.call("chat.history", {"room": room})
        assert empty == {"messages": [], "hasMore": False}
        sent = []
        for i in range(7):
            ack = await alice.call("chat.send", {"room": room, "message": f"m{i}"})
            sent.append(ack["messageId"])

        page = await alice.call("chat.history", {"room": room, "limit": 3})
        assert [m["content"] for m in page["messages"]] == ["m4", "m5", "m6"]
        assert [m["id"] for m in page["messages"]] == sent[4:]
        assert page["hasMore"] is True
        page = await alice.call(
            "chat.history", {"room": room, "limit": 3, "before": page["messages"][0]["id"]}
        )
        assert [m["content"] for m in page["messages"]] == ["m1", "m2", "m3"]
        assert page["hasMore"] is True
        page = await alice.call(
            "chat.history", {"room": room, "limit": 3, "before": page["messages"][0]["id"]}
        )
        assert [m["content"] for m in page["messages"]] == ["m0"]
        assert page["hasMore"] is False

        everything = await alice.call("chat.history", {"room": room})  # default limit 50
        assert [m["id"] for m in everything["messages"]] == sent
        assert everything["hasMore"] is False
        first = everything["messages"][0]
        assert set(first) == {
            "id",
            "roomId",
            "userId",
            "username",
            "content",
            "messageType",
            "metadata",
            "createdAt",
        }
        exact = await alice.call("chat.history", {"room": room, "limit": 7})
        assert exact["hasMore"] is False


async def test_history_default_limit_is_50(chat: EngineProcess, database_url: str) -> None:
    room = await make_room(database_url, {ALICE: "owner"})
    async with ChatClient.as_user(chat.port, ALICE, "Alice") as alice:
        ids = [
            (await alice.call("chat.send", {"room": room, "message": str(i)}))["messageId"]
            for i in range(52)
        ]
        page = await alice.call("chat.history", {"room": room})
        assert [m["id"] for m in page["messages"]] == ids[2:]
        assert page["hasMore"] is True
        page = await alice.call("chat.history", {"room": room, "limit": 100})
        assert len(page["messages"]) == 52
        assert page["hasMore"] is False


async def test_history_cursor_from_another_room(chat: EngineProcess, database_url: str) -> None:
    room = await make_room(database_url, {ALICE: "owner"})
    other = await make_room(database_url, {ALICE: "owner"})
    async with ChatClient.as_user(chat.port, ALICE, "Alice") as alice:
        ack = await alice.call("chat.send", {"room": other, "message": "elsewhere"})
        error = await alice.error("chat.history", {"room": room, "before": ack["messageId"]})
        assert error["code"] == "VALIDATION_ERROR"
        assert error["details"] == {"before": "not a message of this room"}


async def test_history_is_kept_for_members_who_left(chat: EngineProcess, database_url: str) -> None:
    room = await make_room(database_url, {ALICE: "owner", BOB: "member"})
    async with ChatClient.as_user(chat.port, BOB, "Bob") as bob:
        await bob.call("chat.send", {"room": room, "message": "still here"})
        await bob.call("chat.leave", {"room": room})
        page = await bob.call("chat.history", {"room": room})  # a member, not joined
        assert [m["content"] for m in page["messages"]] == ["still here"]
