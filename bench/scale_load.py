"""The load of ``bench/scale.py``: subscriber and publisher processes driven by commands.

The frame handling is ``bench/fanout_load.py``'s (``SubClient``, ``PubClient``: the same
wire protocol, timestamps read at fixed offsets); what differs is the phases. One set of
connections serves a whole case (connecting 50 000 takes tens of seconds), so instead of
fanout's clock-driven control block each process obeys commands on its pipe:

subscribers (``subscriber_process``)
    Connect ``count`` clients, each socket bound to one of ``sources`` (127.0.0.x) before
    ``connect`` with ``IP_BIND_ADDRESS_NO_PORT`` (the port is picked per destination, so
    each source address has the whole ephemeral range towards the server), at most
    ``batch`` handshakes in flight and at most ``rate`` new connections per second, so the
    server's accept queue (backlog 2048) never overflows. Then report, and answer
    ``"stats"`` (the latency histogram and maximum since the last ``"stats"``, then reset)
    and ``"close"``. The number of deliveries read so far is in the shared ``progress``
    counter, refreshed every few milliseconds.
publisher (``publisher_process``)
    ``"one"``: one publish, answered when its ack arrives; ``"start"``: keep K publishes
    in flight (``PubClient.fill``); ``"stop"``: stop topping up, answer once the last ack
    is in. ``progress`` holds the acks received.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from . import fanout_stats as stats
from .fanout_load import DONE, MEASURE, WARMUP, PubClient, PubSpec, SubClient, SubLoad, SubSpec
from .fanout_peers import raise_nofile

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

__all__ = ["ScaleSubSpec", "publisher_process", "subscriber_process"]

HOST = "127.0.0.1"
#: Linux ``IP_BIND_ADDRESS_NO_PORT`` (``socket`` exports it from Python 3.12 only):
#: ``bind`` keeps the address and leaves the port to ``connect``.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
#: How often ``progress`` is refreshed (s): the resolution of the window counts.
PROGRESS_EVERY = 0.005
JOIN_TIMEOUT = 60.0


@dataclass
class ScaleSubSpec:
    """One subscriber process (picklable: it crosses to a spawned process)."""

    port: int
    count: int
    room: str
    sources: tuple[str, ...]
    cpu: int | None
    #: New connections per second at most (0: as fast as the batches complete).
    rate: float
    #: Handshakes + subscriptions in flight at once.
    batch: int
    sample_every: int = 50


def _pin(cpu: int | None) -> None:
    import os

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    raise_nofile()
    gc.disable()  # the hot path makes no cycles; a collection would show up as latency


def _bound_socket(source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def _open(spec: ScaleSubSpec, load: SubLoad, index: int) -> SubClient | str:
    """One subscriber up to its sub ack; a string says why it failed."""
    loop = asyncio.get_running_loop()
    fanout_spec = SubSpec(spec.port, 1, spec.room, False, spec.sample_every, spec.cpu)
    sample = spec.sample_every > 0 and index % spec.sample_every == 0
    try:
        sock = _bound_socket(spec.sources[index % len(spec.sources)])
        try:
            await loop.sock_connect(sock, (HOST, spec.port))
        except BaseException:
            sock.close()
            raise
        _, client = await loop.create_connection(
            lambda: SubClient(load, fanout_spec, sample, True), sock=sock
        )
    except OSError as exc:
        return f"connect: {exc.strerror or type(exc).__name__}"
    waiters: set[asyncio.Future[None]] = {client.subscribed, client.lost}
    await asyncio.wait(waiters, timeout=JOIN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if client.ready.done() and client.ready.exception() is not None:
        return f"handshake: {client.ready.exception()}"
    if client.subscribed.done():
        if client.subscribed.exception() is not None:
            return f"sub: {client.subscribed.exception()}"
        return client
    if client.lost.done():
        return "closed before the sub ack"
    if client.transport is not None:
        client.transport.abort()
    return f"no sub ack in {JOIN_TIMEOUT:.0f}s"


async def _connect(spec: ScaleSubSpec, load: SubLoad) -> tuple[list[SubClient], dict[str, int]]:
    clients: list[SubClient] = []
    failures: dict[str, int] = {}
    started = time.monotonic()
    for first in range(0, spec.count, spec.batch):
        if spec.rate > 0:
            delay = started + first / spec.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        last = min(first + spec.batch, spec.count)
        batch = await asyncio.gather(*(_open(spec, load, i) for i in range(first, last)))
        for item in batch:
            if isinstance(item, str):
                failures[item] = failures.get(item, 0) + 1
            else:
                clients.append(item)
    return clients, failures


async def _commands(conn: Connection) -> asyncio.Queue[Any]:
    """The pipe as a queue: the loop reads a command as soon as one arrives."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            queue.put_nowait(conn.recv())
        except EOFError:  # the orchestrator is gone
            loop.remove_reader(conn.fileno())
            queue.put_nowait("close")

    loop.add_reader(conn.fileno(), readable)
    return queue


async def _refresh(progress: Synchronized[int], read: Any) -> None:
    while True:
        progress.value = read()
        await asyncio.sleep(PROGRESS_EVERY)


async def _subscribe(spec: ScaleSubSpec, progress: Synchronized[int], conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    load = SubLoad()
    t0 = time.monotonic()
    clients, failures = await _connect(spec, load)
    connect_s = time.monotonic() - t0
    gc.collect()
    gc.freeze()
    load.phase = MEASURE  # every delivery from now on is timed
    load.hist = stats.new()
    conn.send(
        {
            "ready": len(clients),
            "connect_s": connect_s,
            "failures": failures,
            "errors": dict(load.errors),
        }
    )
    queue = await _commands(conn)
    refresher = loop.create_task(_refresh(progress, lambda: load.total))
    try:
        while (command := await queue.get()) != "close":
            if command == "stats":
                conn.send(
                    {
                        "hist": stats.to_sparse(load.hist),
                        "max_us": load.max_us,
                        "total": load.total,
                        "verified": load.verified,
                        "out_of_order": sum(c.out_of_order for c in clients),
                        "late_or_duplicate": sum(c.late for c in clients),
                        "open": sum(1 for c in clients if c.transport is not None),
                        "errors": dict(load.errors),
                    }
                )
                load.hist = stats.new()
                load.max_us = 0
    finally:
        refresher.cancel()
        progress.value = load.total
    for c in clients:
        c.close()
    await asyncio.sleep(0.5)  # let the close frames leave
    conn.send({"closed": len(clients), "errors": dict(load.errors)})


def subscriber_process(spec: ScaleSubSpec, progress: Synchronized[int], conn: Connection) -> None:
    """Entry point of a subscriber process (spawned; pinned to ``spec.cpu``)."""
    _pin(spec.cpu)
    try:
        import uvloop

        uvloop.run(_subscribe(spec, progress, conn))
    except BaseException as exc:  # report it to the parent, whatever it is
        with contextlib.suppress(OSError):
            conn.send({"failed": f"{type(exc).__name__}: {exc}"})
        raise


async def _until_acked(client: PubClient, within: float) -> bool:
    deadline = time.monotonic() + within
    while client.sent:  # acks arrive in data_received: nothing to wait on but time
        if time.monotonic() > deadline or client.transport is None:
            return False
        await asyncio.sleep(0.001)
    return True


async def _publish(spec: PubSpec, progress: Synchronized[int], conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: PubClient(spec), HOST, spec.port)
    async with asyncio.timeout(15):
        await client.ready
    conn.send({"ready": 1})
    queue = await _commands(conn)
    refresher = loop.create_task(_refresh(progress, lambda: client.acked))
    try:
        while (command := await queue.get()) != "close":
            if command == "one":
                t0 = time.monotonic_ns()
                frames: list[bytes] = []
                client.publish(frames)
                if client.transport is not None:
                    client.transport.write(frames[0])
                acked = await _until_acked(client, 60)
                conn.send({"seq": client.seq, "acked": acked, "ack_ms": _ms_since(t0)})
            elif command == "start":
                client.phase = WARMUP
                client.fill()
                conn.send({"started": client.seq})
            elif command == "stop":
                client.phase = DONE
                acked = await _until_acked(client, 60)
                conn.send({"published": client.seq, "acked": client.acked, "all_acked": acked})
    finally:
        refresher.cancel()
        progress.value = client.acked
    client.close()
    await asyncio.sleep(0.1)
    conn.send({"closed": 1, "errors": client.errors})


def _ms_since(t0_ns: int) -> float:
    return (time.monotonic_ns() - t0_ns) / 1e6


def publisher_process(spec: PubSpec, progress: Synchronized[int], conn: Connection) -> None:
    """Entry point of the publisher process (spawned; pinned to ``spec.cpu``)."""
    _pin(spec.cpu)
    try:
        import uvloop

        uvloop.run(_publish(spec, progress, conn))
    except BaseException as exc:  # report it to the parent, whatever it is
        with contextlib.suppress(OSError):
            conn.send({"failed": f"{type(exc).__name__}: {exc}"})
        raise
