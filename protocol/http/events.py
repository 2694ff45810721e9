"""Events an ``HttpConn`` reports: a complete request (body included), or the peer's EOF."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HttpRequest", "PeerEOF"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One complete HTTP/1.1 request.

    Header names are lower-case, values are decoded as Latin-1 (RFC 9110 §5.5), in
    the order received; repeated headers stay repeated.
    """

    method: str
    target: str
    path: str
    query: str
    http_version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: Lower-cased ``Upgrade`` header when the request asked for a protocol switch.
    upgrade: str | None = None

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


@dataclass(frozen=True, slots=True)
class PeerEOF:
    """The client closed its side of the connection between requests."""
