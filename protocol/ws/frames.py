"""Server-to-client frames built once and written as the same bytes to many connections.

RFC 6455 §5.1: a server MUST NOT mask frames, so an unmasked frame is identical for
every recipient and can be encoded once per message instead of once per delivery.
With permessage-deflate, one compressed frame is valid for every connection that
negotiated ``server_no_context_takeover`` with a window at least as large as the one
it was compressed with (RFC 7692 §7.1.1.1, §7.1.2.1); ``OutboundMessage`` keeps one
compressed encoding per such window size, made on first demand.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from .deflate import SharedDeflater

__all__ = ["Opcode", "OutboundMessage", "encode_close", "encode_frame"]


class Opcode(IntEnum):
    """RFC 6455 §5.2 opcodes the engine sends."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_HEADER_7 = struct.Struct("!BB")
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """Encode one unmasked frame (RFC 6455 §5.2) as immutable ``bytes``.

    The result is a new ``bytes`` object, never a view of a reused buffer, so it is
    safe to hand to ``transport.write`` many times (uvloop keeps a reference to it).
    """
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        header = _HEADER_7.pack(first, length)
    elif length < 65536:
        header = _HEADER_16.pack(first, 126, length)
    else:
        header = _HEADER_64.pack(first, 127, length)
    return header + payload


def encode_close(code: int | None, reason: str = "") -> bytes:
    """A close frame; the reason is cut on a character boundary to fit 123 bytes."""
    if code is None:
        return encode_frame(Opcode.CLOSE, b"")
    raw = reason.encode("utf-8")
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode("utf-8")
    return encode_frame(Opcode.CLOSE, struct.pack("!H", code) + raw)


class OutboundMessage:
    """One message to deliver to many connections, encoded at most once per variant.

    Args:
        payload: the message body (UTF-8 for text).
        text: text (opcode 1) or binary (opcode 2).
        compression_threshold: payloads shorter than this are never compressed.
    """

    __slots__ = ("_compressed", "_plain", "compress_worthwhile", "opcode", "payload")

    def __init__(self, payload: bytes, *, text: bool = True, compression_threshold: int = 128):
        self.payload = payload
        self.opcode = Opcode.TEXT if text else Opcode.BINARY
        self.compress_worthwhile = len(payload) >= compression_threshold
        self._plain: bytes | None = None
        self._compressed: dict[int, bytes] = {}

    @property
    def plain(self) -> bytes:
        """The uncompressed frame: valid for every connection."""
        frame = self._plain
        if frame is None:
            frame = self._plain = encode_frame(self.opcode, self.payload)
        return frame

    def compressed(self, deflater: SharedDeflater, window_bits: int) -> bytes:
        """The frame compressed without context for receivers with ``window_bits``."""
        frame = self._compressed.get(window_bits)
        if frame is None:
            frame = encode_frame(self.opcode, deflater.compress(self.payload), rsv1=True)
            self._compressed[window_bits] = frame
        return frame
