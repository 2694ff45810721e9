"""HTTP/1.1 server core over h11, and the WebSocket opening handshake."""

from .conn import NEED_DATA, PAUSED, HttpConn, HttpState, UnsendableResponse, build_response
from .events import HttpRequest, PeerEOF
from .upgrade import (
    UpgradeAccepted,
    UpgradeRejected,
    accept_token,
    is_websocket_upgrade,
    validate_upgrade,
)

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "HttpConn",
    "HttpRequest",
    "HttpState",
    "PeerEOF",
    "UnsendableResponse",
    "UpgradeAccepted",
    "UpgradeRejected",
    "accept_token",
    "build_response",
    "is_websocket_upgrade",
    "validate_upgrade",
]
