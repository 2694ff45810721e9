"""run() and start_services(): run services until SIGINT/SIGTERM, then drain and exit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Collection, Iterable

from .service import Service
from .worker import DEFAULT_IPC, DEFAULT_MAX_FRAME, Worker

__all__ = ["configure_logging", "ipc_path", "run", "start_services"]

log = logging.getLogger("linkd.sdk")


def ipc_path(ipc: str | None) -> str:
    """``ipc``, else ``$LINKD_IPC``, else ``/tmp/linkd.sock``."""
    return ipc or os.environ.get("LINKD_IPC") or DEFAULT_IPC


def configure_logging(level: str | None = None) -> None:
    """One line per event on stderr for the ``linkd`` loggers, unless already set up."""
    root = logging.getLogger("linkd")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root.addHandler(handler)
    root.setLevel((level or os.environ.get("LINKD_LOG_LEVEL") or "info").upper())
    root.propagate = False


async def start_services(
    services: Iterable[Service],
    *,
    ipc: str | None = None,
    grace: float = 10.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    handle_signals: bool = True,
    stop: asyncio.Event | None = None,
    engine_uids: Collection[int] | None = None,
) -> None:
    """Run each service (one engine connection each) until stopped, then drain.

    Args:
        services: the services to run in this process.
        ipc: the engine's socket (default ``$LINKD_IPC`` or ``/tmp/linkd.sock``).
        grace: seconds to finish requests in flight after a stop.
        max_frame: the largest IPC frame accepted from the engine.
        handle_signals: stop on SIGINT/SIGTERM (main thread only).
        stop: set it to stop (an alternative to signals, for embedding).
        engine_uids: users besides ours whose engine we accept on the socket
            (default ``$LINKD_ENGINE_UIDS``); any other engine is refused.
    """
    path = ipc_path(ipc)
    workers = [
        Worker(s, path, grace=grace, max_frame=max_frame, engine_uids=engine_uids) for s in services
    ]
    if not workers:
        raise ValueError("no services to run")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    tasks = [loop.create_task(w.run()) for w in workers]
    stopper = loop.create_task(stop.wait())
    try:
        # A worker only returns on its own when its before_start hook failed.
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        if stopper not in done:
            log.error("a service stopped on its own; stopping the others")
    finally:
        for w in workers:
            w.stop()
        stopper.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for sig in installed:
            loop.remove_signal_handler(sig)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def run(
    service: Service | Iterable[Service],
    *,
    ipc: str | None = None,
    grace: float = 10.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    log_level: str | None = None,
    engine_uids: Collection[int] | None = None,
) -> None:
    """Run services until SIGINT/SIGTERM (then drain and return); uses uvloop if present."""
    configure_logging(log_level)
    services = [service] if isinstance(service, Service) else list(service)
    coro = start_services(
        services, ipc=ipc, grace=grace, max_frame=max_frame, engine_uids=engine_uids
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(coro)
    else:
        uvloop.run(coro)
