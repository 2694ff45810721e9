"""Development tokens for demo mode, signed with the engine's own HMAC secret.

The engine verifies every token; the service only mints them, and only in demo mode,
with the secret it inherits from the engine (``LINKD_JWT_SECRET``). Never enable demo
mode where real users connect: anyone could become anyone.
"""

from __future__ import annotations

import time
from typing import Any, Final

import jwt

__all__ = ["DEMO_TOKEN_TTL", "mint"]

#: A demo session lasts a working day; the engine closes the socket at expiry.
DEMO_TOKEN_TTL: Final = 12 * 3600


def mint(
    secret: str,
    user_id: str,
    username: str,
    *,
    ttl: int = DEMO_TOKEN_TTL,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 token for ``user_id`` that the engine accepts (sub, preferred_username;
    aud and iss when the engine requires them)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "preferred_username": username,
        "iat": now,
        "exp": now + ttl,
    }
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")
