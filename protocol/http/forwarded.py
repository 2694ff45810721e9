"""The client address behind trusted reverse proxies: ``X-Forwarded-For`` and
``Forwarded`` (RFC 7239), sans-I/O.

Every proxy on the way appends the address it received the request from, so the list
reads client, proxy1, proxy2... and only its right end was written by proxies we
trust; anything to the left of the first untrusted hop may be whatever the client
made up. The client is therefore the rightmost hop that is NOT a trusted proxy,
walking from the right (nginx ``real_ip_recursive on``). Headers are honoured only
when the TCP peer itself is trusted; a hop that is not an IP address (``unknown``, an
obfuscated RFC 7239 identifier, garbage) ends the walk with the peer's address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["TrustedProxies", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Hops looked at, from the right: a longer chain is an attack, not a topology.
MAX_HOPS = 32


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """``10.0.0.0/8``, ``127.0.0.1``, ``::1``, ``fd00::/8`` → networks; ValueError names
    the bad one. A bare address is a /32 (/128)."""
    networks = []
    for spec in specs:
        text = spec.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"not a CIDR or an IP address: {text!r}") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The proxies whose forwarding header is believed."""

    networks: tuple[Network, ...]
    #: "x-forwarded-for" or "forwarded": only the one header the proxies write is read
    #: (reading the other would let a client forge it, the proxy passing it on as is).
    header: str = "x-forwarded-for"

    def trusts(self, host: str) -> bool:
        address = _address(host)
        return address is not None and _within(address, self.networks)

    def client(self, peer: tuple[str, int], values: Sequence[str]) -> tuple[str, int]:
        """The client's ``(host, port)``: from ``values`` (every line of the header, in
        order) when ``peer`` is trusted; else, or when they make no sense, ``peer``.

        A port is known only from ``Forwarded`` (``for="[::1]:4711"``); otherwise 0.
        """
        if not values or not self.trusts(peer[0]):
            return peer
        hops = _forwarded_for(values) if self.header == "forwarded" else _x_forwarded_for(values)
        if not hops:
            return peer
        found: tuple[Address, int] | None = None
        for hop in reversed(hops[-MAX_HOPS:]):
            parsed = _hop(hop)
            if parsed is None:
                return peer  # garbage where a trusted proxy would have written an address
            found = parsed
            if not _within(parsed[0], self.networks):
                break
        # Every hop trusted: the leftmost one is as far as the chain goes.
        assert found is not None
        return str(found[0]), found[1]


def _within(address: Address, networks: tuple[Network, ...]) -> bool:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return any(address in net or (mapped is not None and mapped in net) for net in networks)


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _x_forwarded_for(values: Sequence[str]) -> list[str]:
    return [hop.strip() for value in values for hop in value.split(",")]


def _forwarded_for(values: Sequence[str]) -> list[str]:
    """The ``for=`` of each element of ``Forwarded: for=a;proto=https, for=b``.

    An element without ``for=`` has no hop: the chain is broken, and an empty hop
    (garbage) stands for it.
    """
    hops = []
    for value in values:
        for element in value.split(","):
            hop = ""
            for pair in element.split(";"):
                name, sep, token = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    hop = token.strip()
            hops.append(hop)
    return hops


def _hop(text: str) -> tuple[Address, int] | None:
    """One hop: ``1.2.3.4``, ``1.2.3.4:80``, ``"[2001:db8::1]:4711"``, ``2001:db8::1``."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    port = 0
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            return None
        if rest:
            if not rest.startswith(":"):
                return None
            port_text = rest[1:]
            if not (port_text.isdigit() and port_text.isascii() and int(port_text) <= 65535):
                return None
            port = int(port_text)
        text = host
    elif text.count(":") == 1:  # IPv4 with a port
        text, _, port_text = text.partition(":")
        if not (port_text.isdigit() and port_text.isascii() and int(port_text) <= 65535):
            return None
        port = int(port_text)
    address = _address(text)
    if address is None or "%" in text:  # no scoped addresses
        return None
    return address, port
