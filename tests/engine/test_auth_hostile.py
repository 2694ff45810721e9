"""Hostile tokens: whatever goes wrong while verifying one is a 401 and one log line.

Issue 10 #6 (a JWKS key of the wrong type for the token's alg raised TypeError inside
PyJWT: 500 on HTTP, no answer at all on a WebSocket upgrade, 40 lines of traceback)
and #7 (tokens without ``exp`` lived forever).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from engine import Engine
from engine.auth import Authenticator, AuthError
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

SECRET = "a-development-secret-of-32-bytes!"
REG = m.Registration(
    "chat",
    http=[m.HttpRoute("me", "GET", "/chat/me", auth="required")],
    ws=m.WsRoute("/ws/chat", catch_all=True, auth="required", on_connect=True),
)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "u1", "exp": int(time.time()) + 600, **extra}


def _unsigned(header: Any, payload: Any = None, signature: str = "c2ln") -> str:
    """A token with any header at all (PyJWT refuses to build most of these)."""
    body = _b64(orjson.dumps(_claims() if payload is None else payload))
    return f"{_b64(orjson.dumps(header))}.{body}.{signature}"


def _hs_raw(payload: bytes) -> str:
    """An HS256 token correctly signed with SECRET around an arbitrary payload."""
    signing = _b64(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64(payload)
    digest = hmac.new(SECRET.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(digest)}"


@pytest.fixture(scope="module")
def jwks_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Keys ``rsa`` (RSA), ``ec`` (P-256) and ``ed`` (Ed25519)."""
    keys = [
        {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key())), "kid": "rsa"},
        {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key())), "kid": "ec"},
        {**json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(ED_KEY.public_key())), "kid": "ed"},
    ]
    path = tmp_path_factory.mktemp("jwks") / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return str(path)


def hostile_tokens() -> Iterator[tuple[str, str]]:
    """(label, token): each must be refused with AuthError, nothing else."""
    claims = _claims()
    # The reproduction: the header says ES256 and names the RSA key.
    yield "es256-names-rsa-key", jwt.encode(claims, EC_KEY, "ES256", headers={"kid": "rsa"})
    yield "rs256-names-ec-key", jwt.encode(claims, RSA_KEY, "RS256", headers={"kid": "ec"})
    yield "eddsa-names-rsa-key", jwt.encode(claims, ED_KEY, "EdDSA", headers={"kid": "rsa"})
    yield "es384-names-p256-key", jwt.encode(claims, EC384_KEY, "ES384", headers={"kid": "ec"})
    yield "ps256-names-ec-key", jwt.encode(claims, RSA_KEY, "PS256", headers={"kid": "ec"})
    yield "kid-is-a-list", _unsigned({"alg": "RS256", "kid": ["rsa"]})
    yield "kid-is-a-map", _unsigned({"alg": "RS256", "kid": {"a": 1}})
    yield "kid-unknown", jwt.encode(claims, RSA_KEY, "RS256", headers={"kid": "nope"})
    yield "alg-is-a-list", _unsigned({"alg": ["RS256"], "kid": "rsa"})
    yield "alg-missing", _unsigned({"kid": "rsa"})
    yield "alg-none", _unsigned({"alg": "none"}, signature="")
    yield "header-not-a-map", _unsigned([1, 2])
    yield "header-not-json", f"{_b64(b'{nope')}.{_b64(b'{}')}.c2ln"
    yield "garbage-base64", "%%%.@@@.!!!"
    yield "not-utf8", f"{_b64(bytes([0xFF, 0xFE]))}.{_b64(b'{}')}.c2ln"
    yield "two-parts", "abc.def"
    yield "huge", "a" * 200_000 + "." + "b" * 10 + ".c"
    yield "huge-exp", _hs_raw(b'{"sub":"u1","exp":' + b"9" * 400 + b"}")
    yield "float-inf-exp", _hs_raw(b'{"sub":"u1","exp":1e999}')
    yield (
        "sub-not-a-string",
        _hs_raw(b'{"sub":12,"exp":' + str(int(time.time()) + 60).encode() + b"}"),
    )
    yield "payload-a-list", _hs_raw(b"[1,2,3]")


HOSTILE = list(hostile_tokens())


@pytest.mark.parametrize("token", [t for _, t in HOSTILE], ids=[label for label, _ in HOSTILE])
def test_hostile_tokens_are_auth_errors_only(
    token: str, jwks_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    auth = Authenticator(secret=SECRET, jwks=jwks_file)
    caplog.set_level(logging.DEBUG, logger="linkd")
    with pytest.raises(AuthError):
        auth.verify(token)
    records = [r for r in caplog.records if r.name.startswith("linkd")]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].exc_info is None
    assert token not in records[0].getMessage()
    assert len(records[0].getMessage()) < 300


def test_the_right_key_type_still_verifies(jwks_file: str) -> None:
    auth = Authenticator(jwks=jwks_file)
    for key, alg, kid in (
        (RSA_KEY, "RS256", "rsa"),
        (RSA_KEY, "PS384", "rsa"),
        (EC_KEY, "ES256", "ec"),
        (ED_KEY, "EdDSA", "ed"),
        (EC_KEY, "ES256", None),  # no kid: the first key that fits the algorithm
        (ED_KEY, "EdDSA", None),
    ):
        headers = {"kid": kid} if kid else None
        token = jwt.encode(_claims(sub=alg), key, alg, headers=headers)
        assert auth.verify(token).user_id == alg


def test_an_unexpected_library_error_is_an_auth_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the library broke")

    auth = Authenticator(secret=SECRET)
    token = jwt.encode(_claims(), SECRET, "HS256")
    monkeypatch.setattr(jwt, "decode", boom)
    caplog.set_level(logging.DEBUG, logger="linkd")
    with pytest.raises(AuthError, match="invalid token"):
        auth.verify(token)
    (record,) = [r for r in caplog.records if r.name.startswith("linkd")]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "RuntimeError" in record.getMessage()


def test_a_bad_jwks_file_fails_at_start_with_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "RSA", "kid": "x", "n": "!!", "e": "AQAB"}]}))
    with pytest.raises(ValueError, match="jwks"):
        Authenticator(jwks=str(path))


def test_public_key_files_of_every_kind_and_their_algorithms(tmp_path: Path) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(EC_KEY.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(EC_KEY, hashes.SHA256())
    )
    ssh = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    for label, data, key, good, bad in (
        ("certificate", cert.public_bytes(serialization.Encoding.PEM), EC_KEY, "ES256", "RS256"),
        ("openssh", ssh, RSA_KEY, "PS256", "ES256"),
    ):
        path = tmp_path / label
        path.write_bytes(data)
        auth = Authenticator(public_key=str(path))
        assert auth.verify(jwt.encode(_claims(sub=label), key, good)).user_id == label
        with pytest.raises(AuthError, match="algorithm not accepted"):
            auth.verify(_unsigned({"alg": bad}))
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN NONSENSE-----\n")
    with pytest.raises(ValueError, match="jwt-public-key"):
        Authenticator(public_key=str(junk))


# ------------------------------------------------------------------ #7 exp
def test_tokens_without_exp_are_refused_unless_allowed() -> None:
    token = jwt.encode({"sub": "u1"}, SECRET, "HS256")
    with pytest.raises(AuthError, match="no expiry"):
        Authenticator(secret=SECRET).verify(token)
    ident = Authenticator(secret=SECRET, allow_no_exp=True).verify(token)
    assert ident.user_id == "u1" and ident.expires is None


def test_minted_tokens_always_expire() -> None:
    auth = Authenticator(secret=SECRET)
    claims = jwt.decode(auth.mint("u1"), SECRET, algorithms=["HS256"])
    assert claims["exp"] > time.time()
    with pytest.raises(ValueError):
        auth.mint("u1", ttl=0)


# ----------------------------------------------------------- real sockets
@asynccontextmanager
async def engine_with_keys(
    tmp_path: Path, jwks_file: str, **overrides: Any
) -> AsyncIterator[tuple[Engine, FakeWorker]]:
    path = short_socket_path(tmp_path)
    async with (
        running_engine(ipc_path=path, jwt_secret=SECRET, jwks=jwks_file, **overrides) as engine,
        FakeWorker(path, REG) as worker,
    ):

        async def echo_auth(w: FakeWorker, request: Any) -> m.Reply:
            return reply_json(request, request.auth)

        worker.on("http", echo_auth)
        worker.on("message", echo_auth)
        await worker.start()
        yield engine, worker


def _auth_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("linkd")]


@pytest.mark.asyncio
async def test_key_type_mismatch_is_401_on_http_and_on_upgrade(
    tmp_path: Path, jwks_file: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = jwt.encode(_claims(), EC_KEY, "ES256", headers={"kid": "rsa"})
    caplog.set_level(logging.INFO, logger="linkd")
    async with engine_with_keys(tmp_path, jwks_file) as (engine, worker):
        caplog.clear()
        async with RawHttp(engine.port) as client:
            resp = await client.request("GET", "/chat/me", [("Authorization", f"Bearer {token}")])
            assert resp.status == 401
            assert resp.json()["error"]["code"] == "UNAUTHORIZED"
            # The connection survived: the next request is served.
            ok = jwt.encode(_claims(), EC_KEY, "ES256", headers={"kid": "ec"})
            resp = await client.request("GET", "/chat/me", [("Authorization", f"Bearer {ok}")])
            assert resp.status == 200 and resp.json()["userId"] == "u1"
        async with RawWs(engine.port, f"/ws/chat?token={token}") as ws:
            assert ws.status == 401
            assert orjson.loads(ws.response_body)["error"]["code"] == "UNAUTHORIZED"
        assert not any(isinstance(r, m.Connect) for r in worker.requests)
        lines = _auth_lines(caplog)
        assert not any(r.exc_info for r in lines), "a traceback was logged"
        refused = [r for r in lines if "token" in r.getMessage()]
        assert len(refused) == 2, [r.getMessage() for r in lines]  # one per request
        assert all(token not in r.getMessage() for r in lines)


@pytest.mark.asyncio
async def test_every_hostile_token_is_401_on_both_paths(tmp_path: Path, jwks_file: str) -> None:
    async with engine_with_keys(tmp_path, jwks_file) as (engine, worker):
        async with RawHttp(engine.port) as client:
            for label, token in hostile_tokens():
                if len(token) > 8000:
                    continue  # over the header limit: 431, tested by the HTTP limits
                resp = await client.request(
                    "GET", "/chat/me", [("Authorization", f"Bearer {token}")]
                )
                assert resp.status == 401, label
        for label, token in hostile_tokens():
            if len(token) > 8000:
                continue
            async with RawWs(
                engine.port, "/ws/chat", headers=[("Authorization", f"Bearer {token}")]
            ) as ws:
                assert ws.status == 401, label
        assert worker.requests == []


@pytest.mark.asyncio
async def test_token_without_exp_is_401_unless_the_flag_allows_it(
    tmp_path: Path, jwks_file: str
) -> None:
    token = jwt.encode({"sub": "u1"}, SECRET, "HS256")
    bearer = [("Authorization", f"Bearer {token}")]
    async with engine_with_keys(tmp_path, jwks_file) as (engine, _worker):
        async with RawHttp(engine.port) as client:
            resp = await client.request("GET", "/chat/me", bearer)
            assert resp.status == 401
            assert "expiry" in resp.json()["error"]["message"]
        async with RawWs(engine.port, f"/ws/chat?token={token}") as ws:
            assert ws.status == 401
    async with engine_with_keys(tmp_path, jwks_file, jwt_allow_no_exp=True) as (engine, _w):
        async with RawHttp(engine.port) as client:
            resp = await client.request("GET", "/chat/me", bearer)
            assert resp.status == 200 and resp.json()["userId"] == "u1"
        async with RawWs(engine.port, f"/ws/chat?token={token}") as ws:
            assert ws.status == 101
