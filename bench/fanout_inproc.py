"""``linkd-inproc``: the fan-out bench protocol served by an embedded ``Engine``, no IPC.

    python -m bench.fanout_inproc PORT [CERT KEY]

An ``Engine`` (uvloop, 127.0.0.1, no per-connection rate limit) with a
``WebSocketEndpoint`` at ``/ws/bench`` whose plain (inline) ``on_message`` handles the
bench protocol itself (``bench.fanout_wire.peer_reply``): a sub adds the connection to
a room set, a pub calls ``engine.broadcast(text, room)`` (encoded once, queued to each,
awaiting nobody) then acks. This is the engine's fan-out without the service hop: the
difference to the ``linkd`` column is what the IPC path costs. With ``CERT KEY``, over
TLS (``Config.tls_cert``/``tls_key``). Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from engine import Config, Engine, WebSocket, WebSocketEndpoint
from engine.log import configure_logging

from .fanout_peers import raise_nofile
from .fanout_wire import WS_PATH, peer_reply

__all__ = ["Rooms", "main"]


class Rooms(WebSocketEndpoint):
    """Rooms kept by the endpoint; publishes broadcast through the engine."""

    accept_binary = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rooms: dict[str, set[WebSocket]] = {}

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        _kind, room, message, reply = peer_reply(data)
        if message is not None:
            members = self.rooms.get(room)
            if members:
                self.engine.broadcast(message.decode(), members)
        else:
            self.rooms.setdefault(room, set()).add(ws)
        ws.send(reply.decode())

    def on_disconnect(self, ws: WebSocket, code: int) -> None:
        for members in self.rooms.values():
            members.discard(ws)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    port = int(args[0])
    cert, key = (args[1], args[2]) if len(args) == 3 else (None, None)
    raise_nofile()
    configure_logging("warning")
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    engine = Engine(
        Config(
            host="127.0.0.1",
            port=port,
            access_log=False,
            log_level="warning",
            shutdown_grace=2,
            ws_rate=0,  # a benchmark publisher floods on purpose
            max_connections=0,
            tls_cert=cert,
            tls_key=key,
        )
    )
    engine.websocket(WS_PATH, Rooms(engine))
    asyncio.run(engine.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
