"""Fuzz the PROXY protocol header parser (``protocol/http/proxy.py``), v1 and v2.

Usage (from the repository root; libFuzzer flags after the corpus directories)::

    .venv/bin/python fuzz/fuzz_proxy.py fuzz/work/proxy -max_total_time=120 -timeout=10

Input layout: the bytes a balancer (or anyone) sends first on a connection.

Invariants (any other exception, or a failed assert, is a crash):

* ``parse_proxy_header`` returns ``NEED_DATA`` or a ``ProxyHeader``, or raises
  ``ProxyHeaderError``, nothing else;
* a header takes at most what it was given, at most 107 bytes for v1 and
  16 + ``MAX_V2_PAYLOAD`` for v2; its source and destination are both there or both
  missing, and every port is 0..65535;
* ``NEED_DATA`` only below those bounds (a parser that waits forever holds memory);
* segmentation does not matter: every proper prefix of an accepted header is
  ``NEED_DATA``, and the bytes after the header do not change it.
"""

from __future__ import annotations

import ipaddress

from protocol.http import NEED_DATA
from protocol.http.proxy import (
    MAX_V1_LENGTH,
    MAX_V2_PAYLOAD,
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
)

try:
    from fuzz.runner import run_fuzzer
except ImportError:  # run as a script: fuzz/ itself is on sys.path
    from runner import run_fuzzer  # type: ignore[no-redef]

__all__ = ["check_proxy", "main"]


def _parse(data: bytes) -> ProxyHeader | None:
    """The header, None for NEED_DATA; ProxyHeaderError passes through."""
    result = parse_proxy_header(data)
    if result is NEED_DATA:
        return None
    assert isinstance(result, ProxyHeader), result
    return result


def check_proxy(data: bytes) -> None:
    """Run every invariant of this target on one input; raise on a violation."""
    try:
        header = _parse(data)
    except ProxyHeaderError:
        return
    if header is None:
        bound = MAX_V1_LENGTH if not data.startswith(b"\r") else 16 + MAX_V2_PAYLOAD
        assert len(data) < bound, f"NEED_DATA after {len(data)} bytes"
        return
    assert 0 < header.consumed <= len(data), header
    limit = MAX_V1_LENGTH if header.version == 1 else 16 + MAX_V2_PAYLOAD
    assert header.consumed <= limit, header
    assert (header.source is None) == (header.destination is None), header
    for address in (header.source, header.destination):
        if address is not None:
            ipaddress.ip_address(address[0])
            assert 0 <= address[1] <= 65535, header
    whole = data[: header.consumed]
    assert _parse(whole + b"trailing bytes") == header
    for end in range(header.consumed):
        assert _parse(whole[:end]) is None, f"prefix of {end} bytes is not NEED_DATA"


def main() -> None:
    run_fuzzer(check_proxy)


if __name__ == "__main__":
    main()
