"""A tiny HTTP/1.1 client over a raw socket, for asserting exactly what the engine sends.

It writes whatever bytes a test gives it (malformed, split, pipelined) and parses the
server's responses without validating them beyond what framing needs: status line,
headers, then a body delimited by ``content-length``, chunked coding, or EOF.
Every byte received is also kept in ``received``, so tests can assert on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["HttpResponse", "RawHttp", "build_request"]

_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass
class HttpResponse:
    """One parsed response; header names are lower-cased, values stripped, order kept."""

    status: int
    reason: str
    http_version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of every ``name`` header, in order."""
        name = name.lower()
        return [value for key, value in self.headers if key == name]

    @property
    def closes(self) -> bool:
        """Whether the response announces ``connection: close``."""
        return any(
            "close" in (t.strip().lower() for t in v.split(","))
            for v in self.header_values("connection")
        )

    def json(self) -> Any:
        return orjson.loads(self.body)


def build_request(
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    http_version: str = "1.1",
    host: str | None = "127.0.0.1",
    content_length: bool = True,
) -> bytes:
    """Serialize a request; ``host`` and ``content-length`` are added unless given or disabled."""
    hdrs = list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    if host is not None and "host" not in names:
        hdrs.insert(0, ("Host", host))
    if (
        content_length
        and "content-length" not in names
        and "transfer-encoding" not in names
        and (body or method in ("POST", "PUT", "PATCH"))
    ):
        hdrs.append(("Content-Length", str(len(body))))
    lines = [f"{method} {target} HTTP/{http_version}", *(f"{k}: {v}" for k, v in hdrs)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawHttp:
    """``async with RawHttp(port) as c:`` opens one TCP connection to the engine.

    Args:
        port: the engine's port on ``host``.
        timeout: default seconds any single read may wait before failing the test.
    """

    def __init__(self, port: int, *, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        #: Every byte read from the socket so far.
        self.received = bytearray()

    async def __aenter__(self) -> RawHttp:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**24)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    # --------------------------------------------------------------- sending
    async def send(self, data: bytes) -> None:
        """Write raw bytes and wait until they are handed to the kernel."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_eof(self) -> None:
        """Half-close: no more bytes from us, the server may still answer."""
        self.writer.write_eof()
        await self.writer.drain()

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        within: float | None = None,
    ) -> HttpResponse:
        """Send one well-formed request and read its (final) response."""
        await self.send(build_request(method, target, headers, body))
        return await self.read_response(head=method == "HEAD", within=within)

    # --------------------------------------------------------------- reading
    async def _read_exactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        self.received += data
        return data

    async def _read_until(self, sep: bytes) -> bytes:
        data = await self.reader.readuntil(sep)
        self.received += data
        return data

    async def read_response(
        self, *, head: bool = False, within: float | None = None
    ) -> HttpResponse:
        """Read one response (a 1xx counts as one). ``head``: it answers a HEAD (no body).

        Raises ``asyncio.IncompleteReadError`` when the server closes first and
        ``TimeoutError`` when nothing complete arrives in time.
        """
        return await asyncio.wait_for(self._read_response(head), within or self.timeout)

    async def _read_response(self, head: bool) -> HttpResponse:
        start = len(self.received)
        raw_head = await self._read_until(b"\r\n\r\n")
        status_line, *lines = raw_head[:-4].decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or not code.isdigit():
            raise AssertionError(f"not an HTTP status line: {status_line!r}")
        status = int(code)
        headers: list[tuple[str, str]] = []
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep:
                raise AssertionError(f"malformed response header line: {line!r}")
            headers.append((name.strip().lower(), value.strip()))
        resp = HttpResponse(status, reason, version[5:], headers, b"", b"")
        if head or status < 200 or status in _NO_BODY_STATUSES:
            body = b""
        elif (length := resp.header("content-length")) is not None:
            body = await self._read_exactly(int(length))
        elif "chunked" in (resp.header("transfer-encoding") or "").lower():
            body = await self._read_chunked()
        else:
            body = await self.reader.read()  # delimited by EOF
            self.received += body
        resp.body = body
        resp.raw = bytes(self.received[start:])
        return resp

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await self._read_until(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await self._read_until(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            parts.append((await self._read_exactly(size + 2))[:-2])

    async def read_responses(self, n: int, *, within: float | None = None) -> list[HttpResponse]:
        """Read ``n`` consecutive responses (none of them to a HEAD)."""
        return [await self.read_response(within=within) for _ in range(n)]

    async def read_until_eof(self, within: float | None = None) -> bytes:
        """Everything the server sends until it closes; fails the test on timeout."""

        start = len(self.received)

        async def read_all() -> None:
            while chunk := await self.reader.read(65536):
                self.received += chunk  # kept even if the wait times out

        await asyncio.wait_for(read_all(), within or self.timeout)
        return bytes(self.received[start:])

    async def expect_eof(self, within: float | None = None) -> float:
        """Assert that the server closes without sending anything more.

        Returns the seconds it took for the EOF to arrive.
        """
        started = time.monotonic()
        data = await self.read_until_eof(within)
        if data:
            raise AssertionError(f"expected EOF, got {data[:200]!r}")
        return time.monotonic() - started

    async def assert_silent(self, seconds: float) -> None:
        """Assert that neither a byte nor EOF arrives within ``seconds``."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), seconds)
        except TimeoutError:
            return
        self.received += data
        raise AssertionError(f"expected silence, got {data[:200]!r}" if data else "got EOF")
