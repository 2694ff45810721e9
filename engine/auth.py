"""Token verification with PyJWT: who a request or a WebSocket connection belongs to.

Keys: an HMAC secret (HS256/384/512), a PEM public key (RS*, PS*, ES*, EdDSA), or a JWKS
file (keys picked by ``kid``). ``exp`` and ``nbf`` are always checked with a small
leeway; ``aud`` and ``iss`` when configured. The token comes from ``?token=`` or
``Authorization: Bearer``. Claims become the ``auth`` map services see:
``{userId, username, roles, claims}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt

from protocol import ErrorCode
from protocol.http import HttpRequest

from .app import Response

__all__ = ["AuthError", "Authenticator", "Identity", "authenticate", "token_from"]

_HMAC = ["HS256", "HS384", "HS512"]
_ASYMMETRIC = [
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]


class AuthError(Exception):
    """The token is missing, malformed, badly signed, expired or not for us."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified token."""

    user_id: str
    #: What services receive as ``auth`` (docs/ipc.md §4.7).
    auth: dict[str, Any]
    #: Expiry as a UNIX time, or None.
    expires: float | None


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
    exp = claims.get("exp")
    return Identity(
        user_id=sub,
        auth={
            "userId": sub,
            "username": username if isinstance(username, str) else None,
            "roles": roles,
            "claims": dict(claims),
        },
        expires=float(exp) if isinstance(exp, int | float) else None,
    )


class Authenticator:
    """Verifies tokens against the configured keys.

    Args:
        secret: HMAC secret.
        public_key: path of a PEM public key.
        jwks: path of a JWKS file.
        audience / issuer: required values of ``aud`` / ``iss``, when given.
        leeway: seconds of clock skew accepted on ``exp``/``nbf``/``iat``.
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
    ) -> None:
        self._secret = secret
        self._public_key = Path(public_key).read_text() if public_key else None
        self._jwks: dict[str, Any] = {}
        self._jwks_default: Any = None
        if jwks:
            for jwk in json.loads(Path(jwks).read_text()).get("keys", []):
                key = jwt.PyJWK(jwk)
                kid = jwk.get("kid")
                if kid:
                    self._jwks[kid] = key
                self._jwks_default = key if self._jwks_default is None else self._jwks_default
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway

    @property
    def configured(self) -> bool:
        return bool(self._secret or self._public_key or self._jwks_default)

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError("malformed token") from exc
        alg = header.get("alg")
        if alg in _HMAC and self._secret:
            return self._secret, [alg]
        if alg in _ASYMMETRIC:
            kid = header.get("kid")
            if self._jwks_default is not None and (kid in self._jwks or kid is None):
                jwk = self._jwks.get(kid, self._jwks_default) if kid else self._jwks_default
                return jwk.key, [alg]
            if self._public_key:
                return self._public_key, [alg]
        # alg "none", or an algorithm we hold no key for (no HMAC/RSA confusion).
        raise AuthError("token algorithm not accepted")

    def verify(self, token: str) -> Identity:
        """Raises AuthError with a message that is safe to show the client."""
        key, algorithms = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthError("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise AuthError("token not valid yet") from exc
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError) as exc:
            raise AuthError("token not issued for this service") from exc
        except jwt.PyJWTError as exc:
            raise AuthError("invalid token") from exc
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
        """A development token signed with the HMAC secret (``engine token``)."""
        if not self._secret:
            raise AuthError("minting needs --jwt-secret")
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl)}
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
) -> Identity | Response | None:
    """Apply a route's policy: an Identity, None (anonymous allowed), or the 401 to send.

    A token that is present is always verified, even where it is optional: a bad
    credential is refused rather than silently ignored.
    """
    token = token_from(request)
    if token is None:
        if policy == "required":
            return Response.error(ErrorCode.UNAUTHORIZED, "authentication required")
        return None
    if not authenticator.configured:
        return Response.error(ErrorCode.UNAUTHORIZED, "token verification is not configured")
    try:
        return authenticator.verify(token)
    except AuthError as exc:
        return Response.error(ErrorCode.UNAUTHORIZED, str(exc))
