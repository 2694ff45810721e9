"""Token refresh without reconnecting (``linkd.refresh``, docs/clients.md), through a
real engine process, a real SDK worker and real signed tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.helpers.proc import EngineProcess
from tests.integration.support import Client, demo_engine

SECRET = "a-development-secret-of-32-bytes!"
MEDIA = "tests.helpers.services.media"


def token(sub: str = "alice", ttl: float = 600.0, **claims: Any) -> str:
    """A signed token that expires ``ttl`` seconds from now (to the second)."""
    exp = int(time.time() + ttl)
    return jwt.encode({"sub": sub, "exp": exp, **claims}, SECRET, algorithm="HS256")


def exp_of(tok: str) -> float:
    return float(jwt.decode(tok, options={"verify_signature": False})["exp"])


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    # No leeway: a token expires when its exp says, to the second.
    with demo_engine("--jwt-secret", SECRET, "--jwt-leeway", "0", services=(MEDIA,)) as eng:
        yield eng


async def refresh(client: Client, tok: str) -> dict[str, Any]:
    return await client.request("linkd.refresh", {"token": tok})


@pytest.mark.asyncio
async def test_refresh_keeps_the_connection_its_rooms_and_moves_the_expiry(
    engine: EngineProcess,
) -> None:
    old = token(ttl=2.0, v=1)
    async with (
        Client.open(engine.port, f"/ws/media?token={old}") as alice,
        Client.open(engine.port, "/ws/media") as other,
    ):
        assert await alice.call("join", {"room": "r1"}) == {"joined": "r1"}
        new = token(ttl=60.0, v=2)
        ack = await refresh(alice, new)
        assert ack["type"] == "linkd.refresh" and ack["data"] == {"expiresAt": exp_of(new)}
        # The worker sees the new token's claims with every message from now on.
        me = await alice.call("me")
        assert me["userId"] == "alice" and me["claims"]["v"] == 2
        # Past the old token's exp: still open, still in its room.
        await asyncio.sleep(max(0.0, exp_of(old) - time.time()) + 0.8)
        assert await other.call("emit", {"room": "r1", "data": "after"}) == {"emitted": "r1"}
        event = await alice.event("media.note")
        assert event["data"] == "after"
        assert not alice.closed.done()


@pytest.mark.asyncio
async def test_the_refreshed_token_expires_too(engine: EngineProcess) -> None:
    async with Client.open(engine.port, f"/ws/media?token={token(ttl=1.0)}") as alice:
        short = token(ttl=3.0)
        assert "data" in await refresh(alice, short)
        # Not at the first token's exp: at the second's, 1008 as without a refresh.
        code, reason = await alice.wait_closed(timeout=6.0)
        assert (code, reason) == (1008, "token expired")
        assert time.time() >= exp_of(short) - 0.2


@pytest.mark.asyncio
async def test_a_token_of_another_user_is_forbidden(engine: EngineProcess) -> None:
    old = token(ttl=2.0, v=1)
    async with Client.open(engine.port, f"/ws/media?token={old}") as alice:
        ack = await refresh(alice, token(sub="mallory", ttl=600.0))
        assert ack["error"]["code"] == "FORBIDDEN"
        me = await alice.call("me")
        assert me["userId"] == "alice" and me["claims"]["v"] == 1
        # The old token still governs: closed at its expiry.
        assert await alice.wait_closed(timeout=5.0) == (1008, "token expired")


@pytest.mark.asyncio
async def test_a_bad_token_is_unauthorized_and_the_connection_stays(
    engine: EngineProcess,
) -> None:
    async with Client.open(engine.port, f"/ws/media?token={token(v=1)}") as alice:
        ack = await refresh(alice, "garbage")
        assert ack["error"]["code"] == "UNAUTHORIZED"
        forged = jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 600},
            "another-secret-that-is-32-bytes-long",
            algorithm="HS256",
        )
        assert (await refresh(alice, forged))["error"]["code"] == "UNAUTHORIZED"
        await asyncio.sleep(1.05)  # the refresh rate: a burst of 2, then 1 a second
        assert (await refresh(alice, token(ttl=-5.0)))["error"]["code"] == "UNAUTHORIZED"
        assert (await alice.call("me"))["claims"]["v"] == 1
        assert not alice.closed.done()


@pytest.mark.asyncio
async def test_refreshes_are_rate_limited_and_anonymous_is_refused(
    engine: EngineProcess,
) -> None:
    async with Client.open(engine.port, f"/ws/media?token={token()}") as alice:
        answers = [await refresh(alice, token(v=n)) for n in range(4)]
        codes = [a.get("error", {}).get("code") for a in answers]
        assert codes[0] is None and "RATE_LIMITED" in codes
        limited = next(a for a in answers if "error" in a)
        assert limited["error"]["retryAfter"] > 0
    async with Client.open(engine.port, "/ws/media") as anonymous:
        ack = await refresh(anonymous, token())
        assert ack["error"]["code"] == "FORBIDDEN"
        assert await anonymous.call("me") is None
