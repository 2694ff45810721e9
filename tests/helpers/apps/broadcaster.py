"""An embedding of ``engine.Engine`` with an HTTP trigger for broadcasts, run on uvloop.

python tests/helpers/apps/broadcaster.py --listen 127.0.0.1:9100 --max-outbound-buffer 1m

Mounts the echo endpoint on ``/echo`` and routes ``POST /broadcast``: the JSON body
``{"size": n, "count": k}`` makes the engine call ``engine.broadcast("x" * n)`` k times,
yielding to the loop after every 100, and the reply is ``{"delivered": total}`` (the
sum of what each ``broadcast`` reports it queued to). Stops on SIGTERM/SIGINT like the
CLI (``Engine.serve``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence

import uvloop

from engine import Config, Engine, Request, Response
from engine.config import parse_listen
from engine.log import configure_logging
from protocol import Limits

_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def size(value: str) -> int:
    """``1048576``, ``64k``, ``1m``."""
    value = value.strip().lower()
    if value and value[-1] in _UNITS:
        return int(float(value[:-1]) * _UNITS[value[-1]])
    return int(value)


def build_engine(args: argparse.Namespace) -> Engine:
    host, port = parse_listen(args.listen)
    limits = Limits()
    if args.max_outbound_buffer is not None:
        limits = dataclasses.replace(limits, max_outbound_bytes=args.max_outbound_buffer)
    config = Config(
        host=host,
        port=port,
        echo_paths=("/echo",),
        access_log=not args.no_access_log,
        log_level=args.log_level,
        close_timeout=args.close_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        shutdown_grace=args.shutdown_grace,
        heartbeat=0,
        timer_resolution=0.05,
        limits=limits,
        public_metrics=True,  # tests read its counters from the client port
    )
    engine = Engine(config)

    async def broadcast(request: Request) -> Response:
        body = request.json()
        payload = "x" * int(body["size"])
        delivered = 0
        for i in range(int(body["count"])):
            delivered += engine.broadcast(payload)
            if i % 100 == 99:
                await asyncio.sleep(0)
        return Response.json({"delivered": delivered})

    engine.route("POST", "/broadcast", broadcast)
    return engine


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="broadcaster", description="An embedded engine with POST /broadcast."
    )
    p.add_argument("--listen", default="127.0.0.1:3000", help="HOST:PORT or :PORT")
    p.add_argument("--max-outbound-buffer", type=size, default=None, help="slow-consumer cap")
    p.add_argument("--close-timeout", type=float, default=5.0)
    p.add_argument("--keep-alive-timeout", type=float, default=5.0)
    p.add_argument("--shutdown-grace", type=float, default=5.0)
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-access-log", action="store_true")
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    engine = build_engine(args)
    try:
        uvloop.run(engine.serve())
    except OSError as exc:
        print(f"broadcaster: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
