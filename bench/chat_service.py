"""The SDK service behind ``bench/chat.py``'s ``linkd`` column: a chat, not a broadcast loop.

Run by the engine::

    engine --listen 127.0.0.1:PORT --ipc /tmp/lk-chat-PORT.sock \
        --service bench.chat_service --workers 1 --ws-rate 0

A client connects to ``/ws/chat?room=R``: ``on_connect`` joins it to R and sends it
``chat.joined {room}`` (the client waits for it before sending). ``chat.send {room,
message}`` is validated (``room`` is a string and one the connection joined,
``message`` a non-empty string of at most 1,000 characters), emitted to the room,
sender included, as ``chat.message {id, room, from, message}``, and acked with
``{id}``; an invalid one gets an error ack and no emit. The socket.io peers in
``bench/chat_peers/`` do the same.

Where "joined" is checked (``BENCH_CHAT_MEMBERSHIP``):

``worker`` (the default)
    A table in this worker, filled by ``on_connect`` and emptied by ``on_disconnect``,
    like the peers' ``socket.rooms`` (in their process). Correct with one worker (the
    engine runs ``on_connect`` before the connection's first message is handled).
``engine``
    ``await ctx.rooms()`` per message, as ``examples/chat`` does: one more IPC round
    trip per message, but right with any number of workers.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Final

from sdk import ForbiddenError, Service, ValidationError, WebSocketOptions, WsContext, WsGroup

__all__ = ["MAX_MESSAGE", "MEMBERSHIP", "WS_PATH", "service"]

WS_PATH: Final = "/ws/chat"
MAX_MESSAGE: Final = 1000
MEMBERSHIP: Final = os.environ.get("BENCH_CHAT_MEMBERSHIP", "worker")
if MEMBERSHIP not in ("worker", "engine"):
    raise SystemExit(f"BENCH_CHAT_MEMBERSHIP must be worker or engine, not {MEMBERSHIP!r}")

service = Service("chat", websocket=WebSocketOptions(path=WS_PATH, auth="none"))

#: conn id → the room it joined on connect (``worker`` membership).
_joined: dict[int, str] = {}
#: Message ids, unique per worker (the peers' are per process).
_ids = itertools.count(1)


async def connected(ctx: WsContext) -> None:
    rooms = ctx.query.get("room", [])
    room = rooms[0] if len(rooms) == 1 else ""
    if not room or len(room) > 100:
        raise ValidationError("connect with ?room=NAME")
    await ctx.join(room)
    _joined[ctx.socket.conn] = room
    await ctx.send("chat.joined", {"room": room})


async def disconnected(ctx: WsContext, code: int, rooms: list[str]) -> None:
    _joined.pop(ctx.socket.conn, None)


async def is_member(ctx: WsContext, room: str) -> bool:
    if MEMBERSHIP == "worker":
        return _joined.get(ctx.socket.conn) == room
    return room in await ctx.rooms()


async def send(ctx: WsContext) -> Any:
    data = ctx.message
    if not isinstance(data, dict):
        raise ValidationError("data must be an object", fields={"data": "object"})
    room = data.get("room")
    message = data.get("message")
    if not isinstance(room, str) or not room:
        raise ValidationError("invalid message", fields={"room": "required"})
    if not isinstance(message, str) or not 0 < len(message) <= MAX_MESSAGE:
        raise ValidationError("invalid message", fields={"message": f"1 to {MAX_MESSAGE} chars"})
    if not await is_member(ctx, room):
        raise ForbiddenError("join the room first")
    msg_id = next(_ids)
    await ctx.to(room).emit(
        "chat.message", {"id": msg_id, "room": room, "from": ctx.socket.id, "message": message}
    )
    return {"id": msg_id}


def chat(ws: WsGroup) -> None:
    ws.on("send", send)


service.ws.on_connect(connected)
service.ws.on_disconnect(disconnected)
service.ws.group("chat", chat)
