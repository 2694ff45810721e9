"""Linkd engine: the asyncio/uvloop shell around the ``protocol`` cores.

from engine import Engine, Config

The layout (engine/server.py builds everything; arrows point down) is drawn in
docs/architecture.md.
"""

from engine.api.endpoint import WebSocket, WebSocketEndpoint
from engine.api.request import Request, Response
from engine.config import Config
from engine.server import Engine
from engine.version import __version__
from engine.ws.echo import EchoEndpoint

__all__ = [
    "Config",
    "EchoEndpoint",
    "Engine",
    "Request",
    "Response",
    "WebSocket",
    "WebSocketEndpoint",
    "__version__",
]
