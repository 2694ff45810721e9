"""The SDK service behind ``bench/hostile.py``'s ``service`` setup.

Run by the engine::

    engine --listen 127.0.0.1:PORT --service bench.hostile_service --jwt-secret S --jwks F

- WebSocket ``/ws/hostile`` with ``auth="optional"``: the well-behaved clients connect
  without a token; a token, when given, is verified (a bad one is a 401 before the
  upgrade), which is what the bad-token attacker aims at.
- ``bench.echo`` acks the message's data; ``bench.sub {room}`` joins the room;
  ``bench.pub {room, payload}`` emits ``bench.msg`` with the payload to the room.
- ``GET /hostile/me`` (``auth=True``): the caller's user id, for the HTTP side of the
  bad-token attacker.
"""

from __future__ import annotations

from typing import Any

from sdk import HttpContext, Service, WebSocketOptions, WsContext

__all__ = ["ME_ROUTE", "WS_PATH", "service"]

WS_PATH = "/ws/hostile"
ME_ROUTE = "/hostile/me"

service = Service(
    "hostile",
    websocket=WebSocketOptions(path=WS_PATH, auth="optional", per_connection=4),
)

bench = service.ws.group("bench")


@bench.on("echo")
async def echo(ctx: WsContext) -> Any:
    """The ack's data is the message's data."""
    return ctx.data


@bench.on("sub")
async def subscribe(ctx: WsContext) -> bool:
    """Join ``data.room``; the ack arrives after the engine applied the join."""
    await ctx.join(str(ctx.data["room"]))
    return True


@bench.on("pub")
async def publish(ctx: WsContext) -> bool:
    """Emit ``data.payload`` to ``data.room`` as ``bench.msg``."""
    await ctx.to(str(ctx.data["room"])).emit("bench.msg", ctx.data["payload"])
    return True


@service.action("me", route=ME_ROUTE, method="GET", auth=True)
async def me(ctx: HttpContext) -> Any:
    """Who the token says the caller is."""
    return {"user": ctx.auth.get("userId") if ctx.auth else None}
