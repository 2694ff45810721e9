"""``engine --processes N``: room fan-out deliveries per second and CPU per delivery.

    python -m bench.processes                        # N = 1 and 2, 500 subscribers, 10 s
    python -m bench.processes --processes 1,2 --subscribers 1000 --in-flight 16

For each N, a fresh ``engine --processes N --redis URL --service bench.fanout_service``
(every N with Redis, so the broker is the same and only the process count differs);
one load process pinned to ``--load-cpu`` (default: the last core) opens
``--subscribers`` raw WebSocket connections to the shared port (the kernel spreads
them over the processes), joins them to one room, and one publisher connection keeps
``--in-flight`` ``bench.pub`` requests outstanding (the next leaves when an ack comes
back). Every publish is fanned out through Redis by every process to its own
subscribers. The subscribers count ``bench.msg`` frames (parsed by their headers only).

Measured over ``--duration`` s after ``--warmup`` s: deliveries/s received; the CPU
time of the engine processes and their workers (psutil, the whole tree under the
parent) and of Redis (the private ``redis-server`` this bench starts, unless
``--redis`` names one), each per delivery in µs. The engines may run on every core
but the load's (``--engine-cpus``, default: all): on a two-core machine N = 2 shares
the load's core, so deliveries/s says little there and CPU per delivery is the number
to compare. Results go to ``bench/results/processes-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
import psutil

from .cli import output_path
from .ipc import free_port
from .wsload import Masker, client_handshake, parse_frames

REPO = Path(__file__).resolve().parent.parent
ROOM = "bench-processes"
PAYLOAD = {"pad": "x" * 64}


@contextlib.contextmanager
def private_redis() -> Iterator[tuple[str, psutil.Process]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed: install it or pass --redis URL")
    port = free_port()
    directory = tempfile.mkdtemp(prefix="lkb-redis-")
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", directory]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", psutil.Process(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def engine(n: int, port: int, redis: str, cpus: str | None) -> Iterator[psutil.Process]:
    args = [sys.executable, "-m", "engine", "--processes", str(n), "--redis", redis]
    args += ["--listen", f"127.0.0.1:{port}", "--ipc", f"/tmp/lkb-proc-{port}.sock"]
    args += ["--service", "bench.fanout_service", "--workers", "1", "--ws-rate", "0"]
    args += ["--log-level", "warning", "--no-access-log", "--shutdown-grace", "2"]
    if cpus is not None:
        args = ["taskset", "-c", cpus, *args]
    env = {**os.environ, "BENCH_FANOUT_PER_CONNECTION": "64"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    try:
        # Every process must serve /ws/bench: n engines with a worker each, then
        # /bench/ready on 16 fresh connections in a row (the kernel spreads them).
        deadline = time.monotonic() + 30
        while not _ready(port, proc.pid, n):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the engine did not start")
            time.sleep(0.1)
        yield psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(port: int, parent: int, n: int) -> bool:
    engines = psutil.Process(parent).children() if n > 1 else [psutil.Process(parent)]
    if len(engines) < n or not all(e.children() for e in engines):
        return False
    for _ in range(16):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/bench/ready")
            status = conn.getresponse().status
            conn.close()
        except (OSError, http.client.HTTPException):
            return False
        if status != 200:
            return False
    return True


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


# ------------------------------------------------------------------------ load
class Sub(asyncio.Protocol):
    """A subscriber: upgrade, ``bench.sub`` to ``room``, then count text frames."""

    def __init__(self, port: int, room: str, joined: asyncio.Future[None]) -> None:
        self.request, self.end = client_handshake(port)
        self.room = room
        self.masker = Masker()
        self.buf = bytearray()
        self.upgraded = False
        self.joined = joined
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            head, sep, _ = bytes(self.buf).partition(self.end)
            if not sep:
                return
            del self.buf[: len(head) + len(sep)]
            self.upgraded = True
            sub = {"type": "bench.sub", "data": {"room": self.room}, "id": 1}
            self.transport.write(self.masker.frame(orjson.dumps(sub)))
        frames, used = parse_frames(self.buf)
        del self.buf[:used]
        for _ in frames:
            if not self.joined.done():
                self.joined.set_result(None)  # the ack of bench.sub
            else:
                self.frame()

    def frame(self) -> None:
        self.count += 1


class Pub(Sub):
    """The publisher, in a room of its own: every frame after the join is the ack of a
    publish, and sends the next one; ``in_flight`` publishes outstanding."""

    def __init__(self, port: int, joined: asyncio.Future[None], in_flight: int) -> None:
        super().__init__(port, "pub-" + ROOM, joined)
        self.in_flight = in_flight
        body = {"type": "bench.pub", "data": {"room": ROOM, "payload": PAYLOAD}, "id": 0}
        self.prefix = orjson.dumps(body)[: -len(b"0}")]
        self.sent = 1

    def data_received(self, data: bytes) -> None:
        joined = self.joined.done()
        super().data_received(data)
        if not joined and self.joined.done():
            for _ in range(self.in_flight):
                self.publish()

    def frame(self) -> None:
        self.publish()

    def publish(self) -> None:
        # A fresh id each: ids in flight on one connection must differ.
        self.sent += 1
        text = self.prefix + str(self.sent).encode() + b"}"
        self.transport.write(self.masker.frame(text))


async def _load(port: int, params: dict[str, Any], pipe: Connection) -> None:
    loop = asyncio.get_running_loop()
    subs: list[Sub] = []
    for start in range(0, params["subscribers"], 100):
        batch = []
        for _ in range(min(100, params["subscribers"] - start)):
            joined: asyncio.Future[None] = loop.create_future()
            _, sub = await loop.create_connection(
                lambda j=joined: Sub(port, ROOM, j),  # type: ignore[misc]
                "127.0.0.1",
                port,
            )
            subs.append(sub)
            batch.append(joined)
        await asyncio.wait_for(asyncio.gather(*batch), 30)
    pub_joined: asyncio.Future[None] = loop.create_future()
    _, pub = await loop.create_connection(
        lambda: Pub(port, pub_joined, params["in_flight"]), "127.0.0.1", port
    )
    await asyncio.sleep(params["warmup"])
    pipe.send(("start", sum(s.count for s in subs), time.monotonic()))
    await asyncio.sleep(params["duration"])
    pipe.send(("end", sum(s.count for s in subs), time.monotonic()))
    pub.transport.close()
    for sub in subs:
        sub.transport.close()


def load_process(port: int, params: dict[str, Any], cpu: int, pipe: Connection) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})
    import uvloop

    uvloop.run(_load(port, params, pipe))


# ------------------------------------------------------------------------ main
def measure(n: int, redis: str, redis_proc: psutil.Process | None, args: Any) -> dict[str, Any]:
    port = free_port()
    cpus = args.engine_cpus
    with engine(n, port, redis, cpus) as parent:
        tree = [parent, *parent.children(recursive=True)]
        here, there = mp.get_context("spawn").Pipe()
        params = {
            "subscribers": args.subscribers,
            "in_flight": args.in_flight,
            "warmup": args.warmup,
            "duration": args.duration,
        }
        load = mp.get_context("spawn").Process(
            target=load_process, args=(port, params, args.load_cpu, there)
        )
        load.start()
        assert load.pid is not None
        loader = psutil.Process(load.pid)
        _, got0, t0 = here.recv()
        cpu0, load0 = cpu_seconds(tree), cpu_seconds([loader])
        redis0 = cpu_seconds([redis_proc]) if redis_proc else 0.0
        _, got1, t1 = here.recv()
        cpu1, load1 = cpu_seconds(tree), cpu_seconds([loader])
        redis1 = cpu_seconds([redis_proc]) if redis_proc else 0.0
        load.join(30)
    deliveries = got1 - got0
    wall = t1 - t0
    return {
        "processes": n,
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / wall),
        "engine_cpu_pct": round(100 * (cpu1 - cpu0) / wall),
        "engine_us_per_delivery": round(1e6 * (cpu1 - cpu0) / max(deliveries, 1), 2),
        "redis_cpu_pct": round(100 * (redis1 - redis0) / wall),
        "redis_us_per_delivery": round(1e6 * (redis1 - redis0) / max(deliveries, 1), 2),
        "load_cpu_pct": round(100 * (load1 - load0) / wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__)
    parser.add_argument("--processes", default="1,2", help="the N to run, comma-separated")
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=16, help="publishes outstanding")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--redis", default=None, help="default: a private redis-server")
    parser.add_argument("--load-cpu", type=int, default=(os.cpu_count() or 1) - 1)
    parser.add_argument("--engine-cpus", default=None, help="taskset list (default: all)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    results = []
    with contextlib.ExitStack() as stack:
        redis_proc: psutil.Process | None = None
        redis = args.redis
        if redis is None:
            redis, redis_proc = stack.enter_context(private_redis())
        for n in (int(v) for v in args.processes.split(",")):
            results.append(measure(n, redis, redis_proc, args))
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": revision,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "params": vars(args),
        "results": results,
    }
    print(
        f"{args.subscribers} subscribers, {args.in_flight} publishes in flight, "
        f"{args.duration:g} s, load on core {args.load_cpu}\n"
    )
    print(
        "| processes | deliveries/s | engine CPU % | engine µs/delivery | Redis CPU % "
        "| Redis µs/delivery | load CPU % |\n|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['processes']} | {r['deliveries_per_s']:,} | {r['engine_cpu_pct']} "
            f"| {r['engine_us_per_delivery']} | {r['redis_cpu_pct']} "
            f"| {r['redis_us_per_delivery']} | {r['load_cpu_pct']} |"
        )
    output = output_path(args.output, "processes")
    output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
