"""The service behind ``bench/ipc.py``: one group ``bench`` whose ``echo`` returns the data.

Run by the engine for the IPC scenarios::

    engine --listen 127.0.0.1:3000 --service bench.ipc_service --workers 1

``bench.echo`` acks ``{"id", "type": "bench.echo", "data": <the client's data>}``: the
same work as the in-process endpoint of the benchmark (parse, re-encode ``data``), plus
the IPC hop. Two environment variables, set by ``bench/ipc.py``, tune the registration:

- ``BENCH_IPC_PER_CONNECTION`` (default 1): messages of one connection the engine
  forwards at once. With 1 the engine handles one message per connection at a time, so
  a client keeping K > 1 requests in flight queues K - 1 of them in the engine.
- ``BENCH_IPC_CONCURRENCY`` (default 64, the SDK's default): requests one worker runs
  at once; the engine queues the rest per service.
"""

from __future__ import annotations

import os
from typing import Any

from sdk import Service, WebSocketOptions, WsContext

__all__ = ["PER_CONNECTION", "WS_PATH", "service"]

WS_PATH = "/ws/bench"
PER_CONNECTION = int(os.environ.get("BENCH_IPC_PER_CONNECTION", "1"))
CONCURRENCY = int(os.environ.get("BENCH_IPC_CONCURRENCY", "64"))

service = Service(
    "bench",
    websocket=WebSocketOptions(path=WS_PATH, auth="none", per_connection=PER_CONNECTION),
    concurrency=CONCURRENCY,
)

bench = service.ws.group("bench")


@bench.on("echo")
async def echo(ctx: WsContext) -> Any:
    """The ack's data is the message's data."""
    return ctx.data
