"""One run of ``bench/fanout.py``: a server, its load processes, the counters, the summary.

``run_case`` starts a fresh server (``fanout_servers``), spawns the subscriber
processes and waits until every client has subscribed, then either measures RSS
(idle) or spawns the publisher, writes the phase instants into the shared control
block, follows the run with a progress bar and reads the server's and the load's CPU
time, write system calls and RSS at both ends of the measured window (``Snapshot``).
``summarize`` turns the processes' reports into one result dict: deliveries/s,
latency percentiles, lost/late/out-of-order, CPU per delivery, load-bound flags.
Every process started is registered (``children``, ``servers``) so that the CLI can
stop them all on an error or a signal.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from . import fanout_stats as stats
from .fanout_load import (
    EXPECTED,
    T_END,
    T_MEASURE,
    T_START,
    PubSpec,
    SubSpec,
    publisher_process,
    subscriber_process,
)
from .fanout_servers import (
    Server,
    cpu_seconds,
    rss_bytes,
    start_server,
    stop_server,
    write_syscalls,
)
from .fanout_tls import certificate
from .ipc import free_port

__all__ = [
    "KEPT_UP",
    "LOAD_BOUND",
    "SCENARIOS",
    "Case",
    "build_cases",
    "children",
    "run_case",
    "servers",
]

SCENARIOS = ("saturation", "deflate", "rate", "idle", "tls")
#: Load CPU (percent of one core) above which a run is flagged load-bound.
LOAD_BOUND = 90.0
#: Deliveries read / (publishes acked x subscribers) in the window below which the
#: load fell behind the server (the run is flagged lagging).
KEPT_UP = 0.95
ROOM = "bench-room"

#: Every process we started, so that an error or Ctrl-C still stops them.
children: list[mp.process.BaseProcess] = []
servers: list[Server] = []


@dataclass(frozen=True)
class Case:
    scenario: str
    subscribers: int
    rate: float | None = None  # publishes/s; None: K in flight (or idle)

    @property
    def deflate(self) -> bool:
        return self.scenario == "deflate"

    @property
    def tls(self) -> bool:
        """Saturation over TLS: every server with the same certificate."""
        return self.scenario == "tls"


def build_cases(args: argparse.Namespace) -> list[Case]:
    cases: list[Case] = []
    for scenario in args.scenarios:
        if scenario == "saturation":
            cases += [Case(scenario, n) for n in args.subscribers]
        elif scenario == "deflate":
            cases += [Case(scenario, n) for n in args.deflate_subscribers]
        elif scenario == "rate":
            cases += [Case(scenario, n, r) for n, r in args.rates]
        elif scenario == "idle":
            cases += [Case(scenario, n) for n in args.idle]
        elif scenario == "tls":
            cases += [Case(scenario, n) for n in args.tls_subscribers]
    return cases


class Run:
    """One server process, its load processes, and the measurements of one case."""

    def __init__(self, server: Server, case: Case, args: argparse.Namespace) -> None:
        self.server = server
        self.case = case
        self.args = args
        self.ctx = mp.get_context("spawn")
        self.ctl: Any = self.ctx.Array("d", [0.0, 0.0, 0.0, -1.0], lock=False)
        self.subs: list[tuple[mp.process.BaseProcess, Connection, Any]] = []
        self.pub: tuple[mp.process.BaseProcess, Connection, Any] | None = None

    def _spawn(self, target: Any, spec: Any, name: str) -> tuple[Any, Connection, Any]:
        progress = self.ctx.Value("q", 0, lock=False)
        receiver, sender = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=target, args=(spec, self.ctl, progress, sender), name=name, daemon=True
        )
        proc.start()
        children.append(proc)
        sender.close()
        return proc, receiver, progress

    def start_subscribers(self, port: int) -> dict[str, int]:
        n = self.case.subscribers
        procs = max(1, min(self.args.load_procs, n))
        for i in range(procs):
            count = n // procs + (1 if i < n % procs else 0)
            spec = SubSpec(
                port=port,
                count=count,
                room=ROOM,
                deflate=self.case.deflate,
                sample_every=self.args.sample_every,
                cpu=self.args.load_cpu,
                inflate_every=self.args.inflate_every if self.case.deflate else 1,
                tls=self.case.tls,
            )
            self.subs.append(self._spawn(subscriber_process, spec, f"bench-sub{i}"))
        extensions: dict[str, int] = {}
        bar = _bar(self.args, n, f"{self.server.name:<12} connect", "conn")
        try:
            deadline = time.monotonic() + 60 + n / 100
            pending = list(self.subs)
            while pending:
                for item in list(pending):
                    proc, conn, _ = item
                    if conn.poll(0.05):
                        msg = _recv(conn, f"subscriber {proc.name}")
                        for ext, k in msg["extensions"].items():
                            extensions[ext] = extensions.get(ext, 0) + k
                        pending.remove(item)
                if bar is not None:
                    bar.n = sum(p.value for _, _, p in self.subs)
                    bar.refresh()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.server.name}: subscribers not connected in time")
                self._check_alive()
        finally:
            if bar is not None:
                bar.close()
        return extensions

    def start_publisher(self, port: int) -> None:
        spec = PubSpec(
            port=port,
            room=ROOM,
            inflight=self.args.inflight,
            rate=self.case.rate or 0.0,
            cpu=self.args.load_cpu,
            tls=self.case.tls,
        )
        self.pub = self._spawn(publisher_process, spec, "bench-pub")
        _recv(self.pub[1], "publisher", timeout=30)

    def _check_alive(self) -> None:
        if self.server.proc.poll() is not None:
            raise RuntimeError(f"{self.server.name} died:\n{self.server.log_tail()}")
        for proc, _, _ in [*self.subs, *([self.pub] if self.pub else [])]:
            if not proc.is_alive() and proc.exitcode:
                raise RuntimeError(f"load process {proc.name} exited with {proc.exitcode}")

    def load_pids(self) -> dict[str, int]:
        pids = {p.name: p.pid for p, _, _ in self.subs if p.pid is not None}
        if self.pub is not None and self.pub[0].pid is not None:
            pids[self.pub[0].name] = self.pub[0].pid
        pids["orchestrator"] = os.getpid()
        return pids

    def measure(self) -> dict[str, Any]:
        """Start the publisher's clock; follow the run; take the counters at both ends."""
        args = self.args
        t0 = time.monotonic() + 0.2
        self.ctl[T_MEASURE] = t0 + args.warmup
        self.ctl[T_END] = t0 + args.warmup + args.duration
        self.ctl[T_START] = t0  # last: the load processes start on it
        bar = _bar(args, args.warmup + args.duration, f"{self.server.name:<12}", "s")
        snaps: list[Snapshot] = []
        last = (0, time.monotonic())
        try:
            for edge in (self.ctl[T_MEASURE], self.ctl[T_END]):
                while (now := time.monotonic()) < edge:
                    time.sleep(min(0.2, edge - now))
                    self._check_alive()
                    if bar is not None:
                        done = sum(p.value for _, _, p in self.subs)
                        rate = (done - last[0]) / max(time.monotonic() - last[1], 1e-3)
                        last = (done, time.monotonic())
                        bar.n = round(min(time.monotonic() - t0, bar.total), 1)
                        bar.set_postfix_str(f"{rate:,.0f} deliveries/s", refresh=False)
                        bar.refresh()
                snaps.append(Snapshot.take(self.server, self.load_pids()))
        finally:
            if bar is not None:
                bar.close()
        assert self.pub is not None
        published = _recv(self.pub[1], "publisher", timeout=30)
        self.ctl[EXPECTED] = published["published"]
        subs = [_recv(c, f"subscriber {p.name}", timeout=60) for p, c, _ in self.subs]
        return {"snapshots": snaps, "publisher": published, "subscribers": subs}

    def finish_idle(self) -> list[dict[str, Any]]:
        self.ctl[T_START] = -1.0
        return [_recv(c, f"subscriber {p.name}", timeout=30) for p, c, _ in self.subs]

    def close(self) -> None:
        for proc, conn, _ in [*self.subs, *([self.pub] if self.pub else [])]:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()


def _recv(conn: Connection, who: str, timeout: float = 120) -> dict[str, Any]:
    if not conn.poll(timeout):
        raise RuntimeError(f"{who}: no answer in {timeout:.0f}s")
    try:
        msg: dict[str, Any] = conn.recv()
    except EOFError:
        raise RuntimeError(f"{who} died") from None
    if "failed" in msg:
        raise RuntimeError(f"{who}: {msg['failed']}")
    return msg


def _bar(args: argparse.Namespace, total: float, desc: str, unit: str) -> Any:
    if args.no_progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)


@dataclass
class Snapshot:
    wall: float
    server: dict[str, float]
    load: dict[str, float]
    cores: list[tuple[float, float]]
    rss: dict[str, int]
    writes: dict[str, int]

    @classmethod
    def take(cls, server: Server, load_pids: dict[str, int]) -> Snapshot:
        cores = []
        for t in psutil.cpu_times(percpu=True):
            total = sum(t)
            cores.append((total - t.idle - getattr(t, "iowait", 0.0), total))
        return cls(
            time.monotonic(),
            cpu_seconds(server.pids),
            cpu_seconds(load_pids),
            cores,
            rss_bytes(server),
            write_syscalls(server.pids),
        )


def _cpu_delta(a: dict[str, float], b: dict[str, float], wall: float) -> dict[str, float]:
    return {k: 100 * (b[k] - a[k]) / wall for k in a if k in b}


def summarize(
    server: Server, case: Case, raw: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    before, after = raw["snapshots"]
    wall = after.wall - before.wall
    server_cpu = _cpu_delta(before.server, after.server, wall)
    load_cpu = _cpu_delta(before.load, after.load, wall)
    cores = [
        100 * (a[0] - b[0]) / (a[1] - b[1]) if a[1] > b[1] else math.nan
        for a, b in zip(after.cores, before.cores, strict=True)
    ]
    subs = raw["subscribers"]
    pub = raw["publisher"]
    deliveries = sum(s["deliveries"] for s in subs)
    window = sum(s["window_s"] for s in subs) / len(subs)
    hist = stats.merge(stats.from_sparse(s["hist"]) for s in subs)
    max_us = max(s["max_us"] for s in subs)
    errors: dict[str, int] = {}
    for part in [*subs, pub]:
        for kind, n in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    total_server = sum(server_cpu.values())
    total_load = sum(v for k, v in load_cpu.items() if k != "orchestrator")
    scpu = args.server_cpu
    other = math.nan
    if scpu is not None and scpu < len(cores):
        other = cores[scpu] - total_server
    delivered_total = sum(s["deliveries_total"] for s in subs)
    # What the server emitted in the window (acked publishes x members) against what
    # the subscribers read: below 1, the load fell behind and data piled up.
    emitted = pub["acked_in_window"] * case.subscribers
    kept_up = deliveries / emitted if emitted else math.nan
    return {
        "deliveries": deliveries,
        "window_s": window,
        "deliveries_per_s": deliveries / window if window else math.nan,
        "publishes_per_s": pub["acked_in_window"] / window if window else math.nan,
        "published": pub["published"],
        "unanswered_publishes": pub["unanswered"],
        "latency_ms": stats.summary(hist, max_us),
        "ack_latency_ms": stats.summary(stats.from_sparse(pub["hist"]), pub["max_us"]),
        "lost": sum(s["lost"] for s in subs),
        "late_or_duplicate": sum(s["late_or_duplicate"] for s in subs),
        "out_of_order": sum(s["out_of_order"] for s in subs),
        "verified_by_full_parse": sum(s["verified"] for s in subs),
        # What the server actually sent: linkd may add envelope keys next to type/data.
        "message_bytes": max(s["message_bytes"] for s in subs),
        "extra_envelope_keys": sorted({k for s in subs for k in s["extra_keys"]}),
        "count_only_connections": sum(s["count_only_connections"] for s in subs),
        "sampled_connections": sum(s["sampled_connections"] for s in subs),
        "compressed_fraction": (
            sum(s["compressed"] for s in subs) / delivered_total if delivered_total else 0.0
        ),
        "errors": errors,
        "error_count": sum(errors.values()),
        "server_cpu_percent": total_server,
        "server_cpu_percent_by_process": server_cpu,
        "server_us_per_delivery": 1e6 * total_server / 100 * wall / deliveries
        if deliveries
        else math.nan,
        "load_cpu_percent": total_load,
        "load_cpu_percent_by_process": load_cpu,
        "load_bound": total_load > LOAD_BOUND,
        "kept_up": kept_up,
        "lagging": kept_up < KEPT_UP,
        "core_busy_percent": cores,
        "other_cpu_percent_on_server_core": other,
        "rss_end_of_window": after.rss,
        # Writes of the main process per delivery: 1.0 = one system call per frame.
        "server_write_syscalls_per_delivery": (
            (after.writes.get("server", 0) - before.writes.get("server", 0)) / deliveries
            if deliveries and "server" in after.writes and "server" in before.writes
            else math.nan
        ),
    }


def run_case(name: str, case: Case, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    base: dict[str, Any] = {
        "server": name,
        **asdict(case),
        "inflight": None if case.rate or case.scenario == "idle" else args.inflight,
    }
    if case.deflate and name == "picows":
        return {**base, "skipped": "no permessage-deflate in picows"}
    port = free_port()
    loadavg = os.getloadavg()
    tls: tuple[str, str] | None = None
    if case.tls:
        cert, key = certificate(tmp)
        tls = (str(cert), str(key))
    server = start_server(
        name,
        port,
        cpu=args.server_cpu,
        per_connection=args.inflight,
        tmp=tmp,
        max_outbound=args.max_outbound_buffer,
        tls=tls,
    )
    servers.append(server)
    run = Run(server, case, args)
    try:
        affinity = {k: sorted(os.sched_getaffinity(pid)) for k, pid in server.pids.items()}
        time.sleep(args.settle if case.scenario == "idle" else 0.2)
        rss_before = rss_bytes(server)
        extensions = run.start_subscribers(port)
        if case.scenario == "idle":
            time.sleep(args.settle)
            rss_after = rss_bytes(server)
            run._check_alive()
            subs = run.finish_idle()
            n = case.subscribers
            total_before, total_after = sum(rss_before.values()), sum(rss_after.values())
            result: dict[str, Any] = {
                "rss_before": rss_before,
                "rss_after": rss_after,
                "rss_before_total": total_before,
                "rss_after_total": total_after,
                "kib_per_conn": (total_after - total_before) / n / 1024,
                "kib_per_conn_main": (rss_after["server"] - rss_before["server"]) / n / 1024,
                "errors": {k: v for s in subs for k, v in s["errors"].items()},
            }
        else:
            run.start_publisher(port)
            raw = run.measure()
            result = summarize(server, case, raw, args)
            result["rss_before"] = rss_before
        run._check_alive()
    finally:
        run.close()
        stop_server(server)
        servers.remove(server)
    return {
        **base,
        **result,
        "negotiated_extensions": extensions,
        "command": shlex.join(server.command),
        "affinity": affinity,
        "loadavg_before": list(loadavg),
        "loadavg_after": list(os.getloadavg()),
    }
