"""permessage-deflate (RFC 7692): offer negotiation and the shared context-free deflater."""

from __future__ import annotations

import os
import zlib

import pytest

from protocol.ws import DeflateOptions, DeflateParams, SharedDeflater, negotiate_deflate

TAIL = b"\x00\x00\xff\xff"


def params_of(response: str) -> dict[str, str | None]:
    """The parameters of an extension response, name → value (None without value)."""
    name, *rest = (part.strip() for part in response.split(";"))
    assert name == "permessage-deflate"
    out: dict[str, str | None] = {}
    for item in rest:
        key, eq, value = item.partition("=")
        assert key not in out, f"duplicate {key} in response {response!r}"
        out[key] = value if eq else None
    return out


def negotiate(*offers: str, **options: object) -> DeflateParams | None:
    return negotiate_deflate(list(offers), DeflateOptions(**options))  # type: ignore[arg-type]


# ------------------------------------------------------------- negotiation
def test_plain_offer_gets_server_no_context_takeover_by_default() -> None:
    params = negotiate("permessage-deflate")
    assert params is not None
    assert params.server_no_context_takeover is True
    assert params.client_no_context_takeover is False
    assert params.server_max_window_bits == 15
    assert params.client_max_window_bits == 15
    assert params_of(params.response) == {"server_no_context_takeover": None}
    assert params.shared_key == 15


def test_server_context_takeover_when_not_insisted() -> None:
    params = negotiate("permessage-deflate", server_no_context_takeover=False)
    assert params is not None
    assert params.server_no_context_takeover is False
    assert params_of(params.response) == {}
    assert params.shared_key is None  # per-connection compressor, frames not shareable


def test_client_asks_server_no_context_takeover() -> None:
    params = negotiate(
        "permessage-deflate; server_no_context_takeover", server_no_context_takeover=False
    )
    assert params is not None
    assert params.server_no_context_takeover is True
    assert "server_no_context_takeover" in params_of(params.response)


def test_client_no_context_takeover_offered() -> None:
    params = negotiate("permessage-deflate; client_no_context_takeover")
    assert params is not None
    assert params.client_no_context_takeover is True
    assert params_of(params.response) == {
        "server_no_context_takeover": None,
        "client_no_context_takeover": None,
    }


def test_client_no_context_takeover_required_by_server() -> None:
    params = negotiate("permessage-deflate", client_no_context_takeover=True)
    assert params is not None
    assert params.client_no_context_takeover is True
    assert "client_no_context_takeover" in params_of(params.response)


def test_server_max_window_bits_10_is_echoed() -> None:
    params = negotiate("permessage-deflate; server_max_window_bits=10")
    assert params is not None
    assert params.server_max_window_bits == 10
    assert params_of(params.response)["server_max_window_bits"] == "10"
    assert params.shared_key == 10


def test_server_max_window_bits_quoted_value() -> None:
    params = negotiate('permessage-deflate; server_max_window_bits="12"')
    assert params is not None
    assert params.server_max_window_bits == 12


def test_server_max_window_bits_is_capped_by_our_option() -> None:
    params = negotiate("permessage-deflate; server_max_window_bits=14", server_max_window_bits=11)
    assert params is not None
    assert params.server_max_window_bits == 11
    assert params_of(params.response)["server_max_window_bits"] == "11"


def test_our_smaller_server_window_is_announced_unasked() -> None:
    params = negotiate("permessage-deflate", server_max_window_bits=12)
    assert params is not None
    assert params_of(params.response)["server_max_window_bits"] == "12"


def test_server_max_window_bits_8_declines_that_offer_and_takes_the_next() -> None:
    assert negotiate("permessage-deflate; server_max_window_bits=8") is None
    params = negotiate(
        "permessage-deflate; server_max_window_bits=8",
        "permessage-deflate; client_no_context_takeover",
    )
    assert params is not None
    assert params.client_no_context_takeover is True
    assert params.server_max_window_bits == 15
    assert "server_max_window_bits" not in params_of(params.response)


def test_client_max_window_bits_without_value() -> None:
    params = negotiate("permessage-deflate; client_max_window_bits")
    assert params is not None
    assert params.client_max_window_bits == 15
    assert params_of(params.response)["client_max_window_bits"] == "15"


def test_client_max_window_bits_without_value_uses_our_limit() -> None:
    params = negotiate("permessage-deflate; client_max_window_bits", client_max_window_bits=10)
    assert params is not None
    assert params.client_max_window_bits == 10
    assert params_of(params.response)["client_max_window_bits"] == "10"


def test_client_max_window_bits_with_value() -> None:
    params = negotiate("permessage-deflate; client_max_window_bits=11")
    assert params is not None
    assert params.client_max_window_bits == 11
    assert params_of(params.response)["client_max_window_bits"] == "11"


def test_client_max_window_bits_not_offered_is_not_answered() -> None:
    # §7.1.2.2: the server must not send client_max_window_bits to a client that
    # did not offer it, even when it would like a smaller window.
    params = negotiate("permessage-deflate", client_max_window_bits=10)
    assert params is not None
    assert "client_max_window_bits" not in params_of(params.response)
    assert params.client_max_window_bits == 15


def test_client_max_window_bits_8_is_not_answered_with_a_larger_value() -> None:
    # §7.1.2.2: an answer carries "a value equal to or smaller than the received
    # value"; a client that offered 8 fails a response with 9 (websockets does).
    params = negotiate("permessage-deflate; client_max_window_bits=8")
    if params is None:
        return  # declining the offer is also correct
    value = params_of(params.response).get("client_max_window_bits")
    assert value is None or int(value) <= 8, params.response


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; unknown_param",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits=10; client_max_window_bits=11",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; server_max_window_bits=ten",
        "permessage-deflate; client_max_window_bits=",
        "permessage-deflate; client_max_window_bits=99",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=yes",
    ],
)
def test_invalid_offer_is_declined(offer: str) -> None:
    assert negotiate(offer) is None
    # ...and does not prevent a valid fallback offer from being accepted.
    params = negotiate(offer, "permessage-deflate; client_max_window_bits=12")
    assert params is not None
    assert params.client_max_window_bits == 12


def test_first_acceptable_offer_wins() -> None:
    params = negotiate(
        "x-webkit-deflate-frame",
        "permessage-deflate; server_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=12",
    )
    assert params is not None
    assert params.server_max_window_bits == 10


def test_other_extensions_only() -> None:
    assert negotiate("x-webkit-deflate-frame", "permessage-foo") is None
    assert negotiate() is None


def test_extension_name_is_case_insensitive() -> None:
    assert negotiate("PerMessage-Deflate") is not None


def test_disabled_returns_none() -> None:
    assert negotiate("permessage-deflate", enabled=False) is None


def test_options_validate_window_bits() -> None:
    with pytest.raises(ValueError):
        DeflateOptions(server_max_window_bits=8)
    with pytest.raises(ValueError):
        DeflateOptions(client_max_window_bits=16)


# ---------------------------------------------------------- shared deflater
def inflate_fresh(data: bytes, window_bits: int = 15) -> bytes:
    inflater = zlib.decompressobj(-window_bits)
    return inflater.decompress(data + TAIL) + inflater.flush()


def test_shared_deflater_output_inflates_with_a_fresh_decompressor_every_time() -> None:
    deflater = SharedDeflater(15)
    text = b"the quick brown fox jumps over the lazy dog " * 40
    sizes = []
    for i in range(500):
        # Identical and near-identical messages: a compressor that kept its context
        # would encode them as back-references a fresh decompressor cannot resolve.
        payload = text if i % 2 else text + str(i).encode()
        compressed = deflater.compress(payload)
        assert not compressed.endswith(TAIL)
        assert inflate_fresh(compressed) == payload
        if i % 2:
            sizes.append(len(compressed))
    # No message got cheaper by referring to an earlier one.
    assert len(set(sizes)) == 1


def test_shared_deflater_random_payloads_and_small_window() -> None:
    deflater = SharedDeflater(9, level=1, mem_level=1)
    for size in (0, 1, 125, 4096, 70_000):
        payload = os.urandom(size // 2) + b"a" * (size - size // 2)
        assert inflate_fresh(deflater.compress(payload), 9) == payload
