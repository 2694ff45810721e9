"""The admin page (docs/admin.md): ``/admin`` on the admin listener, on with
``--admin-password``.

- ``GET /admin``: the page (a redirect to the login form without a session);
  ``/admin/app.js`` and ``/admin/app.css`` beside it, files of
  ``engine/http/admin_page/`` read once at start. Plain HTML and JS, no build step.
- ``GET|POST /admin/login``: the form, and the password check (admin_session.py);
  ``POST /admin/logout``.
- ``GET /admin/ws``: the WebSocket of live numbers (admin_ws.py), with a session and
  an ``Origin`` equal to the admin host (a page of another site, or of another port
  of this host, which the cookie does not tell apart, cannot open it).

Every answer under ``/admin`` carries a strict Content-Security-Policy (scripts,
styles and connections from this origin only, nothing inline, no framing) and
``no-store``: the page shows who is connected.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from engine.http.admin_session import Sessions, clear_cookie, set_cookie
from engine.http.admin_stats import Sampler
from engine.http.admin_ws import AdminSocket
from engine.http.server_api import Answer, ApiError, ServerApi
from engine.limits.ratelimit import LogBudget
from protocol.http import (
    HttpConn,
    HttpRequest,
    UpgradeRejected,
    is_websocket_upgrade,
    validate_upgrade,
)

if TYPE_CHECKING:
    from engine.node import Node

__all__ = ["CSP", "WS_PATH", "AdminWeb"]

log = logging.getLogger("linkd.admin")

PREFIX = "/admin"
WS_PATH = "/admin/ws"
#: Admin page WebSockets open at once: a few operators, a few tabs each. Each costs a
#: snapshot a second to build and send.
MAX_SOCKETS = 8
#: Seconds between samples and snapshots; Redis is asked for the nodes every
#: ``NODES_EVERY`` ticks while a page is open.
TICK = 1.0
NODES_EVERY = 5
#: Members listed by a room search (the count is always whole).
MAX_MEMBERS_LISTED = 200
MAX_ROOM_NAME = 200
#: How a disconnect from the page closes the connection: a policy close, which
#: clients take as "do not come straight back".
DISCONNECT_CODE = 1008
DISCONNECT_REASON = "disconnected by an operator"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
]
_STATIC = Path(__file__).resolve().parent / "admin_page"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_ASSETS = {"/admin/app.js": "app.js", "/admin/app.css": "app.css"}
#: What the login form says after a refusal (fixed strings: nothing of the request).
_MARK = b"<!--message-->"
_WRONG = b'<p class="error" role="alert">Wrong password.</p>'
_SLOW = b'<p class="error" role="alert">Too many attempts: wait a little.</p>'
_OFF = b'<p class="error" role="alert">Refused: this form must be sent from its page.</p>'


class AdminWeb:
    """The admin page of one engine: its routes, sessions, sampler and sockets.

    Args:
        state: the engine's node.
        started: loop time the engine started.
        api: the engine's server API (the page calls its methods in-process).
        password: the ``--admin-password``.
    """

    def __init__(self, state: Node, started: float, api: ServerApi, password: str) -> None:
        self.state = state
        self.api = api
        self.sessions = Sessions(password)
        self.sampler = Sampler(state, started)
        self.sockets: set[AdminSocket] = set()
        self._files = {
            name: (_STATIC / name).read_bytes()
            for name in ("index.html", "login.html", "app.js", "app.css")
        }
        self._ticks = 0
        self._nodes_pending = False
        #: Refused WebSockets are logged at most once a second (bursts of 5).
        self._refusals = LogBudget()
        loop = state.loop
        self._next = loop.time() + TICK
        self._timer: asyncio.TimerHandle | None = loop.call_at(self._next, self._tick)

    @staticmethod
    def owns(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    # ------------------------------------------------------------ HTTP routes
    def answer(self, request: HttpRequest, peer: str) -> Answer:
        path, method = request.path, request.method
        now = self.state.loop.time()
        if path in ("/admin/login", "/admin/logout") and method == "POST":
            if not _same_origin(request, required=False):
                return self._page(403, "login.html", _OFF)
            if path == "/admin/login":
                return self._login(request, peer, now)
            token = self.sessions.valid(request, now)
            if token is not None:
                self.sessions.logout(token)
            return _redirect("/admin/login", clear_cookie())
        if method not in ("GET", "HEAD"):
            allow = "GET, HEAD, POST" if path in ("/admin/login", "/admin/logout") else "GET, HEAD"
            status, headers, body = _error(405, "method not allowed")
            return status, [*headers, ("allow", allow)], body
        asset = _ASSETS.get(path)
        if asset is not None:
            return self._file(200, asset)
        signed_in = self.sessions.valid(request, now) is not None
        if path == PREFIX:
            return self._file(200, "index.html") if signed_in else _redirect("/admin/login")
        if path == "/admin/login":
            return _redirect(PREFIX) if signed_in else self._page(200, "login.html", b"")
        if path == WS_PATH:
            return _error(426, "this is a WebSocket", [("upgrade", "websocket")])
        return _error(404, "no such admin page")

    def _login(self, request: HttpRequest, peer: str, now: float) -> Answer:
        wait = self.sessions.limited(peer, now)
        if wait:
            status, headers, body = self._page(429, "login.html", _SLOW)
            return status, [*headers, ("retry-after", str(max(1, round(wait))))], body
        try:
            form = parse_qs(request.body.decode(), max_num_fields=4, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            form = {}
        given = form.get("password", [""])[0]
        token = self.sessions.login(given, peer, now) if given else None
        if token is None:
            return self._page(401, "login.html", _WRONG)
        return _redirect(PREFIX, set_cookie(token))

    def _file(self, status: int, name: str) -> Answer:
        kind = _TYPES[Path(name).suffix]
        return status, [("content-type", kind), *_SECURITY], self._files[name]

    def _page(self, status: int, name: str, message: bytes) -> Answer:
        body = self._files[name].replace(_MARK, message)
        return status, [("content-type", _TYPES[".html"]), *_SECURITY], body

    # --------------------------------------------------------------- WebSocket
    def upgrade(
        self, request: HttpRequest, conn: HttpConn, transport: asyncio.Transport
    ) -> Answer | None:
        """Take ``GET /admin/ws`` over as an admin WebSocket: None once the 101 is
        written and the transport is the socket's; else the refusal to answer."""
        now = self.state.loop.time()
        token = self.sessions.valid(request, now)
        if token is None:
            return _error(401, "log in first")
        if not _same_origin(request, required=True):
            self._refusals.warning(
                log, now, "admin WebSocket refused: Origin %r", request.header("origin")
            )
            return _error(403, "the Origin is not this admin page's")
        if not is_websocket_upgrade(request):
            return _error(426, "this is a WebSocket", [("upgrade", "websocket")])
        if len(self.sockets) >= MAX_SOCKETS:
            return _error(503, f"{MAX_SOCKETS} admin pages are open already")
        checked = validate_upgrade(request)
        if isinstance(checked, UpgradeRejected):
            return _error(checked.status, checked.message, checked.headers)
        transport.write(conn.accept_upgrade(checked.headers))
        state = self.state
        sock = AdminSocket(token, self.handle, state.spawn, self.sockets.discard, state.loop.time)
        self.sockets.add(sock)
        transport.set_protocol(sock)
        sock.start(transport)
        sock.send(
            {
                "type": "hello",
                "interval": TICK,
                "history": list(self.sampler.history),
                "snapshot": self.sampler.snapshot(),
            }
        )
        trailing = conn.trailing_data
        if trailing:
            sock.data_received(trailing)
        return None

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request of a page: ``room`` or ``disconnect``."""
        kind = request.get("type")
        try:
            if kind == "room":
                return await self._room(request.get("room"))
            if kind == "disconnect":
                return await self._disconnect(request.get("connection"))
        except ApiError as exc:
            return {"type": "error", "message": exc.message}
        return {"type": "error", "message": "unknown request type"}

    async def _room(self, room: object) -> dict[str, Any]:
        if not isinstance(room, str) or not 0 < len(room) <= MAX_ROOM_NAME:
            return {"type": "error", "message": f"a room is 1 to {MAX_ROOM_NAME} characters"}
        members = sorted(self.state.hub.rooms.get(room, ()), key=lambda ws: ws.id)
        listed = []
        for ws in members[:MAX_MEMBERS_LISTED]:
            auth = ws.auth or {}
            name = auth.get("username")
            listed.append(
                {
                    "id": ws.id,
                    "userId": ws.user_id,
                    "username": name if isinstance(name, str) else None,
                    # Every member is a WsProtocol, whose upgrade request stays with it.
                    "path": getattr(getattr(ws, "request", None), "path", None),
                }
            )
        try:
            presence: object = await self.api.call("presence", {"room": room})
        except ApiError as exc:
            presence = {"error": exc.message}
        return {
            "type": "room",
            "room": room,
            "memberCount": len(members),
            "members": listed,
            "presence": presence,
        }

    async def _disconnect(self, connection: object) -> dict[str, Any]:
        if isinstance(connection, bool) or not isinstance(connection, int):
            return {"type": "error", "message": "connection must be a connection id"}
        result = await self.api.call(
            "disconnect",
            {"connection": connection, "code": DISCONNECT_CODE, "reason": DISCONNECT_REASON},
        )
        done = result.get("disconnected", 0) if isinstance(result, dict) else 0
        log.info("admin page: disconnect of connection %d (%d closed)", connection, done)
        return {"type": "disconnected", "connection": connection, "disconnected": done}

    # ------------------------------------------------------------------- timer
    def _tick(self) -> None:
        loop = self.state.loop
        now = loop.time()
        self._next = max(self._next + TICK, now + TICK / 2)  # no burst after a stall
        self._timer = loop.call_at(self._next, self._tick)
        self._ticks += 1
        try:
            self.sampler.sample(now)
            if not self.sockets:
                return
            text = orjson.dumps(self.sampler.snapshot()).decode()
            for sock in list(self.sockets):
                sock.tick(now, self.sessions.alive(sock.token, now))
                sock.send_text(text)
            due = self._ticks % NODES_EVERY == 1 or self.sampler.nodes is None
            if self.state.config.redis_url and due and not self._nodes_pending:
                self._nodes_pending = True
                self.state.spawn(self._refresh_nodes())
        except Exception:
            log.exception("admin page tick failed")

    async def _refresh_nodes(self) -> None:
        try:
            info = await self.api.call("info", {})
            nodes = info.get("nodes") if isinstance(info, dict) else None
            self.sampler.nodes = nodes if isinstance(nodes, list) else None
        finally:
            self._nodes_pending = False

    def close(self) -> None:
        """The engine stopped: no more ticks, no more sockets."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for sock in list(self.sockets):
            sock.abort()


def _same_origin(request: HttpRequest, *, required: bool) -> bool:
    """The request comes from a page of the admin host itself.

    A browser says so in ``Sec-Fetch-Site``; a form posted under ``Referrer-Policy:
    no-referrer`` carries ``Origin: null``, so that header decides when present. Else
    ``Origin`` must name the host the request was sent to (``Host``). Neither (not a
    browser): ``not required``. A WebSocket handshake always carries its real Origin.
    """
    site = request.header("sec-fetch-site")
    if site is not None and not required:
        return site == "same-origin"
    origin = request.header("origin")
    if origin is None:
        return not required
    host = request.header("host")
    return bool(host) and origin in (f"http://{host}", f"https://{host}")


def _redirect(location: str, *cookies: tuple[str, str]) -> Answer:
    return 303, [("location", location), *cookies, *_SECURITY], b""


def _error(status: int, message: str, extra: list[tuple[str, str]] | None = None) -> Answer:
    body = orjson.dumps({"error": {"status": status, "message": message}})
    return status, [("content-type", "application/json"), *_SECURITY, *(extra or [])], body
