"""Fuzz ``negotiate_deflate`` (RFC 7692 §7.1) on arbitrary ``Sec-WebSocket-Extensions`` values.

Usage (from the repository root; libFuzzer flags after the corpus directories)::

    .venv/bin/python fuzz/fuzz_deflate_negotiation.py fuzz/work/negotiation \\
        fuzz/corpus/negotiation -max_total_time=120 -timeout=10

Input layout: the first byte picks the server's ``DeflateOptions`` (bit 0
``server_no_context_takeover``, bit 1 ``client_no_context_takeover``, bits 2-4 and 5-7
the two window-bit caps 9-15 / 9-15), the rest is the header value decoded as Latin-1
(as ``HttpRequest`` decodes headers) and split on commas like ``header_list``.

Invariants (any exception, or a failed assert, is a crash):

* ``negotiate_deflate`` returns None or a ``DeflateParams`` and never raises;
* accepted window bits lie in 9..15 (8..15 for the client's) and never exceed the
  server's caps (the client's is 15 when it did not offer ``client_max_window_bits``);
* the ``response`` names permessage-deflate and, offered back to the same server, is
  accepted with the same parameters (the answer is a valid, stable offer).
"""

from __future__ import annotations

import os

from protocol.ws import DeflateOptions, DeflateParams, negotiate_deflate

try:
    from fuzz.runner import run_fuzzer
except ImportError:  # run as a script: fuzz/ itself is on sys.path
    from runner import run_fuzzer  # type: ignore[no-redef]

__all__ = ["KNOWN_BUGS", "check_negotiation", "main", "options_for"]

#: Bugs found by this target and not fixed yet (ids explained in fuzz/README.md).
KNOWN_BUGS: frozenset[str] = frozenset()
STRICT_ENV = "LINKD_FUZZ_STRICT"


def options_for(flags: int) -> DeflateOptions:
    return DeflateOptions(
        server_no_context_takeover=bool(flags & 1),
        client_no_context_takeover=bool(flags & 2),
        server_max_window_bits=9 + ((flags >> 2) & 7) % 7,
        client_max_window_bits=9 + ((flags >> 5) & 7) % 7,
    )


def _offers(header: str) -> list[str]:
    return [part.strip() for part in header.split(",") if part.strip()]


def check_negotiation(data: bytes, known: frozenset[str] | None = None) -> None:
    """Run every invariant of this target on one input; raise on a violation."""
    if known is None:
        known = frozenset() if os.environ.get(STRICT_ENV) else KNOWN_BUGS
    if not data:
        return
    options = options_for(data[0])
    header = data[1:].decode("latin-1")
    offers = _offers(header)
    try:
        params = negotiate_deflate(offers, options)
    except ValueError:
        if "ext-bits-nonascii-digit" in known and any(
            ch.isdigit() and not ch.isascii() for ch in header
        ):
            return
        raise
    if params is None:
        return
    assert isinstance(params, DeflateParams), params
    assert 9 <= params.server_max_window_bits <= options.server_max_window_bits, params
    if "client_max_window_bits" in params.response:
        # 8 is a legal answer to a client that offered 8 (RFC 7692 §7.1.2.2).
        assert 8 <= params.client_max_window_bits <= options.client_max_window_bits, params
    else:
        assert params.client_max_window_bits == 15, params
    assert params.response.split(";")[0] == "permessage-deflate", params.response
    if options.server_no_context_takeover:
        assert params.server_no_context_takeover, params
    again = negotiate_deflate(_offers(params.response), options)
    assert again == params, f"response {params.response!r} re-negotiates to {again!r}"


def main() -> None:
    run_fuzzer(check_negotiation)


if __name__ == "__main__":
    main()
