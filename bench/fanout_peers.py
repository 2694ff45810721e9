"""The peer servers of the fan-out bench: the same protocol on ``websockets`` and ``picows``.

    python -m bench.fanout_peers websockets PORT [CERT KEY]
    python -m bench.fanout_peers picows PORT [CERT KEY]

Both speak ``bench.fanout_wire``'s protocol on 127.0.0.1 (any path) and parse each
client message once with orjson (``peer_reply``), as linkd's worker does:

``websockets`` (its asyncio server)
    One handler coroutine per connection reads messages as bytes; a sub adds the
    connection to the room's set, a pub calls ``websockets.broadcast(members, msg,
    text=True)`` (no backpressure, skips connections that are not open) and awaits the
    ack's ``send``. Default settings otherwise: permessage-deflate on offer (window
    12 bits, memLevel 5, context takeover: each connection compresses on its own).
    Keepalive pings are off (``ping_interval=None``), like a silent linkd connection
    within its 20 s heartbeat.
``picows`` (Cython, on uvloop)
    A ``WSListener`` per connection; for each pub, a loop over the room's transports
    calling ``transport.send(WSMsgType.TEXT, msg)``, then the ack. No compression.

With ``CERT KEY`` (the ``tls`` scenario) each serves TLS with an ``ssl.SSLContext``
from ``bench.fanout_tls.server_context`` on the same loop (uvloop's TLS transport).
Each raises its open-file limit and runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "raise_nofile", "serve_picows", "serve_websockets"]

HOST = "127.0.0.1"


def raise_nofile() -> int:
    """Raise this process's open-file soft limit to its hard limit; returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_websockets(port: int, tls: ssl.SSLContext | None = None) -> None:
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.exceptions import ConnectionClosed

    from .fanout_wire import peer_reply

    rooms: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        joined: list[str] = []
        try:
            while True:
                raw = await ws.recv(decode=False)
                _kind, room, message, reply = peer_reply(raw)
                if message is not None:
                    broadcast(rooms.get(room, ()), message, text=True)
                else:
                    rooms.setdefault(room, set()).add(ws)
                    joined.append(room)
                await ws.send(reply, text=True)
        except ConnectionClosed:
            pass
        finally:
            for room in joined:
                rooms.get(room, set()).discard(ws)

    async with serve(handler, HOST, port, ping_interval=None, backlog=2048, ssl=tls):
        await _until_signal()


async def serve_picows(port: int, tls: ssl.SSLContext | None = None) -> None:
    from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

    from .fanout_wire import peer_reply

    rooms: dict[str, set[WSTransport]] = {}
    text = WSMsgType.TEXT

    class Listener(WSListener):
        def __init__(self) -> None:
            self.joined: list[str] = []

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == text:
                _kind, room, message, reply = peer_reply(frame.get_payload_as_bytes())
                if message is not None:
                    for member in rooms.get(room, ()):
                        member.send(text, message)
                else:
                    rooms.setdefault(room, set()).add(transport)
                    self.joined.append(room)
                transport.send(text, reply)
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: WSTransport) -> None:
            for room in self.joined:
                rooms.get(room, set()).discard(transport)

    def factory(request: Any) -> Listener:
        return Listener()

    server = await ws_create_server(factory, HOST, port, backlog=2048, ssl=tls)
    async with server:
        await _until_signal()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 4) or args[0] not in ("websockets", "picows"):
        print(
            "usage: python -m bench.fanout_peers {websockets,picows} PORT [CERT KEY]",
            file=sys.stderr,
        )
        return 2
    raise_nofile()
    import uvloop

    from .fanout_tls import server_context

    tls = server_context(args[2], args[3]) if len(args) == 4 else None
    serve = serve_websockets if args[0] == "websockets" else serve_picows
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(int(args[1]), tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
