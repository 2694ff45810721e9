"""WebSocket server core (RFC 6455) with bounded permessage-deflate (RFC 7692)."""

from .conn import WsConn, WsState
from .deflate import DeflateOptions, DeflateParams, SharedDeflater, negotiate_deflate
from .events import (
    BinaryMessage,
    ConnectionFailed,
    PeerClosed,
    PingReceived,
    PongReceived,
    TextMessage,
    WsEvent,
)
from .frames import Opcode, OutboundMessage, encode_close, encode_frame

__all__ = [
    "BinaryMessage",
    "ConnectionFailed",
    "DeflateOptions",
    "DeflateParams",
    "Opcode",
    "OutboundMessage",
    "PeerClosed",
    "PingReceived",
    "PongReceived",
    "SharedDeflater",
    "TextMessage",
    "WsConn",
    "WsEvent",
    "WsState",
    "encode_close",
    "encode_frame",
    "negotiate_deflate",
]
