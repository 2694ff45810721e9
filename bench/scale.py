"""Scale: one room of up to 50 000 WebSocket members on one machine, linkd beside picows.

Run it from the repository root, as root (it raises RLIMIT_NOFILE past the default
hard limit and may widen the ephemeral port range)::

    python -m bench.scale                                  # 1 000, 10 000, 50 000; ~10 min
    python -m bench.scale --sizes 1000,5000 --servers linkd  # development, < 2 min

For each size and server (``--servers``: linkd = the engine and the fan-out service
worker of ``bench/fanout_service.py``; picows; the other servers of
``bench/fanout_servers.py`` work too), a fresh server pinned to core 0 (``--server-cpu``),
and the load pinned to core 1 (``--load-cpu``; ``bench/scale_load.py``):

1. RSS of the server (process + children), N subscribers connected in one room at most
   ``--ramp`` per second and ``--batch`` handshakes in flight (the accept backlog is
   2048), time of the ramp, RSS again ``--settle`` s later: KiB per idle connection.
2. ``--publishes`` single publishes: time until the last member read it, p50/p99 over
   the members (each subscriber timestamps its reads).
3. Saturation: K (``-k``) publishes in flight for ``--warmup`` + ``--duration`` s:
   deliveries/s, server CPU µs per delivery (psutil CPU time of the server and its
   children over the window ÷ deliveries read in it).

Loopback at this size: each side holds N sockets, so every process gets a
``RLIMIT_NOFILE`` of at least 2N + 4096 (set here, inherited by the servers and load
processes); the clients bind to ``--per-source`` connections per source address,
127.0.0.2, 127.0.0.3, ... (with ``IP_BIND_ADDRESS_NO_PORT``) because one (source,
destination) pair has only the ephemeral range (28 232 ports by default); the port range
is widened (1024-65535) only if a source address would need more than it has, and is
not restored. linkd runs with ``--http-rate 0`` and the per-address caps off
(``bench/fanout_servers.py``): every connection comes from a handful of addresses.

Results: ``bench/results/scale-<date>.json`` (machine, git revision, kernel settings,
every measurement) and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import os
import resource
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import psutil

from . import fanout_report
from . import scale_report as report
from .cli import cpu_arg, names_arg, output_path
from .fanout_servers import SERVERS, stop_everything
from .fanout_wire import MSG_SIZE
from .ipc import ROOT
from .processes import private_redis
from .scale_run import Plan, children, run_case, servers

__all__ = ["build_parser", "main"]

PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
WIDE_PORT_RANGE = (1024, 65535)
#: Ports a source address keeps free beyond the bench's own (other connections, TIME_WAIT).
PORT_MARGIN = 2000
#: File descriptors of a process that are not client sockets (listeners, IPC, epoll,
#: logs, Python's own) with room to spare.
FD_RESERVE = 500


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.scale", description="One room of up to 50 000 members."
    )
    p.add_argument("--sizes", type=_ints, default=[1000, 10000, 50000], help="members per room")
    p.add_argument(
        "--servers", type=names_arg(SERVERS), default=["linkd", "picows"], help=",".join(SERVERS)
    )
    p.add_argument("--publishes", type=int, default=5, help="single publishes timed (5)")
    p.add_argument("--pause", type=float, default=0.5, help="s between single publishes (0.5)")
    p.add_argument("-k", "--inflight", type=int, default=8, help="saturation: in flight (8)")
    p.add_argument("--warmup", type=float, default=2.0, help="saturation warm-up s (2)")
    p.add_argument("--duration", type=float, default=5.0, help="saturation window s (5)")
    p.add_argument("--settle", type=float, default=3.0, help="s before each RSS reading (3)")
    p.add_argument("--ramp", type=float, default=5000.0, help="new connections/s at most (5000)")
    p.add_argument("--batch", type=int, default=500, help="handshakes in flight at most (500)")
    p.add_argument("--per-source", type=int, default=10000, help="connections per source IP")
    p.add_argument(
        "--linkd-processes",
        type=int,
        default=0,
        help="engine --processes for linkd at every size, with Redis (0: as the fd limit needs)",
    )
    p.add_argument("--load-procs", type=int, default=1, help="subscriber processes (1)")
    p.add_argument("--server-cpu", type=cpu_arg, default=0, help="core of the servers (0)")
    p.add_argument("--load-cpu", type=cpu_arg, default=1, help="core of the load (1)")
    p.add_argument("--output", help="JSON path (bench/results/scale-<date>.json)")
    return p


def sources_for(n: int, per_source: int) -> tuple[str, ...]:
    """127.0.0.2, 127.0.0.3, ...: enough source addresses for ``n`` clients."""
    count = max(1, math.ceil(n / per_source))
    if count > 250:
        raise SystemExit(f"bench: {count} source addresses needed; raise --per-source")
    return tuple(f"127.0.0.{2 + i}" for i in range(count))


def raise_nofile(n: int) -> dict[str, Any]:
    """RLIMIT_NOFILE here, inherited by every child: 2n + 4096 if we may, else the hard limit.

    Raising the hard limit takes CAP_SYS_RESOURCE; without it (a container that drops it,
    as the machine of the recorded runs does) one process holds at most the hard limit
    of sockets, and ``fd_capacity`` says how many connections fit in one process.
    """
    need = 2 * n + 4096
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    raised = False
    if hard < need:
        with contextlib.suppress(OSError, ValueError):
            nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, nr_open),) * 2)
            raised = True
    if not raised:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    now = resource.getrlimit(resource.RLIMIT_NOFILE)
    if now[0] < need:
        print(
            f"bench: RLIMIT_NOFILE {now[0]} (hard limit {hard}, not raisable here) < {need}:"
            f" at most {fd_capacity()} connections per process; linkd runs more engine"
            " processes (--processes, --redis), single-process servers are skipped above it"
        )
    return {"before": [soft, hard], "after": list(now), "needed": need, "raised": raised}


def fd_capacity() -> int:
    """Connections one process can hold: its fd limit less a margin for everything else."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FD_RESERVE


def check_port_range(n: int, sources: tuple[str, ...]) -> dict[str, Any]:
    """Widen the ephemeral range if one source address would need more ports than it has."""
    low, high = (int(v) for v in PORT_RANGE.read_text().split())
    per_source = math.ceil(n / len(sources))
    out: dict[str, Any] = {"before": [low, high], "per_source": per_source, "changed": False}
    if high - low + 1 < per_source + PORT_MARGIN:
        PORT_RANGE.write_text(f"{WIDE_PORT_RANGE[0]} {WIDE_PORT_RANGE[1]}\n")
        out["changed"] = True
        print(f"bench: ip_local_port_range {low}-{high} -> {WIDE_PORT_RANGE} (not restored)")
    out["after"] = [int(v) for v in PORT_RANGE.read_text().split()]
    return out


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    except OSError:
        return "?"


def _cleanup() -> None:
    stop_everything(servers, children)


#: The private Redis of multi-process linkd, started on first use: (URL, process).
Redis = Callable[[], tuple[str, psutil.Process]]


def _lazy_redis(stack: contextlib.ExitStack, cpu: int | None) -> Redis:
    started: list[tuple[str, psutil.Process]] = []

    def get() -> tuple[str, psutil.Process]:
        if not started:
            url, proc = stack.enter_context(private_redis())
            if cpu is not None:
                proc.cpu_affinity([cpu])  # part of the server: on its core
            started.append((url, proc))
        return started[0]

    return get


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _one_line(r: dict[str, Any]) -> str:
    head = f"{r['members']:>7,} {r['server']:<8}"
    if "skipped" in r:
        return f"{head} skipped: {r['skipped']}"
    if "failed" in r or "saturation" not in r:
        return f"{head} FAILED: {r.get('failed') or r.get('error')}"
    c, s, sat = r["connect"], r["single"], r["saturation"]
    return (
        f"{head} connect {c['connect_s']:.1f}s ({c['connect_per_s']:,.0f}/s),"
        f" idle {r['idle']['kib_per_conn']:.2f} KiB/conn, last member {s['last_ms_median']:.1f}"
        f" ms, {sat['deliveries_per_s']:,.0f} deliveries/s,"
        f" {sat['server_us_per_delivery']:.2f} µs/delivery, kept up {100 * sat['kept_up']:.0f} %,"
        f" lost {sat['lost']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    cores = os.cpu_count() or 1
    for flag in ("server_cpu", "load_cpu"):
        cpu = getattr(args, flag)
        if cpu is not None and cpu >= cores:
            print(f"bench: --{flag.replace('_', '-')} {cpu}: only {cores} cores; not pinning")
            setattr(args, flag, None)
    if args.load_cpu is not None:
        os.sched_setaffinity(0, {args.load_cpu})  # the orchestrator stays off the server core
    biggest = max(args.sizes)
    kernel = {
        "nofile": raise_nofile(biggest),
        "ip_local_port_range": check_port_range(biggest, sources_for(biggest, args.per_source)),
        "somaxconn": _sysctl("net.core.somaxconn"),
        "tcp_max_syn_backlog": _sysctl("net.ipv4.tcp_max_syn_backlog"),
        "engine_listen_backlog": 2048,  # engine/config.py Config.backlog (no flag)
    }
    facts = fanout_report.machine()
    given = list(argv if argv is not None else sys.argv[1:])
    command = " ".join(["python -m bench.scale", *([shlex.join(given)] if given else [])])
    started = dt.datetime.now(dt.UTC)
    results: list[dict[str, Any]] = []
    try:
        with contextlib.ExitStack() as stack:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="linkd-scale-"))
            redis = _lazy_redis(stack, args.server_cpu)
            for n in args.sizes:
                for name in args.servers:
                    r = _run(name, n, args, Path(tmpdir), redis)
                    results.append(r)
                    print(_one_line(r), file=sys.stderr)
    finally:
        _cleanup()
    return _write(results, args, facts, kernel, command, started)


def _run(name: str, n: int, args: argparse.Namespace, tmp: Path, redis: Redis) -> dict[str, Any]:
    """A failure is recorded with its reason and the sweep goes on (no retry: minutes)."""
    cap = fd_capacity()
    procs = math.ceil(n / cap)
    if name == "linkd" and args.linkd_processes:
        procs = max(procs, args.linkd_processes)
    plan = Plan(
        members=n,
        sources=sources_for(n, args.per_source),
        load_procs=max(args.load_procs, math.ceil(n / cap)),
        server_procs=procs,
    )
    if n > cap and name != "linkd":
        return {
            "server": name,
            "members": n,
            "skipped": f"{name} holds every connection in one process: {n:,} sockets >"
            f" {cap:,} (RLIMIT_NOFILE {cap + FD_RESERVE:,}, not raisable without"
            " CAP_SYS_RESOURCE)",
        }
    try:
        return run_case(name, plan, args, tmp, redis() if procs > 1 else None)
    except (RuntimeError, OSError, TimeoutError) as exc:  # recorded; the sweep goes on
        _cleanup()
        time.sleep(2)
        return {"server": name, "members": n, "error": f"{type(exc).__name__}: {exc}"}


def _write(
    results: list[dict[str, Any]],
    args: argparse.Namespace,
    facts: dict[str, Any],
    kernel: dict[str, Any],
    command: str,
    started: dt.datetime,
) -> int:
    notes = [
        f"servers and their children pinned to core {args.server_cpu}; the subscriber"
        f" processes ({args.load_procs}), the publisher and the orchestrator to core"
        f" {args.load_cpu}",
        f"one room, one publisher; message {MSG_SIZE} B at the peers (linkd adds"
        ' "room", "seq", "epoch": ~180 B)',
        f"connections: at most {args.ramp:g}/s and {args.batch} handshakes + subscriptions"
        f" in flight; {args.per_source} per source address (127.0.0.2...), bound before"
        " connect with IP_BIND_ADDRESS_NO_PORT",
        "idle KiB/conn = (RSS of server + children after connect and settle - before) / N;"
        " (main) = the server process alone",
        "single publish: last member = the latest read time minus the publish time over"
        " all N members (median of the runs, min-max); p50/p99 over the members; with one"
        " load core the members are read one after another, so this includes the load's"
        " reading time",
        f"saturation: K = {args.inflight} in flight, {args.duration:g} s window after"
        f" {args.warmup:g} s; µs/delivery = server CPU time (process + children) in the"
        " window / deliveries read in it; kept up = deliveries read / (acks x N)",
        "linkd: --http-rate 0 and per-address caps off (all clients share a few addresses);"
        " heartbeat at its default (a ping per silent connection every 20 s)",
    ]
    out: dict[str, Any] = {
        "benchmark": "scale",
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": facts,
        "kernel": kernel,
        "parameters": {k: v for k, v in vars(args).items() if k != "output"},
        "notes": notes,
        "results": results,
        "ratios": report.ratios(results),
        "targets": report.targets(results),
        "loadavg_end": list(os.getloadavg()),
        "git_revision_end": fanout_report.git("rev-parse", "HEAD"),
        "git_dirty_files_end": fanout_report.git("status", "--porcelain").splitlines(),
    }
    path = output_path(args.output, "scale")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    )
    print(report.table(results))
    print()
    print(report.ratio_table(out["ratios"]))
    print()
    for goal in out["targets"]:
        print(f"- {'met' if goal['met'] else 'MISSED'}: {goal['goal']}: {goal['value']}")
    for note in notes:
        print(f"- {note}")
    print(f"- kernel: {kernel}")
    print(f"- load average at start {facts['loadavg']}, at end {out['loadavg_end']}")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"- written to {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
