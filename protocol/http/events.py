"""Events an ``HttpConn`` reports: a complete request (body included), or the peer's EOF."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["HttpRequest", "PeerEOF", "pack_headers"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One complete HTTP/1.1 request.

    Header names are lower-case, values are decoded as Latin-1 (RFC 9110 §5.5), in
    the order received; repeated headers stay repeated.

    The headers are kept packed in one ``bytes`` (``name NUL value NUL ...``, which
    h11 guarantees holds no other NUL) and decoded when asked for: a WebSocket keeps
    its upgrade request for its whole life, and a tuple of ``str`` pairs would cost it
    about a kilobyte.
    """

    method: str
    path: str
    query: str
    http_version: str
    raw_headers: bytes
    body: bytes
    #: Lower-cased ``Upgrade`` header when the request asked for a protocol switch.
    upgrade: str | None = None

    @classmethod
    def build(
        cls,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        http_version: str = "1.1",
        upgrade: str | None = None,
    ) -> HttpRequest:
        """A request from a target (``/path?query``) and ``(name, value)`` pairs."""
        path, _, query = target.partition("?")
        return cls(method, path, query, http_version, pack_headers(headers), body, upgrade)

    @property
    def target(self) -> str:
        """The request target as received: path, then ``?query`` when there is one."""
        return f"{self.path}?{self.query}" if self.query else self.path

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """``(name, value)`` pairs, decoded on each access (see the class docstring)."""
        raw = self.raw_headers
        if not raw:
            return ()
        parts = raw.decode("latin-1").split("\x00")
        return tuple(zip(parts[0::2], parts[1::2], strict=True))

    def header(self, name: str) -> str | None:
        """The first value of ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_list(self, name: str) -> list[str]:
        """Every comma-separated element of every ``name`` header (RFC 9110 §5.6.1)."""
        out: list[str] = []
        for key, value in self.headers:
            if key == name:
                out.extend(part.strip() for part in value.split(",") if part.strip())
        return out


def pack_headers(headers: Iterable[tuple[str, str]]) -> bytes:
    """``(name, value)`` pairs → the packed form of ``HttpRequest.raw_headers``."""
    return "\x00".join(f"{k}\x00{v}" for k, v in headers).encode("latin-1")


@dataclass(frozen=True, slots=True)
class PeerEOF:
    """The client closed its side of the connection between requests."""
