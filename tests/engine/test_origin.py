"""The Origin policy: the matcher (protocol/http/origin.py), then 403/101 on real
sockets, ``--require-origin`` and the start-up warning without ``--allowed-origins``."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from engine import Engine
from engine.cli.build import load_settings
from protocol.http.origin import OriginPolicy, normalize_origin, parse_origins
from tests.helpers.http_client import RawHttp, build_request
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config, running_engine

POLICY = OriginPolicy.parse(
    ["https://app.example.com", "https://*.example.org", "http://127.0.0.1:8000"]
)


# ------------------------------------------------------------------ matcher
@pytest.mark.parametrize(
    "origin",
    [
        "https://app.example.com",
        "HTTPS://APP.Example.COM",  # scheme and host are case-insensitive
        "https://app.example.com:443",  # the default port is the same origin
        "https://a.example.org",
        "https://deep.a.example.org",
        "http://127.0.0.1:8000",
    ],
)
def test_allowed(origin: str) -> None:
    assert POLICY.allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "http://app.example.com",  # another scheme
        "https://app.example.com:8443",  # another port
        "https://app.example.com.evil.test",
        "https://evilapp.example.com",
        "https://example.org",  # *. needs a label before the domain
        "https://a.example.org.evil.test",
        "https://evilexample.org",
        "http://127.0.0.1",
        "http://127.0.0.1:80000",
        "null",  # sandboxed iframes, file: pages
        "",
        "https://app.example.com/path",
        "https://user@app.example.com",
        "garbage",
    ],
)
def test_refused(origin: str) -> None:
    assert not POLICY.allows(origin)


def test_no_origin_is_allowed_unless_required() -> None:
    assert POLICY.allows(None)
    assert not OriginPolicy(POLICY.origins, require=True).allows(None)
    assert OriginPolicy(None, require=True).allows("https://anything.test")


def test_normalize_and_parse() -> None:
    assert normalize_origin("WSS://[::1]:9000") == ("wss", "[::1]", 9000)
    assert normalize_origin("http://h") == ("http", "h", 80)
    for bad in ("ftp://h", "http://", "http://h:", "http://h:x", "https://[::1"):
        assert normalize_origin(bad) is None, bad
    for spec in ("https://*", "https://a.*.com", "example.com", "https://*."):
        with pytest.raises(ValueError, match="not an origin"):
            parse_origins([spec])


# ------------------------------------------------------------ real sockets
def app(**overrides: Any) -> Engine:
    return Engine(make_config(**overrides))


async def upgrade_status(port: int, origin: str | None) -> tuple[int, bytes]:
    headers = [("Origin", origin)] if origin is not None else []
    async with RawWs(port, "/echo", headers=headers) as ws:
        return ws.status, ws.response_body


@pytest.mark.asyncio
async def test_other_origins_get_403_before_the_upgrade(caplog: pytest.LogCaptureFixture) -> None:
    engine = app(allowed_origins=("https://app.example.com", "https://*.example.org"))
    async with running_engine(engine):
        assert (await upgrade_status(engine.port, "https://app.example.com"))[0] == 101
        assert (await upgrade_status(engine.port, "https://x.example.org"))[0] == 101
        assert (await upgrade_status(engine.port, None))[0] == 101  # not a browser
        async with RawHttp(engine.port) as http:
            await http.send(
                build_request(
                    "GET",
                    "/echo?token=abc",
                    [
                        ("Upgrade", "websocket"),
                        ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                        ("Sec-WebSocket-Version", "13"),
                        ("Origin", "https://evil.test"),
                    ],
                )
            )
            resp = await http.read_response()
            assert resp.status == 403
            assert resp.json()["error"]["code"] == "FORBIDDEN"
            assert resp.header("upgrade") is None
            # Keep-alive: the connection still serves the next request.
            again = await http.request("GET", "/health")
            assert again.status == 200
        assert engine.state.metrics.ws_refused.get("origin") == 1
    refusals = [r.getMessage() for r in caplog.records if "Origin" in r.getMessage()]
    assert refusals and "evil.test" in refusals[0]
    assert "abc" not in refusals[0]


@pytest.mark.asyncio
async def test_require_origin() -> None:
    engine = app(allowed_origins=("https://app.example.com",), require_origin=True)
    async with running_engine(engine):
        assert (await upgrade_status(engine.port, None))[0] == 403
        assert (await upgrade_status(engine.port, "https://app.example.com"))[0] == 101
    engine = app(require_origin=True)  # any origin, but one must be sent
    async with running_engine(engine):
        assert (await upgrade_status(engine.port, None))[0] == 403
        assert (await upgrade_status(engine.port, "https://whatever.test"))[0] == 101


@pytest.mark.asyncio
async def test_without_the_flag_any_origin_connects() -> None:
    engine = app()
    async with running_engine(engine):
        assert (await upgrade_status(engine.port, "https://evil.test"))[0] == 101


def test_cli_flags_and_the_start_up_warning() -> None:
    settings = load_settings(
        ["--allowed-origins", "https://app.example.com, https://*.example.org"], {}
    )
    assert settings.config.allowed_origins == ("https://app.example.com", "https://*.example.org")
    assert not any("allowed-origins" in w for w in settings.warnings)
    env = {"LINKD_ALLOWED_ORIGINS": "https://a.test", "LINKD_REQUIRE_ORIGIN": "1"}
    settings = load_settings([], env)
    assert settings.config.allowed_origins == ("https://a.test",)
    assert settings.config.require_origin
    warned = load_settings([], {}).warnings
    assert any("ANY origin" in w for w in warned)
    with pytest.raises(SystemExit):
        load_settings(["--allowed-origins", "app.example.com"], {})


def test_warning_is_logged_once_at_start(caplog: pytest.LogCaptureFixture) -> None:
    from engine.cli import log_settings

    caplog.set_level(logging.WARNING, "linkd.config")
    log_settings(load_settings([], {}))
    assert [r.getMessage() for r in caplog.records].count(
        next(w for w in load_settings([], {}).warnings if "ANY origin" in w)
    ) == 1


@pytest.mark.asyncio
async def test_a_service_path_has_its_own_origins() -> None:
    """``WebSocketOptions(origins=...)`` in a real worker's registration: that path
    follows its own list; the other paths keep ``--allowed-origins``."""
    from tests.integration.support import DEMO, demo_engine

    services = (DEMO, "tests.helpers.services.origins")
    with demo_engine("--allowed-origins", "https://app.example.org", services=services) as eng:

        async def status(path: str, origin: str) -> int:
            async with RawWs(eng.port, path, headers=[("Origin", origin)]) as ws:
                return ws.status

        assert await status("/ws/origins", "https://chat.example.com") == 101
        assert await status("/ws/origins", "https://app.example.org") == 403  # not its list
        assert await status("/ws/demo", "https://app.example.org") == 101
        assert await status("/ws/demo", "https://chat.example.com") == 403


def test_a_bad_origin_pattern_fails_in_the_service() -> None:
    from sdk import WebSocketOptions

    with pytest.raises(ValueError):
        WebSocketOptions(path="/ws/x", origins=("not an origin",))
