"""One case of ``bench/scale.py``: one server, N subscribers in one room, every measurement.

``run_case`` starts a fresh server (``fanout_servers``, pinned to the server core), reads
its RSS, spawns the subscriber processes (``scale_load``, pinned to the load core), times
the connection ramp, reads the RSS again after ``settle`` seconds (idle memory per
connection), then measures on the same connections:

single publishes
    ``publishes`` times: one publish, then wait until every member has read it; each
    subscriber timestamps its read, so the histogram of (read - publish time) over the N
    members gives p50/p99 and the maximum is the time until the LAST member had it.
saturation
    the publisher keeps K publishes in flight; after ``warmup`` s, a window of
    ``duration`` s in which the deliveries read (the subscribers' shared counters), the
    acks and the CPU time of the server (process + children) and of the load are taken
    at both ends: deliveries/s and server µs per delivery. Then the publisher stops and
    the bench waits for the backlog to drain to count what was lost.

Every process started is registered (``children``, ``servers``) so that the CLI can stop
them all on an error or a signal.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from . import fanout_stats as stats
from .fanout_load import PubSpec
from .fanout_servers import Server, cpu_seconds, rss_bytes, start_server, stop_server
from .ipc import free_port
from .scale_load import ScaleSubSpec, publisher_process, subscriber_process

__all__ = ["children", "run_case", "servers"]

ROOM = "scale-room"
#: Deliveries read / (acks x members) in the window below which the load fell behind.
KEPT_UP = 0.95
LOAD_BOUND = 90.0

children: list[mp.process.BaseProcess] = []
servers: list[Server] = []


@dataclass(frozen=True)
class Plan:
    """What one case runs: its size, where the load comes from, how many processes."""

    members: int
    sources: tuple[str, ...]
    load_procs: int
    #: Engine processes (``engine --processes``, Redis between them): more than one only
    #: when one process cannot hold ``members`` sockets (RLIMIT_NOFILE).
    server_procs: int


@dataclass
class _Proc:
    proc: mp.process.BaseProcess
    conn: Connection
    progress: Any  # multiprocessing.Value("q")

    def ask(self, command: str, timeout: float = 120) -> dict[str, Any]:
        self.conn.send(command)
        return self.recv(timeout)

    def recv(self, timeout: float = 120) -> dict[str, Any]:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.proc.name}: no answer in {timeout:.0f}s")
        try:
            msg: dict[str, Any] = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.proc.name} died") from None
        if "failed" in msg:
            raise RuntimeError(f"{self.proc.name}: {msg['failed']}")
        return msg


class Load:
    """The subscriber processes and the publisher of one case."""

    def __init__(
        self, server: Server, args: argparse.Namespace, extra_pids: dict[str, int]
    ) -> None:
        self.server = server
        self.args = args
        #: Processes of the server's deployment outside its tree (the private Redis).
        self.extra_pids = extra_pids
        self.ctx = mp.get_context("spawn")
        self.subs: list[_Proc] = []
        self.pub: _Proc | None = None

    def _spawn(self, target: Any, spec: Any, name: str) -> _Proc:
        progress = self.ctx.Value("q", 0, lock=False)
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=target, args=(spec, progress, child), name=name)
        proc.daemon = True
        proc.start()
        children.append(proc)
        child.close()
        return _Proc(proc, parent, progress)

    def connect(self, port: int, n: int, plan: Plan) -> dict[str, Any]:
        args = self.args
        sources = plan.sources
        procs = max(1, min(plan.load_procs, n))
        for i in range(procs):
            count = n // procs + (1 if i < n % procs else 0)
            # Each process takes its own slice of the source addresses' rotation.
            mine = sources[i % len(sources) :] + sources[: i % len(sources)]
            spec = ScaleSubSpec(
                port=port,
                count=count,
                room=ROOM,
                sources=mine,
                cpu=args.load_cpu,
                rate=args.ramp / procs,
                batch=max(1, args.batch // procs),
            )
            self.subs.append(self._spawn(subscriber_process, spec, f"scale-sub{i}"))
        t0 = time.monotonic()
        replies = []
        timeout = 120 + n / 50
        for p in self.subs:
            left = max(1.0, t0 + timeout - time.monotonic())
            replies.append(self._wait(p, left))
        wall = time.monotonic() - t0
        failures: dict[str, int] = {}
        for r in replies:
            for kind, k in r["failures"].items():
                failures[kind] = failures.get(kind, 0) + k
        connected = sum(r["ready"] for r in replies)
        return {
            "connected": connected,
            "connect_s": wall,
            "connect_per_s": connected / wall if wall else math.nan,
            "connect_s_by_process": [r["connect_s"] for r in replies],
            "failures": failures,
        }

    def _wait(self, p: _Proc, timeout: float) -> dict[str, Any]:
        """A reply, checking meanwhile that the server is alive."""
        deadline = time.monotonic() + timeout
        while not p.conn.poll(0.2):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{p.proc.name}: no answer in {timeout:.0f}s")
        return p.recv(1)

    def start_publisher(self, port: int) -> None:
        args = self.args
        spec = PubSpec(port=port, room=ROOM, inflight=args.inflight, rate=0.0, cpu=args.load_cpu)
        self.pub = self._spawn(publisher_process, spec, "scale-pub")
        self.pub.recv(30)

    def check_alive(self) -> None:
        if self.server.proc.poll() is not None:
            raise RuntimeError(f"{self.server.name} died:\n{self.server.log_tail()}")
        for p in [*self.subs, *([self.pub] if self.pub else [])]:
            if not p.proc.is_alive() and p.proc.exitcode:
                raise RuntimeError(f"load process {p.proc.name} exited with {p.proc.exitcode}")

    def delivered(self) -> int:
        return sum(int(p.progress.value) for p in self.subs)

    def acked(self) -> int:
        assert self.pub is not None
        return int(self.pub.progress.value)

    def wait_delivered(self, target: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.delivered() < target:
            if time.monotonic() > deadline:
                return False
            self.check_alive()
            time.sleep(0.002)
        return True

    def stats(self) -> dict[str, Any]:
        """Merge and reset the subscribers' histograms."""
        replies = [p.ask("stats") for p in self.subs]
        hist = stats.merge(stats.from_sparse(r["hist"]) for r in replies)
        errors: dict[str, int] = {}
        for r in replies:
            for kind, k in r["errors"].items():
                errors[kind] = errors.get(kind, 0) + k
        return {
            "latency_ms": stats.summary(hist, max(r["max_us"] for r in replies)),
            "open": sum(r["open"] for r in replies),
            "verified": sum(r["verified"] for r in replies),
            "out_of_order": sum(r["out_of_order"] for r in replies),
            "late_or_duplicate": sum(r["late_or_duplicate"] for r in replies),
            "errors": errors,
        }

    def pids(self) -> dict[str, int]:
        out = {p.proc.name: p.proc.pid for p in self.subs if p.proc.pid is not None}
        if self.pub is not None and self.pub.proc.pid is not None:
            out[self.pub.proc.name] = self.pub.proc.pid
        return out

    def close(self) -> None:
        for p in [*self.subs, *([self.pub] if self.pub else [])]:
            if p.proc.is_alive():
                try:
                    p.conn.send("close")
                    p.recv(30)
                except (OSError, RuntimeError):
                    pass
            p.proc.join(5)
            if p.proc.is_alive():
                p.proc.terminate()
                p.proc.join(5)
            p.conn.close()


def _singles(load: Load, n: int, args: argparse.Namespace) -> dict[str, Any]:
    assert load.pub is not None
    runs: list[dict[str, Any]] = []
    for _ in range(args.publishes):
        load.stats()  # reset
        base = load.delivered()
        t0 = time.monotonic()
        ack = load.pub.ask("one", timeout=90)
        complete = load.wait_delivered(base + n, timeout=30 + n / 1000)
        wall_ms = 1000 * (time.monotonic() - t0)
        st = load.stats()
        runs.append(
            {
                "complete": complete,
                "received": load.delivered() - base,
                "ack_ms": ack["ack_ms"],
                "last_ms": st["latency_ms"]["max"],
                "p50_ms": st["latency_ms"]["p50"],
                "p99_ms": st["latency_ms"]["p99"],
                "orchestrator_wall_ms": wall_ms,
                "errors": st["errors"],
            }
        )
        time.sleep(args.pause)
    lasts = sorted(r["last_ms"] for r in runs)
    return {
        "runs": runs,
        "last_ms_median": lasts[len(lasts) // 2] if lasts else math.nan,
        "last_ms_min": lasts[0] if lasts else math.nan,
        "last_ms_max": lasts[-1] if lasts else math.nan,
        "p50_ms_median": _median([r["p50_ms"] for r in runs]),
        "p99_ms_median": _median([r["p99_ms"] for r in runs]),
        "all_complete": all(r["complete"] for r in runs),
    }


def _median(values: list[float]) -> float:
    values = sorted(v for v in values if not math.isnan(v))
    return values[len(values) // 2] if values else math.nan


@dataclass
class _Snap:
    wall: float
    delivered: int
    acked: int
    server_cpu: dict[str, float]
    load_cpu: dict[str, float]
    #: (busy, total) CPU seconds of each core: what else ran beside us.
    cores: list[tuple[float, float]]

    @classmethod
    def take(cls, load: Load) -> _Snap:
        cores = []
        for t in psutil.cpu_times(percpu=True):
            total = sum(t)
            cores.append((total - t.idle - getattr(t, "iowait", 0.0), total))
        return cls(
            time.monotonic(),
            load.delivered(),
            load.acked(),
            cpu_seconds({**load.server.pids, **load.extra_pids}),
            cpu_seconds(load.pids()),
            cores,
        )


def _saturation(load: Load, n: int, args: argparse.Namespace) -> dict[str, Any]:
    assert load.pub is not None
    load.stats()
    base_delivered, base_acked = load.delivered(), load.acked()
    load.pub.ask("start")
    _sleep_checking(load, args.warmup)
    a = _Snap.take(load)
    _sleep_checking(load, args.duration)
    b = _Snap.take(load)
    stop = load.pub.ask("stop", timeout=90)
    burst_acked = stop["acked"] - base_acked
    drained = load.wait_delivered(base_delivered + burst_acked * n, timeout=30 + n / 500)
    st = load.stats()
    wall = b.wall - a.wall
    deliveries = b.delivered - a.delivered
    server_s = sum(b.server_cpu.get(k, 0.0) - v for k, v in a.server_cpu.items())
    load_s = sum(b.load_cpu.get(k, 0.0) - v for k, v in a.load_cpu.items())
    emitted = (b.acked - a.acked) * n
    busy = [
        100 * (y[0] - x[0]) / (y[1] - x[1]) if y[1] > x[1] else math.nan
        for x, y in zip(a.cores, b.cores, strict=True)
    ]
    ours = {args.server_cpu: 100 * server_s / wall, args.load_cpu: 100 * load_s / wall}
    kept_up = deliveries / emitted if emitted else math.nan
    return {
        "inflight": args.inflight,
        "window_s": wall,
        "deliveries": deliveries,
        "deliveries_per_s": deliveries / wall,
        "publishes_per_s": (b.acked - a.acked) / wall,
        "server_cpu_percent": 100 * server_s / wall,
        "server_cpu_percent_by_process": {
            k: 100 * (b.server_cpu.get(k, 0.0) - v) / wall for k, v in a.server_cpu.items()
        },
        "server_us_per_delivery": 1e6 * server_s / deliveries if deliveries else math.nan,
        "load_cpu_percent": 100 * load_s / wall,
        "load_bound": 100 * load_s / wall > LOAD_BOUND,
        "core_busy_percent": busy,
        # Busy time of each core minus our processes pinned to it: other jobs.
        "other_cpu_percent_by_core": [
            b_ - ours.get(i, 0.0) if i in ours else math.nan for i, b_ in enumerate(busy)
        ],
        "kept_up": kept_up,
        "lagging": kept_up < KEPT_UP,
        "published": stop["published"],
        "all_acked": stop["all_acked"],
        "drained": drained,
        "lost": base_delivered + burst_acked * n - load.delivered(),
        "latency_ms": st["latency_ms"],
        "out_of_order": st["out_of_order"],
        "late_or_duplicate": st["late_or_duplicate"],
        "errors": st["errors"],
        "open_after": st["open"],
    }


def _sleep_checking(load: Load, seconds: float) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.2, left))
        load.check_alive()


def _rss(server: Server, extra_pids: dict[str, int]) -> dict[str, int]:
    out = rss_bytes(server)
    for name, pid in extra_pids.items():
        with contextlib.suppress(psutil.Error):
            out[name] = psutil.Process(pid).memory_info().rss
    return out


def _wait_tree(server: Server, procs: int) -> None:
    """``engine --processes P``: wait for P engines and their P workers, then list them."""
    deadline = time.monotonic() + 60
    while True:
        tree = psutil.Process(server.proc.pid).children(recursive=True)
        if len(tree) >= 2 * procs:
            break
        if time.monotonic() > deadline or server.proc.poll() is not None:
            raise RuntimeError(f"{server.name}: {len(tree)} of {2 * procs} processes up")
        time.sleep(0.2)
    for i, child in enumerate(sorted(tree, key=lambda p: p.pid)):
        server.pids[f"child{i + 1}"] = child.pid
    for name in [k for k in server.pids if k.startswith("worker")]:
        del server.pids[name]


def run_case(
    name: str,
    plan: Plan,
    args: argparse.Namespace,
    tmp: Path,
    redis: tuple[str, psutil.Process] | None,
) -> dict[str, Any]:
    n = plan.members
    port = free_port()
    loadavg = os.getloadavg()
    extra: list[str] = []
    extra_pids: dict[str, int] = {}
    if plan.server_procs > 1:
        assert redis is not None
        extra = ["--processes", str(plan.server_procs), "--redis", redis[0]]
        extra_pids["redis"] = redis[1].pid
    server = start_server(
        name, port, cpu=args.server_cpu, per_connection=args.inflight, tmp=tmp, extra=extra
    )
    servers.append(server)
    load = Load(server, args, extra_pids)
    result: dict[str, Any] = {
        "server": name,
        "members": n,
        "server_processes": plan.server_procs,
        "load_processes": plan.load_procs,
        "sources": list(plan.sources),
        "command": server.command,
        "loadavg_before": list(loadavg),
    }
    try:
        if plan.server_procs > 1:
            _wait_tree(server, plan.server_procs)
        result["affinity"] = {
            k: sorted(os.sched_getaffinity(pid)) for k, pid in server.pids.items()
        }
        time.sleep(args.settle)
        rss_before = _rss(server, extra_pids)
        result["connect"] = load.connect(port, n, plan)
        if result["connect"]["connected"] < n:
            result["failed"] = (
                f"{n - result['connect']['connected']} of {n} connections failed:"
                f" {result['connect']['failures']}"
            )
            result["server_log_tail"] = server.log_tail(40)
            return result
        _sleep_checking(load, args.settle)
        rss_after = _rss(server, extra_pids)
        total_before, total_after = sum(rss_before.values()), sum(rss_after.values())
        result["idle"] = {
            "rss_before": rss_before,
            "rss_after": rss_after,
            "kib_per_conn": (total_after - total_before) / n / 1024,
            "kib_per_conn_main": (rss_after["server"] - rss_before["server"]) / n / 1024,
        }
        load.start_publisher(port)
        result["single"] = _singles(load, n, args)
        result["saturation"] = _saturation(load, n, args)
        result["rss_end"] = _rss(server, extra_pids)
        load.check_alive()
    finally:
        load.close()
        result.setdefault("server_log_tail", server.log_tail(20))
        stop_server(server)
        servers.remove(server)
    result["loadavg_after"] = list(os.getloadavg())
    return result
