"""Server frames: header lengths, close frames, and OutboundMessage's encode-once cache."""

from __future__ import annotations

import struct
import zlib

import pytest

from protocol.ws import Opcode, OutboundMessage, SharedDeflater, encode_close, encode_frame

TAIL = b"\x00\x00\xff\xff"


@pytest.mark.parametrize(
    ("length", "header_len", "len_field"),
    [
        (0, 2, 0),
        (125, 2, 125),
        (126, 4, 126),
        (65535, 4, 126),
        (65536, 10, 127),
        (70_000, 10, 127),
    ],
)
def test_encode_frame_header_lengths(length: int, header_len: int, len_field: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    frame = encode_frame(Opcode.BINARY, payload)
    assert len(frame) == header_len + length
    assert frame[0] == 0x82  # FIN + binary, no RSV
    assert frame[1] == len_field  # no MASK bit: servers never mask
    if header_len == 4:
        assert struct.unpack("!H", frame[2:4])[0] == length
    elif header_len == 10:
        assert struct.unpack("!Q", frame[2:10])[0] == length
    assert frame[header_len:] == payload


def test_encode_frame_flags() -> None:
    assert encode_frame(Opcode.TEXT, b"a", fin=False)[0] == 0x01
    assert encode_frame(Opcode.TEXT, b"a", rsv1=True)[0] == 0xC1
    assert encode_frame(Opcode.CONTINUATION, b"a")[0] == 0x80
    assert encode_frame(Opcode.PING, b"")[:2] == b"\x89\x00"


def test_encode_close() -> None:
    assert encode_close(None) == b"\x88\x00"
    assert encode_close(1000) == b"\x88\x02\x03\xe8"
    frame = encode_close(1001, "bye")
    assert frame == b"\x88\x05\x03\xe9bye"


def test_encode_close_truncates_reason_on_a_character_boundary() -> None:
    frame = encode_close(1000, "é" * 100)  # 200 bytes of UTF-8
    assert frame[1] <= 125  # a control frame payload never exceeds 125 bytes
    reason = frame[4:]
    assert len(reason) <= 123
    reason.decode("utf-8")  # still valid UTF-8: never cut inside a character
    assert len(reason) == 122


def test_outbound_plain_is_encoded_once() -> None:
    message = OutboundMessage(b"hello", text=True)
    first = message.plain
    assert first == encode_frame(Opcode.TEXT, b"hello")
    assert message.plain is first
    binary = OutboundMessage(b"\x00\x01", text=False)
    assert binary.plain[0] == 0x82


def test_outbound_compression_threshold() -> None:
    assert not OutboundMessage(b"x" * 127, compression_threshold=128).compress_worthwhile
    assert OutboundMessage(b"x" * 128, compression_threshold=128).compress_worthwhile
    assert OutboundMessage(b"", compression_threshold=0).compress_worthwhile


class CountingDeflater(SharedDeflater):
    __slots__ = ("calls",)

    def __init__(self, window_bits: int) -> None:
        super().__init__(window_bits)
        self.calls = 0

    def compress(self, payload: bytes) -> bytes:
        self.calls += 1
        return super().compress(payload)


def test_outbound_compressed_once_per_window() -> None:
    payload = b"fan-out payload " * 64
    message = OutboundMessage(payload)
    d15, d10 = CountingDeflater(15), CountingDeflater(10)
    first = message.compressed(d15, 15)
    assert message.compressed(d15, 15) is first
    assert d15.calls == 1
    small = message.compressed(d10, 10)
    assert message.compressed(d10, 10) is small
    assert d10.calls == 1
    assert message.compressed(d15, 15) is first
    for frame, bits in ((first, 15), (small, 10)):
        assert frame[0] == 0xC1  # FIN + RSV1 + text
        assert frame[1] == len(frame) - 2 < 126
        body = frame[2:]
        assert zlib.decompressobj(-bits).decompress(body + TAIL) == payload
