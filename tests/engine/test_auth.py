"""Token verification: keys and claims (unit), and the policies on real sockets."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from engine import Engine
from engine.auth import Authenticator, AuthError
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

SECRET = "a-development-secret-of-32-bytes!"
AUTH_REG = m.Registration(
    "chat",
    http=[
        m.HttpRoute("me", "GET", "/chat/me", auth="required"),
        m.HttpRoute("maybe", "GET", "/chat/maybe", auth="optional"),
    ],
    ws=m.WsRoute("/ws/chat", catch_all=True, auth="required", on_connect=True),
)


def hs(claims: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    base = {"sub": "u1", "exp": int(time.time()) + 600}
    return jwt.encode({**base, **claims}, secret, algorithm="HS256", headers=headers or None)


# ------------------------------------------------------------------- unit
def test_claims_become_the_auth_map() -> None:
    auth = Authenticator(secret=SECRET)
    ident = auth.verify(hs({"preferred_username": "alice", "roles": ["admin"], "x": 1}))
    assert ident.user_id == "u1"
    assert ident.auth["userId"] == "u1"
    assert ident.auth["username"] == "alice"
    assert ident.auth["roles"] == ["admin"]
    assert ident.auth["claims"]["x"] == 1
    assert ident.expires is not None
    # Fallbacks: name, and Keycloak's realm_access.roles.
    ident = auth.verify(hs({"name": "Bob", "realm_access": {"roles": ["member"]}}))
    assert ident.auth["username"] == "Bob"
    assert ident.auth["roles"] == ["member"]


@pytest.mark.parametrize(
    ("token", "message"),
    [
        # Built at collection, run minutes later in a full suite: nbf a day ahead.
        (hs({"exp": int(time.time()) - 120}), "token expired"),
        (hs({"nbf": int(time.time()) + 86400}), "token not valid yet"),
        (hs({}, secret="another-secret-that-is-32-bytes-long"), "invalid token"),
        (hs({"sub": None}), "invalid token"),
        ("not.a.token", "malformed token"),
        (jwt.encode({"sub": "u1"}, None, algorithm="none"), "token algorithm not accepted"),
    ],
)
def test_bad_tokens_are_refused(token: str, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        Authenticator(secret=SECRET).verify(token)


def test_leeway_accepts_small_clock_skew() -> None:
    token = hs({"exp": int(time.time()) - 5})
    assert Authenticator(secret=SECRET, leeway=30).verify(token).user_id == "u1"
    with pytest.raises(AuthError):
        Authenticator(secret=SECRET, leeway=0).verify(token)


def test_audience_and_issuer() -> None:
    auth = Authenticator(secret=SECRET, audience="linkd", issuer="https://idp.test")
    assert auth.verify(hs({"aud": "linkd", "iss": "https://idp.test"})).user_id == "u1"
    for claims in ({"aud": "other", "iss": "https://idp.test"}, {"aud": "linkd", "iss": "x"}):
        with pytest.raises(AuthError, match="not issued for this service"):
            auth.verify(hs(claims))


def _pem_pair(key: Any) -> tuple[Any, str]:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


def test_public_key_algorithms_and_no_hmac_confusion(tmp_path: Path) -> None:
    for private, alg in (
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ):
        key, public = _pem_pair(private)
        path = tmp_path / f"{alg}.pem"
        path.write_text(public)
        auth = Authenticator(public_key=str(path))
        token = jwt.encode({"sub": "u9", "exp": int(time.time()) + 60}, key, algorithm=alg)
        assert auth.verify(token).user_id == "u9"
        # The public key used as an HMAC secret must not verify anything.
        forged = jwt.encode({"sub": "evil"}, "x" * 32, algorithm="HS256")
        with pytest.raises(AuthError, match="algorithm not accepted"):
            auth.verify(forged)


def test_jwks_picks_the_key_by_kid(tmp_path: Path) -> None:
    keys = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in "ab"}
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())), "kid": kid}
            for kid, k in keys.items()
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    auth = Authenticator(jwks=str(path))
    claims = {"sub": "u2", "exp": int(time.time()) + 60}
    assert auth.verify(jwt.encode(claims, keys["b"], "RS256", headers={"kid": "b"})).user_id == "u2"
    with pytest.raises(AuthError):  # signed by a, labelled b
        auth.verify(jwt.encode(claims, keys["a"], "RS256", headers={"kid": "b"}))
    with pytest.raises(AuthError):  # unknown kid
        auth.verify(jwt.encode(claims, keys["a"], "RS256", headers={"kid": "zz"}))


def test_engine_token_command_mints_a_verifiable_token() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "token",
            "--sub",
            "11",
            "--name",
            "Alice",
            "--roles",
            "admin,user",
            "--ttl",
            "60",
            "--jwt-secret",
            SECRET,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    ident = Authenticator(secret=SECRET).verify(out.stdout.strip())
    assert ident.auth["userId"] == "11"
    assert ident.auth["username"] == "Alice"
    assert ident.auth["roles"] == ["admin", "user"]
    assert ident.expires is not None and ident.expires - time.time() <= 61


# ----------------------------------------------------------- real sockets
@asynccontextmanager
async def auth_engine(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Engine, FakeWorker]]:
    path = short_socket_path(tmp_path)
    async with (
        running_engine(ipc_path=path, jwt_secret=SECRET, **overrides) as engine,
        FakeWorker(path, AUTH_REG) as worker,
    ):

        async def echo_auth(w: FakeWorker, request: Any) -> m.Reply:
            return reply_json(request, request.auth)

        worker.on("http", echo_auth)
        worker.on("message", echo_auth)
        await worker.start()
        yield engine, worker


@pytest.mark.asyncio
async def test_websocket_upgrade_needs_a_valid_token(tmp_path: Path) -> None:
    async with auth_engine(tmp_path) as (engine, worker):
        for path, headers in (
            ("/ws/chat", []),
            ("/ws/chat?token=garbage", []),
            (f"/ws/chat?token={hs({'exp': int(time.time()) - 100})}", []),
            (
                "/ws/chat",
                [("Authorization", f"Bearer {hs({}, secret='wrong-secret-of-thirty-two-bytes')}")],
            ),
        ):
            async with RawWs(engine.port, path, headers=headers) as ws:
                assert ws.status == 401, path
                assert orjson.loads(ws.response_body)["error"]["code"] == "UNAUTHORIZED"
        assert worker.requests == []
        # Query string and bearer header both work; the identity reaches the service.
        for path, headers in (
            (f"/ws/chat?token={hs({'preferred_username': 'al'})}", []),
            ("/ws/chat", [("Authorization", f"Bearer {hs({'preferred_username': 'al'})}")]),
        ):
            async with RawWs(engine.port, path, headers=headers) as ws:
                assert ws.status == 101
                ws.send_text('{"type":"whoami","id":1}')
                ack = orjson.loads((await ws.recv_frame()).payload)
                assert ack["data"]["userId"] == "u1"
                assert ack["data"]["username"] == "al"
        connects = [r for r in worker.requests if isinstance(r, m.Connect)]
        assert [c.auth["userId"] for c in connects] == ["u1", "u1"]


@pytest.mark.asyncio
async def test_http_routes_apply_their_policy(tmp_path: Path) -> None:
    async with auth_engine(tmp_path) as (engine, _worker), RawHttp(engine.port) as client:
        assert (await client.request("GET", "/chat/me")).status == 401
        resp = await client.request("GET", "/chat/me", [("Authorization", f"Bearer {hs({})}")])
        assert resp.status == 200 and resp.json()["userId"] == "u1"
        # Optional: anonymous is fine, a bad token is still refused.
        resp = await client.request("GET", "/chat/maybe")
        assert resp.status == 200 and resp.json() is None
        resp = await client.request("GET", "/chat/maybe?token=garbage")
        assert resp.status == 401


@pytest.mark.asyncio
async def test_expired_token_closes_the_connection_with_1008(tmp_path: Path) -> None:
    async with auth_engine(tmp_path, jwt_leeway=0.0) as (engine, _worker):
        token = hs({"exp": int(time.time()) + 1})
        async with RawWs(engine.port, f"/ws/chat?token={token}") as ws:
            assert ws.status == 101
            started = time.monotonic()
            assert await ws.recv_close_code(timeout=4.0) == 1008
            assert time.monotonic() - started < 3.0
    async with auth_engine(tmp_path, jwt_leeway=0.0, close_on_token_expiry=False) as (engine, _w):
        token = hs({"exp": int(time.time()) + 1})
        async with RawWs(engine.port, f"/ws/chat?token={token}") as ws:
            await asyncio.sleep(1.6)
            ws.send_text('{"type":"still","id":2}')
            assert orjson.loads((await ws.recv_frame()).payload)["id"] == 2


@pytest.mark.asyncio
async def test_required_auth_without_keys_is_refused(tmp_path: Path) -> None:
    path = short_socket_path(tmp_path)
    async with running_engine(ipc_path=path) as engine, FakeWorker(path, AUTH_REG) as worker:
        await worker.start()
        async with RawWs(engine.port, f"/ws/chat?token={hs({})}") as ws:
            assert ws.status == 401
            assert "not configured" in orjson.loads(ws.response_body)["error"]["message"]


@pytest.mark.asyncio
async def test_emit_to_a_user_reaches_every_tab_of_that_user_only(tmp_path: Path) -> None:
    async with auth_engine(tmp_path) as (engine, worker):
        alice = hs({"sub": "alice"})
        bob = hs({"sub": "bob"})
        async with (
            RawWs(engine.port, f"/ws/chat?token={alice}") as tab1,
            RawWs(engine.port, f"/ws/chat?token={alice}") as tab2,
            RawWs(engine.port, f"/ws/chat?token={bob}") as other,
        ):
            assert tab1.status == tab2.status == other.status == 101
            await worker.wait_requests(3)  # the three connects: the hub knows them
            payload = b'{"type":"note","data":"for alice"}'
            worker.send(m.Emit(payload=payload, user="alice"))
            for tab in (tab1, tab2):
                got = orjson.loads((await tab.recv_frame()).payload)
                # The user's own stream numbers it (docs/recovery.md).
                assert {k: got.pop(k) for k in ("user", "seq")} == {"user": "alice", "seq": 1}
                assert got.pop("epoch") and got == orjson.loads(payload)
            with pytest.raises(TimeoutError):
                await other.recv_frame(timeout=0.3)


def test_a_flood_of_bad_tokens_is_logged_within_a_budget(caplog: pytest.LogCaptureFixture) -> None:
    """Each refusal is a 401, but not each a log line: 200 bad tokens in a burst leave
    at most the burst of lines, and the next line says how many were held back."""
    auth = Authenticator(secret=SECRET)
    bad = hs({"sub": "mallory"}, secret="not-the-secret-of-the-engine-32b!")
    with caplog.at_level("INFO", logger="linkd.auth"):
        for _ in range(200):
            with pytest.raises(AuthError):
                auth.verify(bad)
    lines = [r for r in caplog.records if "token refused" in r.getMessage()]
    assert 1 <= len(lines) <= 25, len(lines)
    auth._refusals._bucket.stamp -= 10.0  # as if time passed: the next one goes out
    with caplog.at_level("INFO", logger="linkd.auth"), pytest.raises(AuthError):
        auth.verify(bad)
    last = [r for r in caplog.records if "token refused" in r.getMessage()][-1].getMessage()
    assert "earlier not logged" in last and "(0 earlier" not in last
