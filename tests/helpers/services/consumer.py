"""The ``consumer`` service: handles ``job.created`` events, reporting each to room
``events-watch`` (``consumer.started`` / ``consumer.done`` with the worker's pid and
the delivery attempt), so a test watching the room sees who handled what, how often.

``data.sleep`` makes the handler take that long; ``data.block`` makes it wait (so
events pile up in the queue).
"""

from __future__ import annotations

import asyncio
import os

from sdk import EventContext, Service

service = Service("consumer", concurrency=4)


@service.on_event("job.created")
async def job_created(ctx: EventContext) -> None:
    report = {
        "n": ctx.data.get("n"),
        "pid": os.getpid(),
        "attempt": ctx.attempt,
        "event": ctx.event,
        "source": ctx.source,
    }
    await ctx.to("events-watch").emit("consumer.started", report)
    if ctx.data.get("block"):
        await asyncio.sleep(3600)
    await asyncio.sleep(float(ctx.data.get("sleep", 0)))
    await ctx.to("events-watch").emit("consumer.done", report)


async def audit(ctx: EventContext) -> None:
    await ctx.to("events-watch").emit("consumer.audit", {"n": ctx.data.get("n")})


service.on_event("job.audited", audit)
