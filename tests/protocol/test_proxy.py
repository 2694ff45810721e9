"""The PROXY header parser (v1, v2) and the trusted-proxy address walk, sans-I/O."""

from __future__ import annotations

import random
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.fuzz_proxy import check_proxy
from protocol.http import NEED_DATA
from protocol.http.forwarded import TrustedProxies, parse_networks
from protocol.http.proxy import (
    MAX_V1_LENGTH,
    MAX_V2_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
)


def v2(
    command: int = 1,
    family: int = 1,
    transport: int = 1,
    payload: bytes | None = None,
    tlvs: bytes = b"",
) -> bytes:
    if payload is None:
        if family == 1:
            payload = socket.inet_aton("192.0.2.7") + socket.inet_aton("10.0.0.1")
            payload += struct.pack("!HH", 51234, 443)
        elif family == 2:
            payload = socket.inet_pton(socket.AF_INET6, "2001:db8::7")
            payload += socket.inet_pton(socket.AF_INET6, "2001:db8::1")
            payload += struct.pack("!HH", 4711, 443)
        else:
            payload = b""
    body = payload + tlvs
    return (
        V2_SIGNATURE
        + bytes([0x20 | command, family << 4 | transport])
        + struct.pack("!H", len(body))
        + body
    )


# ----------------------------------------------------------------- version 1
def test_v1_tcp4() -> None:
    data = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n"
    header = parse_proxy_header(data)
    assert header == ProxyHeader(41, 1, "AF_INET", ("192.0.2.7", 51234), ("10.0.0.1", 443))
    assert isinstance(header, ProxyHeader)
    assert data[header.consumed :] == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6_is_normalized() -> None:
    header = parse_proxy_header(b"PROXY TCP6 2001:DB8:0::7 ::1 1 2\r\n")
    assert isinstance(header, ProxyHeader)
    assert header.source == ("2001:db8::7", 1)
    assert header.family == "AF_INET6"


def test_v1_unknown_keeps_the_socket_address() -> None:
    header = parse_proxy_header(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
    assert isinstance(header, ProxyHeader)
    assert header.family == "UNKNOWN" and header.source is None
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == ProxyHeader(15, 1, "UNKNOWN")


def test_v1_byte_by_byte_needs_data_until_the_crlf() -> None:
    data = b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\n"
    for end in range(len(data)):
        assert parse_proxy_header(data[:end]) is NEED_DATA, data[:end]
    assert isinstance(parse_proxy_header(data), ProxyHeader)


def test_v1_longest_line_is_accepted_and_longer_refused() -> None:
    longest = b"PROXY UNKNOWN " + b"f" * (MAX_V1_LENGTH - 16) + b"\r\n"
    assert len(longest) == MAX_V1_LENGTH
    assert isinstance(parse_proxy_header(longest), ProxyHeader)
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"PROXY UNKNOWN " + b"f" * (MAX_V1_LENGTH - 15) + b"\r\n")
    # No CRLF within the limit: refused as soon as the limit is passed, not buffered.
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"PROXY TCP4 " + b"1" * 200)


@pytest.mark.parametrize(
    "line",
    [
        b"GET / HTTP/1.1\r\n",  # a client, not the balancer
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xff 2\r\n",
    ],
)
def test_v1_malformed(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(line)


# ----------------------------------------------------------------- version 2
def test_v2_inet() -> None:
    data = v2() + b"GET /"
    header = parse_proxy_header(data)
    assert header == ProxyHeader(28, 2, "AF_INET", ("192.0.2.7", 51234), ("10.0.0.1", 443))
    assert data[28:] == b"GET /"


def test_v2_inet6_with_tlvs_skipped() -> None:
    tlvs = b"\x01\x00\x08http/1.1" + b"\xea\x00\x05vpce1"  # ALPN, AWS VPC endpoint
    header = parse_proxy_header(v2(family=2, tlvs=tlvs))
    assert isinstance(header, ProxyHeader)
    assert header.source == ("2001:db8::7", 4711)
    assert header.consumed == 16 + 36 + len(tlvs)


def test_v2_local_keeps_the_socket_address() -> None:
    header = parse_proxy_header(v2(command=0, family=0, transport=0))
    assert header == ProxyHeader(16, 2, "LOCAL")
    # LOCAL with addresses (some balancers send them): still the socket's.
    header = parse_proxy_header(v2(command=0))
    assert isinstance(header, ProxyHeader) and header.source is None


@pytest.mark.parametrize(
    ("family", "transport"), [(0, 0), (3, 1), (1, 2)], ids=["unspec", "unix", "dgram"]
)
def test_v2_families_without_a_tcp_address(family: int, transport: int) -> None:
    payload = b"\x00" * 216 if family == 3 else None
    header = parse_proxy_header(v2(family=family, transport=transport, payload=payload))
    assert isinstance(header, ProxyHeader)
    assert header.source is None


def test_v2_byte_by_byte() -> None:
    data = v2(family=2, tlvs=b"\x04\x00\x01\x00")
    for end in range(len(data)):
        assert parse_proxy_header(data[:end]) is NEED_DATA, end
    assert isinstance(parse_proxy_header(data), ProxyHeader)


def test_v2_length_is_bounded_before_the_payload_arrives() -> None:
    fixed = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_PAYLOAD + 1)
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(fixed)
    ok = v2(tlvs=b"\x00" * (MAX_V2_PAYLOAD - 12))
    assert isinstance(parse_proxy_header(ok), ProxyHeader)


@pytest.mark.parametrize(
    "data",
    [
        V2_SIGNATURE[:5] + b"X",
        V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"\x00" * 12,  # version 1 in the v2 form
        V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # command 2
        V2_SIGNATURE + b"\x21\x41\x00\x0c" + b"\x00" * 12,  # family 4
        V2_SIGNATURE + b"\x21\x13\x00\x0c" + b"\x00" * 12,  # transport 3
        V2_SIGNATURE + b"\x21\x11\x00\x0b" + b"\x00" * 11,  # too short for AF_INET
        V2_SIGNATURE + b"\x21\x21\x00\x0c" + b"\x00" * 12,  # too short for AF_INET6
        b"\r\nGET / HTTP/1.1\r\n",
    ],
)
def test_v2_malformed(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data)


def test_random_inputs_parse_or_raise_the_documented_error() -> None:
    rng = random.Random(12)
    seeds = [
        v2(),
        v2(family=2, tlvs=b"\x01\x00\x02h2"),
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\n",
        b"PROXY TCP6 ::1 ::2 1 2\r\n",
    ]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                del data[pos : pos + rng.randint(1, 8)]
        try:
            result = parse_proxy_header(bytes(data))
        except ProxyHeaderError:
            continue
        if isinstance(result, ProxyHeader):
            assert 0 < result.consumed <= len(data)


# -------------------------------------------------------- trusted proxies
TRUSTED = TrustedProxies(parse_networks(["127.0.0.1", "10.0.0.0/8", "fd00::/8"]))
PROXY = ("10.1.2.3", 40000)


def test_rightmost_untrusted_hop_wins() -> None:
    # The client forged "6.6.6.6"; 203.0.113.9 reached our first proxy.
    values = ["6.6.6.6, 203.0.113.9, 10.0.0.5"]
    assert TRUSTED.client(PROXY, values) == ("203.0.113.9", 0)


def test_repeated_header_lines_are_one_list() -> None:
    assert TRUSTED.client(PROXY, ["6.6.6.6", "203.0.113.9,10.9.9.9"]) == ("203.0.113.9", 0)


def test_untrusted_peer_is_not_believed() -> None:
    assert TRUSTED.client(("198.51.100.1", 5), ["203.0.113.9"]) == ("198.51.100.1", 5)


def test_garbage_keeps_the_peer() -> None:
    for value in ("unknown", "203.0.113.9, bogus", "", " , ", "1.2.3.4:99999", "::1%eth0"):
        assert TRUSTED.client(PROXY, [value]) == PROXY, value
    # Garbage LEFT of the rightmost untrusted hop does not matter.
    assert TRUSTED.client(PROXY, ["bogus, 203.0.113.9"]) == ("203.0.113.9", 0)


def test_all_hops_trusted_gives_the_leftmost() -> None:
    assert TRUSTED.client(PROXY, ["10.0.0.7, 10.0.0.8"]) == ("10.0.0.7", 0)


def test_ipv6_and_mapped_addresses() -> None:
    assert TRUSTED.client(PROXY, ["2001:db8::1, fd00::2"]) == ("2001:db8::1", 0)
    assert TRUSTED.client(("::ffff:10.0.0.1", 1), ["203.0.113.9"]) == ("203.0.113.9", 0)


def test_forwarded_rfc7239() -> None:
    fwd = TrustedProxies(TRUSTED.networks, "forwarded")
    value = 'for=6.6.6.6;proto=https, for="[2001:db8::7]:4711";by=10.0.0.1, for=10.0.0.9'
    assert fwd.client(PROXY, [value]) == ("2001:db8::7", 4711)
    assert fwd.client(PROXY, ["For=203.0.113.9:8080"]) == ("203.0.113.9", 8080)
    assert fwd.client(PROXY, ["for=_hidden"]) == PROXY  # obfuscated: keep the peer
    assert fwd.client(PROXY, ["proto=https"]) == PROXY  # no for=
    # Only the configured header is read: a forged X-Forwarded-For means nothing here.
    assert fwd.client(PROXY, []) == PROXY


def test_parse_networks_names_the_bad_one() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.0/33"):
        parse_networks(["10.0.0.0/8", "10.0.0.0/33"])
    assert len(parse_networks(["", " 127.0.0.1 "])) == 1


# ------------------------------------------------------- the fuzz target's checks
@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None, database=None)
def test_fuzz_target_on_random_bytes(data: bytes) -> None:
    check_proxy(data)


@pytest.mark.parametrize(
    "data",
    [
        v2(),
        v2(family=2, tlvs=b"\x01\x00\x02h2"),
        v2(command=0, family=0, transport=0),
        b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET",
        b"PROXY UNKNOWN\r\n",
    ],
)
def test_fuzz_target_on_seeds(data: bytes) -> None:
    check_proxy(data)
    for cut in range(len(data)):
        check_proxy(data[:cut])
