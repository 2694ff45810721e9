"""The WebSocket opening handshake (RFC 6455 §4.2) as pure functions over HttpRequest."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from protocol.http import HttpRequest
from protocol.http.upgrade import (
    UpgradeAccepted,
    UpgradeRejected,
    accept_token,
    is_websocket_upgrade,
    validate_upgrade,
)
from protocol.ws import DeflateOptions

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def request(
    *extra: tuple[str, str],
    method: str = "GET",
    version: str = "1.1",
    key: str | None = RFC_KEY,
    ws_version: str | None = "13",
    connection: str | None = "Upgrade",
    upgrade: str | None = "websocket",
) -> HttpRequest:
    headers: list[tuple[str, str]] = [("host", "example.com")]
    if upgrade is not None:
        headers.append(("upgrade", upgrade))
    if connection is not None:
        headers.append(("connection", connection))
    if key is not None:
        headers.append(("sec-websocket-key", key))
    if ws_version is not None:
        headers.append(("sec-websocket-version", ws_version))
    headers += extra
    return HttpRequest.build(
        method,
        "/chat",
        headers,
        http_version=version,
        upgrade=upgrade.lower() if upgrade else None,
    )


def accepted(result: UpgradeAccepted | UpgradeRejected) -> UpgradeAccepted:
    assert isinstance(result, UpgradeAccepted), result
    return result


def rejected(result: UpgradeAccepted | UpgradeRejected) -> UpgradeRejected:
    assert isinstance(result, UpgradeRejected), result
    return result


def test_accept_token_rfc_example() -> None:
    assert accept_token(RFC_KEY) == RFC_ACCEPT


def test_valid_handshake_headers() -> None:
    result = accepted(validate_upgrade(request()))
    headers = dict(result.headers)
    assert headers["sec-websocket-accept"] == RFC_ACCEPT
    assert headers["upgrade"] == "websocket"
    assert headers["connection"].lower() == "upgrade"
    assert "sec-websocket-protocol" not in headers
    assert "sec-websocket-extensions" not in headers
    assert result.subprotocol is None
    assert result.deflate is None


def test_connection_header_with_several_tokens() -> None:
    result = validate_upgrade(request(connection="keep-alive, Upgrade", upgrade="WebSocket"))
    assert dict(accepted(result).headers)["sec-websocket-accept"] == RFC_ACCEPT


def test_is_websocket_upgrade() -> None:
    assert is_websocket_upgrade(request())
    assert is_websocket_upgrade(request(upgrade="WebSocket"))
    assert not is_websocket_upgrade(request(upgrade="h2c"))
    assert not is_websocket_upgrade(request(upgrade=None))


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"method": "POST"}, 405),
        ({"version": "1.0"}, 400),
        ({"connection": None}, 400),
        ({"connection": "keep-alive"}, 400),
        ({"ws_version": None}, 426),
        ({"ws_version": "8"}, 426),
        ({"key": None}, 400),
        ({"key": "not base64!"}, 400),
        ({"key": "c2hvcnQ="}, 400),  # valid base64 but only 5 bytes
    ],
)
def test_rejections(kwargs: dict[str, str | None], status: int) -> None:
    result = rejected(validate_upgrade(request(**kwargs)))  # type: ignore[arg-type]
    assert result.status == status
    if status == 426:
        assert ("sec-websocket-version", "13") in result.headers
    if status == 405:
        assert ("allow", "GET") in result.headers


def test_two_keys_are_rejected() -> None:
    result = rejected(validate_upgrade(request(("sec-websocket-key", RFC_KEY))))
    assert result.status == 400


def test_two_versions_are_rejected() -> None:
    result = rejected(validate_upgrade(request(("sec-websocket-version", "13"))))
    assert result.status == 426


def test_subprotocol_hook_picks_one() -> None:
    seen: list[list[str]] = []

    def pick(offered: Sequence[str]) -> str | None:
        seen.append(list(offered))
        return "v2.chat" if "v2.chat" in offered else None

    req = request(("sec-websocket-protocol", "v1.chat, v2.chat"), ("sec-websocket-protocol", "x"))
    result = accepted(validate_upgrade(req, select_subprotocol=pick))
    assert seen == [["v1.chat", "v2.chat", "x"]]
    assert result.subprotocol == "v2.chat"
    assert ("sec-websocket-protocol", "v2.chat") in result.headers


def test_subprotocol_hook_declines() -> None:
    req = request(("sec-websocket-protocol", "v1.chat"))
    result = accepted(validate_upgrade(req, select_subprotocol=lambda offered: None))
    assert result.subprotocol is None
    assert "sec-websocket-protocol" not in dict(result.headers)


def test_subprotocol_hook_not_called_without_offers() -> None:
    def pick(offered: Sequence[str]) -> str | None:
        raise AssertionError("called without offers")

    result = accepted(validate_upgrade(request(), select_subprotocol=pick))
    assert result.subprotocol is None


def test_subprotocol_not_offered_is_a_programming_error() -> None:
    req = request(("sec-websocket-protocol", "v1.chat"))
    with pytest.raises(ValueError):
        validate_upgrade(req, select_subprotocol=lambda offered: "v9.chat")


def test_deflate_negotiated_into_the_101() -> None:
    req = request(("sec-websocket-extensions", "permessage-deflate; client_max_window_bits"))
    result = accepted(validate_upgrade(req, DeflateOptions()))
    assert result.deflate is not None
    assert ("sec-websocket-extensions", result.deflate.response) in result.headers
    assert result.deflate.response.startswith("permessage-deflate")


def test_deflate_not_offered_or_not_enabled() -> None:
    assert accepted(validate_upgrade(request(), DeflateOptions())).deflate is None
    req = request(("sec-websocket-extensions", "permessage-deflate"))
    result = accepted(validate_upgrade(req, None))
    assert result.deflate is None
    assert "sec-websocket-extensions" not in dict(result.headers)
    result = accepted(validate_upgrade(req, DeflateOptions(enabled=False)))
    assert "sec-websocket-extensions" not in dict(result.headers)
