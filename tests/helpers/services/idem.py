"""The ``idem`` service: handlers with a side effect to count, for idempotent requests.

Every handler adds one to ``runs[key]`` (``key`` from the message, so that tests
sharing one worker do not see each other's counts) before it answers; a test asks
``idem.runs`` how often a handler really ran. WebSocket path ``/ws/idem``, tokens
optional (an authenticated user's retries are recognised on any of their connections).

- ``idem.bump {key}``: answers ``{key, n}`` (``n``: the runs so far);
- ``idem.again {key}``: the same, with ``idempotent: False`` (every repeat runs);
- ``idem.slow {key, t}``: sends ``idem.started {key}`` to its connection, then sleeps
  ``t`` seconds before answering (in flight for a while; past the request timeout);
- ``idem.fail {key}``: a handler error, ``NOT_FOUND``;
- ``idem.big {key, size}``: answers ``{key, n, pad}`` with ``size`` characters of pad;
- ``idem.runs {key}``: the runs of ``key`` (``idempotent: False``: always asked anew).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from sdk import NotFoundError, Service, WebSocketOptions, WsContext

service = Service("idem", websocket=WebSocketOptions(path="/ws/idem"))

runs: Counter[str] = Counter()


def run(ctx: WsContext) -> tuple[str, int]:
    key = str(ctx.message["key"])
    runs[key] += 1
    return key, runs[key]


async def bump(ctx: WsContext) -> Any:
    key, n = run(ctx)
    return {"key": key, "n": n}


async def slow(ctx: WsContext) -> Any:
    key, n = run(ctx)
    await ctx.send("idem.started", {"key": key})
    await asyncio.sleep(float(ctx.message["t"]))
    return {"key": key, "n": n}


async def fail(ctx: WsContext) -> Any:
    key, n = run(ctx)
    raise NotFoundError(f"no {key} (run {n})")


async def big(ctx: WsContext) -> Any:
    key, n = run(ctx)
    return {"key": key, "n": n, "pad": "x" * int(ctx.message["size"])}


async def count(ctx: WsContext) -> Any:
    return runs[str(ctx.message["key"])]


service.ws.on("idem.bump", bump)
service.ws.on("idem.again", {"idempotent": False}, bump)
service.ws.on("idem.slow", slow)
service.ws.on("idem.fail", fail)
service.ws.on("idem.big", big)
service.ws.on("idem.runs", {"idempotent": False}, count)
