"""Chat: C clients in rooms of R sending chat messages, linkd against python-socketio and Node.

Run it from the repository root (one invocation runs every server, same load)::

    python -m bench.chat                       # 2,000 clients, rooms of 20, ~2 min
    python -m bench.chat --quick               # 200 clients, short phases: < 1 min
    python -m bench.chat --servers linkd,node --clients 1000 --room-size 10

Servers (``bench/chat_servers.py``), each a fresh process pinned to the server core
(``--server-cpu``, 0) with its children, all on one core:

``linkd``
    ``engine --service bench.chat_service --workers 1``: the engine and one SDK worker
    (``bench/chat_service.py``), sharing the core.
``socketio``
    python-socketio's ``AsyncServer(async_mode="asgi")`` on uvicorn with uvloop
    (``bench/chat_peers/socketio_server.py``).
``node``
    Node's socket.io, locked in ``bench/chat_peers/node/package-lock.json`` and
    installed there with ``npm ci`` when missing (``bench/chat_peers/node/server.js``).

Every server does the same: a client connects with ``?room=R`` and is joined and sent
``chat.joined``; ``chat.send {room, message}`` is validated (the room is a string the
client joined, the message a non-empty string of at most 1,000 characters), emitted to
the room, sender included, as ``chat.message {id, room, from, message}``, and acked with
``{id}`` (linkd's ack envelope; socket.io's ack callback). socket.io runs on its
WebSocket transport only (``EIO=4&transport=websocket``), no compression anywhere.

The load (``bench/chat_load.py``) is one process pinned to ``--load-cpu`` (1), the
orchestrator too: raw WebSocket clients with a linkd and a socket.io adapter. Two
phases on the same connections, each ``--warmup`` then ``--duration`` s measured:
``rate``, each client sending once per ``--interval`` s (2 000 clients / 2 s = 1 000
msg/s, 20 000 deliveries/s) for ack and delivery latency; ``saturation``, each client
keeping ``--window`` messages in flight, for acked messages/s and deliveries/s. CPU per
message is the server's processes' CPU time (engine + worker for linkd) over the
window ÷ messages acked. Results: ``bench/results/chat-<date>.json`` with the machine,
versions, git revision and load average; the table and the ratios against
python-socketio and Node go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import math
import multiprocessing as mp
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from . import chat_report as report
from .chat_load import LoadSpec, load_process
from .chat_servers import PROTOCOL, SERVERS, Server, ensure_node_modules, start_server, stop_server
from .cli import cpu_arg, names_arg, output_path
from .ipc import ROOT, free_port, machine

__all__ = ["build_parser", "main"]

PHASES = ("rate", "saturation")
QUICK = {"clients": 200, "warmup": 1.0, "duration": 3.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.chat",
        description="A chat workload against linkd, python-socketio and Node's socket.io.",
    )
    p.add_argument(
        "--servers",
        type=names_arg(SERVERS),
        default=list(SERVERS),
        help="comma-separated: linkd, socketio, node (all)",
    )
    p.add_argument(
        "--phases",
        type=names_arg(PHASES),
        default=list(PHASES),
        help="comma-separated: rate, saturation (both)",
    )
    p.add_argument("-c", "--clients", type=int, default=2000, help="clients (2000)")
    p.add_argument("-r", "--room-size", type=int, default=20, help="clients per room (20)")
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="rate phase: seconds between two messages of one client (2)",
    )
    p.add_argument(
        "-w", "--window", type=int, default=1, help="saturation: messages in flight per client (1)"
    )
    p.add_argument("--message-chars", type=int, default=100, help="chat line length (100)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per phase (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (2)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short check: 200 clients, 1 s warm-up, 3 s measured (unless given)",
    )
    p.add_argument(
        "--linkd-membership",
        choices=("worker", "engine"),
        default="worker",
        help="where linkd's service checks the room was joined: a table in the worker, "
        "or ctx.rooms() per message (worker)",
    )
    p.add_argument(
        "--linkd-service-queue",
        default="auto",
        help="linkd's --service-queue: auto = max(1024, clients x window), so that the"
        " saturation phase measures throughput rather than load shedding; 'default' keeps"
        " the engine's 1024 (auto)",
    )
    p.add_argument(
        "--socketio-ws",
        choices=("websockets-sansio", "websockets", "wsproto"),
        default="websockets-sansio",
        help="uvicorn's WebSocket protocol for python-socketio (websockets-sansio: its auto)",
    )
    p.add_argument("--server-cpu", type=cpu_arg, default=0, help="core of the servers (0)")
    p.add_argument("--load-cpu", type=cpu_arg, default=1, help="core of the load (1)")
    p.add_argument("--output", help="JSON path (bench/results/chat-<date>.json)")
    return p


def _apply_quick(args: argparse.Namespace, given: Sequence[str]) -> None:
    for name, value in QUICK.items():
        flags = {f"--{name}", "-c"} if name == "clients" else {f"--{name}"}
        if not any(g.split("=", 1)[0] in flags for g in given):
            setattr(args, name, value)


#: Every process we started, so that an error or a signal still stops them.
_servers: list[Server] = []
_loaders: list[mp.process.BaseProcess] = []


def _stop_all() -> None:
    for loader in _loaders:
        if loader.is_alive():
            loader.terminate()
            loader.join(5)
        if loader.is_alive():
            loader.kill()
            loader.join(2)
    for server in _servers:
        stop_server(server)
    _loaders.clear()
    _servers.clear()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def service_queue(args: argparse.Namespace) -> int | None:
    """linkd's ``--service-queue`` for this run (None: the engine's default)."""
    if args.linkd_service_queue == "default":
        return None
    if args.linkd_service_queue == "auto":
        return max(1024, int(args.clients) * int(args.window))
    return int(args.linkd_service_queue)


def run_server(name: str, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    port = free_port()
    load_before = os.getloadavg()
    server = start_server(
        name,
        port,
        cpu=args.server_cpu,
        tmp=tmp,
        membership=args.linkd_membership,
        socketio_ws=args.socketio_ws,
        service_queue=service_queue(args),
    )
    _servers.append(server)
    try:
        spec = LoadSpec(
            protocol=PROTOCOL[name],
            port=port,
            clients=args.clients,
            room_size=args.room_size,
            interval=args.interval,
            window=args.window,
            warmup=args.warmup,
            duration=args.duration,
            phases=tuple(args.phases),
            message_chars=args.message_chars,
            cpu=args.load_cpu,
            pids=dict(server.pids),
            label=name,
        )
        ctx = mp.get_context("spawn")
        receiver, sender = ctx.Pipe(duplex=False)
        loader = ctx.Process(target=load_process, args=(spec, sender), name="chat-load")
        loader.start()
        _loaders.append(loader)
        sender.close()
        budget = 90 + len(args.phases) * (args.warmup + args.duration + 15)
        if not receiver.poll(budget):
            raise RuntimeError(f"{name}: the load generator did not finish in {budget:.0f} s")
        try:
            result: dict[str, Any] = receiver.recv()
        except EOFError:
            raise RuntimeError(f"{name}: the load generator died") from None
        loader.join(10)
        if "failed" in result:
            raise RuntimeError(f"{name}: load generator: {result['failed']}\n{server.log_tail()}")
        if server.proc.poll() is not None:
            raise RuntimeError(f"{name}: the server died:\n{server.log_tail()}")
        log_tail = server.log_tail()
    finally:
        _stop_all()
    rows = report.summarize(name, result, args.room_size, args.server_cpu)
    for row in rows:
        row.update(
            command=server.command,
            connect_seconds=result["connect_seconds"],
            errors_outside_windows=result["errors_outside_windows"],
            loadavg_before=list(load_before),
            loadavg_after=list(os.getloadavg()),
            server_log_tail=log_tail,
        )
    return rows


def _versions(servers: Sequence[str], node_socketio: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if "socketio" in servers:
        from importlib.metadata import version

        for dist in ("python-socketio", "python-engineio", "uvicorn", "httptools", "websockets"):
            with contextlib.suppress(Exception):
                out[dist] = version(dist)
    if node_socketio is not None:
        out["socket.io (npm)"] = node_socketio
        with contextlib.suppress(OSError):
            import subprocess

            out["node"] = subprocess.run(
                ["node", "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    given = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(given)
    if args.quick:
        _apply_quick(args, given)
    if args.clients < 1 or args.room_size < 1 or args.clients % args.room_size:
        parser.error("--clients must be a positive multiple of --room-size")
    if args.window < 1 or args.interval <= 0 or not 1 <= args.message_chars <= 1000:
        parser.error("--window >= 1, --interval > 0, --message-chars 1..1000")
    if args.linkd_service_queue not in ("auto", "default") and not (
        args.linkd_service_queue.isdigit() and int(args.linkd_service_queue) > 0
    ):
        parser.error("--linkd-service-queue: auto, default or a positive number")
    if args.message_chars < 30:
        parser.error("--message-chars must be at least 30 (the send time is in the text)")
    cores = os.cpu_count() or 1
    for flag in ("server_cpu", "load_cpu"):
        cpu = getattr(args, flag)
        if cpu is not None and cpu >= cores:
            print(f"bench: --{flag.replace('_', '-')} {cpu}: only {cores} cores; not pinning")
            setattr(args, flag, None)
    if args.load_cpu is not None:
        os.sched_setaffinity(0, {args.load_cpu})  # the orchestrator stays off the server core
    signal.signal(signal.SIGTERM, _on_signal)
    node_socketio = ensure_node_modules() if "node" in args.servers else None

    facts = machine()
    facts["versions"].update(_versions(args.servers, node_socketio))
    command = " ".join(["python -m bench.chat", *([shlex.join(given)] if given else [])])
    started = dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="linkd-chat-") as tmpdir:
            for name in args.servers:
                server_rows = run_server(name, args, Path(tmpdir))
                rows += server_rows
                for r in server_rows:
                    print(
                        f"{name:<9} {r['phase']:<10}: {r['acks_per_s']:,.0f} acked msg/s, "
                        f"{r['deliveries_per_s']:,.0f} deliveries/s, ack p99 "
                        f"{r['ack_latency_ms']['p99']:.2f} ms, errors {r['errors']}",
                        file=sys.stderr,
                    )
    finally:
        _stop_all()
    entries = report.ratios(rows)
    verdict = report.verdict(entries)
    notes = [
        f"servers pinned to core {args.server_cpu} (linkd: engine and worker share it),"
        f" load generator and orchestrator to core {args.load_cpu}",
        f"{args.clients} clients in rooms of {args.room_size}; the sender receives its own"
        " message, so each acked message is room-size deliveries",
        f"rate: each client sends once per {args.interval:g} s"
        f" ({args.clients / args.interval:,.0f} msg/s offered); saturation: each client keeps"
        f" {args.window} message(s) in flight",
        "ack latency: from writing chat.send to reading its ack; delivery latency: from"
        " writing it to reading chat.message, per member (one monotonic read per socket read)",
        "µs/msg: the server's CPU time (all its processes) per acked message;"
        " unlike msg/s it does not depend on how much CPU other jobs left us",
        "kept up: deliveries read / (acked x room size) in the window; below ~0.95 the"
        " load generator fell behind",
        f"linkd membership check: {args.linkd_membership}; --service-queue"
        f" {service_queue(args) or 'default (1024)'}",
        f"python-socketio on uvicorn --ws {args.socketio_ws}, --http httptools, --loop uvloop",
    ]
    result = {
        "benchmark": "chat",
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": facts,
        "parameters": {
            "servers": args.servers,
            "phases": args.phases,
            "clients": args.clients,
            "room_size": args.room_size,
            "interval_s": args.interval,
            "window": args.window,
            "message_chars": args.message_chars,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "linkd_membership": args.linkd_membership,
            "linkd_service_queue": service_queue(args),
            "socketio_ws": args.socketio_ws,
            "server_cpu": args.server_cpu,
            "load_cpu": args.load_cpu,
        },
        "notes": notes,
        "results": rows,
        "ratios": entries,
        "verdict": verdict,
        "wall_seconds": time.monotonic() - began,
        "loadavg_end": list(os.getloadavg()),
    }
    path = output_path(args.output, "chat")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(report.table(rows))
    print()
    print(report.ratio_table(entries))
    print()
    if verdict:
        print(f"- {verdict}")
    for note in notes:
        print(f"- {note}")
    print(
        f"- load average (1/5/15 min) at start {facts['loadavg']}, at end {result['loadavg_end']}"
    )
    print(f"- written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0 if not any(math.isnan(r["acks_per_s"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
