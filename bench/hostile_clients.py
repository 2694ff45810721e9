"""The well-behaved side of ``bench/hostile.py``: clients whose service must not suffer.

One process (spawned, pinned to the load core, never niced) runs, on uvloop:

- ``clients`` WebSocket connections, each sending one echo request
  ``{"type":"bench.echo","data":{...},"id":N}`` every ``1/rate`` s on an absolute
  schedule (open loop: a stalled engine does not slow the senders down, so a stall
  shows in the latency instead of hiding in fewer samples). Latency is from the write
  of a request to the parse of its echo or ack.
- with ``fanout_rate``: every client joins room ``wb`` and a publisher connection emits
  ``bench.msg {seq, t}`` to it; each delivery's latency is from the publish.
- one keep-alive HTTP connection doing ``GET /health`` every ``1/health_rate`` s
  (closed loop: one request at a time, so a stall is one long sample).

Every sample is filed under the window (baseline, an attack, its cooldown) that was
current when its request was sent; the orchestrator moves ``window`` forward. A request
never answered by the end (after ``drain`` s) is lost; so is a fan-out delivery that a
joined client never got. A client the engine closes reconnects (bounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, cast

import orjson

from .hostile_net import HOST, RawConn, client_frame, connect, read_head, ws_upgrade_request
from .wsload import parse_frames

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Event

__all__ = ["ClientSpec", "clients_process", "percentiles"]

ROOM = "wb"
MAX_RECONNECTS = 20
_PAD = "well-behaved client payload, about a hundred bytes in all"


@dataclass(frozen=True)
class ClientSpec:
    port: int
    path: str
    clients: int
    rate: float
    fanout_rate: float
    health_rate: float
    windows: int
    drain: float
    cpu: int | None
    source: str = HOST


def percentiles(ns: Sequence[int]) -> dict[str, float]:
    """Nearest-rank percentiles of nanosecond samples, in milliseconds."""
    data = sorted(ns)

    def rank(q: float) -> float:
        if not data:
            return math.nan
        return data[max(1, math.ceil(q * len(data))) - 1] / 1e6

    return {
        "p50": rank(0.50),
        "p90": rank(0.90),
        "p99": rank(0.99),
        "max": data[-1] / 1e6 if data else math.nan,
        "mean": sum(data) / len(data) / 1e6 if data else math.nan,
    }


@dataclass
class Window:
    sent: int = 0
    received: int = 0
    latencies: list[int] = field(default_factory=list)
    fan_expected: int = 0
    fan_latencies: list[int] = field(default_factory=list)
    health: list[int] = field(default_factory=list)
    health_errors: int = 0
    disconnects: int = 0
    close_codes: Counter[str] = field(default_factory=Counter)


class Shared:
    """State of the whole process: windows, the fan-out ledger."""

    def __init__(self, spec: ClientSpec, window: Synchronized[int]) -> None:
        self.spec = spec
        self._window = window
        self.windows = [Window() for _ in range(spec.windows)]
        self.stopping = False
        #: seq → (window, indices of the clients joined when it was published).
        self.published: dict[int, tuple[int, list[int]]] = {}
        self.errors: Counter[str] = Counter()

    @property
    def index(self) -> int:
        return min(max(self._window.value, 0), len(self.windows) - 1)


class WellBehaved(asyncio.Protocol):
    """One client connection; ``index`` < 0 is the publisher."""

    def __init__(self, shared: Shared, index: int) -> None:
        self.shared = shared
        self.index = index
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.buf = bytearray()
        self.upgraded = False
        self.joined = False
        self.joined_ack: asyncio.Future[None] = loop.create_future()
        self.next_id = 0
        #: id → (perf_counter_ns at the write, window).
        self.sent: dict[int, tuple[int, int]] = {}
        self.fan_seen: set[int] = set()
        self.close_code = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(ws_upgrade_request(self.shared.spec.path, self.shared.spec.port))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during the handshake"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: end + 4]
            if b" 101 " not in status:
                self.ready.set_exception(ConnectionError(status.decode(errors="replace")))
                if self.transport is not None:
                    self.transport.close()
                return
            self.upgraded = True
            self.ready.set_result(None)
        frames, used = parse_frames(buf)
        if used:
            del buf[:used]
        now = time.perf_counter_ns()
        shared = self.shared
        for opcode, payload in frames:
            if opcode == 0x1:
                self._text(payload, now)
            elif opcode == 0x9:
                self.write(client_frame(payload, 0xA, key=os.urandom(4)))
            elif opcode == 0x8:
                self.close_code = str(int.from_bytes(payload[:2], "big")) if payload else "1005"
            elif opcode != 0xA:
                shared.errors["bad frame"] += 1

    def _text(self, payload: bytes, now: int) -> None:
        shared = self.shared
        try:
            msg = orjson.loads(payload)
            if msg.get("type") == "bench.msg":
                seq = int(msg["data"]["seq"])
                if seq in self.fan_seen:
                    shared.errors["duplicate delivery"] += 1
                    return
                self.fan_seen.add(seq)
                published = shared.published.get(seq)
                if published is not None and self.index in published[1]:
                    shared.windows[published[0]].fan_latencies.append(now - int(msg["data"]["t"]))
                return
            entry = self.sent.pop(int(msg["id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            shared.errors["unexpected message"] += 1
            return
        if msg.get("id") == 0:
            self.joined = True  # the ack of bench.sub
            if not self.joined_ack.done():
                self.joined_ack.set_result(None)
            return
        if "error" in msg:
            shared.errors["error reply: " + str(msg["error"].get("code"))] += 1
            return
        window = shared.windows[entry[1]]
        window.received += 1
        window.latencies.append(now - entry[0])

    @property
    def open(self) -> bool:
        return self.upgraded and self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def request(self, type_: str, data: Any, msg_id: int | None = None) -> None:
        if msg_id is None:
            self.next_id += 1
            msg_id = self.next_id
        body = orjson.dumps({"type": type_, "data": data, "id": msg_id})
        index = self.shared.index
        self.sent[msg_id] = (time.perf_counter_ns(), index)
        self.write(client_frame(body, key=os.urandom(4)))
        if msg_id != 0:
            self.shared.windows[index].sent += 1

    def close(self) -> None:
        self.write(client_frame(b"\x03\xe8", 0x8))


class Clients:
    def __init__(self, spec: ClientSpec, window: Synchronized[int]) -> None:
        self.spec = spec
        self.shared = Shared(spec, window)
        self.conns: list[WellBehaved | None] = [None] * spec.clients
        self.publisher: WellBehaved | None = None
        self.reconnects = 0
        self.dead: list[WellBehaved] = []

    async def open(self, index: int) -> WellBehaved:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: WellBehaved(self.shared, index),
            HOST,
            self.spec.port,
            local_addr=(self.spec.source, 0),
        )
        async with asyncio.timeout(10):
            await conn.ready
        if self.spec.fanout_rate and index >= 0:
            conn.request("bench.sub", {"room": ROOM}, 0)
        conn.lost.add_done_callback(lambda _: self._lost(conn))
        return conn

    def _lost(self, conn: WellBehaved) -> None:
        if self.shared.stopping:
            return
        window = self.shared.windows[self.shared.index]
        window.disconnects += 1
        window.close_codes[conn.close_code or "dropped"] += 1
        self.dead.append(conn)
        if conn.index >= 0:
            self.conns[conn.index] = None
        else:
            self.publisher = None
        if self.reconnects < MAX_RECONNECTS * self.spec.clients:
            self.reconnects += 1
            asyncio.get_running_loop().create_task(self._reopen(conn.index))

    async def _reopen(self, index: int) -> None:
        for _ in range(MAX_RECONNECTS):
            await asyncio.sleep(0.2)
            if self.shared.stopping:
                return
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                conn = await self.open(index)
                if index >= 0:
                    self.conns[index] = conn
                else:
                    self.publisher = conn
                return

    async def send_loop(self) -> None:
        """Every client sends at ``rate``, staggered, on an absolute schedule."""
        spec = self.spec
        period = 1.0 / (spec.rate * spec.clients)
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        while not self.shared.stopping:
            due = start + tick * period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            conn = self.conns[tick % spec.clients]
            if conn is not None and conn.open:
                conn.request("bench.echo", {"c": conn.index, "pad": _PAD})
            tick += 1

    async def publish_loop(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        start = loop.time()
        seq = 0
        while not self.shared.stopping:
            delay = start + seq / spec.fanout_rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            seq += 1
            pub = self.publisher
            members = [c.index for c in self.conns if c is not None and c.open and c.joined]
            if pub is None or not pub.open or not members:
                continue
            index = self.shared.index
            self.shared.published[seq] = (index, members)
            self.shared.windows[index].fan_expected += len(members)
            payload = {"seq": seq, "t": time.perf_counter_ns()}
            pub.request("bench.pub", {"room": ROOM, "payload": payload})

    async def health_loop(self) -> None:
        spec = self.spec
        loop = asyncio.get_running_loop()
        conn: RawConn | None = None
        request = f"GET /health HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        next_at = loop.time()
        while not self.shared.stopping:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + 1.0 / spec.health_rate, loop.time())
            window = self.shared.windows[self.shared.index]
            try:
                if conn is None or not conn.open:
                    conn = await connect(spec.port, spec.source)
                started = time.perf_counter_ns()
                conn.write(request)
                status = await read_head(conn, loop.time() + 30)
                if status != 200:
                    raise ConnectionError(f"status {status}")
                # /health's body is small JSON: the head tells its length.
                while b"}" not in conn.buf and not conn.closed.is_set():
                    await conn.wait_data(loop.time() + 30)
                conn.buf.clear()
                window.health.append(time.perf_counter_ns() - started)
            except (OSError, ConnectionError, TimeoutError):
                window.health_errors += 1
                if conn is not None:
                    conn.abort()
                conn = None
        if conn is not None:
            conn.abort()

    def _every(self) -> list[WellBehaved]:
        alive = [c for c in self.conns if c is not None]
        return [*alive, *([self.publisher] if self.publisher else [])]

    async def drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.drain
        while loop.time() < deadline:
            if not any(c.sent for c in self._every() if c.open) and self._fan_complete():
                return
            await asyncio.sleep(0.05)

    def _fan_complete(self) -> bool:
        if not self.shared.published:
            return True
        last = max(self.shared.published)
        return all(last in c.fan_seen for c in self.conns if c is not None and c.open)

    def result(self) -> dict[str, Any]:
        shared = self.shared
        lost = [0] * len(shared.windows)
        for conn in [*self._every(), *self.dead]:
            for _, index in conn.sent.values():
                lost[index] += 1
        fan_lost = [0] * len(shared.windows)
        seen: dict[int, set[int]] = {}  # client index → every seq any of its connections got
        for c in [*self.conns, *self.dead]:
            if c is not None:
                seen.setdefault(c.index, set()).update(c.fan_seen)
        for seq, (index, members) in shared.published.items():
            fan_lost[index] += sum(1 for m in members if seq not in seen.get(m, ()))
        windows = []
        for i, w in enumerate(shared.windows):
            windows.append(
                {
                    "sent": w.sent,
                    "received": w.received,
                    "lost": lost[i],
                    "latency_ms": percentiles(w.latencies),
                    "fanout_expected": w.fan_expected,
                    "fanout_received": len(w.fan_latencies),
                    "fanout_lost": fan_lost[i],
                    "fanout_latency_ms": percentiles(w.fan_latencies),
                    "health_requests": len(w.health),
                    "health_latency_ms": percentiles(w.health),
                    "health_errors": w.health_errors,
                    "disconnects": w.disconnects,
                    "close_codes": dict(w.close_codes),
                }
            )
        return {"windows": windows, "errors": dict(shared.errors), "reconnects": self.reconnects}


async def _run(
    spec: ClientSpec, window: Synchronized[int], stop: Event, out: Connection
) -> dict[str, Any]:
    clients = Clients(spec, window)
    for i in range(spec.clients):
        clients.conns[i] = await clients.open(i)
    if spec.fanout_rate:
        clients.publisher = await clients.open(-1)
        async with asyncio.timeout(10):
            await asyncio.gather(*(c.joined_ack for c in clients.conns if c is not None))
    out.send({"ready": os.getpid()})
    loop = asyncio.get_running_loop()
    # The orchestrator sets ``window`` to 0 right after it read our "ready".
    while window.value < 0:  # noqa: ASYNC110 (shared memory: nothing to await)
        await asyncio.sleep(0.005)
    tasks = [loop.create_task(clients.send_loop()), loop.create_task(clients.health_loop())]
    if spec.fanout_rate:
        tasks.append(loop.create_task(clients.publish_loop()))
    await loop.run_in_executor(None, stop.wait)
    clients.shared.stopping = True
    await clients.drain()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result = clients.result()
    for conn in clients._every():
        conn.close()
    await asyncio.sleep(0.1)
    for conn in clients._every():
        if conn.transport is not None:
            conn.transport.abort()
    return result


def clients_process(
    spec: ClientSpec, window: Synchronized[int], stop: Event, out: Connection
) -> None:
    """Entry point of the well-behaved clients' process."""
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    try:
        import uvloop

        result = uvloop.run(_run(spec, window, stop, out))
    except BaseException as exc:  # the orchestrator must hear of it
        out.send({"failed": f"{type(exc).__name__}: {exc}"})
        raise
    out.send(result)
