"""Sessions of the admin page (docs/admin.md): the password check and the cookie.

A login compares the password in constant time and is rate-limited per address
(engine/limits), so guessing it over the admin listener is slow; a good one gets a
random token kept here in memory with its expiry, sent as an ``HttpOnly``,
``SameSite=Strict`` cookie on ``Path=/admin``. A restart forgets every session (the
operator logs in again), and nothing here is ever logged: not the password, not a
token.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict

from engine.limits.ratelimit import AddressRates, LogBudget, address_key
from protocol.http import HttpRequest

__all__ = ["COOKIE", "SESSION_SECONDS", "Sessions", "clear_cookie", "session_cookie", "set_cookie"]

log = logging.getLogger("linkd.admin")

COOKIE = "linkd_admin"
#: A session lasts a working day; the page then asks for the password again.
SESSION_SECONDS = 8 * 3600.0
#: Sessions kept at most: a few operators with a few browsers each. One more login
#: forgets the oldest, so a client that logs in in a loop cannot grow the table.
MAX_SESSIONS = 32
#: Login attempts per address: five at once, then one every six seconds (ten a
#: minute), the same for right and wrong passwords.
LOGIN_RATE = 1 / 6
LOGIN_BURST = 5.0
#: Addresses whose attempts are remembered (the table's bound, ~200 bytes each).
LOGIN_TABLE = 4096


class Sessions:
    """The password and the live sessions of one admin listener.

    Args:
        password: the ``--admin-password``; never empty.
    """

    def __init__(self, password: str) -> None:
        # Digests, so the comparison takes the same time whatever the lengths.
        self._digest = _digest(password.encode())
        self._sessions: OrderedDict[str, float] = OrderedDict()
        self._rates = AddressRates(LOGIN_RATE, LOGIN_BURST, LOGIN_TABLE)
        self._refusals = LogBudget()

    def limited(self, peer: str, now: float) -> float:
        """Spend one login attempt of ``peer``: 0.0, or the seconds to wait."""
        return self._rates.take(address_key(peer), now)

    def login(self, given: str, peer: str, now: float) -> str | None:
        """A new session token when ``given`` is the password, else None."""
        if not hmac.compare_digest(_digest(given.encode()), self._digest):
            self._refusals.warning(log, now, "admin login refused from %s", peer or "?")
            return None
        self._expire(now)
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.popitem(last=False)
        token = secrets.token_urlsafe(32)
        self._sessions[token] = now + SESSION_SECONDS
        log.info("admin login from %s", peer or "?")
        return token

    def valid(self, request: HttpRequest, now: float) -> str | None:
        """The request's session token when it names a live session, else None."""
        token = session_cookie(request)
        if token is None:
            return None
        # A dict lookup is not constant-time, but a token is 256 random bits looked up
        # by its hash: timing cannot reveal it a character at a time.
        expires = self._sessions.get(token)
        if expires is None:
            return None
        if expires <= now:
            del self._sessions[token]
            return None
        return token

    def alive(self, token: str, now: float) -> bool:
        """Whether the session ``token`` is still live (not logged out, not expired)."""
        expires = self._sessions.get(token)
        return expires is not None and expires > now

    def logout(self, token: str) -> None:
        self._sessions.pop(token, None)

    def _expire(self, now: float) -> None:
        for token, expires in list(self._sessions.items()):
            if expires <= now:
                del self._sessions[token]

    def __len__(self) -> int:
        return len(self._sessions)


def session_cookie(request: HttpRequest) -> str | None:
    """The value of our cookie in the request's ``Cookie`` headers, or None."""
    for name, value in request.headers:
        if name != "cookie":
            continue
        for part in value.split(";"):
            key, eq, found = part.strip().partition("=")
            if eq and key == COOKIE and found:
                return found
    return None


def set_cookie(token: str) -> tuple[str, str]:
    """The ``Set-Cookie`` header of a new session."""
    return (
        "set-cookie",
        f"{COOKIE}={token}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={int(SESSION_SECONDS)}",
    )


def clear_cookie() -> tuple[str, str]:
    """The ``Set-Cookie`` header that forgets the session in the browser."""
    return ("set-cookie", f"{COOKIE}=; Path=/admin; HttpOnly; SameSite=Strict; Max-Age=0")


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()
