"""The WebSocket side: ``chat.*`` handlers, connect and presence (docs/chat.md §Protocol).

Rooms are engine rooms named by the room's UUID: joining one is what makes a
connection receive its events. Database membership decides who may join.
"""

from __future__ import annotations

from typing import Any, Final

from examples.chat.identity import User, current_user
from examples.chat.outages import guard_outages
from examples.chat.store import ChatStore, Membership, Room
from examples.chat.validation import Fields, parse_uuid
from sdk import (
    Context,
    ForbiddenError,
    NotFoundError,
    PresenceContext,
    Service,
    ValidationError,
    WsContext,
    WsGroup,
)

__all__ = ["MESSAGE_TYPES", "register"]

#: What a client may send as ``type``; ``system`` messages are the service's own.
MESSAGE_TYPES: Final = ("text", "image", "file")
MAX_MESSAGE_LENGTH: Final = 4000
HISTORY_DEFAULT: Final = 50
HISTORY_MAX: Final = 100


def store(ctx: Context) -> ChatStore:
    db = ctx.db
    assert isinstance(db, ChatStore), "the chat service's before_start sets service.db"
    return db


async def member_room(db: ChatStore, room_id: str, user: User) -> tuple[Room, Membership]:
    """The room and the caller's membership: ``NOT_FOUND`` / ``FORBIDDEN`` otherwise."""
    room = await db.room(room_id)
    if room is None:
        raise NotFoundError("no such room")
    membership = await db.membership(room_id, user.id)
    if membership is None:
        raise ForbiddenError("you are not a member of this room")
    return room, membership


async def require_joined(ctx: WsContext, room_id: str) -> None:
    if room_id not in await ctx.rooms():
        raise ForbiddenError("join the room first")


async def online_users(ctx: Context, room_id: str) -> list[dict[str, Any]]:
    """``{userId, username}`` of the users with a connection in the room."""
    return [{"userId": p["userId"], "username": p["username"]} for p in await ctx.presence(room_id)]


async def join(ctx: WsContext) -> Any:
    v = Fields(ctx.message)
    room_id = v.uuid("room")
    v.check()
    user = current_user(ctx)
    db = store(ctx)
    room, membership = await member_room(db, room_id, user)
    await ctx.join(room_id)
    await (
        ctx.to(room_id)
        .except_(ctx.socket)
        .emit("user.joined", {"userId": user.id, "username": user.username, "roomId": room_id})
    )
    return {
        "success": True,
        "room": {**room, "role": membership.role},
        "memberCount": await db.member_count(room_id),
        "online": await online_users(ctx, room_id),
    }


async def leave(ctx: WsContext) -> Any:
    v = Fields(ctx.message)
    room_id = v.uuid("room")
    v.check()
    user = current_user(ctx)
    await require_joined(ctx, room_id)
    await (
        ctx.to(room_id)
        .except_(ctx.socket)
        .emit("user.left", {"userId": user.id, "username": user.username, "roomId": room_id})
    )
    await ctx.leave(room_id)
    return {"success": True}


async def send(ctx: WsContext) -> Any:
    v = Fields(ctx.message)
    room_id = v.uuid("room")
    content = v.text("message", min_len=1, max_len=MAX_MESSAGE_LENGTH)
    message_type = v.choice("type", MESSAGE_TYPES, default="text")
    metadata = v.json_object("metadata")
    v.check()
    user = current_user(ctx)
    await require_joined(ctx, room_id)
    message = await store(ctx).add_message(
        room_id=room_id,
        user_id=user.id,
        content=content,
        message_type=message_type,
        metadata=metadata,
    )
    # The whole room, sender included: every tab shows the stored message the same way.
    await ctx.to(room_id).emit("chat.message", message)
    return {"success": True, "messageId": message["id"]}


async def typing(ctx: WsContext) -> Any:
    v = Fields(ctx.message)
    room_id = v.uuid("room")
    is_typing = v.boolean("isTyping")
    v.check()
    user = current_user(ctx)
    await require_joined(ctx, room_id)
    await (
        ctx.to(room_id)
        .except_(ctx.socket)
        .emit(
            "user.typing",
            {
                "userId": user.id,
                "username": user.username,
                "roomId": room_id,
                "isTyping": is_typing,
            },
        )
    )
    return {"success": True}


async def history(ctx: WsContext) -> Any:
    v = Fields(ctx.message)
    room_id = v.uuid("room")
    limit = v.integer("limit", minimum=1, maximum=HISTORY_MAX, default=HISTORY_DEFAULT)
    before = v.optional_uuid("before")
    v.check()
    user = current_user(ctx)
    db = store(ctx)
    await member_room(db, room_id, user)
    page = await db.history(room_id, limit=limit, before=before)
    if page is None:
        raise ValidationError("invalid before", fields={"before": "not a message of this room"})
    return {"messages": page.messages, "hasMore": page.has_more}


async def rooms(ctx: WsContext) -> Any:
    current_user(ctx)
    joined = [r for r in (parse_uuid(name) for name in await ctx.rooms()) if r is not None]
    return {"rooms": await store(ctx).rooms_by_id(joined) if joined else []}


async def connected(ctx: WsContext) -> None:
    """Put the new connection in every room its user is a member of."""
    user = current_user(ctx)
    db = store(ctx)
    await db.ensure_user(user.id, user.username)
    for room_id in await db.room_ids_of(user.id):
        await ctx.join(room_id)


async def presence(ctx: PresenceContext) -> None:
    """``user.online`` / ``user.offline`` once to each user present in a room of this
    one: not once per tab, nor once per room they share (those are in ``roomIds``;
    ``roomId``, the first of them, is kept for clients that read only it)."""
    user_id = parse_uuid(ctx.user_id)
    if user_id is None:
        return
    event = "user.online" if ctx.online else "user.offline"
    about = {"userId": user_id, "username": ctx.username}
    await ctx.to_watchers(await store(ctx).room_ids_of(user_id)).emit(
        event, lambda _watcher, rooms: {**about, "roomId": rooms[0], "roomIds": rooms}
    )


def chat(group: WsGroup) -> None:
    """The ``chat.*`` handlers, on the group ``register`` makes."""
    group.use(guard_outages)
    # Joining and leaving change this connection's rooms: a retried id after a
    # reconnect must run again on the new connection, not get the old one's answer.
    group.on("join", {"idempotent": False}, join)
    group.on("leave", {"idempotent": False}, leave)
    group.on("send", send)
    # Typing indicators need no order and must not queue behind a slow history query.
    group.on("typing", {"concurrent": True}, typing)
    group.on("history", history)
    group.on("rooms", rooms)


def register(service: Service) -> None:
    """Add the ``chat.*`` handlers, on_connect and on_presence to ``service``."""
    service.ws.group("chat", {"auth": True}, chat)
    service.ws.on_connect(connected)
    service.ws.on_presence(presence)
