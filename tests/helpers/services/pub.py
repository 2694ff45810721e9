"""The ``pub`` service: room history and service events, driven by a WebSocket client.

WebSocket path ``/ws/pub``. ``pub.join``/``pub.say`` fill a room's history;
``pub.history`` and ``GET /pub/history/:room`` read it back through ``ctx.history``;
``pub.publish`` and ``pub.flood`` publish service events (``ctx.publish_event``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sdk import EventContext, HttpContext, LinkdError, Service, WebSocketOptions, WsContext

service = Service("pub", websocket=WebSocketOptions(path="/ws/pub"))


@service.ws.on("pub.join")
async def join(ctx: WsContext) -> None:
    await ctx.join(ctx.message["room"])


@service.ws.on("pub.say")
async def say(ctx: WsContext) -> None:
    await ctx.to(ctx.message["room"]).emit("chat.message", {"text": ctx.message["text"]})


@service.ws.on("pub.history")
async def history(ctx: WsContext) -> Any:
    args = ctx.message
    return await ctx.history(
        args["room"],
        since=args.get("since"),
        limit=args.get("limit", 100),
        epoch=args.get("epoch"),
    )


async def http_history(ctx: HttpContext) -> Any:
    since = ctx.query.get("since")
    return await ctx.history(ctx.params["room"], since=int(since[0]) if since else None)


service.action("history", {"route": "/pub/history/:room", "method": "GET"}, http_history)


@service.ws.on("pub.publish")
async def publish(ctx: WsContext) -> Any:
    published = await ctx.publish_event(ctx.message["name"], ctx.message.get("data"))
    return {"services": list(published.services), "subscribers": published.subscribers}


@service.ws.on("pub.flood")
async def flood(ctx: WsContext) -> Any:
    """Publish ``n`` events ``name`` (in batches); count what was queued and refused."""
    name, n = ctx.message["name"], ctx.message["n"]
    queued, refused = 0, []
    for start in range(0, n, 500):
        batch = [
            ctx.publish_event(name, {"n": i, **ctx.message.get("data", {})})
            for i in range(start, min(start + 500, n))
        ]
        for result in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(result, LinkdError):
                refused.append({"code": result.code.value, "message": result.message})
            elif isinstance(result, BaseException):
                raise result
            else:
                queued += 1
    return {"queued": queued, "refused": refused[:3], "refusedCount": len(refused)}


@service.on_event("job.created")
async def also_created(ctx: EventContext) -> None:
    """A second subscriber of ``job.created``: each service gets its own copy."""
    if ctx.data.get("n") == "copy":
        await ctx.to("events-watch").emit("pub.got", {"attempt": ctx.attempt})
