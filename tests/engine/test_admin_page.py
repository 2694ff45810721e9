"""The admin page (issue 15 item 4, docs/admin.md) against a real engine process:
``--admin-password`` turns on ``/admin`` on the admin listener; a login sets a strict
session cookie; every answer has the CSP; the WebSocket needs the session and the
admin origin, pushes snapshots that count what a test client opens, and closes on
hostile input.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.helpers.proc import EngineProcess, clean_env, engine_process, free_port

PASSWORD = "correct horse battery staple"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class AdminEngine:
    """An engine process with its admin listener, and HTTP helpers for that port."""

    def __init__(self, eng: EngineProcess, admin: int) -> None:
        self.eng = eng
        self.admin = admin
        self.origin = f"http://127.0.0.1:{admin}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes, list[str]]:
        """(status, headers with lower-case names, body, every Set-Cookie)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10.0)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            found = {k.lower(): v for k, v in resp.getheaders()}
            cookies = [v for k, v in resp.getheaders() if k.lower() == "set-cookie"]
            return resp.status, found, resp.read(), cookies
        finally:
            conn.close()

    def login(self, password: str, origin: str | None = None) -> tuple[int, list[str]]:
        headers = {"content-type": "application/x-www-form-urlencoded"}
        if origin is not None:
            headers["origin"] = origin
        body = f"password={password}".replace(" ", "+").encode()
        status, _, _, cookies = self.request("POST", "/admin/login", body, headers)
        return status, cookies

    def session(self) -> str:
        """A logged-in ``Cookie`` header value."""
        status, cookies = self.login(PASSWORD)
        assert status == 303, status
        return cookies[0].split(";", 1)[0]

    def ws(self, cookie: str | None, origin: str | None = None) -> ClientConnection:
        headers = {"cookie": cookie} if cookie else {}
        return connect(
            f"ws://127.0.0.1:{self.admin}/admin/ws",
            additional_headers=headers,
            origin=self.origin if origin is None else origin,  # type: ignore[arg-type]
            open_timeout=5,
            max_size=2**20,
        )


@contextlib.contextmanager
def admin_engine(*extra: str, password: str | None = PASSWORD) -> Iterator[AdminEngine]:
    """An engine with ``--echo /echo`` and an admin listener; the password comes from
    ``LINKD_ADMIN_PASSWORD`` (so it is on no command line)."""
    admin = free_port()
    env = clean_env(**({"LINKD_ADMIN_PASSWORD": password} if password else {}))
    args = ["--echo", "/echo", "--admin-listen", f"127.0.0.1:{admin}", *extra]
    with engine_process(args, env=env) as eng:
        yield wait_admin(AdminEngine(eng, admin))


def wait_admin(eng: AdminEngine, timeout: float = 10.0) -> AdminEngine:
    """The admin listener binds after the client port (whose /health said ready)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            eng.request("GET", "/health")
            return eng
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def next_of(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next message of type ``kind`` (snapshots in between are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind!r} message within {timeout}s")
        message = json.loads(ws.recv(timeout=left))
        if message["type"] == kind:
            return dict(message)


def snapshot_where(ws: ClientConnection, check: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The first snapshot for which ``check(snapshot)`` is true."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = next_of(ws, "snapshot", timeout=max(0.1, deadline - time.monotonic()))
        if check(last):
            return last
    raise AssertionError(f"no snapshot matched within {timeout}s; last: {last}")


def closed_with(ws: ClientConnection) -> int | None:
    """Read until the engine closes; its close code."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            ws.recv(timeout=5.0)
    received = ws.protocol.close_rcvd
    assert received is not None, "closed without a close frame"
    return received.code


# --------------------------------------------------------------------------- off
def test_the_page_is_off_without_a_password() -> None:
    with admin_engine(password=None) as eng:
        for path in ("/admin", "/admin/login", "/admin/app.js", "/admin/ws"):
            status, _, _, _ = eng.request("GET", path)
            assert status == 404, path
        status, _, _, _ = eng.request("GET", "/health")
        assert status == 200


def test_the_password_may_come_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "linkd.toml"
    config.write_text(f'admin-password = "{PASSWORD}"\n')
    config.chmod(0o600)
    with admin_engine("--config", str(config), password=None) as eng:
        assert eng.login("wrong")[0] == 401
        assert eng.login(PASSWORD)[0] == 303
        assert PASSWORD not in eng.eng.output()


# ------------------------------------------------------------------------ login
def test_login_refuses_a_wrong_password_and_sets_a_strict_cookie_for_the_right_one() -> None:
    with admin_engine() as eng:
        status, headers, _, _ = eng.request("GET", "/admin")
        assert (status, headers["location"]) == (303, "/admin/login")
        status, headers, body, _ = eng.request("GET", "/admin/login")
        assert status == 200 and b'action="/admin/login"' in body
        assert headers["content-security-policy"] == CSP

        status, cookies = eng.login("wrong password")
        assert (status, cookies) == (401, [])
        # From another site's page: refused before the password is looked at.
        status, cookies = eng.login(PASSWORD, origin="http://evil.example")
        assert (status, cookies) == (403, [])

        status, cookies = eng.login(PASSWORD, origin=eng.origin)
        assert status == 303 and len(cookies) == 1
        attributes = [part.strip() for part in cookies[0].split(";")]
        name, _, token = attributes[0].partition("=")
        assert name == "linkd_admin" and len(token) >= 40
        assert {"HttpOnly", "SameSite=Strict", "Path=/admin"} <= set(attributes)
        cookie = attributes[0]

        status, headers, body, _ = eng.request("GET", "/admin", headers={"cookie": cookie})
        assert status == 200 and b'src="/admin/app.js"' in body
        for name, value in (
            ("content-security-policy", CSP),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("cache-control", "no-store"),
        ):
            assert headers[name] == value, name
        assert b"<script>" not in body and b"style=" not in body  # nothing inline
        status, headers, body, _ = eng.request("GET", "/admin/app.js")
        assert status == 200 and headers["content-type"].startswith("text/javascript")
        assert headers["content-security-policy"] == CSP
        # Another cookie value is no session.
        forged = f"linkd_admin={token[:-2]}xx"
        assert eng.request("GET", "/admin", headers={"cookie": forged})[0] == 303

        status, headers, _, cookies = eng.request(
            "POST", "/admin/logout", b"", {"cookie": cookie, "origin": eng.origin}
        )
        assert status == 303 and "Max-Age=0" in cookies[0]
        assert eng.request("GET", "/admin", headers={"cookie": cookie})[0] == 303

        assert PASSWORD not in eng.eng.output() and token not in eng.eng.output()


def test_logins_are_rate_limited_per_address() -> None:
    with admin_engine() as eng:
        statuses = [eng.login("guess")[0] for _ in range(5)]
        assert statuses == [401] * 5
        status, headers, _, cookies = eng.request(
            "POST",
            "/admin/login",
            f"password={PASSWORD}".replace(" ", "+").encode(),
            {"content-type": "application/x-www-form-urlencoded"},
        )
        # Even the right password waits: the limit is on attempts.
        assert status == 429 and cookies == []
        assert int(headers["retry-after"]) >= 1


# -------------------------------------------------------------------- WebSocket
def test_the_websocket_needs_the_session_and_the_admin_origin() -> None:
    with admin_engine() as eng:
        with pytest.raises(InvalidStatus) as refused:
            eng.ws(None).close()
        assert refused.value.response.status_code == 401
        cookie = eng.session()
        for origin in ("http://evil.example", f"http://localhost:{eng.eng.port}"):
            with pytest.raises(InvalidStatus) as refused:
                eng.ws(cookie, origin=origin).close()
            assert refused.value.response.status_code == 403, origin
        # The client port knows nothing of it.
        assert eng.eng.get("/admin")[0] == 404
        with eng.ws(cookie) as ws:
            hello = next_of(ws, "hello")
            assert hello["interval"] == 1.0 and isinstance(hello["history"], list)
            assert hello["snapshot"]["node"]["version"] == "0.1.0"
            # Logging out ends the page's WebSocket too (within a tick).
            status, _, _, _ = eng.request(
                "POST", "/admin/logout", b"", {"cookie": cookie, "origin": eng.origin}
            )
            assert status == 303
            assert closed_with(ws) == 1008
            assert ws.protocol.close_rcvd is not None
            assert ws.protocol.close_rcvd.reason == "session ended"


def test_snapshots_count_the_connections_and_messages_of_a_client() -> None:
    with admin_engine() as eng:
        cookie = eng.session()
        with eng.ws(cookie) as admin:
            first = next_of(admin, "hello")["snapshot"]
            for key in ("node", "connections", "messages", "fanout", "rooms", "services"):
                assert key in first, key
            assert first["connections"]["websocket"] == 0
            echo = f"ws://127.0.0.1:{eng.eng.port}/echo"
            with connect(echo) as one, connect(echo) as two, connect(echo) as three:
                seen = snapshot_where(
                    admin,
                    lambda s: s["connections"]["websocket"] == 3,
                )
                assert seen["connections"]["byPath"] == {"/echo": 3}
                # Messages in and out move while the clients send.
                deadline = time.monotonic() + 10.0
                moving = None
                while moving is None and time.monotonic() < deadline:
                    for client in (one, two, three):
                        client.send("ping")
                        assert client.recv(timeout=5.0) == "ping"
                    with contextlib.suppress(TimeoutError):
                        message = json.loads(admin.recv(timeout=0.05))
                        if message["type"] == "snapshot" and message["messages"]["inPerSec"] > 0:
                            moving = message
                assert moving is not None, "messages in/s never moved"
                assert moving["messages"]["outPerSec"] > 0
                assert moving["point"]["in"] > 0
            snapshot_where(admin, lambda s: s["connections"]["websocket"] == 0)


@pytest.mark.parametrize(
    ("name", "send", "code"),
    [
        ("oversized", lambda ws: ws.send("x" * 5000), 1009),
        ("binary", lambda ws: ws.send(b"\x00\x01"), 1003),
        ("not JSON", lambda ws: ws.send("{not json"), 1008),
        ("no type", lambda ws: ws.send("[1, 2, 3]"), 1008),
        ("flood", lambda ws: [ws.send('{"type": "nothing"}') for _ in range(40)], 1008),
        ("ping flood", lambda ws: [ws.ping() for _ in range(40)], 1008),
    ],
)
def test_hostile_input_on_the_websocket_gets_a_close(name: str, send: Any, code: int) -> None:
    with admin_engine() as eng:
        cookie = eng.session()
        with eng.ws(cookie) as ws:
            next_of(ws, "hello")
            send(ws)
            assert closed_with(ws) == code, name
        # The engine is fine, and a well-behaved page still gets its answers.
        with eng.ws(cookie) as ws:
            next_of(ws, "hello")
            ws.send(json.dumps({"type": "room", "room": "nobody-here"}))
            room = next_of(ws, "room")
            assert room["memberCount"] == 0 and room["members"] == []
            ws.send(json.dumps({"type": "disconnect", "connection": 999_999}))
            assert next_of(ws, "disconnected")["disconnected"] == 0


def test_at_most_eight_admin_pages_are_open_at_once() -> None:
    """Each page costs a snapshot a second: the ninth is refused with 503 until one of
    the eight closes."""
    with admin_engine() as eng:
        cookie = eng.session()
        with contextlib.ExitStack() as pages:
            for _ in range(8):
                next_of(pages.enter_context(eng.ws(cookie)), "hello")
            with pytest.raises(InvalidStatus) as refused:
                eng.ws(cookie).close()
            assert refused.value.response.status_code == 503
            pages.close()  # all eight go
            deadline = time.monotonic() + 5.0
            while True:  # the engine sees the closes within a moment
                try:
                    with eng.ws(cookie) as again:
                        assert next_of(again, "hello")["type"] == "hello"
                    break
                except InvalidStatus:
                    assert time.monotonic() < deadline, "a page slot was never freed"
                    time.sleep(0.1)
