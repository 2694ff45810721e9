"""IPC framing: a u32 big-endian length, then that many bytes (one CBOR item).

The length is checked against ``max_frame`` as soon as its four bytes are in, before
the body is buffered or decoded, so a peer cannot make us allocate more than
``max_frame`` plus one socket read.
"""

from __future__ import annotations

import struct

from .errors import IpcError, IpcProtocolError

__all__ = ["FrameDecoder", "encode_frame"]

_LEN = struct.Struct("!I")
HEADER_SIZE = _LEN.size


def encode_frame(body: bytes) -> bytes:
    """Prefix ``body`` with its length."""
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies.

    Args:
        max_frame: largest body accepted, in bytes.
    """

    __slots__ = ("_buffer", "_need", "_pos", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._pos = 0
        self._need = -1  # body length of the frame being read, -1 before its header

    def __len__(self) -> int:
        return len(self._buffer) - self._pos

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete body, or None until more bytes arrive.

        Raises:
            IpcProtocolError: FRAME_TOO_LARGE or EMPTY_FRAME.
        """
        buf = self._buffer
        if self._need < 0:
            if len(buf) - self._pos < HEADER_SIZE:
                self._compact()
                return None
            (need,) = _LEN.unpack_from(buf, self._pos)
            if need > self.max_frame:
                raise IpcProtocolError(
                    IpcError.FRAME_TOO_LARGE, f"frame of {need} bytes, limit {self.max_frame}"
                )
            if need == 0:
                raise IpcProtocolError(IpcError.EMPTY_FRAME, "zero-length frame")
            self._pos += HEADER_SIZE
            self._need = need
        end = self._pos + self._need
        if len(buf) < end:
            self._compact()
            return None
        body = bytes(buf[self._pos : end])
        self._pos = end
        self._need = -1
        return body

    def _compact(self) -> None:
        # Drop consumed bytes only when we must wait: amortised O(bytes).
        if self._pos:
            del self._buffer[: self._pos]
            self._pos = 0
