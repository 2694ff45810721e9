"""Linkd engine: the asyncio/uvloop shell around the ``protocol`` cores.

from engine import Engine, Config
"""

__version__ = "0.1.0"

from .app import Request, Response, WebSocketEndpoint
from .config import Config
from .echo import EchoEndpoint
from .server import Engine
from .ws_protocol import WebSocket

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
