"""When to refresh a token: its ``exp``, read from the JWT payload without verifying it
(the engine verifies; the client only needs to know when to ask for a new one)."""

from __future__ import annotations

import base64
import binascii
import math

import orjson

__all__ = ["refresh_delay", "token_expiry"]


def token_expiry(token: str) -> float | None:
    """The token's ``exp`` (UNIX seconds), or None when it has none or is no JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        return None
    return float(exp)


def refresh_delay(expires: float, now: float, before: float) -> float:
    """Seconds from ``now`` until a token expiring at ``expires`` should be refreshed:
    ``before`` seconds ahead of its expiry, or halfway there for a shorter-lived one."""
    left = expires - now
    return max(0.0, left - min(before, left / 2))
