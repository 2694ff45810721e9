"""The PROXY protocol header (HAProxy's spec, versions 1 and 2), sans-I/O.

A balancer that speaks it (HAProxy ``send-proxy`` / ``send-proxy-v2``, AWS NLB with
proxy protocol v2, ...) writes one header at the start of every TCP connection, before
any byte of the client's: who connected (source) to what (destination). The engine
then knows the client's address although its TCP peer is the balancer.

``parse_proxy_header(data)`` takes the bytes received so far and returns either
``NEED_DATA`` (a valid beginning: read more), or a ``ProxyHeader`` (how many bytes
the header took, and the addresses), or raises ``ProxyHeaderError`` (not a PROXY
header: the connection is not from the balancer and must be closed). Nothing else
escapes it (fuzz/fuzz_proxy.py).

Both versions are bounded: version 1 is one line of at most 107 bytes (the spec's
maximum, CRLF included); version 2's length field is 16 bits, and we take at most
``MAX_V2_PAYLOAD`` bytes of addresses and TLVs (HAProxy's own TLVs, AWS's VPC
endpoint id, ...: a few hundred bytes in practice).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

from protocol.errors import RemoteProtocolError

from .conn import NEED_DATA, _Sentinel

__all__ = [
    "MAX_V1_LENGTH",
    "MAX_V2_PAYLOAD",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "parse_proxy_header",
]

_NeedData = Literal[_Sentinel.NEED_DATA]

#: Version 1's longest line: "PROXY UNKNOWN ffff:f...f ffff:f...f 65535 65535\r\n".
MAX_V1_LENGTH: Final = 107
#: Version 2 payload (addresses + TLVs) accepted; the field allows 65535.
MAX_V2_PAYLOAD: Final = 4096
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX: Final = b"PROXY "
_V2_FIXED: Final = 16  # signature, version/command, family/transport, length

_FAMILIES: Final = {0x1: "AF_INET", 0x2: "AF_INET6", 0x3: "AF_UNIX", 0x0: "AF_UNSPEC"}
_ADDRESS_LENGTH: Final = {0x1: 12, 0x2: 36, 0x3: 216, 0x0: 0}


class ProxyHeaderError(RemoteProtocolError):
    """The connection does not start with a valid PROXY header."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY header."""

    #: Bytes the header took; what follows is the client's first bytes.
    consumed: int
    #: 1 or 2.
    version: int
    #: "AF_INET", "AF_INET6", or what leaves the address unknown: "LOCAL" (v2: a
    #: health check of the balancer itself), "UNKNOWN" (v1), "AF_UNIX", "AF_UNSPEC".
    family: str
    #: The client's ``(host, port)``; None: keep the socket's peer address.
    source: tuple[str, int] | None = None
    #: The address the client connected to (the balancer's listener).
    destination: tuple[str, int] | None = None


def parse_proxy_header(data: bytes | bytearray | memoryview) -> ProxyHeader | _NeedData:
    """The PROXY header at the start of ``data``; ``NEED_DATA`` if incomplete.

    Raises ``ProxyHeaderError`` when ``data`` cannot be the start of one.
    """
    data = bytes(data[: _V2_FIXED + MAX_V2_PAYLOAD])
    if data[:1] == b"\r":
        return _parse_v2(data)
    return _parse_v1(data)


def _parse_v1(data: bytes) -> ProxyHeader | _NeedData:
    head = data[: len(_V1_PREFIX)]
    if not _V1_PREFIX.startswith(head):
        raise ProxyHeaderError("not a PROXY header")
    end = data.find(b"\r\n", 0, MAX_V1_LENGTH)
    if end < 0:
        if len(data) >= MAX_V1_LENGTH:
            raise ProxyHeaderError("PROXY v1 line longer than 107 bytes")
        if b"\n" in data or b"\r" in data[:-1]:
            raise ProxyHeaderError("PROXY v1 line not ended by CRLF")
        return NEED_DATA
    consumed = end + 2
    try:
        line = data[len(_V1_PREFIX) : end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    parts = line.split(" ")
    if parts[0] == "UNKNOWN":
        # The balancer could not tell (or proxies something else): the rest is ignored.
        return ProxyHeader(consumed, 1, "UNKNOWN")
    if parts[0] not in ("TCP4", "TCP6") or len(parts) != 5:
        raise ProxyHeaderError("PROXY v1 wants TCP4|TCP6 SRC DST SPORT DPORT")
    version = 4 if parts[0] == "TCP4" else 6
    src = _v1_address(parts[1], version)
    dst = _v1_address(parts[2], version)
    sport, dport = _v1_port(parts[3]), _v1_port(parts[4])
    family = "AF_INET" if version == 4 else "AF_INET6"
    return ProxyHeader(consumed, 1, family, (src, sport), (dst, dport))


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError("PROXY v1 address is not an IP address") from None
    if address.version != version:
        raise ProxyHeaderError("PROXY v1 address does not match its family")
    return str(address)


def _v1_port(text: str) -> int:
    # The spec: decimal, no leading zero (bar "0"), at most 65535.
    if not text.isdigit() or not text.isascii() or len(text) > 5 or text != str(int(text)):
        raise ProxyHeaderError("PROXY v1 port is not a decimal number")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("PROXY v1 port above 65535")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | _NeedData:
    if not V2_SIGNATURE.startswith(data[: len(V2_SIGNATURE)]):
        raise ProxyHeaderError("not a PROXY header")
    if len(data) < _V2_FIXED:
        return NEED_DATA
    ver_cmd, fam_proto, length = struct.unpack_from("!BBH", data, len(V2_SIGNATURE))
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError("PROXY v2 header of an unknown version")
    command = ver_cmd & 0xF
    if command > 1:
        raise ProxyHeaderError("PROXY v2 command is neither LOCAL nor PROXY")
    if length > MAX_V2_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 payload over {MAX_V2_PAYLOAD} bytes")
    family_bits, transport = fam_proto >> 4, fam_proto & 0xF
    if family_bits not in _FAMILIES or transport > 2:
        raise ProxyHeaderError("PROXY v2 address family or transport unknown")
    consumed = _V2_FIXED + length
    if len(data) < consumed:
        return NEED_DATA
    if command == 0:
        # LOCAL: the balancer's own connection (a health check): its address is right.
        return ProxyHeader(consumed, 2, "LOCAL")
    family = _FAMILIES[family_bits]
    if length < _ADDRESS_LENGTH[family_bits]:
        raise ProxyHeaderError("PROXY v2 payload shorter than its addresses")
    # TLVs after the addresses (ALPN, authority, CRC, AWS VPC id...) are skipped.
    if family_bits == 0x1 and transport == 0x1:
        src4, dst4, sport, dport = struct.unpack_from("!4s4sHH", data, _V2_FIXED)
        src, dst = str(ipaddress.IPv4Address(src4)), str(ipaddress.IPv4Address(dst4))
    elif family_bits == 0x2 and transport == 0x1:
        src6, dst6, sport, dport = struct.unpack_from("!16s16sHH", data, _V2_FIXED)
        src, dst = str(ipaddress.IPv6Address(src6)), str(ipaddress.IPv6Address(dst6))
    else:
        # AF_UNIX, AF_UNSPEC or a datagram: nothing a TCP client address can be.
        return ProxyHeader(consumed, 2, family)
    return ProxyHeader(consumed, 2, family, (src, sport), (dst, dport))
