"""The python-socketio peer of ``bench/chat.py``: the same chat as ``bench/chat_service.py``.

    python -m bench.chat_peers.socketio_server PORT [WS]

``socketio.AsyncServer(async_mode="asgi")`` wrapped in ``socketio.ASGIApp``, served
by uvicorn on 127.0.0.1:PORT with uvloop and httptools, one process: the most common
way to run python-socketio. ``WS`` is uvicorn's WebSocket protocol (``--ws``):
``websockets-sansio`` by default (what uvicorn's ``auto`` picks when websockets is
installed), or ``websockets``, ``wsproto``. WebSocket transport only, permessage-deflate
off, default ping interval.

A client connects to ``/socket.io/?EIO=4&transport=websocket&room=R``: ``connect``
joins it to R and emits ``chat.joined {room}`` (``always_connect=True``: the CONNECT
packet goes out before the handler runs, as socket.io does, so the event follows it).
``chat.send {room, message}`` with an ack id is validated (``room`` a string the
socket joined, per ``sio.rooms(sid)``; ``message`` a non-empty string of at most
1,000 characters), emitted to the room, sender included, as ``chat.message {id, room,
from, message}``, and acked with ``{id}``; an invalid one is acked with ``{error}``.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import parse_qs

import socketio
import uvicorn

from bench.fanout_peers import raise_nofile

__all__ = ["build_app", "main"]

HOST: Final = "127.0.0.1"
MAX_MESSAGE: Final = 1000


def invalid(data: Any, rooms: list[str]) -> str | None:
    """Why ``data`` is not a valid ``chat.send`` from a socket in ``rooms`` (None: valid)."""
    if not isinstance(data, dict):
        return "data must be an object"
    room = data.get("room")
    message = data.get("message")
    if not isinstance(room, str) or not room:
        return "room is required"
    if not isinstance(message, str) or not 0 < len(message) <= MAX_MESSAGE:
        return f"message must be 1 to {MAX_MESSAGE} chars"
    if room not in rooms:
        return "join the room first"
    return None


def build_app() -> Any:
    sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], always_connect=True)
    ids = itertools.count(1)

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        rooms = parse_qs(environ.get("QUERY_STRING", "")).get("room", [])
        room = rooms[0] if len(rooms) == 1 else ""
        if not room or len(room) > 100:
            return False
        await sio.enter_room(sid, room)
        await sio.emit("chat.joined", {"room": room}, to=sid)
        return True

    async def send(sid: str, data: Any) -> dict[str, Any]:
        error = invalid(data, sio.rooms(sid))
        if error is not None:
            return {"error": error}
        msg_id = next(ids)
        room = data["room"]
        message = {"id": msg_id, "room": room, "from": sid, "message": data["message"]}
        await sio.emit("chat.message", message, room=room)
        return {"id": msg_id}

    # Registered by call: the decorators are untyped.
    sio.on("connect", connect)
    sio.on("chat.send", send)
    return socketio.ASGIApp(sio)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 2) or not args[0].isdigit():
        print("usage: python -m bench.chat_peers.socketio_server PORT [WS]", file=sys.stderr)
        return 2
    ws = args[1] if len(args) == 2 else "websockets-sansio"
    raise_nofile()
    uvicorn.run(
        build_app(),
        host=HOST,
        port=int(args[0]),
        loop="uvloop",
        http="httptools",
        ws=ws,
        ws_per_message_deflate=False,
        backlog=4096,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
