"""A deliberately dumb WebSocket client over a raw socket, for sending what real clients won't.

It masks frames (or not), sets any RSV bit, splits writes anywhere, and reads server
frames without validating them, so tests can assert exactly what the engine sent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
import zlib
from dataclasses import dataclass


@dataclass
class Frame:
    fin: bool
    rsv1: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != 0x8:
            raise AssertionError(f"not a close frame: opcode {self.opcode}")
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    def inflate(self) -> bytes:
        return zlib.decompressobj(-15).decompress(self.payload + b"\x00\x00\xff\xff")


def encode_client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, mask: bool = True
) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mbit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mbit | 127, n)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = (
        bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        if n < 4096
        else _fast_mask(payload, key)
    )
    return header + key + masked


def _fast_mask(payload: bytes, key: bytes) -> bytes:
    repeat = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeat, "big")).to_bytes(
        len(payload), "big"
    )


class RawWs:
    """``async with RawWs(port, "/echo") as ws:`` performs the handshake."""

    def __init__(
        self,
        port: int,
        path: str = "/echo",
        *,
        extensions: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        host: str = "127.0.0.1",
        initial_data: bytes = b"",
        rcvbuf: int | None = None,
    ) -> None:
        self.port, self.path, self.host = port, path, host
        #: Bytes written in the same ``write`` as the handshake request (e.g. a first frame).
        self.initial_data = initial_data
        #: SO_RCVBUF for the client socket, set before connecting (small = fills up fast).
        self.rcvbuf = rcvbuf
        self.extensions = extensions
        self.extra_headers = headers or []
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.status = 0
        self.response_headers: dict[str, str] = {}
        self.response_body = b""

    async def __aenter__(self) -> RawWs:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def connect(self) -> int:
        if self.rcvbuf is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=2**24
            )
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
            self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=2**24)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.extensions:
            lines.append(f"Sec-WebSocket-Extensions: {self.extensions}")
        lines += [f"{k}: {v}" for k, v in self.extra_headers]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + self.initial_data)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                self.response_headers[k.strip().lower()] = v.strip()
        length = int(self.response_headers.get("content-length", "0"))
        if self.status != 101 and length:
            self.response_body = await self.reader.readexactly(length)
        return self.status

    def send_frame(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv1: bool = False,
        mask: bool = True,
    ) -> None:
        self.writer.write(encode_client_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=mask))

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode())

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv_frame(self, timeout: float = 5.0) -> Frame:  # noqa: ASYNC109
        async def read() -> Frame:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            if b1 & 0x80:
                raise AssertionError("server frames must not be masked")
            payload = await self.reader.readexactly(n)
            return Frame(bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x0F, payload)

        return await asyncio.wait_for(read(), timeout)

    async def recv_close_code(self, timeout: float = 5.0) -> int | None:  # noqa: ASYNC109
        """Skip data frames until the close frame; return its code."""
        while True:
            frame = await self.recv_frame(timeout)
            if frame.opcode == 0x8:
                return frame.close_code

    async def expect_eof(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        data = await asyncio.wait_for(self.reader.read(), timeout)
        if data:
            raise AssertionError(f"expected EOF, got {data[:50]!r}")

    def pause_reading(self) -> None:
        """Stop taking bytes from the socket, so the server's writes back up in the kernel."""
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        self.writer.transport.resume_reading()  # type: ignore[attr-defined]

    async def expect_disconnect(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait for EOF or a reset, skipping any frames still in flight."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except (ConnectionResetError, BrokenPipeError):
            pass


def deflate_message(payload: bytes, window_bits: int = 15) -> bytes:
    """One message compressed without context, tail removed (RFC 7692 §7.2.1)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -window_bits)
    data = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def deflate_bomb(inflated_mib: int) -> bytes:
    """A raw deflate stream of ``inflated_mib`` MiB of zeros, about 1 KiB per MiB.

    One MiB of zeros is compressed once, as a non-final, byte-aligned, context-free
    segment (``Z_FULL_FLUSH``), and repeated: the concatenation is one valid stream.
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = comp.compress(bytes(1 << 20)) + comp.flush(zlib.Z_FULL_FLUSH)
    return (segment * inflated_mib)[:-4]
