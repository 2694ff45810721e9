"""Fuzz the WebSocket frame path: ``WsConn`` over wsproto with bounded permessage-deflate.

Usage (from the repository root; libFuzzer flags after the corpus directories)::

    .venv/bin/python fuzz/fuzz_ws.py fuzz/work/ws fuzz/corpus/ws \\
        -max_total_time=600 -timeout=10 -rss_limit_mb=2048

Input layout: the first byte holds flags, the rest is the client's byte stream.

* bit 0: permessage-deflate negotiated (``negotiate_deflate(["permessage-deflate;
  client_max_window_bits"], DeflateOptions())``) or not;
* bits 1-2: 0 = the rest is fed as it is, whole; 1 = fed in chunks; 2 and 3 =
  **structured**: the rest is read by ``FrameReader`` as a list of (opcode, fin, rsv1,
  mask, payload, compress) and encoded as properly masked client frames, compressed
  with raw deflate (``00 00 ff ff`` tail stripped) when asked, so reassembly, inflate,
  close codes and UTF-8 validation are reached instead of the unmasked-frame error;
* bits 3-7: chunk size for feeding (0 = whole in structured mode, 1 byte in mode 1);
  streams over 2048 chunks are cut into 2048 larger ones instead.

``FrameReader`` plays the role of ``atheris.FuzzedDataProvider`` in pure Python, so an
input decodes to the same frames under atheris, pytest and hypothesis.

Every complete message is echoed with ``WsConn.send`` (the /echo endpoint's path), and
the stream ends with EOF (``receive_data(None)``).

Invariants (any exception, or a failed assert, is a crash):

* nothing escapes ``receive_data`` / ``events()`` / ``data_to_send()``: errors are
  ``ConnectionFailed`` events, whose code is 1002, 1007 or 1009, and which queue a close
  frame with that code;
* every ``TextMessage`` / ``BinaryMessage`` is at most ``max_message_bytes`` (UTF-8
  bytes for text);
* bounded inflate: ``conn.inflate_peak`` ≤ ``inflate_chunk_bytes`` + 1;
* after ``PeerClosed`` / ``ConnectionFailed`` the state is CLOSED and no event follows;
  after EOF the state is CLOSED;
* what the server queues (pongs, close frames) are well-formed unmasked control frames,
  and an echoed message decodes (and inflates) back to the message.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from protocol import Limits
from protocol.ws import (
    BinaryMessage,
    ConnectionFailed,
    DeflateOptions,
    DeflateParams,
    PeerClosed,
    PingReceived,
    PongReceived,
    TextMessage,
    WsConn,
    WsState,
    negotiate_deflate,
)

try:
    from fuzz.runner import run_fuzzer
except ImportError:  # run as a script: fuzz/ itself is on sys.path
    from runner import run_fuzzer  # type: ignore[no-redef]

__all__ = [
    "KNOWN_BUGS",
    "LIMITS",
    "PARAMS",
    "FrameReader",
    "check_ws",
    "encode_client_frame",
    "main",
    "structured_stream",
]

LIMITS = Limits(max_message_bytes=64 * 1024, inflate_chunk_bytes=4096)
_PARAMS = negotiate_deflate(["permessage-deflate; client_max_window_bits"], DeflateOptions())
assert _PARAMS is not None
PARAMS: DeflateParams = _PARAMS

ALLOWED_FAILURES = frozenset({1002, 1007, 1009})
_TAIL = b"\x00\x00\xff\xff"

# Structured mode: frame kinds picked by the low 3 bits of a frame's control byte.
_TEXT, _BINARY, _CONT, _PING, _PONG, _CLOSE, _UTF8, _RAW = range(8)
_OPCODES = {_TEXT: 0x1, _BINARY: 0x2, _CONT: 0x0, _PING: 0x9, _PONG: 0xA, _CLOSE: 0x8, _UTF8: 0x1}
CLOSE_CODES = (
    1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1014,
    1015, 1016, 999, 2999, 3000, 4999, 5000, 0, 65535,
)  # fmt: skip
MAX_FRAMES = 32

#: Bugs found by this target and not fixed yet (ids explained in fuzz/README.md).
KNOWN_BUGS: frozenset[str] = frozenset()
STRICT_ENV = "LINKD_FUZZ_STRICT"


class FrameReader:
    """Consumes an input from the front; past its end every read gives zeros."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def take(self, n: int) -> bytes:
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` (RFC 6455 §5.3), fast for large payloads."""
    if not payload:
        return b""
    repeat = (key * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeat, "big")
    return value.to_bytes(len(payload), "big")


def encode_client_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv1: bool = False,
    key: bytes | None = b"\x37\xfa\x21\x3d",
) -> bytes:
    """One client frame (RFC 6455 §5.2), masked with ``key`` unless it is None."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | (opcode & 0x0F)
    mbit = 0x80 if key is not None else 0
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, mbit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mbit | 127, n)
    if key is None:
        return header + payload
    return header + key + mask(payload, key)


def compress_part(compressor: zlib._Compress, payload: bytes, *, fin: bool) -> bytes:
    """Compress one fragment; the message's last one loses the ``00 00 ff ff`` tail."""
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if fin and data.endswith(_TAIL):
        data = data[:-4]
    return data


def new_compressor(params: DeflateParams | None) -> zlib._Compress:
    bits = params.client_max_window_bits if params is not None else 15
    return zlib.compressobj(6, zlib.DEFLATED, -bits)


def _payload(reader: FrameReader, kind: int, big: bool) -> bytes:
    if big:
        # Large, repetitive payloads: they cross max_message_bytes yet compress to little.
        size = (reader.byte() + 1) * 512
        pattern = reader.take(reader.byte() % 8 + 1) or b"a"
        return (pattern * (size // len(pattern) + 1))[:size]
    raw = reader.take(reader.byte())
    if kind == _UTF8:
        return raw.decode("latin-1").encode("utf-8")
    if kind == _CLOSE:
        form = raw[:1]
        if not form or form[0] == 0:
            return b""
        if form[0] == 1:
            return raw[1:2] or b"\x03"
        code = CLOSE_CODES[form[0] % len(CLOSE_CODES)]
        return struct.pack("!H", code) + raw[1:124]
    return raw


def structured_stream(data: bytes, params: DeflateParams | None) -> bytes:
    """Decode ``data`` into up to 32 client frames and encode them (see module doc).

    Each frame takes a control byte (bits 0-2 kind, 3 not-FIN, 4 compress, 5 flip the
    natural RSV1, 6 unmasked, 7 large payload), a 4-byte masking key, then its payload.
    """
    reader = FrameReader(data)
    compressor = new_compressor(params)
    frames: list[bytes] = []
    while reader.remaining() and len(frames) < MAX_FRAMES:
        ctl = reader.byte()
        kind = ctl & 0x07
        fin = not ctl & 0x08
        compress = bool(ctl & 0x10)
        opcode = _OPCODES.get(kind, reader.byte() & 0x0F)
        rsv1 = (compress and opcode in (0x1, 0x2)) ^ bool(ctl & 0x20)
        key = None if ctl & 0x40 else reader.take(4).ljust(4, b"\0")
        payload = _payload(reader, kind, bool(ctl & 0x80))
        if compress:
            payload = compress_part(compressor, payload, fin=fin)
        frames.append(encode_client_frame(opcode, payload, fin=fin, rsv1=rsv1, key=key))
    return b"".join(frames)


# ----------------------------------------------------------------- checking
def parse_server_frame(frame: bytes) -> tuple[bool, bool, int, bytes]:
    """Decode one frame the server wrote: (fin, rsv1, opcode, payload); never masked."""
    assert len(frame) >= 2, frame
    first, second = frame[0], frame[1]
    assert not second & 0x80, "server frames must not be masked"
    assert not first & 0x30, "RSV2/RSV3 set"
    n, offset = second & 0x7F, 2
    if n == 126:
        (n,) = struct.unpack_from("!H", frame, 2)
        offset = 4
    elif n == 127:
        (n,) = struct.unpack_from("!Q", frame, 2)
        offset = 10
    payload = frame[offset:]
    assert len(payload) == n, f"length {n} but {len(payload)} payload bytes"
    return bool(first & 0x80), bool(first & 0x40), first & 0x0F, payload


@dataclass
class _Session:
    conn: WsConn
    params: DeflateParams | None
    done: bool = False
    inflater: zlib._Decompress | None = None

    def check_queued(self, failure: int | None = None) -> None:
        frames = self.conn.data_to_send()
        for frame in frames:
            fin, rsv1, opcode, payload = parse_server_frame(frame)
            assert fin and not rsv1, frame[:2]
            assert opcode in (0x8, 0xA), f"unexpected opcode {opcode} queued"
            assert len(payload) <= 125, payload
            if opcode == 0x8:
                assert len(payload) != 1, f"close frame with a 1-byte payload {payload!r}"
        if failure is not None:
            assert frames, "ConnectionFailed without a close frame queued"
            fin, rsv1, opcode, payload = parse_server_frame(frames[-1])
            assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == failure

    def echo(self, data: str | bytes) -> None:
        if not self.conn.raw_allowed:
            return
        frame = self.conn.send(data)
        fin, rsv1, opcode, payload = parse_server_frame(frame)
        assert fin and opcode == (0x1 if isinstance(data, str) else 0x2)
        if rsv1:
            assert self.params is not None
            if self.inflater is None or self.params.server_no_context_takeover:
                self.inflater = zlib.decompressobj(-self.params.server_max_window_bits)
            payload = self.inflater.decompress(payload + _TAIL)
        expected = data.encode("utf-8") if isinstance(data, str) else data
        assert payload == expected, "echo frame does not decode to the message"

    def drain(self) -> None:
        conn = self.conn
        for event in conn.events():
            assert not self.done, f"event {event!r} after the connection closed"
            if isinstance(event, TextMessage | BinaryMessage):
                raw = event.data.encode("utf-8") if isinstance(event, TextMessage) else event.data
                assert len(raw) <= LIMITS.max_message_bytes, len(raw)
                self.echo(event.data)
            elif isinstance(event, ConnectionFailed):
                assert event.code in ALLOWED_FAILURES, event
                assert conn.state is WsState.CLOSED
                self.done = True
                self.check_queued(failure=event.code)
            elif isinstance(event, PeerClosed):
                assert conn.state is WsState.CLOSED
                self.done = True
            else:
                assert isinstance(event, PingReceived | PongReceived), event
            assert conn.inflate_peak <= LIMITS.inflate_chunk_bytes + 1, conn.inflate_peak
        self.check_queued()


def _chunks(stream: bytes, size: int) -> Iterator[bytes]:
    if size <= 0:
        if stream:
            yield stream
        return
    for i in range(0, len(stream), size):
        yield stream[i : i + size]


def check_ws(data: bytes, known: frozenset[str] | None = None) -> None:
    """Run every invariant of this target on one input; raise on a violation.

    ``known``: bug ids to step around; by default ``KNOWN_BUGS``, or none at all when
    ``LINKD_FUZZ_STRICT`` is set.
    """
    if known is None:
        known = frozenset() if os.environ.get(STRICT_ENV) else KNOWN_BUGS
    # No workaround is needed while KNOWN_BUGS is empty; add one here next to a new id.
    _check(data)


def _check(data: bytes) -> None:
    if not data:
        return
    flags, rest = data[0], data[1:]
    params = PARAMS if flags & 1 else None
    mode = (flags >> 1) & 0x03
    size = flags >> 3
    if mode >= 2:
        stream = structured_stream(rest, params)
    else:
        stream = rest
        size = max(size, 1) if mode == 1 else 0
    if size:
        # Small chunks of a multi-megabyte stream would only measure the harness.
        size = max(size, len(stream) // 2048)
    session = _Session(WsConn(LIMITS, deflate=params), params)
    fed = 0
    for chunk in _chunks(stream, size):
        session.conn.receive_data(chunk)
        session.drain()
        fed += len(chunk)
        if session.done:
            # Closed: what follows must be discarded; feed it at once.
            session.conn.receive_data(stream[fed:])
            session.drain()
            break
    session.conn.receive_data(None)
    session.drain()
    assert session.conn.state is WsState.CLOSED, session.conn.state


def main() -> None:
    run_fuzzer(check_ws)


if __name__ == "__main__":
    main()
