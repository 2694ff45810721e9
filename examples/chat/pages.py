"""The browser page: its HTML, scripts and styles, and the demo-mode helpers it calls.

Files are read once at import and served from memory, from a fixed whitelist: a
request can never name a path on disk.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from examples.chat.config import REPO_ROOT, Settings
from examples.chat.handlers import store
from examples.chat.seed import SEED_USERS
from examples.chat.tokens import mint
from examples.chat.validation import Fields
from sdk import (
    ForbiddenError,
    HttpContext,
    NotFoundError,
    Response,
    Service,
    ServiceUnavailableError,
)

__all__ = ["STATIC_FILES", "is_local_client", "register"]

_STATIC_DIR = Path(__file__).resolve().parent / "static"

#: ``/chat/static/<name>`` → (file, content type). Nothing else is served.
STATIC_FILES: Final[dict[str, tuple[Path, str]]] = {
    "chat.js": (_STATIC_DIR / "chat.js", "text/javascript; charset=utf-8"),
    "chat.css": (_STATIC_DIR / "chat.css", "text/css; charset=utf-8"),
    "linkd.js": (REPO_ROOT / "clients" / "js" / "linkd.js", "text/javascript; charset=utf-8"),
}

_PAGE: Final = (_STATIC_DIR / "index.html").read_bytes()
_STATIC: Final = {name: (path.read_bytes(), ctype) for name, (path, ctype) in STATIC_FILES.items()}

# The page loads only its own scripts and styles and talks only to its own origin.
_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; frame-ancestors 'none'"
)


def _headers(content_type: str) -> list[tuple[str, str]]:
    return [
        ("content-type", content_type),
        ("cache-control", "no-cache"),
        ("x-content-type-options", "nosniff"),
        ("content-security-policy", _CSP),
        ("referrer-policy", "no-referrer"),
    ]


#: Headers a proxy uses to name the client it forwards for.
_FORWARDED = ("forwarded", "x-forwarded-for", "x-real-ip")


def _loopback(address: str) -> bool:
    """``127.0.0.1``, ``::1``, ``[::1]:80``, ``::ffff:127.0.0.2``...: a loopback address."""
    host = address.strip().strip('"')
    if host.startswith("["):  # [v6] or [v6]:port
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # v4:port
        host = host.partition(":")[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # "unknown", an obfuscated name, garbage: not provably local
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def is_local_client(remote: str | None, headers: Iterable[tuple[str, str]]) -> bool:
    """Whether the request comes from this machine: the TCP peer (``host:port``, as the
    engine reports it) is a loopback address, and so is every client a proxy says it
    forwards for (a proxy on this machine must not make the world local)."""
    if not remote:
        return False
    host = remote.rpartition(":")[0] or remote  # "::1:5000" -> "::1"
    if not _loopback(host):
        return False
    for raw_name, value in headers:  # every occurrence: a proxy may add its own
        name = raw_name.lower()
        if name not in _FORWARDED:
            continue
        for hop in value.split(","):
            if name == "forwarded":
                fors = [
                    p.partition("=")[2]
                    for p in hop.split(";")
                    if p.strip().lower().startswith("for=")
                ]
            else:
                fors = [hop]
            if not all(_loopback(f) for f in fors):
                return False
    return True


def register(service: Service, settings: Settings) -> None:
    """Add ``/chat/``, ``/chat/static/:file``, ``/chat/config`` and ``/chat/demo/token``."""

    @service.action("page", route="/chat/", method="GET")
    async def page(ctx: HttpContext) -> Any:
        return Response(body=_PAGE, headers=_headers("text/html; charset=utf-8"))

    @service.action("static", route="/chat/static/:file", method="GET")
    async def static(ctx: HttpContext) -> Any:
        found = _STATIC.get(ctx.params.get("file", ""))
        if found is None:
            raise NotFoundError("no such file")
        body, content_type = found
        return Response(body=body, headers=_headers(content_type))

    @service.action("config", route="/chat/config", method="GET")
    async def config(ctx: HttpContext) -> Any:
        users = [{"id": i, "username": n} for i, n in SEED_USERS] if settings.demo else []
        return {"demo": settings.demo, "users": users, "wsPath": "/ws/chat"}

    @service.action("demo-token", route="/chat/demo/token", method="POST")
    async def demo_token(ctx: HttpContext) -> Any:
        """Demo mode only, clients on this machine only: a development token for one of
        the seeded users. Anyone who may call it becomes any demo user."""
        if not settings.demo:
            raise NotFoundError("demo mode is off")
        if not is_local_client(ctx.remote_address, ctx.headers.raw):
            raise ForbiddenError("demo tokens are only given to clients on this machine")
        if not settings.jwt_secret:
            raise ServiceUnavailableError("demo mode needs LINKD_JWT_SECRET")
        v = Fields(ctx.json(), what="body")
        user_id = v.uuid("userId")
        v.check()
        names = dict(SEED_USERS)
        if user_id not in names:
            raise NotFoundError("not a demo user")
        username = await store(ctx).ensure_user(user_id, names[user_id])
        token = mint(
            settings.jwt_secret,
            user_id,
            username,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
        return {"token": token, "user": {"id": user_id, "username": username}}
