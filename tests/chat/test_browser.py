"""The chat page in a real browser (Debian's Chromium driven by Playwright) against a
real engine, real chat workers and a real Postgres.

Alice and Bob, in two browser contexts, open General; Alice types (Bob sees the
indicator) and sends (Bob sees the message); Bob reloads and finds it in the history.
Screenshots go to tests/artifacts/ (git-ignored). Skipped only when no Chromium is
installed (scripts/test.sh installs it where it can).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.chat.support import ALICE, BOB, GENERAL
from tests.helpers.browser import ARTIFACTS, CHROMIUM, launch, needs_chromium
from tests.helpers.proc import EngineProcess

pytestmark = needs_chromium

if CHROMIUM.exists():
    from playwright.sync_api import Browser, Page, expect


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with launch() as chromium:
        yield chromium


def sign_in(page: Page, base: str, username: str, errors: list[str]) -> None:
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{base}/chat/")
    page.locator("#demo-users button", has_text=username).click()
    expect(page.locator("#me")).to_have_text(username)
    expect(page.locator("#conn-state")).to_have_attribute("data-state", "open")


def open_room(page: Page, room: str, name: str) -> None:
    page.locator(f'#room-list button[data-room-id="{room}"]').click()
    expect(page.locator("#room-title")).to_have_text(name)
    expect(page.locator("#message-input")).to_be_enabled()


def test_two_people_chat_in_the_browser(chat: EngineProcess, browser: Browser) -> None:
    base = f"http://127.0.0.1:{chat.port}"
    text = f"Hello Bob, from the browser {uuid.uuid4().hex[:8]}"
    errors: list[str] = []
    alice_ctx = browser.new_context(viewport={"width": 1000, "height": 700})
    bob_ctx = browser.new_context(viewport={"width": 390, "height": 760})  # a phone
    try:
        alice, bob = alice_ctx.new_page(), bob_ctx.new_page()
        sign_in(alice, base, "Alice", errors)
        sign_in(bob, base, "Bob", errors)
        open_room(alice, GENERAL, "General")
        open_room(bob, GENERAL, "General")

        # Online markers: each sees the other in the member list.
        expect(alice.locator(f'#members li[data-user-id="{BOB}"]')).to_have_class("online")
        expect(bob.locator(f'#members li[data-user-id="{ALICE}"]')).to_have_class("online")

        alice.locator("#message-input").press_sequentially(text[:12], delay=20)
        expect(bob.locator("#typing")).to_have_text("Alice is typing…")
        alice.locator("#message-input").fill(text)
        alice.locator("#message-input").press("Enter")

        mine = alice.locator("#message-list li.mine", has_text=text)
        expect(mine).to_have_count(1)
        theirs = bob.locator("#message-list li", has_text=text)
        expect(theirs).to_have_count(1)
        expect(theirs.locator(".who")).to_have_text("Alice")
        expect(bob.locator("#typing")).to_have_text("")
        expect(alice.locator("#message-input")).to_have_value("")

        bob.reload()
        expect(bob.locator("#conn-state")).to_have_attribute("data-state", "open")
        expect(bob.locator("#room-title")).to_have_text("General")
        expect(bob.locator("#message-list li", has_text=text)).to_have_count(1)

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for name, page in (("alice", alice), ("bob", bob)):
            shot = ARTIFACTS / f"chat-{name}.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        assert errors == []
    finally:
        alice_ctx.close()
        bob_ctx.close()
