"""The ``remote`` service: what a worker sees of a client's address.

WebSocket path ``/ws/remote``: on connect the client gets ``remote.address`` with
``ctx.socket.remote_address`` (the IPC Connect's ``remote``); ``GET /remote/whoami``
answers the HTTP context's ``remote_address``. Used by
tests/engine/test_proxy.py (behind a balancer, the client's, not the proxy's).
"""

from __future__ import annotations

from typing import Any

from sdk import HttpContext, Service, WebSocketOptions, WsContext

service = Service("remote", websocket=WebSocketOptions(path="/ws/remote"))


@service.action("whoami", route="/remote/whoami", method="GET")
async def whoami_http(ctx: HttpContext) -> Any:
    return {"remote": ctx.remote_address}


@service.ws.on_connect
async def on_connect(ctx: WsContext) -> None:
    await ctx.send("remote.address", {"remote": ctx.socket.remote_address})


@service.ws.on("remote.whoami")
async def whoami_ws(ctx: WsContext) -> Any:
    # In a message handler too, not only on connect.
    return {"remote": ctx.socket.remote_address}
