"""The ``demo`` service: one handler per behaviour the integration tests check.

Run it with ``python -m sdk tests.helpers.services.demo --ipc PATH`` (or let the engine
start it: ``--service tests.helpers.services.demo``). WebSocket path ``/ws/demo``.

- every connection joins ``lobby`` on connect and the others there get ``user.joined``;
- on disconnect, ``demo.disconnected {socket, code, rooms}`` goes to room
  ``watch:<socket id>`` (a watcher joins it to observe) and is recorded for
  ``GET /demo/disconnects``;
- presence changes go to room ``presence-watch`` as ``presence.changed``;
- middleware (two global, two scoped to ``demo.*``, one scoped to ``other.*``) write
  their order into a per-request trace that ``demo.mw`` returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
from typing import Any

from sdk import (
    BadRequestError,
    ForbiddenError,
    HttpContext,
    NotFoundError,
    PresenceContext,
    RateLimitedError,
    Service,
    ServiceUnavailableError,
    UnauthorizedError,
    ValidationError,
    WebSocketOptions,
    WsContext,
)
from sdk.ws import Next

service = Service("demo", version="1.2.3", websocket=WebSocketOptions(path="/ws/demo"))

#: Written by the middleware, returned by ``demo.mw``: one list per request task.
_trace: contextvars.ContextVar[list[str]] = contextvars.ContextVar("trace")
#: What on_disconnect saw, newest last (this worker process only).
disconnects: list[dict[str, Any]] = []

#: A secret that must never reach a client when a handler crashes.
SECRET = "s3cr3t-db-password"


def fail(kind: str) -> None:
    """Raise the error named ``kind``; return quietly for ``"none"``."""
    if kind == "bad_request":
        raise BadRequestError("bad thing")
    if kind == "validation":
        raise ValidationError("invalid input", fields={"name": "required", "age": "too low"})
    if kind == "unauthorized":
        raise UnauthorizedError("who are you")
    if kind == "forbidden":
        raise ForbiddenError("not yours")
    if kind == "not_found":
        raise NotFoundError("no such item")
    if kind == "rate_limited":
        raise RateLimitedError("slow down")
    if kind == "unavailable":
        raise ServiceUnavailableError("database down")
    if kind == "crash":
        raise RuntimeError(f"connection to postgres://admin:{SECRET}@db failed")
    if kind != "none":
        raise BadRequestError(f"unknown kind {kind!r}")


# ------------------------------------------------------------------ HTTP actions
@service.action("echo-item", route="/demo/items/:id", method="POST")
async def echo_item(ctx: HttpContext) -> Any:
    return {
        "method": ctx.method,
        "path": ctx.path,
        "params": ctx.params,
        "query": ctx.query,
        "body": ctx.body,
        "content_type": ctx.headers.get("content-type"),
    }


@service.action("fail", route="/demo/fail/:kind", method="GET")
async def fail_action(ctx: HttpContext) -> Any:
    fail(ctx.params["kind"])
    return {"ok": True}


@service.action("pid", route="/demo/pid", method="GET")
async def pid_action(ctx: HttpContext) -> Any:
    return {"pid": os.getpid()}


@service.action("slow", route="/demo/slow", method="GET")
async def slow_action(ctx: HttpContext) -> Any:
    await asyncio.sleep(float(ctx.query.get("t", ["1"])[0]))
    return {"pid": os.getpid()}


@service.action("disconnects", route="/demo/disconnects", method="GET")
async def disconnects_action(ctx: HttpContext) -> Any:
    return disconnects


# -------------------------------------------------------------------- middleware
def _tracer(name: str) -> Any:
    async def middleware(ctx: WsContext, next: Next) -> None:
        trace = _trace.get(None)
        if trace is None:
            trace = []
            _trace.set(trace)
        trace.append(f"{name}:before")
        await next()
        trace.append(f"{name}:after")

    return middleware


service.ws.use(_tracer("global1"))
service.ws.use("demo.*", _tracer("scoped1"))
service.ws.use(_tracer("global2"))  # added after a scoped one: still runs before it
service.ws.use("other.*", _tracer("other"))
service.ws.use("demo.*", _tracer("scoped2"))


# ---------------------------------------------------------- connect / disconnect
@service.ws.on_connect
async def on_connect(ctx: WsContext) -> None:
    await ctx.join("lobby")
    await ctx.to("lobby").except_(ctx.socket.id).emit("user.joined", {"socket": ctx.socket.id})


@service.ws.on_disconnect
async def on_disconnect(ctx: WsContext, code: int, rooms: list[str]) -> None:
    seen = {"socket": ctx.socket.id, "code": code, "rooms": rooms}
    disconnects.append(seen)
    del disconnects[:-100]
    await ctx.to(f"watch:{ctx.socket.id}").emit("demo.disconnected", seen)


@service.ws.on_presence
async def on_presence(ctx: PresenceContext) -> None:
    change = {"userId": ctx.user_id, "username": ctx.username, "online": ctx.online}
    await ctx.to("presence-watch").emit("presence.changed", change)


# ------------------------------------------------------------------- demo.* group
with service.ws.group("demo") as ws:

    @ws.on("echo")
    async def echo(ctx: WsContext) -> Any:
        return {
            "echo": ctx.message,
            "type": ctx.type,
            "id": ctx.envelope.id if ctx.envelope else None,
        }

    @ws.on("whoami")
    async def whoami(ctx: WsContext) -> Any:
        return {"socket": ctx.socket.id, "pid": os.getpid()}

    @ws.on("mw")
    async def mw(ctx: WsContext) -> Any:
        trace = _trace.get()
        trace.append("handler")
        return {"trace": trace}  # the same list: the "after" steps land in the ack

    @ws.on("join")
    async def join(ctx: WsContext) -> Any:
        room = ctx.message["room"]
        await ctx.join(room)
        if ctx.message.get("announce"):
            # Issued before the reply: must reach this client before its ack.
            await ctx.to(room).emit("demo.announce", {"room": room})
        return {"joined": room}

    @ws.on("leave")
    async def leave(ctx: WsContext) -> Any:
        await ctx.leave(ctx.message["room"])
        return {"left": ctx.message["room"]}

    @ws.on("emit")
    async def emit(ctx: WsContext) -> Any:
        d = ctx.message
        await ctx.to(d["room"]).emit(d["event"], d.get("data"))
        return {"emitted": d["room"]}

    @ws.on("seq")
    async def seq(ctx: WsContext) -> Any:
        await ctx.to(ctx.message["room"]).emit("demo.seq", ctx.message["i"])
        return ctx.message["i"]

    @ws.on("rooms")
    async def rooms(ctx: WsContext) -> Any:
        return await ctx.rooms()

    @ws.on("presence")
    async def presence(ctx: WsContext) -> Any:
        d = ctx.message
        return {"users": await ctx.presence(d["room"]), "online": await ctx.is_online(d["user"])}

    @ws.on("close")
    async def close(ctx: WsContext) -> Any:
        await ctx.close(ctx.message["code"], ctx.message["reason"])
        return {"closing": True}

    @ws.on("slow")
    async def slow(ctx: WsContext) -> Any:
        # Tell the client who holds the request before sleeping on it.
        await ctx.send("demo.slow.started", {"pid": os.getpid()})
        await asyncio.sleep(ctx.message["t"])
        return {"pid": os.getpid()}

    @ws.on("nap", concurrent=True)
    async def nap(ctx: WsContext) -> Any:
        # Opted out of ordering: the connection's next messages do not wait for it.
        await asyncio.sleep(ctx.message["t"])
        return {"napped": ctx.message["t"]}

    @ws.on("fail")
    async def fail_message(ctx: WsContext) -> Any:
        fail(ctx.message["kind"])
        return {"ok": True}


@service.ws.on_message
async def catch_all(ctx: WsContext) -> Any:
    return {"caught": ctx.type, "data": ctx.message, "trace": _trace.get([])}
