"""``engine token``: mint a development token signed with the HMAC secret."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from engine.auth import Authenticator

__all__ = ["token_main"]


def token_main(argv: Sequence[str]) -> int:
    """``engine token --sub ID``: print a development token signed with the secret."""
    parser = argparse.ArgumentParser(
        prog="engine token",
        description="Mint a development token (HS256) with --jwt-secret / LINKD_JWT_SECRET.",
    )
    parser.add_argument("--sub", required=True, help="the user id (sub claim)")
    parser.add_argument("--name", help="preferred_username claim")
    parser.add_argument("--roles", default="", help="comma-separated roles")
    parser.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds")
    parser.add_argument("--jwt-secret", default=os.environ.get("LINKD_JWT_SECRET"))
    parser.add_argument("--jwt-audience", default=os.environ.get("LINKD_JWT_AUDIENCE"))
    parser.add_argument("--jwt-issuer", default=os.environ.get("LINKD_JWT_ISSUER"))
    args = parser.parse_args(argv)
    if not args.jwt_secret:
        parser.error("needs --jwt-secret or LINKD_JWT_SECRET")
    if not args.ttl > 0:
        parser.error("--ttl must be positive: a token always expires")
    authenticator = Authenticator(
        secret=args.jwt_secret, audience=args.jwt_audience, issuer=args.jwt_issuer
    )
    roles = [r for r in args.roles.split(",") if r]
    print(authenticator.mint(args.sub, name=args.name, roles=roles, ttl=args.ttl))
    return 0
