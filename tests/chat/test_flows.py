"""The original guide's flows with two and three users, and presence across tabs,
through a real engine, two real chat workers and a real Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from tests.chat.support import (
    ALICE,
    BOB,
    CHARLIE,
    GENERAL,
    PRESENCE_GRACE,
    ChatClient,
    make_room,
)
from tests.helpers.proc import EngineProcess

pytestmark = pytest.mark.asyncio


async def test_two_users_chat(chat: EngineProcess, database_url: str) -> None:
    """Alice and Bob: join, typing, send both ways, history, leave."""
    room = await make_room(database_url, {ALICE: "owner", BOB: "member"})
    async with ChatClient.as_user(chat.port, ALICE, "Alice") as alice:
        await alice.call("chat.join", {"room": room})
        async with ChatClient.as_user(chat.port, BOB, "Bob") as bob:
            await bob.call("chat.join", {"room": room})
            assert (await alice.event_where("user.joined", roomId=room))["data"]["userId"] == BOB

            await bob.call("chat.typing", {"room": room, "isTyping": True})
            typing = await alice.event_where("user.typing", roomId=room)
            assert typing["data"]["username"] == "Bob"
            assert typing["data"]["isTyping"] is True
            hello = await bob.call("chat.send", {"room": room, "message": "Hello Alice!"})
            await bob.call("chat.typing", {"room": room, "isTyping": False})
            got = await alice.event_where("chat.message", roomId=room)
            assert got["data"]["id"] == hello["messageId"]
            assert got["data"]["content"] == "Hello Alice!"
            assert (await alice.event_where("user.typing", roomId=room))["data"][
                "isTyping"
            ] is False

            reply = await alice.call("chat.send", {"room": room, "message": "Hi Bob"})
            back = await bob.event_where("chat.message", id=reply["messageId"])
            assert back["data"]["username"] == "Alice"

            page = await bob.call("chat.history", {"room": room})
            assert [m["content"] for m in page["messages"]] == ["Hello Alice!", "Hi Bob"]
            assert [m["username"] for m in page["messages"]] == ["Bob", "Alice"]

            assert await bob.call("chat.leave", {"room": room}) == {"success": True}
            assert (await alice.event_where("user.left", roomId=room))["data"]["userId"] == BOB
            await alice.call("chat.send", {"room": room, "message": "bye"})
            await bob.no_event_where("chat.message", 0.3, roomId=room)


async def test_three_users_in_general(chat: EngineProcess) -> None:
    """The seeded General room with Alice, Bob and Charlie, as in the guide."""
    async with (
        ChatClient.as_user(chat.port, ALICE, "Alice") as alice,
        ChatClient.as_user(chat.port, BOB, "Bob") as bob,
        ChatClient.as_user(chat.port, CHARLIE, "Charlie") as charlie,
    ):
        clients = {ALICE: alice, BOB: bob, CHARLIE: charlie}
        for user_id, client in clients.items():
            ack = await client.call("chat.join", {"room": GENERAL})
            assert ack["memberCount"] == 3
            for other_id, other in clients.items():
                if other_id == user_id:
                    continue
                if list(clients).index(other_id) < list(clients).index(user_id):
                    # Those already there hear about the newcomer.
                    await other.event_where("user.joined", roomId=GENERAL, userId=user_id)
        online = (await charlie.call("chat.join", {"room": GENERAL}))["online"]
        assert {u["userId"] for u in online} == {ALICE, BOB, CHARLIE}

        await charlie.call("chat.typing", {"room": GENERAL, "isTyping": True})
        for client in (alice, bob):
            await client.event_where("user.typing", roomId=GENERAL, userId=CHARLIE)
        await charlie.no_event_where("user.typing", 0.2, userId=CHARLIE)

        sent = {}
        for user_id, client in clients.items():
            ack = await client.call("chat.send", {"room": GENERAL, "message": f"hi from {user_id}"})
            sent[user_id] = ack["messageId"]
        for client in clients.values():
            for message_id in sent.values():
                await client.event_where("chat.message", id=message_id)

        page = await alice.call("chat.history", {"room": GENERAL, "limit": 3})
        assert [m["id"] for m in page["messages"]] == list(sent.values())

        await bob.call("chat.leave", {"room": GENERAL})
        for client in (alice, charlie):
            await client.event_where("user.left", roomId=GENERAL, userId=BOB)
        last = await charlie.call("chat.send", {"room": GENERAL, "message": "Bob left"})
        await alice.event_where("chat.message", id=last["messageId"])
        await bob.no_event_where("chat.message", 0.3, id=last["messageId"])


async def test_presence_across_two_tabs_of_one_user(chat: EngineProcess, database_url: str) -> None:
    """Two tabs make one user.online and, once both closed, one user.offline."""
    watcher_id, erin = str(uuid.uuid4()), str(uuid.uuid4())
    room = await make_room(database_url, {watcher_id: "owner", erin: "member"})
    async with ChatClient.as_user(chat.port, watcher_id, "Watcher") as watcher:
        async with contextlib.AsyncExitStack() as tabs:
            first = await tabs.enter_async_context(ChatClient.as_user(chat.port, erin, "Erin"))
            online = await watcher.event_where("user.online", roomId=room, userId=erin)
            assert online["data"] == {
                "userId": erin,
                "username": "Erin",
                "roomId": room,
                "roomIds": [room],
            }
            # The connection is in its rooms from the start.
            assert room in {r["id"] for r in (await first.call("chat.rooms"))["rooms"]}

            async with ChatClient.as_user(chat.port, erin, "Erin") as second:
                await second.call("chat.rooms")
                await watcher.no_event_where("user.online", 0.3, userId=erin)
                online_now = (await watcher.call("chat.join", {"room": room}))["online"]
                assert {u["userId"] for u in online_now} == {watcher_id, erin}
            # One tab closed, one open: still online.
            await watcher.no_event_where("user.offline", PRESENCE_GRACE * 3, userId=erin)
        offline = await watcher.event_where("user.offline", roomId=room, userId=erin)
        assert offline["data"] == {
            "userId": erin,
            "username": "Erin",
            "roomId": room,
            "roomIds": [room],
        }
        await watcher.no_event_where("user.offline", 0.3, userId=erin)
        online_now = (await watcher.call("chat.join", {"room": room}))["online"]
        assert [u["userId"] for u in online_now] == [watcher_id]


async def test_a_quick_reconnect_is_not_offline(chat: EngineProcess, database_url: str) -> None:
    """A reload within the grace period produces neither offline nor online."""
    watcher_id, frank = str(uuid.uuid4()), str(uuid.uuid4())
    room = await make_room(database_url, {watcher_id: "owner", frank: "member"})
    async with ChatClient.as_user(chat.port, watcher_id, "Watcher") as watcher:
        async with ChatClient.as_user(chat.port, frank, "Frank") as tab:
            await watcher.event_where("user.online", roomId=room, userId=frank)
            await tab.call("chat.rooms")
        async with ChatClient.as_user(chat.port, frank, "Frank") as tab:
            await tab.call("chat.rooms")
            await watcher.no_event_where("user.offline", PRESENCE_GRACE * 2, userId=frank)
            await watcher.no_event_where("user.online", 0.1, userId=frank)
        await watcher.event_where("user.offline", roomId=room, userId=frank)


async def test_a_watcher_sharing_three_rooms_gets_one_online_and_one_offline(
    chat: EngineProcess, database_url: str
) -> None:
    """One user.online and one user.offline per watcher, however many rooms it shares
    with the user: they are in ``roomIds`` (``roomId`` is the first of them)."""
    watcher_id, other_id, hank = (str(uuid.uuid4()) for _ in range(3))
    shared = [
        await make_room(database_url, {watcher_id: "owner", hank: "member"}) for _ in range(3)
    ]
    shared.sort()  # the order of the user's rooms in the database
    lone = await make_room(database_url, {other_id: "owner", hank: "member"})

    def changes(client: ChatClient) -> list[tuple[str, list[str]]]:
        return [
            (f["type"], f["data"]["roomIds"])
            for f in client.frames
            if f.get("type") in ("user.online", "user.offline") and f["data"]["userId"] == hank
        ]

    async with (
        ChatClient.as_user(chat.port, watcher_id, "Watcher") as watcher,
        ChatClient.as_user(chat.port, other_id, "Other") as other,
    ):
        async with ChatClient.as_user(chat.port, hank, "Hank"):
            online = await watcher.event_where("user.online", userId=hank)
            assert online["data"] == {
                "userId": hank,
                "username": "Hank",
                "roomId": shared[0],
                "roomIds": shared,
            }
            online = await other.event_where("user.online", userId=hank)
            assert online["data"]["roomIds"] == [lone] and online["data"]["roomId"] == lone
        offline = await watcher.event_where("user.offline", userId=hank)
        assert offline["data"]["roomIds"] == shared
        await other.event_where("user.offline", userId=hank)
        # Hank comes back: what his first visit produced arrived before this.
        async with ChatClient.as_user(chat.port, hank, "Hank"):
            await watcher.event_where("user.online", userId=hank)
            await other.event_where("user.online", userId=hank)
        assert changes(watcher) == [
            ("user.online", shared),
            ("user.offline", shared),
            ("user.online", shared),
        ]
        assert changes(other) == [
            ("user.online", [lone]),
            ("user.offline", [lone]),
            ("user.online", [lone]),
        ]


async def test_messages_reach_clients_served_by_either_worker(
    chat: EngineProcess, database_url: str
) -> None:
    """Two workers: whichever handles a send, every member's connection gets it."""
    users = [str(uuid.uuid4()) for _ in range(4)]
    room = await make_room(database_url, dict.fromkeys(users, "member"))
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(ChatClient.as_user(chat.port, u, f"p{i}"))
            for i, u in enumerate(users)
        ]
        acks = await asyncio.gather(
            *(
                c.call("chat.send", {"room": room, "message": f"n{i}"})
                for i, c in enumerate(clients)
            )
        )
        for client in clients:
            got = {(await client.event("chat.message"))["data"]["id"] for _ in acks}
            assert got == {ack["messageId"] for ack in acks}
