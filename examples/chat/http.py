"""The HTTP side: the caller's rooms, one room, and creating a room (``/chat/rooms``)."""

from __future__ import annotations

from typing import Any, Final

from examples.chat.handlers import store
from examples.chat.identity import current_user
from examples.chat.outages import guard_outages
from examples.chat.validation import Fields, parse_uuid
from sdk import ForbiddenError, HttpContext, HttpGroup, NotFoundError, Response, Service

__all__ = ["register"]

#: Kinds of room a client may create; ``direct`` rooms are made by the service.
CREATABLE_TYPES: Final = ("public", "private")


async def list_rooms(ctx: HttpContext) -> Any:
    """``GET /chat/rooms``: the caller's rooms, each with its role and joinedAt."""
    user = current_user(ctx)
    return {"rooms": await store(ctx).rooms_of(user.id)}


async def get_room(ctx: HttpContext) -> Any:
    """``GET /chat/rooms/:id``: 404 unknown, 403 private and not a member."""
    user = current_user(ctx)
    room_id = parse_uuid(ctx.params.get("id"))
    db = store(ctx)
    room = await db.room(room_id) if room_id is not None else None
    if room_id is None or room is None:
        raise NotFoundError("no such room")
    membership = await db.membership(room_id, user.id)
    if membership is None and room["type"] != "public":
        raise ForbiddenError("this room is private")
    return {
        **room,
        "role": membership.role if membership else None,
        "memberCount": await db.member_count(room_id),
        "members": await db.members(room_id),
    }


async def create_room(ctx: HttpContext) -> Any:
    """``POST /chat/rooms {name, description?, type?}`` → 201; the caller owns it."""
    user = current_user(ctx)
    v = Fields(ctx.body, what="body")
    name = v.text("name", min_len=2, max_len=100, strip=True)
    description = v.text("description", min_len=0, max_len=500, required=False) or None
    room_type = v.choice("type", CREATABLE_TYPES, default="public")
    v.check()
    db = store(ctx)
    await db.ensure_user(user.id, user.username)
    room = await db.create_room(name=name, description=description, type=room_type, owner=user.id)
    return Response(201, json={**room, "role": "owner", "memberCount": 1})


def rooms(group: HttpGroup) -> None:
    """The room actions, under the group's ``/chat/rooms``."""
    group.use(guard_outages)
    group.action("list-rooms", {"route": "", "method": "GET"}, list_rooms)
    group.action("get-room", {"route": "/:id", "method": "GET"}, get_room)
    group.action("create-room", {"route": "", "method": "POST"}, create_room)


def register(service: Service) -> None:
    """Add the room actions to ``service``; every one needs a token."""
    service.group("/chat/rooms", {"auth": True}, rooms)
