"""A recovery Redis cannot answer still ends in a verdict, and live delivery resumes.

Redis fails under a recovery: paused (``CLIENT PAUSE``: commands hang, for the one in
flight and for one queued behind it), its connections cut (through a TCP proxy), so
slow that more live events arrive for the recovering connection than it may hold, or
down before it starts. Each time the client gets ``linkd.recovered`` with
``recovered: false`` and its own position (nothing is claimed about what it missed),
then every later event once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.integration.support import Client, demo_engine
from tests.scaleout.conftest import RedisServer
from tests.scaleout.test_nodes import recover_param, room_name

#: --recovery-timeout for these tests: short, so a hung recovery is answered quickly.
TIMEOUT = 0.5


class RedisProxy:
    """A TCP proxy in front of Redis, on its own threads (the test's loop may block).

    ``freeze()`` holds what the node sends (Redis seems to hang for that node while
    what Redis sends still flows: pub/sub messages keep arriving); ``cut()`` closes
    every connection through it; ``expect(needle)`` is set once the node sent it.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._needles: list[tuple[bytes, threading.Event]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def expect(self, needle: bytes) -> threading.Event:
        seen = threading.Event()
        with self._lock:
            self._needles.append((needle, seen))
        return seen

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked on it
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()
        self.thaw()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), 2.0)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_node: bool) -> None:
        tail = b""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if from_node:
                    self._look(tail + data)
                    tail = data[-32:]
                    self._flowing.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)

    def _look(self, data: bytes) -> None:
        with self._lock:
            for needle, seen in self._needles:
                if needle in data:
                    seen.set()


@contextlib.contextmanager
def proxy_to(server: RedisServer) -> Iterator[RedisProxy]:
    proxy = RedisProxy(server.port)
    try:
        yield proxy
    finally:
        proxy.close()


async def first_event(client: Client) -> dict[str, Any]:
    return await client.event("e", timeout=10.0)


def stream_frames(client: Client) -> list[dict[str, Any]]:
    """The room events (one room per client here) and verdicts it received, in order."""
    return [f for f in client.frames if f.get("type") in ("e", "linkd.recovered")]


def failed_verdict(room: str, seen: dict[str, Any]) -> dict[str, Any]:
    # Nothing could be checked: the client's own position comes back, unchanged.
    return {
        "type": "linkd.recovered",
        "data": {
            "room": room,
            "recovered": False,
            "epoch": seen["epoch"],
            "seq": seen["seq"],
            "missed": 0,
        },
    }


def reconnect(
    port: int, room: str, seen: dict[str, Any]
) -> contextlib.AbstractAsyncContextManager[Client]:
    """A new connection with the position of ``seen`` in ``?recover=``."""
    param = recover_param({"rooms": {room: [seen["epoch"], seen["seq"]]}})
    return Client.open(port, f"/ws/demo?recover={param}")


@pytest.mark.asyncio
async def test_recoveries_while_redis_is_paused_time_out_as_not_recovered(
    own_redis: RedisServer,
) -> None:
    # Two recoveries when Redis stops answering: one in flight (its room is subscribed
    # already), one queued behind the subscription its join needs. Both are answered at
    # the timeout, not when Redis answers again.
    room, quiet = room_name(), room_name()
    admin = aioredis.Redis.from_url(own_redis.url, single_connection_client=True)
    try:
        with demo_engine("--redis", own_redis.url, "--recovery-timeout", str(TIMEOUT)) as node:
            async with Client.open(node.port) as anchor, Client.open(node.port) as pub:
                await anchor.call("demo.join", {"room": room})  # the node is subscribed
                await pub.call("demo.emit", {"room": room, "event": "e", "data": 0})
                await pub.call("demo.emit", {"room": quiet, "event": "e", "data": 0})
                seen = await first_event(anchor)
                quiet_epoch = await admin.get(f"lk:{{r:{quiet}}}:epoch")  # no one heard it
                seen_quiet = {"epoch": quiet_epoch.decode(), "seq": 1}
                async with (
                    reconnect(node.port, room, seen) as back,
                    reconnect(node.port, quiet, seen_quiet) as back_quiet,
                ):
                    for client in (back, back_quiet):  # on_connect (lobby join, emit) done
                        await client.call("demo.whoami")
                    # Every command hangs for 2 s (even CLIENT UNPAUSE, on Redis 7.0).
                    await admin.execute_command("CLIENT", "PAUSE", 2000, "ALL")
                    loop = asyncio.get_running_loop()
                    asked = loop.time()
                    await back.send("demo.join", {"room": room}, "j")
                    await back_quiet.send("demo.join", {"room": quiet}, "j")
                    verdicts = await asyncio.gather(
                        back.event("linkd.recovered", timeout=TIMEOUT + 1.0),
                        back_quiet.event("linkd.recovered", timeout=TIMEOUT + 1.0),
                    )
                    waited = loop.time() - asked
                    await pub.send("demo.emit", {"room": room, "event": "e", "data": 1})
                    during = await first_event(back)  # published once Redis answers again
                    for client in (back, back_quiet):
                        await client.ack("j", 10.0)
                    await pub.call("demo.emit", {"room": room, "event": "e", "data": 2})
                    after = await first_event(back)
                    await pub.call("demo.emit", {"room": quiet, "event": "e", "data": 1})
                    quiet_live = await first_event(back_quiet)
                    frames = stream_frames(back)
                    quiet_frames = stream_frames(back_quiet)
    finally:
        await admin.aclose()
    assert verdicts == [failed_verdict(room, seen), failed_verdict(quiet, seen_quiet)]
    assert waited < TIMEOUT + 1.0
    assert [(e["data"], e["seq"]) for e in (during, after)] == [(1, 2), (2, 3)]
    assert frames == [verdicts[0], during, after]  # one verdict, then live, once each
    assert (quiet_live["data"], quiet_live["seq"]) == (1, 2)
    assert quiet_frames == [verdicts[1], quiet_live]


@pytest.mark.asyncio
async def test_while_redis_is_down_a_recovery_is_answered_at_once_with_the_clients_position(
    own_redis: RedisServer,
) -> None:
    room = room_name()
    with demo_engine("--redis", own_redis.url) as node:
        async with Client.open(node.port) as anchor, Client.open(node.port) as pub:
            await anchor.call("demo.join", {"room": room})
            await pub.call("demo.emit", {"room": room, "event": "e", "data": 0})
            seen = await first_event(anchor)
            own_redis.stop()
            async with asyncio.timeout(10.0):  # the node notices (its subscription drops)
                while True:
                    _, body = await asyncio.to_thread(node.request, "GET", "/health")
                    if b"degraded" in body:
                        break
                    await asyncio.sleep(0.05)
            async with reconnect(node.port, room, seen) as back:
                await back.call("demo.join", {"room": room})
                verdict = await back.event("linkd.recovered", timeout=5.0)
                await pub.call("demo.emit", {"room": room, "event": "e", "data": 1})
                live = await first_event(back)
                frames = stream_frames(back)
    # Its position is kept: once Redis is back, a reconnect can still recover from it.
    assert verdict == failed_verdict(room, seen)
    assert live == {"type": "e", "data": 1}  # this node only, unnumbered
    assert frames == [verdict, live]


@pytest.mark.asyncio
async def test_a_recovery_whose_redis_connection_is_cut_ends_and_live_delivery_resumes(
    own_redis: RedisServer,
) -> None:
    room = room_name()
    with (
        proxy_to(own_redis) as proxy,
        demo_engine("--redis", proxy.url, "--recovery-timeout", "30") as node,
    ):
        async with Client.open(node.port) as anchor, Client.open(node.port) as pub:
            await anchor.call("demo.join", {"room": room})
            await pub.call("demo.emit", {"room": room, "event": "e", "data": 0})
            seen = await first_event(anchor)
            async with reconnect(node.port, room, seen) as back:
                await back.call("demo.whoami")
                proxy.freeze()
                reading = proxy.expect(b"XRANGE")
                await back.send("demo.join", {"room": room}, "j")
                assert await asyncio.to_thread(reading.wait, 10.0)  # the recovery is in flight
                proxy.cut()  # ... and its connection goes (the timeout is far: not it)
                proxy.thaw()
                verdict = await back.event("linkd.recovered", timeout=5.0)
                # Delivered here only (unnumbered) until the node is back on Redis, which
                # it finds with backoff: emit until one comes back numbered.
                live: dict[str, Any] = {}
                sent = 0
                async with asyncio.timeout(20.0):
                    while "seq" not in live:
                        sent += 1
                        await pub.call("demo.emit", {"room": room, "event": "e", "data": sent})
                        with contextlib.suppress(TimeoutError):  # emitted while resubscribing
                            live = await back.event("e", timeout=2.0)
                frames = stream_frames(back)
    assert verdict == failed_verdict(room, seen)
    assert frames[0] == verdict and frames[-1] == live
    data = [f["data"] for f in frames[1:]]
    assert data == sorted(set(data)) and data[-1] == sent  # each at most once, in order
    assert live["seq"] > seen["seq"] and live["epoch"] == seen["epoch"]


@pytest.mark.asyncio
async def test_past_the_held_events_cap_a_recovery_is_abandoned_and_they_are_delivered(
    own_redis: RedisServer,
) -> None:
    room = room_name()
    held = 3
    with (
        proxy_to(own_redis) as proxy,
        demo_engine(
            "--redis",
            proxy.url,
            "--recovery-timeout",
            "30",
            "--recovery-max-held",
            str(held),
        ) as slow,
        demo_engine("--redis", own_redis.url) as other,
    ):
        async with Client.open(slow.port) as anchor, Client.open(other.port) as pub:
            await anchor.call("demo.join", {"room": room})
            await pub.call("demo.emit", {"room": room, "event": "e", "data": 0})
            seen = await first_event(anchor)
            async with reconnect(slow.port, room, seen) as back:
                await back.call("demo.whoami")
                proxy.freeze()  # the slow node's commands hang, its pub/sub still flows
                reading = proxy.expect(b"XRANGE")
                await back.send("demo.join", {"room": room}, "j")
                assert await asyncio.to_thread(reading.wait, 10.0)
                for i in range(1, held + 2):  # published by the other node: held for back
                    await pub.call("demo.emit", {"room": room, "event": "e", "data": i})
                verdict = await back.event("linkd.recovered", timeout=5.0)
                flushed = [await first_event(back) for _ in range(held + 1)]
                proxy.thaw()  # the recovery's late answer must change nothing
                await back.ack("j", 10.0)
                await pub.call("demo.emit", {"room": room, "event": "e", "data": held + 2})
                live = await first_event(back)
                frames = stream_frames(back)
    assert verdict == failed_verdict(room, seen)
    assert [(e["data"], e["seq"]) for e in flushed] == [(i, i + 1) for i in range(1, held + 2)]
    assert (live["data"], live["seq"]) == (held + 2, held + 3)
    assert frames == [verdict, *flushed, live]
