"""Which web origins may open a WebSocket: the ``Origin`` check, sans-I/O.

A browser sends the page's origin (RFC 6454: ``scheme://host[:port]``) with every
WebSocket handshake, and lets any page open a socket to any server with the user's
cookies: the server alone can refuse a page it does not know (cross-site WebSocket
hijacking). Allowed origins are exact (``https://app.example.com``) or a pattern with
one leading ``*.`` label (``https://*.example.com``: any subdomain, at any depth, but
not ``example.com`` itself). Comparison is of the serialized origin: scheme and host
case-insensitive, the default port (80 for http, 443 for https) implied.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["OriginPolicy", "normalize_origin", "parse_origins"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(text: str) -> tuple[str, str, int] | None:
    """``scheme://host[:port]`` → (scheme, host, port), lower-cased, default port
    filled in; None when it is not a serialized origin (``null``, a path, garbage)."""
    scheme, sep, rest = text.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS or not rest or any(c in rest for c in "/?#@ "):
        return None
    if rest.startswith("["):  # an IPv6 literal
        end = rest.find("]")
        if end < 0:
            return None
        host, port_text = rest[: end + 1], rest[end + 1 :]
        if port_text and not port_text.startswith(":"):
            return None
        colon, port_text = port_text[:1], port_text[1:]
    else:
        host, colon, port_text = rest.partition(":")
    if not host or (colon and not port_text):
        return None
    if port_text:
        if not (port_text.isdigit() and port_text.isascii() and len(port_text) <= 5):
            return None
        port = int(port_text)
        if not 0 < port <= 65535:
            return None
    else:
        port = _DEFAULT_PORTS[scheme]
    return scheme, host.lower(), port


def parse_origins(specs: Iterable[str]) -> tuple[tuple[str, str, int], ...]:
    """Allowed origins (``*.`` patterns kept as a host starting with ``*.``);
    ValueError names the bad one."""
    found = []
    for spec in specs:
        text = spec.strip()
        if not text:
            continue
        parsed = normalize_origin(text)
        if parsed is None or "*" in parsed[1].removeprefix("*."):
            raise ValueError(
                f"not an origin: {text!r} (scheme://host[:port], host may start with *.)"
            )
        if parsed[1] == "*.":
            raise ValueError(f"not an origin: {text!r} (*. needs a domain after it)")
        found.append(parsed)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """Allowed origins; ``require`` refuses a handshake without ``Origin`` as well."""

    #: None: any origin (``require`` alone: an ``Origin``, whichever).
    origins: tuple[tuple[str, str, int], ...] | None
    require: bool = False

    @classmethod
    def parse(cls, specs: Iterable[str], require: bool = False) -> OriginPolicy:
        return cls(parse_origins(specs), require)

    def allows(self, origin: str | None) -> bool:
        """May a handshake with this ``Origin`` header (None: none sent) go on?"""
        if origin is None:
            return not self.require
        if self.origins is None:
            return True
        parsed = normalize_origin(origin)
        if parsed is None:
            return False  # "null" (a sandboxed frame, a file: page) or garbage
        scheme, host, port = parsed
        for want_scheme, want_host, want_port in self.origins:
            if want_scheme != scheme or want_port != port:
                continue
            if want_host.startswith("*."):
                if host.endswith(want_host[1:]) and len(host) > len(want_host) - 1:
                    return True
            elif want_host == host:
                return True
        return False
