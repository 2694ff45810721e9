"""Events a ``WsConn`` reports after ``receive_data``: whole messages and control frames."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BinaryMessage",
    "ConnectionFailed",
    "PeerClosed",
    "PingReceived",
    "PongReceived",
    "TextMessage",
    "WsEvent",
]


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A complete text message, reassembled, inflated and UTF-8 validated."""

    data: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    """A complete binary message, reassembled and inflated."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer pinged; the pong is already queued in ``data_to_send()``."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered a ping (or sent an unsolicited pong, RFC 6455 §5.5.3)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer sent a close frame; our answer (if owed) is queued in ``data_to_send()``.

    After this the connection is CLOSED and the server closes the TCP connection
    first (RFC 6455 §7.1.1).
    """

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The peer broke the protocol or a limit (§7.1.7 Fail the WebSocket Connection).

    Our close frame with ``code`` is queued in ``data_to_send()``; the shell sends
    it and drops the TCP connection without waiting for the peer's close.
    """

    code: int
    reason: str


WsEvent = TextMessage | BinaryMessage | PingReceived | PongReceived | PeerClosed | ConnectionFailed
