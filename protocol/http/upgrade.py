"""Validate a WebSocket upgrade request and build the 101 answer (RFC 6455 §4.2).

Pure functions over an ``HttpRequest``: no state, no I/O. The engine decides *whether*
a path takes WebSockets (404 first); this module decides whether the handshake is
valid, which subprotocol and which deflate parameters apply, and what the 101 says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..ws.deflate import DeflateOptions, DeflateParams, negotiate_deflate
from .events import HttpRequest

__all__ = [
    "UpgradeAccepted",
    "UpgradeRejected",
    "accept_token",
    "is_websocket_upgrade",
    "validate_upgrade",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Chooses one of the offered subprotocols, or None for none of them.
SubprotocolSelector = Callable[[Sequence[str]], str | None]


@dataclass(frozen=True, slots=True)
class UpgradeAccepted:
    """The handshake is valid: send ``headers`` with a 101."""

    headers: list[tuple[str, str]]
    subprotocol: str | None
    deflate: DeflateParams | None


@dataclass(frozen=True, slots=True)
class UpgradeRejected:
    """The handshake is invalid: answer with this status (and headers) instead."""

    status: int
    message: str
    headers: list[tuple[str, str]]


def accept_token(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2 step 5.4)."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def is_websocket_upgrade(request: HttpRequest) -> bool:
    """Whether the client asked for a WebSocket (``Upgrade: websocket``)."""
    return request.upgrade is not None and "websocket" in (
        token.lower() for token in request.header_list("upgrade")
    )


def validate_upgrade(
    request: HttpRequest,
    deflate: DeflateOptions | None = None,
    select_subprotocol: SubprotocolSelector | None = None,
) -> UpgradeAccepted | UpgradeRejected:
    """Check the client's opening handshake (RFC 6455 §4.2.1) and negotiate.

    Args:
        request: a complete request for which ``is_websocket_upgrade`` is true.
        deflate: permessage-deflate options, or None to never compress.
        select_subprotocol: picks from ``Sec-WebSocket-Protocol``; by default none.
    """
    if request.method != "GET":
        return UpgradeRejected(405, "WebSocket upgrade needs GET", [("allow", "GET")])
    if request.http_version != "1.1":
        return UpgradeRejected(400, "WebSocket upgrade needs HTTP/1.1", [])
    if "upgrade" not in (t.lower() for t in request.header_list("connection")):
        return UpgradeRejected(400, "missing 'Connection: Upgrade'", [])
    versions = request.header_list("sec-websocket-version")
    if versions != ["13"]:
        # §4.4: answer with the versions we speak.
        return UpgradeRejected(
            426, "unsupported WebSocket version", [("sec-websocket-version", "13")]
        )
    keys = [v for k, v in request.headers if k == "sec-websocket-key"]
    if len(keys) != 1 or not _valid_key(keys[0].strip()):
        return UpgradeRejected(400, "missing or invalid Sec-WebSocket-Key", [])
    key = keys[0].strip()

    headers = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", accept_token(key)),
    ]
    subprotocol = None
    offered = request.header_list("sec-websocket-protocol")
    if offered and select_subprotocol is not None:
        subprotocol = select_subprotocol(offered)
        if subprotocol is not None:
            if subprotocol not in offered:
                raise ValueError("select_subprotocol must return one of the offers")
            headers.append(("sec-websocket-protocol", subprotocol))
    params = None
    if deflate is not None:
        params = negotiate_deflate(request.header_list("sec-websocket-extensions"), deflate)
        if params is not None:
            headers.append(("sec-websocket-extensions", params.response))
    return UpgradeAccepted(headers=headers, subprotocol=subprotocol, deflate=params)


def _valid_key(key: str) -> bool:
    # §4.1: "a randomly selected 16-byte value that has been base64-encoded".
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False
