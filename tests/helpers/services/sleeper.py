"""The ``sleeper`` service: handlers that sleep far longer than any grace period.

Every WebSocket at ``/ws/sleeper`` joins room ``watch``; a handler tells that room
``sleeper.started {pid, what}`` before it sleeps, so a test knows the request is in
flight on the worker (no guessing with a sleep of its own).

- ``GET /sleeper/nap?t=SECONDS``: sleeps, then answers ``{pid}``;
- message ``sleeper.nap {t}``: the same over the WebSocket;
- ``GET /sleeper/whoami``: ``{pid, uid}`` at once (which process and user serve).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from sdk import HttpContext, Service, WebSocketOptions, WsContext

service = Service("sleeper", websocket=WebSocketOptions(path="/ws/sleeper"))


@service.ws.on_connect
async def watch(ctx: WsContext) -> None:
    await ctx.join("watch")


@service.action("nap", route="/sleeper/nap", method="GET")
async def nap_http(ctx: HttpContext) -> Any:
    await ctx.to("watch").emit("sleeper.started", {"pid": os.getpid(), "what": "http"})
    await asyncio.sleep(float(ctx.query.get("t", ["60"])[0]))
    return {"pid": os.getpid()}


@service.action("whoami", route="/sleeper/whoami", method="GET")
async def whoami(ctx: HttpContext) -> Any:
    return {"pid": os.getpid(), "uid": os.getuid()}


with service.ws.group("sleeper") as ws:

    @ws.on("nap")
    async def nap_ws(ctx: WsContext) -> Any:
        await ctx.to("watch").emit("sleeper.started", {"pid": os.getpid(), "what": "ws"})
        await asyncio.sleep(float(ctx.message["t"]))
        return {"pid": os.getpid()}
