"""The ``strict`` service: a group and no catch-all, at ``/ws/strict``.

Types outside the group never reach the worker (the engine answers
UNKNOWN_MESSAGE_TYPE itself); unrouted types inside the group reach it and the SDK
answers UNKNOWN_MESSAGE_TYPE. ``GET /strict/seen`` lists every type that reached the
worker's dispatcher, to tell the two apart.
"""

from __future__ import annotations

import os
from typing import Any

from sdk import HttpContext, Service, WebSocketOptions, WsContext

service = Service("strict", websocket=WebSocketOptions(path="/ws/strict"))

#: Every message type that reached this worker, in order.
seen: list[str] = []

with service.ws.group("strict") as ws:

    @ws.on("ping")
    async def ping(ctx: WsContext) -> Any:
        return {"pong": True, "pid": os.getpid()}


_dispatch = service.ws.dispatch


async def _recording_dispatch(ctx: WsContext) -> Any:
    seen.append(ctx.type)
    return await _dispatch(ctx)


# Observe routing from inside the worker without touching the SDK.
service.ws.dispatch = _recording_dispatch  # type: ignore[method-assign]


@service.action("seen", route="/strict/seen", method="GET")
async def seen_action(ctx: HttpContext) -> Any:
    return seen
