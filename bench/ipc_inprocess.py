"""The in-process side of ``bench/ipc.py``: the echo handler embedded in the engine.

    python -m bench.ipc_inprocess PORT [--async]

An ``Engine`` (uvloop, 127.0.0.1 only, default ``Config`` otherwise) with a
``WebSocketEndpoint`` at ``/ws/bench`` that does what the IPC path does minus the hop:
parse the client's frame once with orjson, re-encode ``data`` (as the SDK worker does
with the handler's return value) and build the ack ``{"id", "type", "data"}`` by
concatenation (as ``engine/services.py`` does). The plain ``on_message`` runs inline;
``--async`` makes it ``async def``, which costs a task per message like the IPC path.
Runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

import orjson

from engine import Config, Engine, WebSocket, WebSocketEndpoint
from engine.log import configure_logging

__all__ = ["AsyncEcho", "InlineEcho", "ack", "main"]

HOST = "127.0.0.1"
WS_PATH = "/ws/bench"
_BAD = '{"type":"error","error":{"code":"BAD_REQUEST","message":"a message needs a type"}}'


def ack(ws: WebSocket, data: str | bytes) -> None:
    """Answer ``{type, data, id}`` with ``{id, type, data}``."""
    envelope = orjson.loads(data)
    if type(envelope) is not dict or type(envelope.get("type")) is not str:
        ws.send(_BAD)
        return
    frame = (
        b'{"id":'
        + orjson.dumps(envelope.get("id"))
        + b',"type":'
        + orjson.dumps(envelope["type"])
        + b',"data":'
        + orjson.dumps(envelope.get("data"))
        + b"}"
    )
    ws.send(frame.decode())


class InlineEcho(WebSocketEndpoint):
    """The fast path: a plain ``on_message``, no task per message."""

    accept_binary = False

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        ack(ws, data)


class AsyncEcho(WebSocketEndpoint):
    """``async def on_message``: the engine runs a task per message, in order."""

    accept_binary = False

    async def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        ack(ws, data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ipc_inprocess")
    parser.add_argument("port", type=int)
    parser.add_argument("--async", dest="use_async", action="store_true")
    args = parser.parse_args(argv)
    configure_logging("warning")
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    engine = Engine(
        Config(
            host=HOST,
            port=args.port,
            access_log=False,
            log_level="warning",
            shutdown_grace=2,
            ws_rate=0,  # a benchmark client floods on purpose
        )
    )
    engine.websocket(WS_PATH, AsyncEcho() if args.use_async else InlineEcho())
    asyncio.run(engine.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
