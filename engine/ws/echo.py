"""The built-in echo endpoint (``--echo PATH``): every message comes back as received.

It uses nothing but the public embedding API, so it doubles as its smallest example,
and it is what the Autobahn conformance runs and the benchmarks talk to.
"""

from __future__ import annotations

from engine.api.endpoint import WebSocket, WebSocketEndpoint

__all__ = ["EchoEndpoint"]


class EchoEndpoint(WebSocketEndpoint):
    """Text stays text, binary stays binary; handled inline (no task per message)."""

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        ws.send(data)
