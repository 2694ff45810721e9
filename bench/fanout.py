"""Fan-out: one publisher, N WebSocket subscribers in a room, linkd against its peers.

Run it from the repository root (one invocation runs every scenario on every server)::

    python -m bench.fanout                     # the full sweep, ~10 min on 2 cores
    python -m bench.fanout --quick --plot      # everything once, small, < 2 min
    python -m bench.fanout --servers linkd,picows --scenarios saturation --subscribers 1000

Servers (``bench/fanout_servers.py``), each a fresh process pinned to the server core
(``--server-cpu``, 0) with its children: ``linkd`` (the engine and one SDK worker running
``bench/fanout_service.py``), ``linkd-inproc`` (an embedded ``Engine`` fanning out in its
own handler, no IPC: ``bench/fanout_inproc.py``), ``websockets`` (its asyncio server and
``broadcast()``) and ``picows`` (a loop of ``transport.send``): ``bench/fanout_peers.py``.
All speak the protocol of ``bench/fanout_wire.py`` and all run on uvloop.

Scenarios (``--scenarios``):

``saturation``
    ``--subscribers`` (100, 1 000, 10 000) in one room; the publisher keeps K (``-k``, 8)
    publishes in flight: deliveries per second.
``deflate``
    The same with every client offering ``permessage-deflate; client_max_window_bits``
    (``--deflate-subscribers``, 1 000). picows has no compression: n/a.
``rate``
    Fixed publish rates (``--rates``, ``1000@20,5000@4``: subscribers@publishes/s):
    per-delivery latency p50/p99/p99.9/max.
``idle``
    ``--idle`` (100, 1 000, 10 000) connections that subscribed and then stay silent:
    the server's RSS growth per connection after ``--settle`` s.
``tls``
    ``saturation`` over TLS 1.3 (``--tls-subscribers``, 1 000): every server loads the
    same self-signed ECDSA P-256 certificate (``bench/fanout_tls.py``), linkd with
    ``--tls-cert/--tls-key``, the peers with an ``ssl.SSLContext``; the load decrypts.

The load (``bench/fanout_load.py``) runs in separate processes pinned to the load
core (``--load-cpu``, 1), the orchestrator too: subscriber processes (``--load-procs``)
and one publisher process. Payloads carry the send time and a sequence number; each
subscriber computes the latency of every delivery and counts what is lost, late or
out of order. The server's CPU (the process and its children, psutil) and the load's
CPU are read at both ends of the measured window; a run where the load used more than
``LOAD_BOUND`` % of its core is flagged, and one where the subscribers read less than
``KEPT_UP`` of what the server emitted (publishes acked x subscribers) is flagged
lagging: load-bound, deliveries/s then measures the load generator, not the server.
Results: ``bench/results/fanout-<date>.json``, with the machine, git revision and load
average; ``--plot`` writes PNG charts next to it.

This module is the CLI and the report; ``bench/fanout_run.py`` runs one case,
``bench/fanout_report.py`` makes the tables and charts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from . import fanout_report as report
from .cli import cpu_arg, names_arg, output_path
from .fanout_peers import raise_nofile
from .fanout_run import (
    KEPT_UP,
    LOAD_BOUND,
    SCENARIOS,
    Case,
    build_cases,
    children,
    run_case,
    servers,
)
from .fanout_servers import SERVERS, stop_everything
from .fanout_wire import MSG_SIZE, PAYLOAD_SIZE
from .ipc import ROOT

__all__ = ["build_parser", "main"]


def _ints(value: str) -> list[int]:
    return [int(v.replace("_", "")) for v in value.split(",") if v.strip()]


def _rates(value: str) -> list[tuple[int, float]]:
    out = []
    for item in value.split(","):
        n, _, rate = item.partition("@")
        out.append((int(n.replace("_", "")), float(rate)))
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.fanout",
        description="WebSocket fan-out: linkd against websockets and picows.",
    )
    p.add_argument(
        "--servers", type=names_arg(SERVERS), default=list(SERVERS), help=",".join(SERVERS)
    )
    p.add_argument(
        "--scenarios", type=names_arg(SCENARIOS), default=list(SCENARIOS), help=",".join(SCENARIOS)
    )
    p.add_argument(
        "--subscribers", type=_ints, default=[100, 1000, 10000], help="saturation (100,1000,10000)"
    )
    p.add_argument("--deflate-subscribers", type=_ints, default=[1000], help="deflate (1000)")
    p.add_argument("--tls-subscribers", type=_ints, default=[1000], help="tls (1000)")
    p.add_argument(
        "--rates",
        type=_rates,
        default=[(1000, 20.0), (5000, 4.0)],
        help="rate: SUBSCRIBERS@PUBLISHES_PER_S,... (1000@20,5000@4)",
    )
    p.add_argument(
        "--idle", type=_ints, default=[100, 1000, 10000], help="idle connections (100,1000,10000)"
    )
    p.add_argument("-k", "--inflight", type=int, default=8, help="saturation publishes in flight")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (3)")
    p.add_argument("--settle", type=float, default=3.0, help="idle: seconds before RSS (3)")
    p.add_argument("--load-procs", type=int, default=1, help="subscriber processes (1)")
    p.add_argument(
        "--sample-every", type=int, default=50, help="parse fully on 1 connection in N (50)"
    )
    p.add_argument(
        "--inflate-every", type=int, default=10, help="deflate: inflate on 1 connection in N"
    )
    p.add_argument("--max-outbound-buffer", type=int, default=None, help="linkd flag (default)")
    p.add_argument("--server-cpu", type=cpu_arg, default=0, help="core of the servers (0)")
    p.add_argument("--load-cpu", type=cpu_arg, default=1, help="core of the load (1)")
    p.add_argument("--quick", action="store_true", help="small and short: < 2 minutes")
    p.add_argument("--plot", action="store_true", help="write PNG charts")
    p.add_argument("--output", help="JSON path (bench/results/fanout-<date>.json)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _cleanup() -> None:
    stop_everything(servers, children)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (and SIGINT even when inherited as ignored) unwind through the finally
    # below, which stops every server and load process we started.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    if args.quick:
        args.subscribers, args.deflate_subscribers, args.idle = [1000], [1000], [1000]
        args.tls_subscribers = [1000]
        args.rates = [(1000, 20.0)]
        args.duration, args.warmup, args.settle = 2.0, 1.0, 1.0
    cores = os.cpu_count() or 1
    for flag in ("server_cpu", "load_cpu"):
        cpu = getattr(args, flag)
        if cpu is not None and cpu >= cores:
            print(f"bench: --{flag.replace('_', '-')} {cpu}: only {cores} cores; not pinning")
            setattr(args, flag, None)
    if args.load_cpu is not None:
        os.sched_setaffinity(0, {args.load_cpu})  # the orchestrator stays off the server core
    raise_nofile()

    facts = report.machine()
    given = list(argv if argv is not None else sys.argv[1:])
    command = " ".join(["python -m bench.fanout", *([shlex.join(given)] if given else [])])
    started = dt.datetime.now(dt.UTC)
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="linkd-fanout-") as tmpdir:
            for case in build_cases(args):
                for name in args.servers:
                    r = _run_with_retry(name, case, args, Path(tmpdir))
                    results.append(r)
                    print(_one_line(r), file=sys.stderr)
    finally:
        _cleanup()
    return _write(results, args, facts, command, started)


def _run_with_retry(name: str, case: Case, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One retry, then the failure is recorded and the sweep goes on."""
    for attempt in (1, 2):
        try:
            return run_case(name, case, args, tmp)
        except (RuntimeError, OSError, TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            print(f"{name} {case}: attempt {attempt} failed: {error}", file=sys.stderr)
            _cleanup()
            time.sleep(2)
    return {"server": name, **asdict(case), "inflight": None, "skipped": "failed", "error": error}


def _one_line(r: dict[str, Any]) -> str:
    head = f"{report.case_label(r):<22} {r['server']:<12}"
    if r.get("skipped"):
        return f"{head} n/a ({r['skipped']})"
    if r["scenario"] == "idle":
        return f"{head} {r['kib_per_conn']:.2f} KiB/conn"
    lat = r["latency_ms"]
    flag = " LOAD>90%" if r["load_bound"] else ""
    flag += f" kept up {100 * r['kept_up']:.0f} %"
    return (
        f"{head} {r['deliveries_per_s']:,.0f} deliveries/s, p99 {lat['p99']:.2f} ms, "
        f"lost {r['lost']}, errors {r['error_count']}, server CPU {r['server_cpu_percent']:.0f} %,"
        f" load CPU {r['load_cpu_percent']:.0f} %{flag}"
    )


def _write(
    results: list[dict[str, Any]],
    args: argparse.Namespace,
    facts: dict[str, Any],
    command: str,
    started: dt.datetime,
) -> int:
    notes = [
        f"servers and their children pinned to core {args.server_cpu}; load processes and"
        f" the orchestrator to core {args.load_cpu}",
        "all servers run on uvloop; every client and the server are on 127.0.0.1",
        f"payload {PAYLOAD_SIZE} B of JSON, message {MSG_SIZE} B"
        ' ({"type":"bench.msg","data":payload}); one room per run, one publisher',
        f"saturation: K = {args.inflight} publishes in flight on one connection; linkd's"
        f" service registers per_connection = {args.inflight}, so its publishes may be"
        " emitted out of order (the peers handle one connection's messages in order)",
        "latency: subscriber's read time minus the publisher's time.monotonic_ns() in the"
        " payload; timestamps and sequence numbers are read by slicing the frame at fixed"
        f" offsets; 1 connection in {args.sample_every} also parses every message with orjson",
        "lost = published - distinct sequence numbers received, summed over subscribers",
        f"deflate: 1 connection in {args.inflate_every} inflates every delivery (latency,"
        " order, loss); the others inflate their sub ack, then count compressed frames",
        "server CPU % = the server process plus its children over the measured window,"
        " 100 = one core; µs/delivery = that CPU time per delivery",
        f"load ≥ {LOAD_BOUND:.0f} %: the load processes used more than that of their core;"
        " kept up = deliveries read / (publishes acked x subscribers) in the window;"
        f" below {100 * KEPT_UP:.0f} % the run is 'lagging': the load fell behind and"
        " deliveries/s measures the load generator, not the server. A load near 100 %"
        " that kept up reads several frames per read; it is not what limits the run.",
        "idle: RSS growth of the server (linkd: engine + worker; 'main process only': the"
        f" engine) per connection, {args.settle:g} s after the last one subscribed",
    ]
    if "tls" in args.scenarios:
        notes.append(
            "tls: saturation over TLS 1.3 (the load offers nothing older), every server with"
            " the same self-signed ECDSA P-256 certificate (bench/fanout_tls.py) on uvloop's"
            " TLS transport; the load decrypts every delivery"
        )
    if args.max_outbound_buffer is not None:
        notes.append(f"linkd --max-outbound-buffer {args.max_outbound_buffer}")
    report_json: dict[str, Any] = {
        "benchmark": "fanout",
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": facts,
        "parameters": {
            k: v for k, v in vars(args).items() if k not in ("output", "no_progress", "plot")
        },
        "notes": notes,
        "results": results,
        "ratios": report.ratios(results),
        "targets": report.targets(results),
        "loadavg_end": list(os.getloadavg()),
        # Others may commit or edit the engine while a long sweep runs.
        "git_revision_end": report.git("rev-parse", "HEAD"),
        "git_dirty_files_end": report.git("status", "--porcelain").splitlines(),
    }
    path = output_path(args.output, "fanout")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        orjson.dumps(report_json, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    )
    print(report.table(results))
    print()
    print(report.idle_table(results))
    print()
    print(report.ratio_table(report_json["ratios"]))
    print()
    for goal in report_json["targets"]:
        print(f"- {'met' if goal['met'] else 'MISSED'}: {goal['goal']}: {goal['value']}")
    for note in notes:
        print(f"- {note}")
    print(f"- load average at start {facts['loadavg']}, at end {report_json['loadavg_end']}")
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"- written to {shown}")
    if args.plot:
        for png in report.plot(results, path.with_suffix("")):
            print(f"- chart {png.relative_to(ROOT) if png.is_relative_to(ROOT) else png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
