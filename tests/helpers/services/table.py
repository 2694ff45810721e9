"""The ``table`` service: the seed's comparison table, written from its TypeScript column.

The seed README compares the HTTP side of the TypeScript SDK with its WebSocket side:

=====================================  =====================================
Actions HTTP                           WebSocket
=====================================  =====================================
``service.action("name", opts, fn)``   ``service.ws.on("name", opts, fn)``
``ctx.body``                           ``ctx.message``
``ctx.db.users.whereEquals()``         ``ctx.db.users.whereEquals()``
``ctx.auth``                           ``ctx.auth``
``service.group("prefix", cb)``        ``service.ws.group("prefix", cb)``
``service.use(middleware)``            ``service.ws.use(middleware)``
``return data``                        ``return data`` (ack)
=====================================  =====================================

Each section below is one row, written the way the table writes it (positional opts
dicts, callbacks, no decorators). ``tests/integration/test_seed_table.py`` drives it
through a real engine and a real worker process. WebSocket path ``/ws/table``.
"""

from __future__ import annotations

import contextvars
from typing import Any

from sdk import HttpContext, HttpGroup, Next, Service, WebSocketOptions, WsContext, WsGroup

service = Service("table", version="1.0.0", websocket=WebSocketOptions(path="/ws/table"))


# ------------------------------------------------------------------------- ctx.db
class Table:
    """One table of the in-memory database, with the seed's query-builder name."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def whereEquals(self, field: str, value: Any) -> list[dict[str, Any]]:  # the seed's name
        return [row for row in self.rows if row.get(field) == value]

    def insert(self, row: dict[str, Any]) -> dict[str, Any]:
        self.rows.append(row)
        return row


class Database:
    """What ``service.db`` holds: ``ctx.db`` in every handler, HTTP or WebSocket."""

    def __init__(self) -> None:
        self.users = Table([{"id": "u-1", "username": "ann"}])


@service.before_start
async def open_database(svc: Service) -> None:
    svc.db = Database()


# ---------------------------------------- middleware (row 6), registered first so that
# it wraps everything below: global ones, then the scoped ones, each in the order added.
#: The onion, as the middleware saw it: one list per request (each runs in its own task).
_trace: contextvars.ContextVar[list[str]] = contextvars.ContextVar("trace")


def tracer(name: str) -> Any:
    async def middleware(ctx: Any, next: Next) -> None:
        trace = _trace.get(None)
        if trace is None:
            trace = []
            _trace.set(trace)
        trace.append(f"{name}>")
        await next()
        trace.append(f"<{name}")

    return middleware


service.use(tracer("global1"))
service.use("traced-*", tracer("scoped"))
service.use(tracer("global2"))  # added after a scoped one: still runs before it
service.ws.use(tracer("global1"))
service.ws.use("traced.*", tracer("scoped"))
service.ws.use(tracer("global2"))


async def traced(ctx: Any) -> Any:
    trace = _trace.get()
    trace.append("handler")
    return {"trace": trace}  # the same list: the "after" steps land in the reply


service.action("traced-http", {"route": "/table/traced", "method": "GET"}, traced)
service.ws.on("traced.ws", traced)


# ---------------------------------------- row 1: service.action / service.ws.on(name, opts, fn)
async def get_item(ctx: HttpContext) -> Any:
    return {"id": ctx.params["id"], "user": ctx.auth["userId"] if ctx.auth else None}


async def ws_get_item(ctx: WsContext) -> Any:
    return {"id": ctx.message["id"], "user": ctx.auth["userId"] if ctx.auth else None}


service.action("get-item", {"route": "/table/items/:id", "method": "GET", "auth": True}, get_item)
service.ws.on("item.get", {"auth": True}, ws_get_item)


async def ping(ctx: Any) -> Any:
    return "pong"


# No opts: the default route is /<service>/<name>.
service.action("ping", ping)
service.ws.on("ping", ping)


# ---------------------------------------------------------- row 2: ctx.body / ctx.message
async def echo_body(ctx: HttpContext) -> Any:
    return {"got": ctx.body}


async def echo_message(ctx: WsContext) -> Any:
    return {"got": ctx.message, "room": ctx.message["room"]}


service.action("echo-body", {"route": "/table/echo", "method": "POST"}, echo_body)
service.ws.on("echo", echo_message)


# ---------------------------------------------------- row 3: ctx.db.users.whereEquals()
async def add_user(ctx: HttpContext) -> Any:
    return ctx.db.users.insert({"id": ctx.body["id"], "username": ctx.body["username"]})


async def find_users_http(ctx: HttpContext) -> Any:
    return ctx.db.users.whereEquals("username", ctx.params["username"])


async def find_users_ws(ctx: WsContext) -> Any:
    return ctx.db.users.whereEquals("username", ctx.message["username"])


service.action("add-user", {"route": "/table/users", "method": "POST"}, add_user)
service.action("find-users", {"route": "/table/users/:username", "method": "GET"}, find_users_http)
service.ws.on("users.find", find_users_ws)


# ------------------------------------------------------------------ row 4: ctx.auth
async def whoami(ctx: Any) -> Any:
    return ctx.auth


service.action("whoami", {"route": "/table/whoami", "method": "GET", "auth": True}, whoami)
service.ws.on("whoami", {"auth": True}, whoami)


# ---------------------------------------- row 5: service.group / service.ws.group(prefix, cb)
async def stats(ctx: HttpContext) -> Any:
    return {"users": len(ctx.db.users.rows), "trace": _trace.get()}


async def send(ctx: WsContext) -> Any:
    return {"sent": ctx.message["text"], "type": ctx.type, "trace": _trace.get()}


def admin(g: HttpGroup) -> None:
    g.use(tracer("admin"))
    g.action("stats", {"route": "/stats", "method": "GET"}, stats)  # → GET /table/admin/stats


def chat(ws: WsGroup) -> None:
    ws.use(tracer("chat"))
    ws.on("send", send)  # → type "chat.send"


service.group("/table/admin", admin)
service.ws.group("chat", chat)


# --------------------------------------------------------- row 7: return data / (ack)
async def data(ctx: Any) -> Any:
    return {"ok": True, "n": 1}


service.action("data", {"route": "/table/data", "method": "GET"}, data)
service.ws.on("data", data)


# ----------------------------------- what ``return data`` cannot be: a value JSON cannot encode
async def unencodable(ctx: Any) -> Any:
    return {"when": {1, 2}}


service.action("unencodable", {"route": "/table/unencodable", "method": "GET"}, unencodable)
service.ws.on("unencodable", unencodable)
