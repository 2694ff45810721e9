"""The ``media`` service: token refresh and binary messages (tests/integration).

WebSocket path ``/ws/media`` (auth optional, binary frames accepted):

- ``me`` answers the ``auth`` the worker got with this message (current after a
  refresh);
- ``join`` / ``emit`` join a room and emit a JSON event to it;
- a binary frame is handed to the binary handler: ``b"join:<room>"`` joins the room,
  ``b"room:<room>:<bytes>"`` emits ``<bytes>`` to the room as a binary frame, any
  other frame comes back reversed to its sender.
"""

from __future__ import annotations

from typing import Any

from sdk import Service, WebSocketOptions, WsContext

service = Service("media", websocket=WebSocketOptions(path="/ws/media", binary=True))


@service.ws.on("me")
async def me(ctx: WsContext) -> Any:
    return ctx.auth


@service.ws.on("join")
async def join(ctx: WsContext) -> Any:
    await ctx.join(ctx.message["room"])
    return {"joined": ctx.message["room"]}


@service.ws.on("emit")
async def emit(ctx: WsContext) -> Any:
    await ctx.to(ctx.message["room"]).emit("media.note", ctx.message.get("data"))
    return {"emitted": ctx.message["room"]}


@service.ws.on_binary
async def binary(ctx: WsContext) -> Any:
    data: bytes = ctx.message
    if data.startswith(b"join:"):
        await ctx.join(data[5:].decode())
    elif data.startswith(b"room:"):
        room, _, payload = data[5:].partition(b":")
        await ctx.to(room.decode()).emit(payload)
    elif data == b"fail":
        raise ValueError("a binary handler that fails")
    else:
        await ctx.send(data[::-1])
    return "dropped: a binary frame has no ack"
