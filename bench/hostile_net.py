"""Raw client sockets for ``bench/hostile.py``: what attackers and the clients share.

``RawConn`` is an ``asyncio.Protocol`` that can stop reading on purpose (the kernel
buffers fill, the engine's write side has to cope), keeps at most ``keep`` received
bytes, counts HTTP status lines as they stream by, and tells when the engine closed
the connection. Frames are built by hand so an attacker can send what no library
would: unfinished messages, empty continuations, reserved opcodes, unmasked frames.
Everything connects to 127.0.0.1, from a chosen loopback source address.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import socket
import struct
from collections import Counter
from typing import cast

from .wsload import parse_frames

__all__ = [
    "HOST",
    "RawConn",
    "client_frame",
    "close_outcome",
    "connect",
    "http_request",
    "ws_handshake",
    "ws_upgrade_request",
]

HOST = "127.0.0.1"
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")
#: Longest prefix of a status line that can be split across two reads, minus one.
_STATUS_TAIL = 15


def client_frame(
    payload: bytes,
    opcode: int = 0x1,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    key: bytes = b"\x11\x22\x33\x44",
    length: int | None = None,
) -> bytes:
    """One client frame; ``length`` may announce more than ``payload`` holds."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if masked else 0
    if n < 126:
        header = bytes((first, mbit | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mbit | 127, n)
    if not masked:
        return header + payload
    size = len(payload)
    mask = int.from_bytes((key * (size // 4 + 1))[:size], "little")
    body = (int.from_bytes(payload, "little") ^ mask).to_bytes(size, "little") if size else b""
    return header + key + body


def ws_upgrade_request(path: str, port: int, headers: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + f"{HOST}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + headers + b"\r\n"
    )


def http_request(method: str, target: str, headers: bytes = b"", body: bytes = b"") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\n".encode() + headers + b"\r\n" + body


class RawConn(asyncio.Protocol):
    """One client connection whose reading and writing the attacker controls."""

    __slots__ = (
        "_scan",
        "_wake",
        "_writable",
        "buf",
        "closed",
        "count_http",
        "keep",
        "peer_closed",
        "received",
        "statuses",
        "transport",
    )

    def __init__(self, keep: int = 1 << 20, count_http: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.keep = keep
        self.received = 0
        self.count_http = count_http
        self.statuses: Counter[int] = Counter()
        self._scan = b""
        self.closed = asyncio.Event()
        #: The engine closed (EOF or reset) before we did.
        self.peer_closed = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._wake = asyncio.Event()

    # ------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(256 * 1024, 64 * 1024)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        room = self.keep - len(self.buf)
        if room > 0:
            self.buf += data[:room]
        if self.count_http:
            scan = self._scan + data
            end = 0
            for match in _STATUS.finditer(scan):
                self.statuses[int(match.group(1))] += 1
                end = match.end()
            self._scan = scan[max(end, len(scan) - _STATUS_TAIL) :]
        self._wake.set()

    def eof_received(self) -> bool:
        self.peer_closed = True
        self._wake.set()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.peer_closed = True
        if exc is not None:
            self.peer_closed = True
        self.transport = None
        self.closed.set()
        self._writable.set()
        self._wake.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # ---------------------------------------------------------------- use
    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> bool:
        if not self.open:
            return False
        assert self.transport is not None
        self.transport.write(data)
        return True

    async def writable(self, deadline: float) -> bool:
        """Wait until the transport takes more (False: closed or past ``deadline``)."""
        loop = asyncio.get_running_loop()
        if not self._writable.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._writable.wait()
        return self.open and self._writable.is_set() and loop.time() < deadline

    async def wait_data(self, deadline: float) -> bool:
        """Wait for more bytes or the close; False once past ``deadline``."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._wake.wait()
                return True
        return False

    def stop_reading(self) -> None:
        if self.open:
            assert self.transport is not None
            self.transport.pause_reading()

    def start_reading(self) -> None:
        if self.open:
            assert self.transport is not None
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def frames(self) -> list[tuple[int, bytes]]:
        """Complete server frames at the start of the buffer, removed from it."""
        frames, used = parse_frames(self.buf)
        if used:
            del self.buf[:used]
        return frames


async def connect(
    port: int,
    source: str = HOST,
    *,
    keep: int = 1 << 20,
    count_http: bool = False,
    rcvbuf: int | None = None,
) -> RawConn:
    """Connect from ``source`` (any 127.0.0.0/8 address) to the engine on 127.0.0.1."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if rcvbuf is not None:
            # Before connect(): a small window makes the engine's buffers fill first.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        await loop.sock_connect(sock, (HOST, port))
        _, conn = await loop.create_connection(lambda: RawConn(keep, count_http), sock=sock)
    except BaseException:
        sock.close()
        raise
    return conn


async def ws_handshake(conn: RawConn, path: str, port: int, deadline: float) -> int:
    """Send an upgrade and read the status line: 101, another status, or 0 (no answer)."""
    conn.write(ws_upgrade_request(path, port))
    return await read_head(conn, deadline)


async def read_head(conn: RawConn, deadline: float) -> int:
    """Read one response head off the buffer; its status, or 0 if none came."""
    while True:
        end = conn.buf.find(b"\r\n\r\n")
        if end >= 0:
            line = bytes(conn.buf[: conn.buf.find(b"\r\n")])
            del conn.buf[: end + 4]
            match = _STATUS.match(line + b" ")
            return int(match.group(1)) if match else 0
        if conn.closed.is_set() or not await conn.wait_data(deadline):
            return 0


async def close_outcome(conn: RawConn, deadline: float) -> str:
    """Read frames until the engine's close: its code, ``dropped`` (TCP closed with no
    close frame), or ``open`` (nothing by ``deadline``)."""
    conn.start_reading()
    while True:
        for opcode, payload in conn.frames():
            if opcode == 0x8:
                return str(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else "1005"
        if len(conn.buf) >= conn.keep:
            conn.buf.clear()  # a huge frame we will not parse: skip it
        if conn.closed.is_set():
            return "dropped"
        if not await conn.wait_data(deadline):
            return "open"
