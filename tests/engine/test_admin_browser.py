"""The admin page in a real browser (Debian's Chromium driven by Playwright) against a
real engine and a real worker (issue 15 item 4, docs/admin.md).

An operator logs in; the page loads with no CSP violation and no script error; while
a test client (a WebSocket client in a thread, user ``ada`` in the demo service's
``lobby``) emits to its room, the page's numbers move; a search for ``lobby`` shows
that client, and "Disconnect" on its row closes it: the client sees the close.
Screenshots go to tests/artifacts/ (git-ignored). Skipped only when no Chromium is
installed (scripts/test.sh installs it where it can).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator

import jwt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers.browser import ARTIFACTS, CHROMIUM, launch, needs_chromium
from tests.helpers.proc import free_port
from tests.integration.support import demo_engine

SECRET = "a-development-secret-of-32-bytes!"
PASSWORD = "admin page test password"

pytestmark = needs_chromium

if CHROMIUM.exists():
    from playwright.sync_api import Browser, ConsoleMessage, Page, expect


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as chromium:
        yield chromium


class Emitter(threading.Thread):
    """A client of the demo service that emits to ``lobby`` until it is closed (or
    ``stop`` is set), and remembers how it was closed."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.socket_id: int | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = threading.Event()
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        try:
            with connect(self.url, open_timeout=10) as ws:
                with contextlib.suppress(ConnectionClosed):
                    self._emit(ws)
                received = ws.protocol.close_rcvd
                if received is not None:
                    self.close_code, self.close_reason = received.code, received.reason
        finally:
            self.closed.set()

    def _emit(self, ws: ClientConnection) -> None:
        ws.send(json.dumps({"type": "demo.whoami", "id": "who"}))
        while self.socket_id is None:
            message = json.loads(ws.recv(timeout=10))
            if message.get("id") == "who":
                self.socket_id = int(message["data"]["socket"])
        while not self.stop.is_set():
            self.sent += 1
            request = {"room": "lobby", "event": "tick", "data": self.sent}
            ws.send(json.dumps({"type": "demo.emit", "data": request}))
            deadline = time.monotonic() + 0.05
            while (left := deadline - time.monotonic()) > 0:
                try:
                    ws.recv(timeout=left)
                except TimeoutError:
                    break


def number(page: Page, selector: str) -> float:
    """A card's number; 0 while it shows the placeholder (an en dash)."""
    value = page.locator(selector).inner_text().replace(",", "")
    return float(value) if value not in ("\u2013", "") else 0.0


def test_operator_watches_searches_and_disconnects_a_client(browser: Browser) -> None:
    admin = free_port()
    flags = ("--jwt-secret", SECRET, "--admin-listen", f"127.0.0.1:{admin}")
    with demo_engine(*flags, "--admin-password", PASSWORD) as eng:
        token = jwt.encode(
            {"sub": "ada", "preferred_username": "Ada", "exp": int(time.time()) + 600},
            SECRET,
            algorithm="HS256",
        )
        client = Emitter(f"ws://127.0.0.1:{eng.port}/ws/demo?token={token}")
        client.start()
        problems: list[str] = []
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        try:
            page = context.new_page()

            def console(msg: ConsoleMessage) -> None:
                # A CSP violation is reported as a console error ("Refused to ...").
                if msg.type in ("error", "warning") or "Content Security Policy" in msg.text:
                    problems.append(f"{msg.type}: {msg.text}")

            page.on("console", console)
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            base = f"http://127.0.0.1:{admin}"
            page.goto(f"{base}/admin")
            expect(page).to_have_url(f"{base}/admin/login")
            page.locator("#password").fill("not the password")
            page.locator("#login-form button").click()
            expect(page.locator(".error")).to_have_text("Wrong password.")
            # The browser reports the 401 of the refused login, and nothing else.
            assert len(problems) == 1 and "status of 401" in problems[0], problems
            problems.clear()
            page.locator("#password").fill(PASSWORD)
            page.locator("#login-form button").click()
            expect(page).to_have_url(f"{base}/admin")
            expect(page.locator("#ws-state")).to_have_attribute("data-state", "open")
            expect(page.locator("#conn-ws")).to_have_text("1")

            # The numbers move while the client emits to its room.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not (
                number(page, "#msg-in") > 0 and number(page, "#deliveries") > 0
            ):
                page.wait_for_timeout(200)
            assert number(page, "#msg-in") > 0 and number(page, "#deliveries") > 0
            expect(page.locator("#p99")).to_contain_text("ms")
            expect(page.locator("#top-rooms tbody tr").first).to_contain_text("lobby")
            expect(page.locator("#services tbody tr").first).to_contain_text("demo")
            assert client.socket_id is not None
            page.wait_for_timeout(1500)  # a few chart points to look at
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "admin-live.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")

            # Search the room: the client is its member, and present.
            page.locator("#room-input").fill("lobby")
            page.locator("#room-form button").click()
            row = page.locator(f'#members tr[data-conn-id="{client.socket_id}"]')
            expect(row).to_contain_text("ada")
            expect(page.locator('#presence li[data-user-id="ada"]')).to_contain_text("Ada")
            shot = ARTIFACTS / "admin-room.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")

            row.locator("button.disconnect").click()
            assert client.closed.wait(10), "the client was not disconnected"
            assert client.close_code == 1008
            assert client.close_reason == "disconnected by an operator"
            expect(page.locator("#notice")).to_contain_text("disconnected")
            expect(page.locator("#conn-ws")).to_have_text("0")
            shot = ARTIFACTS / "admin-disconnected.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            assert problems == []
        finally:
            context.close()
            client.stop.set()
            client.join(10)
