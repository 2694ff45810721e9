"""A lean WebSocket load generator for the benchmarks: raw sockets on uvloop.

Each ``BenchClient`` keeps K echo requests ``{"type": "bench.echo", "data": DATA, "id": N}``
in flight on its connection and times every ack ``{"id", "type", "data"}`` from the
write of the request to the parse of the ack. Frames are masked with a random key
per connection (RFC 6455 §5.3); no extension is offered, so the server never
compresses. The point is to cost far less CPU than the engine under test: no
handshake validation beyond the 101, no UTF-8 check, acks parsed with orjson.

``load_process`` is the entry point of the separate load process (``bench/ipc.py``
spawns it and pins it to its own core); it also reads the CPU time of the processes
under test at both ends of the measured window.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, cast

import orjson
import psutil

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

__all__ = [
    "CONNECTING",
    "DATA",
    "DONE",
    "HOST",
    "MEASURE",
    "WARMUP",
    "WS_PATH",
    "BenchClient",
    "LoadSpec",
    "Masker",
    "load_process",
    "message_size",
    "parse_frames",
    "probe",
]

HOST = "127.0.0.1"
WS_PATH = "/ws/bench"
#: The message's ``data``: 98 bytes of JSON.
DATA: dict[str, Any] = {
    "room": "bench-room-0001",
    "user": "bench-user-0001",
    "text": "the quick brown fox jumps",
    "seq": 12345,
}
_PREFIX = b'{"type":"bench.echo","data":' + orjson.dumps(DATA) + b',"id":'

# Load generator phases.
CONNECTING, WARMUP, MEASURE, DONE = 0, 1, 2, 3


def message_size(msg_id: int = 1) -> int:
    """Bytes of one request's JSON text."""
    return len(_PREFIX) + len(str(msg_id)) + 1


def client_handshake(port: int) -> tuple[bytes, bytes]:
    """The upgrade request and the end of the 101 we expect (no extension offered)."""
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET " + WS_PATH.encode() + b" HTTP/1.1\r\n"
        b"Host: " + f"{HOST}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    return request, b"\r\n\r\n"


class Masker:
    """Client frames (RFC 6455 §5.3): one random key per connection, XOR done as ints."""

    __slots__ = ("_cache", "key")

    def __init__(self) -> None:
        self.key = os.urandom(4)
        self._cache: dict[int, int] = {}

    def frame(self, payload: bytes, opcode: int = 0x1) -> bytes:
        n = len(payload)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
        mask = self._cache.get(n)
        if mask is None:
            mask = int.from_bytes((self.key * (n // 4 + 1))[:n], "little")
            self._cache[n] = mask
        masked = (int.from_bytes(payload, "little") ^ mask).to_bytes(n, "little")
        return header + self.key + masked


def parse_frames(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """Complete server frames at the start of ``buf`` as (opcode, payload); bytes used.

    Server frames are unmasked and, without compression, unfragmented: a frame with
    FIN clear, RSV bits or a mask is returned with opcode -1 (an error).
    """
    frames: list[tuple[int, bytes]] = []
    pos = 0
    end = len(buf)
    while end - pos >= 2:
        b0 = buf[pos]
        b1 = buf[pos + 1]
        length = b1 & 0x7F
        head = 2
        if length == 126:
            if end - pos < 4:
                break
            length = (buf[pos + 2] << 8) | buf[pos + 3]
            head = 4
        elif length == 127:
            if end - pos < 10:
                break
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            head = 10
        stop = pos + head + length
        if stop > end:
            break
        opcode = b0 & 0x0F if (b0 & 0xF0) == 0x80 and not b1 & 0x80 else -1
        frames.append((opcode, bytes(buf[pos + head : stop])))
        pos = stop
    return frames, pos


@dataclass
class LoadSpec:
    """What one load-generator process does (picklable: it crosses to a spawned process)."""

    port: int
    connections: int
    inflight: int
    warmup: float
    duration: float
    cpu: int | None
    #: Processes whose CPU time is read at both ends of the measured window.
    pids: dict[str, int]


class Load:
    """State shared by every connection of the load generator."""

    def __init__(self, inflight: int) -> None:
        self.inflight = inflight
        self.phase = CONNECTING
        self.latencies: list[int] = []
        self.completed = 0  # acks in the measured window
        self.total = 0  # acks in any phase
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class BenchClient(asyncio.Protocol):
    """One client connection keeping ``load.inflight`` echo requests in flight."""

    def __init__(self, load: Load, port: int) -> None:
        self.load = load
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buf = bytearray()
        self.upgraded = False
        self.masker = Masker()
        self.sent: dict[int, int] = {}
        self.next_id = 0
        #: Set once the load stopped and every request of this connection came back.
        self.idle = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        request, _ = client_handshake(self.port)
        self.transport.write(request)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.load.phase < DONE:
            self.load.error("connection lost")
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during the handshake"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.idle.set()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: head_end + 4]
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
        if not frames:
            return
        load = self.load
        now = time.perf_counter_ns()
        sent = self.sent
        out: list[bytes] = []
        for opcode, payload in frames:
            if opcode == 0x1:
                try:
                    ack = orjson.loads(payload)
                    started = sent.pop(ack["id"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    load.error("unexpected frame")
                    continue
                load.total += 1
                if "error" in ack or ack.get("data") != DATA:
                    load.error("error ack")
                elif load.phase == MEASURE:
                    load.latencies.append(now - started)
                    load.completed += 1
            elif opcode == 0x9:
                out.append(self.masker.frame(payload, 0xA))
            elif opcode == 0x8:
                if load.phase < DONE:
                    load.error("closed by the server")
            elif opcode != 0xA:
                load.error("bad frame")
        if load.phase < DONE:
            self.fill(out)
        elif not sent:
            self.idle.set()
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def fill(self, out: list[bytes]) -> None:
        """Queue new requests until ``inflight`` are outstanding."""
        sent = self.sent
        frame = self.masker.frame
        while len(sent) < self.load.inflight:
            self.next_id += 1
            n = self.next_id
            out.append(frame(_PREFIX + str(n).encode() + b"}"))
            sent[n] = time.perf_counter_ns()

    def start(self) -> None:
        out: list[bytes] = []
        self.fill(out)
        if self.transport is not None:
            self.transport.write(b"".join(out))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.masker.frame(struct.pack("!H", 1000), 0x8))


def _counters(pid: int) -> dict[str, float]:
    """CPU seconds, system calls (Linux ``syscr``/``syscw``) and context switches."""
    proc = psutil.Process(pid)
    with proc.oneshot():
        cpu = proc.cpu_times()
        switches = proc.num_ctx_switches()
        io = proc.io_counters()
    return {
        "cpu_s": cpu.user + cpu.system,
        "read_syscalls": io.read_count,
        "write_syscalls": io.write_count,
        "voluntary_switches": switches.voluntary,
        "involuntary_switches": switches.involuntary,
    }


def _core_times() -> list[tuple[float, float]]:
    """(busy, total) seconds per core since boot."""
    result = []
    for t in psutil.cpu_times(percpu=True):
        total = sum(t)
        idle = t.idle + getattr(t, "iowait", 0.0)
        result.append((total - idle, total))
    return result


@dataclass
class Snapshot:
    wall: float
    procs: dict[str, dict[str, float]]
    cores: list[tuple[float, float]]

    @classmethod
    def take(cls, pids: dict[str, int]) -> Snapshot:
        procs = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error, AttributeError):
                procs[name] = _counters(pid)
        return cls(time.perf_counter(), procs, _core_times())


def _percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    if not sorted_ns:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


async def _run_load(
    spec: LoadSpec, progress: Synchronized[int], phase: Synchronized[int]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    load = Load(spec.inflight)
    clients: list[BenchClient] = []
    for _ in range(spec.connections):
        _, client = await loop.create_connection(
            lambda: BenchClient(load, spec.port), HOST, spec.port
        )
        clients.append(client)
    async with asyncio.timeout(15):
        await asyncio.gather(*(c.ready for c in clients))

    async def report() -> None:
        while True:
            progress.value = load.total
            await asyncio.sleep(0.1)

    reporter = loop.create_task(report())
    pids = {**spec.pids, "load": os.getpid()}
    load.phase = phase.value = WARMUP
    for c in clients:
        c.start()
    await asyncio.sleep(spec.warmup)
    before = Snapshot.take(pids)
    load.phase = phase.value = MEASURE
    await asyncio.sleep(spec.duration)
    load.phase = phase.value = DONE
    after = Snapshot.take(pids)
    # Let the requests in flight come back (not counted), then close politely.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(*(c.idle.wait() for c in clients if c.sent))
    left = sum(len(c.sent) for c in clients)
    for c in clients:
        c.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2):
            await asyncio.gather(*(c.lost for c in clients))
    for c in clients:
        if c.transport is not None:
            c.transport.abort()
    reporter.cancel()
    progress.value = load.total

    wall = after.wall - before.wall
    procs = {
        name: {key: after.procs[name][key] - value for key, value in counters.items()}
        for name, counters in before.procs.items()
        if name in after.procs
    }
    cpu = {name: 100.0 * d["cpu_s"] / wall for name, d in procs.items()}
    cores = [
        100.0 * (a[0] - b[0]) / (a[1] - b[1]) if a[1] > b[1] else math.nan
        for a, b in zip(after.cores, before.cores, strict=True)
    ]
    n = max(load.completed, 1)
    per_round_trip = {
        name: {
            "cpu_us": 1e6 * d["cpu_s"] / n,
            "syscalls": (d["read_syscalls"] + d["write_syscalls"]) / n,
            "read_syscalls": d["read_syscalls"] / n,
            "write_syscalls": d["write_syscalls"] / n,
            "context_switches": (d["voluntary_switches"] + d["involuntary_switches"]) / n,
        }
        for name, d in procs.items()
    }
    lat = sorted(load.latencies)
    return {
        "round_trips": load.completed,
        "seconds": wall,
        "rps": load.completed / wall,
        "latency_ms": {
            "p50": _percentile(lat, 0.50),
            "p90": _percentile(lat, 0.90),
            "p99": _percentile(lat, 0.99),
            "max": lat[-1] / 1e6 if lat else math.nan,
            "mean": sum(lat) / len(lat) / 1e6 if lat else math.nan,
        },
        "errors": sum(load.errors.values()),
        "error_kinds": load.errors,
        "unanswered_at_end": left,
        "cpu_percent": cpu,
        "core_busy_percent": cores,
        "per_round_trip": per_round_trip,
        "process_counters": procs,
    }


def load_process(
    spec: LoadSpec,
    progress: Synchronized[int],
    phase: Synchronized[int],
    out: Connection,
) -> None:
    """Entry point of the load-generator process (spawned, pinned to ``spec.cpu``)."""
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    try:
        import uvloop

        result = uvloop.run(_run_load(spec, progress, phase))
    except BaseException as exc:  # report it to the parent, whatever it is
        out.send({"failed": f"{type(exc).__name__}: {exc}"})
        raise
    out.send(result)


async def probe(port: int) -> bool:
    """One round trip on a fresh connection: the endpoint is mounted and answers."""
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection(HOST, port)
            try:
                request, _ = client_handshake(port)
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if b" 101 " not in head.split(b"\r\n", 1)[0]:
                    return False
                masker = Masker()
                writer.write(masker.frame(_PREFIX + b"0}"))
                buf = bytearray()
                while True:
                    buf += await reader.read(65536)
                    frames, _ = parse_frames(buf)
                    if frames:
                        ack = orjson.loads(frames[0][1])
                        writer.write(masker.frame(struct.pack("!H", 1000), 0x8))
                        return bool(ack.get("data") == DATA)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, orjson.JSONDecodeError):
        return False
