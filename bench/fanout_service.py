"""The SDK service behind ``bench/fanout.py``'s ``linkd`` column.

Run by the engine::

    engine --listen 127.0.0.1:PORT --ipc /tmp/lk-bench-PORT.sock \
        --service bench.fanout_service --workers 1 --ws-rate 0

``bench.sub {room}`` joins the room; ``bench.pub {room, payload}`` does
``await ctx.to(room).emit("bench.msg", payload)`` (the engine fans the SDK's
``{"type":"bench.msg","data":payload}`` out, encoded once) and acks ``true``.

``per_connection`` (``BENCH_FANOUT_PER_CONNECTION``, default 8, set by the bench to
the publisher's K) lets one publisher connection keep K publishes in flight; its
publishes are then handled concurrently and may be emitted out of order, like the
peers, which have no ordering rule either.
"""

from __future__ import annotations

import os

from sdk import Service, WebSocketOptions, WsContext

__all__ = ["PER_CONNECTION", "WS_PATH", "service"]

WS_PATH = "/ws/bench"
PER_CONNECTION = int(os.environ.get("BENCH_FANOUT_PER_CONNECTION", "8"))

service = Service(
    "bench",
    websocket=WebSocketOptions(path=WS_PATH, auth="none", per_connection=PER_CONNECTION),
)

bench = service.ws.group("bench")


@bench.on("sub")
async def subscribe(ctx: WsContext) -> bool:
    """Join ``data.room``; the ack arrives after the engine applied the join."""
    await ctx.join(ctx.data["room"])
    return True


@bench.on("pub")
async def publish(ctx: WsContext) -> bool:
    """Emit ``data.payload`` to ``data.room`` as ``bench.msg``."""
    await ctx.to(ctx.data["room"]).emit("bench.msg", ctx.data["payload"])
    return True
