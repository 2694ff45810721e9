"""What Redis costs a room emit: delivery latency on one node against across nodes.

    python -m bench.crossnode                       # 200 subscribers, 50 emits/s, 10 s
    python -m bench.crossnode --subscribers 500 --rate 20 --duration 20

Three setups, each with fresh engine processes pinned to core 0 (their workers too)
and the clients in this process pinned to core 1; one publisher sends
``bench.pub {room, payload}`` at a fixed rate (``bench/fanout_service.py`` emits the
payload to the room), every subscriber records publish → receive latency from the
``time.monotonic_ns()`` the payload carries:

``single``        one engine, no Redis (the in-memory broker);
``single-redis``  one engine with ``--redis``: every emit goes out to Redis and back;
``cross``         two engines sharing Redis, the publisher on one, the subscribers on
                  the other.

It needs a Redis at ``--redis`` (default ``redis://127.0.0.1:6379/0``). Results go to
``bench/results/crossnode-<date>.json`` with the machine and the git revision.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.cli import output_path
from bench.ipc import free_port

REPO = Path(__file__).resolve().parent.parent
ROOM = "bench-room"


def pin(cpu: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def engine(port: int, redis: str | None, cpu: int) -> Iterator[None]:
    ipc = f"/tmp/lk-cross-{port}.sock"
    args = [
        sys.executable,
        "-m",
        "engine",
        "--listen",
        f"127.0.0.1:{port}",
        "--ipc",
        ipc,
        "--service",
        "bench.fanout_service",
        "--workers",
        "1",
        "--ws-rate",
        "0",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    if redis:
        args += ["--redis", redis]
    env = {**os.environ, "BENCH_FANOUT_PER_CONNECTION": "1"}
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/bench/ready")
                if conn.getresponse().status == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("engine did not start")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def subscribe(port: int) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{port}/ws/bench", compression=None, max_queue=None)
    await ws.send(orjson.dumps({"type": "bench.sub", "data": {"room": ROOM}, "id": 1}).decode())
    await ws.recv()  # the ack: joined
    return ws


async def measure(pub_port: int, sub_port: int, args: argparse.Namespace) -> dict[str, Any]:
    subs = [await subscribe(sub_port) for _ in range(args.subscribers)]
    latencies: list[float] = []
    measuring = False

    async def read(ws: ClientConnection) -> None:
        async for raw in ws:
            now = time.monotonic_ns()
            event = orjson.loads(raw)
            if event.get("type") == "bench.msg" and measuring:
                latencies.append((now - int(event["data"]["t"])) / 1e6)

    readers = [asyncio.create_task(read(ws)) for ws in subs]
    async with connect(f"ws://127.0.0.1:{pub_port}/ws/bench", compression=None) as pub:
        interval = 1.0 / args.rate
        start = time.monotonic()
        n = 0
        total = args.warmup + args.duration
        while (elapsed := time.monotonic() - start) < total:
            measuring = elapsed >= args.warmup
            payload = {"t": str(time.monotonic_ns()), "pad": "x" * 60}
            frame = {"type": "bench.pub", "data": {"room": ROOM, "payload": payload}, "id": n}
            await pub.send(orjson.dumps(frame).decode())
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        await asyncio.sleep(0.5)
    for task in readers:
        task.cancel()
    for ws in subs:
        await ws.close()
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3)

    return {
        "deliveries": len(latencies),
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.crossnode", description=__doc__)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="emits per second")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    pin(1)
    results: dict[str, Any] = {}
    a, b = free_port(), free_port()
    with engine(a, None, 0):
        results["single"] = asyncio.run(measure(a, a, args))
    with engine(a, args.redis, 0):
        results["single-redis"] = asyncio.run(measure(a, a, args))
    with engine(a, args.redis, 0), engine(b, args.redis, 0):
        results["cross"] = asyncio.run(measure(a, b, args))
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": revision,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "params": vars(args),
        "results": results,
    }
    print(f"{args.subscribers} subscribers, {args.rate:g} emits/s, {args.duration:g} s\n")
    print("| setup | deliveries | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['deliveries']:,} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    output = output_path(args.output, "crossnode")
    output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
