"""The ``documented`` service: HTTP actions and WebSocket handlers carrying the SDK's
documentation metadata, for the engine's OpenAPI and AsyncAPI documents
(tests/engine/test_openapi.py)."""

from __future__ import annotations

from typing import Any

from sdk import HttpContext, Service, WebSocketOptions, WsContext

service = Service(
    "documented",
    version="1.2.3",
    websocket=WebSocketOptions(path="/ws/documented", auth="optional"),
)

ROOM = {
    "type": "object",
    "required": ["id", "name"],
    "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
}
SEND = {
    "type": "object",
    "required": ["room", "text"],
    "properties": {"room": {"type": "string"}, "text": {"type": "string", "maxLength": 500}},
}


@service.action(
    "get-room",
    route="/documented/rooms/:id",
    summary="One room",
    description="The room named by its id.",
    response=ROOM,
)
async def get_room(ctx: HttpContext) -> Any:
    return {"id": ctx.params["id"], "name": f"room {ctx.params['id']}"}


@service.action(
    "rename",
    {
        "route": "/documented/rooms/:id/name",
        "method": "PUT",
        "auth": True,
        "summary": "Rename a room",
        "request": {"type": "object", "properties": {"name": {"type": "string"}}},
        "response": ROOM,
    },
)
async def rename(ctx: HttpContext) -> Any:
    return {"id": ctx.params["id"], "name": ctx.json()["name"]}


@service.action("plain", route="/documented/plain", auth="optional")
async def plain(ctx: HttpContext) -> Any:
    return {"ok": True}


@service.ws.on(
    "chat.send",
    summary="Send a message to a room",
    schema=SEND,
    result={"type": "object", "properties": {"sent": {"type": "boolean"}}},
)
async def send(ctx: WsContext) -> Any:
    return {"sent": True}


@service.ws.on("typing", concurrent=True, idempotent=False, summary="Typing indicator")
async def typing(ctx: WsContext) -> Any:
    return None


with service.ws.group("admin") as admin:

    @admin.on("kick", summary="Kick a user", schema={"type": "object"})
    async def kick(ctx: WsContext) -> Any:
        return {"kicked": True}


service.ws.emits(
    "chat.message",
    schema={"type": "object", "properties": {"text": {"type": "string"}}},
    summary="A message in a room",
)
