"""The ``origins`` service: a WebSocket path with its own Origin list.

``WebSocketOptions(origins=...)`` travels in the registration (IPC v2
``WsRoute.origins``); the engine applies it to this path instead of
``--allowed-origins``. Used by tests/engine/test_origin.py.
"""

from __future__ import annotations

from typing import Any

from sdk import Service, WebSocketOptions, WsContext

service = Service(
    "origins",
    websocket=WebSocketOptions(path="/ws/origins", origins=("https://*.example.com",)),
)


@service.ws.on("origins.ping")
async def ping(ctx: WsContext) -> Any:
    return "pong"
