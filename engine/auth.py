"""Token verification with PyJWT: who a request or a WebSocket connection belongs to.

Keys: an HMAC secret (HS256/384/512), a PEM public key (RS*, PS*, ES*, EdDSA), or a JWKS
file (keys picked by ``kid``). Each public key is used only with the algorithms of its
own type (an RSA key never verifies an ES256 token, a P-256 key only ES256), decided
before PyJWT sees the token. ``exp`` is required unless ``allow_no_exp``; ``exp`` and
``nbf`` are checked with a small leeway; ``aud`` and ``iss`` when configured. The token
comes from ``?token=`` or ``Authorization: Bearer``. Claims become the ``auth`` map
services see: ``{userId, username, roles, claims}``.

Whatever goes wrong while verifying (a malformed token, a library error) is an
``AuthError`` with a message safe to show the client, logged as one line without the
token: ``verify`` raises nothing else. ``AuthError`` is an ``UnauthorizedError`` of the
shared family (protocol/errors.py): ``authenticate`` raises it, and HTTP maps it to 401.

Over 400 lines: key sources (secret, PEM, JWKS by kid), their reload and the
verification rules that must be read together to see that no key confusion is
possible.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from engine.limits.ratelimit import LogBudget
from protocol.errors import UnauthorizedError
from protocol.http import HttpRequest

__all__ = ["AuthError", "Authenticator", "Identity", "authenticate", "token_from"]

log = logging.getLogger("linkd.auth")

_HMAC = frozenset({"HS256", "HS384", "HS512"})
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_EDDSA = frozenset({"EdDSA"})


class AuthError(UnauthorizedError):
    """The token is missing, malformed, badly signed, expired or not for us.

    ``str(error)`` is what the client is told; ``detail`` is for the log line only
    (never the token), ``level`` that line's level.
    """

    def __init__(self, message: str, detail: str = "", level: int = logging.INFO) -> None:
        super().__init__(message)
        self.detail = detail
        self.level = level


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token."""

    user_id: str
    #: What services receive as ``auth`` (docs/ipc.md §4.7).
    auth: dict[str, Any]
    #: Expiry as a UNIX time, or None.
    expires: float | None


@dataclass(frozen=True, slots=True)
class _PublicKey:
    key: Any
    #: The algorithms this key may verify (by its type, or its JWK ``alg``).
    algorithms: frozenset[str]
    kty: str


def _algorithms_of(key: Any) -> tuple[frozenset[str], str]:
    """The JWS algorithms a public key of this type can verify, and its type name."""
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA, "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_BY_CURVE.get(key.curve.name)
        return (frozenset({alg}) if alg else frozenset()), f"EC {key.curve.name}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return _EDDSA, "OKP"
    return frozenset(), type(key).__name__


def _load_pem(text: str, source: str) -> _PublicKey:
    """A public key, an IdP's certificate, an OpenSSH public key, or a private key
    (its public half verifies)."""
    data = text.encode()
    loaders: tuple[Callable[[bytes], Any], ...] = (
        serialization.load_pem_public_key,
        lambda d: x509.load_pem_x509_certificate(d).public_key(),
        serialization.load_ssh_public_key,
        lambda d: serialization.load_pem_private_key(d, password=None).public_key(),
    )
    for load in loaders:
        try:
            key = load(data)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        algorithms, kty = _algorithms_of(key)
        if not algorithms:
            raise ValueError(f"{source}: unsupported key type {kty}")
        return _PublicKey(key, algorithms, kty)
    raise ValueError(f"{source}: not a PEM public key, certificate or OpenSSH key")


def _load_jwks(path: str) -> tuple[dict[str, _PublicKey], list[_PublicKey]]:
    """Keys by ``kid``, and every key in file order (for tokens without a kid)."""
    try:
        document = json.loads(Path(path).read_text())
        entries = document.get("keys", []) if isinstance(document, dict) else None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--jwks {path}: {exc}") from exc
    if not isinstance(entries, list):
        raise ValueError(f"--jwks {path}: no 'keys' list")
    by_kid: dict[str, _PublicKey] = {}
    ordered: list[_PublicKey] = []
    for n, jwk in enumerate(entries):
        if not isinstance(jwk, dict):
            raise ValueError(f"--jwks {path}: key {n} is not an object")
        if jwk.get("kty") == "oct":
            # A shared secret does not belong in a public key set: never used.
            log.warning("--jwks %s: key %d is a symmetric (oct) key: ignored", path, n)
            continue
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise ValueError(f"--jwks {path}: key {n}: {exc}") from exc
        algorithms, kty = _algorithms_of(key)
        alg = jwk.get("alg")
        if isinstance(alg, str):  # RFC 7517 §4.4: the algorithm intended for this key
            algorithms &= {alg}
        if not algorithms:
            raise ValueError(f"--jwks {path}: key {n} ({kty}) fits no supported algorithm")
        entry = _PublicKey(key, algorithms, kty)
        ordered.append(entry)
        kid = jwk.get("kid")
        if isinstance(kid, str) and kid:
            by_kid[kid] = entry
    return by_kid, ordered


def _clip(value: Any) -> str:
    """An attacker-chosen value, safe for a log line: repr (escapes CR/LF), short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(token: str) -> str:
    """``alg ..., kid ...`` of a token, for the log; never raises, never the token."""
    try:
        header = jwt.get_unverified_header(token)
        return f"alg {_clip(header.get('alg'))}, kid {_clip(header.get('kid'))}"
    except Exception:  # only describing: nothing may escape
        return f"unreadable header, {len(token)} chars"


def token_from(request: HttpRequest) -> str | None:
    """``Authorization: Bearer <t>`` first, else the ``token`` query parameter."""
    header = request.header("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if request.query and "token=" in request.query:
        values = parse_qs(request.query).get("token")
        if values and values[0]:
            return values[0]
    return None


def _expiry(claims: Mapping[str, Any]) -> float | None:
    exp = claims.get("exp")
    if exp is None:
        return None
    try:
        value = float(exp)
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not math.isfinite(value):
        raise AuthError("invalid token", "exp out of range")
    return value


def _identity(claims: Mapping[str, Any]) -> Identity:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("token has no subject")
    username = claims.get("preferred_username") or claims.get("name")
    roles = claims.get("roles")
    if roles is None:
        realm = claims.get("realm_access")
        roles = realm.get("roles") if isinstance(realm, Mapping) else None
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        roles = []
    return Identity(
        user_id=sub,
        auth={
            "userId": sub,
            "username": username if isinstance(username, str) else None,
            "roles": roles,
            "claims": dict(claims),
        },
        expires=_expiry(claims),
    )


class Authenticator:
    """Verifies tokens against the configured keys.

    Args:
        secret: HMAC secret.
        public_key: path of a PEM public key.
        jwks: path of a JWKS file.
        audience / issuer: required values of ``aud`` / ``iss``, when given.
        leeway: seconds of clock skew accepted on ``exp``/``nbf``/``iat``.
        allow_no_exp: accept tokens without ``exp`` (they would never expire).

    Raises:
        ValueError: a key file that cannot be used.
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        jwks: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
        allow_no_exp: bool = False,
    ) -> None:
        self._secret = secret
        self._public_key_path = public_key
        self._jwks_path = jwks
        self._public_key: _PublicKey | None = None
        self._jwks: dict[str, _PublicKey] = {}
        self._jwks_all: list[_PublicKey] = []
        self._public_key, self._jwks, self._jwks_all = self._read_keys()
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.allow_no_exp = allow_no_exp
        #: Refused tokens are logged at most 5 a second (bursts of 20), with a count.
        self._refusals = LogBudget(5.0, 20.0)

    def _read_keys(
        self,
    ) -> tuple[_PublicKey | None, dict[str, _PublicKey], list[_PublicKey]]:
        """The PEM key and the JWKS, read from their files (ValueError on a bad one)."""
        public: _PublicKey | None = None
        path = self._public_key_path
        if path:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ValueError(f"--jwt-public-key {path}: {exc.strerror or exc}") from exc
            public = _load_pem(text, f"--jwt-public-key {path}")
        by_kid: dict[str, _PublicKey] = {}
        ordered: list[_PublicKey] = []
        if self._jwks_path:
            by_kid, ordered = _load_jwks(self._jwks_path)
        return public, by_kid, ordered

    def reload(self) -> str | None:
        """Re-read ``--jwt-public-key`` and ``--jwks`` (SIGHUP): a rotated key verifies
        from now on. All or nothing: when a file cannot be used the keys in use stay
        and the reason is returned (and logged); None when reloaded (or nothing to)."""
        if not (self._public_key_path or self._jwks_path):
            return None
        try:
            keys = self._read_keys()
        except ValueError as exc:
            log.error("token keys not reloaded, the previous ones stay: %s", exc)
            return str(exc)
        self._public_key, self._jwks, self._jwks_all = keys
        sources = [f"--jwt-public-key {self._public_key_path}"] if self._public_key_path else []
        if self._jwks_path:
            sources.append(f"--jwks {self._jwks_path} ({len(self._jwks_all)} keys)")
        log.info("token keys reloaded: %s", ", ".join(sources))
        return None

    @property
    def configured(self) -> bool:
        return bool(self._secret or self._public_key or self._jwks_all)

    def _key_for(self, token: str) -> tuple[Any, str]:
        """The key and the one algorithm to verify ``token`` with."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token", "unreadable header") from exc
        alg = header.get("alg")
        kid = header.get("kid")
        described = f"alg {_clip(alg)}, kid {_clip(kid)}"
        if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
            raise AuthError("malformed token", described)
        if alg in _HMAC:
            if self._secret:
                return self._secret, alg
        elif self._jwks_all or self._public_key:
            if kid is not None and kid in self._jwks:
                entry = self._jwks[kid]
                if alg in entry.algorithms:
                    return entry.key, alg
                # The case: ES256 naming an RSA key. Refused here, not in PyJWT.
                raise AuthError(
                    "token algorithm not accepted", f"{described}: the key is {entry.kty}"
                )
            if kid is None:
                for entry in self._jwks_all:
                    if alg in entry.algorithms:
                        return entry.key, alg
            if self._public_key is not None and alg in self._public_key.algorithms:
                return self._public_key.key, alg
            if kid is not None and self._jwks_all:
                raise AuthError("unknown signing key", described)
        # alg "none", or an algorithm we hold no key for (no HMAC/RSA confusion).
        raise AuthError("token algorithm not accepted", described)

    def verify(self, token: str) -> Identity:
        """Raises AuthError (only) with a message that is safe to show the client."""
        try:
            return self._verify(token)
        except AuthError as exc:
            if log.isEnabledFor(exc.level):
                # Budgeted: a client sending bad tokens in a loop must not become a
                # log flood (nor cost a line of formatting and I/O per attempt).
                self._refusals.log(
                    log,
                    exc.level,
                    time.monotonic(),
                    "token refused: %s (%s)",
                    exc,
                    exc.detail or _describe(token),
                )
            raise
        except Exception as exc:  # a library surprise is a 401, not a 500
            self._refusals.log(
                log,
                logging.WARNING,
                time.monotonic(),
                "token refused: verification raised %s (%s)",
                type(exc).__name__,
                _describe(token),
            )
            raise AuthError("invalid token") from None

    def _verify(self, token: str) -> Identity:
        key, algorithm = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["sub"] if self.allow_no_exp else ["sub", "exp"],
                    "verify_aud": self.audience is not None,
                },
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired", level=logging.DEBUG) from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("token not valid yet", level=logging.DEBUG) from exc
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as exc:
            raise AuthError("token not issued for this service") from exc
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "exp":
                raise AuthError("token has no expiry (exp)") from exc
            raise AuthError("invalid token", str(exc)) from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthError("invalid token", "bad signature") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("invalid token", type(exc).__name__) from exc
        return _identity(claims)

    def mint(
        self,
        sub: str,
        *,
        name: str | None = None,
        roles: list[str] | None = None,
        ttl: float = 3600.0,
        algorithm: str = "HS256",
    ) -> str:
        """A development token signed with the HMAC secret (``engine token``); it
        always expires (``ttl`` seconds, positive)."""
        if not self._secret:
            raise AuthError("minting needs --jwt-secret")
        if not ttl > 0:
            raise ValueError("ttl must be positive: a token must expire")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + max(1, int(ttl))}
        if name:
            claims["preferred_username"] = name
        if roles:
            claims["roles"] = roles
        if self.audience:
            claims["aud"] = self.audience
        if self.issuer:
            claims["iss"] = self.issuer
        return jwt.encode(claims, self._secret, algorithm=algorithm)


def authenticate(
    authenticator: Authenticator, request: HttpRequest, policy: str
) -> Identity | None:
    """Apply a route's policy: an Identity, or None (anonymous allowed).

    Raises:
        UnauthorizedError: the request may not pass (its message is safe to show the
            client; the HTTP side answers 401 with it).

    A token that is present is always verified, even where it is optional: a bad
    credential is refused rather than silently ignored.
    """
    token = token_from(request)
    if token is None:
        if policy == "required":
            raise UnauthorizedError("authentication required")
        return None
    if not authenticator.configured:
        raise UnauthorizedError("token verification is not configured")
    return authenticator.verify(token)  # raises AuthError, an UnauthorizedError
