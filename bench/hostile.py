"""Hostile traffic: does anything one client sends hurt the others? (issue 10)

Run it from the repository root::

    python -m bench.hostile --quick          # every phase, short windows: < 60 s
    python -m bench.hostile                  # every phase, 8 s each: ~3 min
    python -m bench.hostile --setups echo --phases pipeline,fragments --duration 5

Two setups, each a fresh engine pinned to core 0 (``--engine-cpu``), on 127.0.0.1:

``echo``
    ``engine --echo /echo``; phases smuggling, slowloris, garbage (oversized frames,
    bad UTF-8, protocol errors), conn-flood, slow-reader (echoes never read),
    fragments, ping-flood, pipeline (the ones with lasting effects last).
``service``
    ``engine --service bench.hostile_service`` with ``--jwt-secret`` and a JWKS file
    holding an RSA key; phases garbage (bad JSON, bad envelopes, binary), slow-reader
    (subscribers that stop reading while the clients get fan-out), bad-tokens.

In each setup, ``--clients`` well-behaved WebSocket clients (``bench/hostile_clients.py``,
one process on the load core, from 127.0.0.1) send echo requests at ``--rate`` per
client, plus a ``GET /health`` prober and, in the service setup, a room fan-out. First a
baseline window without attackers, then each attack for ``--duration`` s, each in its own
process (``bench/hostile_attacks.py``, niced, from 127.0.0.2 and up so that per-address
limits fall on it), each followed by a cooldown window (``--cooldown`` s, and until
``/health`` is fast again). A psutil sampler reads the engine's RSS every 100 ms. Per
window: the clients' latency, messages sent / received / lost, engine CPU and RSS, what
the attacker got, whether the engine refused it as the issue wants, and the verdict: p99
at most 2x the baseline's, RSS growth during the attack and its cooldown within the bound
(see ``hostile_report.py``), nothing lost, no client closed, the engine alive. Writes
``bench/results/hostile-<date>.json`` and prints the tables pasted in bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import os
import secrets
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from protocol.limits import Limits

from .cli import cpu_arg, output_path
from .hostile_attacks import AttackSpec, attack_process
from .hostile_clients import ClientSpec, clients_process
from .hostile_engine import KID, Sampler, recover, start_engine, stop_engine, write_jwks
from .hostile_report import after_table, build_rows, phase_bound, table
from .hostile_service import ME_ROUTE, WS_PATH
from .ipc import free_port, machine

__all__ = ["build_parser", "main"]

ROOT = Path(__file__).resolve().parent.parent
#: Attacks whose effects outlast them (in the engine before issue 10's fixes) go last.
ECHO_PHASES = "smuggling,slowloris,garbage,conn-flood,slow-reader,fragments,ping-flood,pipeline"
SERVICE_PHASES = "garbage,slow-reader,bad-tokens"
ECHO_GARBAGE = (
    "too-big-header,too-big-fragments,bad-utf8,bad-utf8-split,reserved-opcode,rsv-bits,"
    "unmasked,bad-close"
)
SERVICE_GARBAGE = "bad-json,not-envelope,unknown-type,no-id-bad-type,binary,bad-utf8,too-big-header"


def attack_params(setup: str, attack: str, args: argparse.Namespace) -> dict[str, Any]:
    if attack == "pipeline":
        return {"connections": args.pipeline_connections}
    if attack == "garbage":
        kinds = ECHO_GARBAGE if setup == "echo" else SERVICE_GARBAGE
        return {"kinds": kinds, "max_message_size": args.max_message_size, "concurrency": 4}
    if attack == "slow-reader":
        return {"connections": args.slow_readers, "fanout": setup == "service"}
    if attack == "slowloris":
        return {"connections": args.slowloris_connections}
    if attack == "conn-flood":
        return {"total": args.flood_connections}
    if attack == "bad-tokens":
        return {
            "secret": args.jwt_secret,
            "kid": KID,
            "route": ME_ROUTE,
            "public_pem": args.jwks_public_pem,
        }
    return {}


def _spawn_attacker(
    ctx: Any, setup: str, attack: str, port: int, args: argparse.Namespace
) -> tuple[Any, Any, Any]:
    sources = tuple(f"127.0.0.{2 + i}" for i in range(args.attacker_addresses))
    spec = AttackSpec(
        attack=attack,
        port=port,
        path="/echo" if setup == "echo" else WS_PATH,
        duration=args.duration,
        sources=sources,
        cpu=args.load_cpu,
        nice=args.attacker_nice,
        params=attack_params(setup, attack, args),
        tail=args.tail,
    )
    go = ctx.Event()
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=attack_process, args=(spec, go, sender), name=f"attack-{attack}", daemon=True
    )
    proc.start()
    sender.close()
    if not receiver.poll(30):
        raise RuntimeError(f"attacker {attack} did not start")
    receiver.recv()
    return proc, go, receiver


def _reap(proc: Any, wait: float = 5.0) -> None:
    proc.join(wait)
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def run_setup(setup: str, phases: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port = free_port()
    engine = start_engine(setup, port, args, tmp)
    windows = ["baseline"] + [n for p in phases for n in (p, f"{p} after")]
    ctx = mp.get_context("spawn")
    window = ctx.Value("i", -1, lock=False)
    stop = ctx.Event()
    receiver, sender = ctx.Pipe(duplex=False)
    spec = ClientSpec(
        port=port,
        path="/echo" if setup == "echo" else WS_PATH,
        clients=args.clients,
        rate=args.rate,
        fanout_rate=args.fanout_rate if setup == "service" else 0.0,
        health_rate=args.health_rate,
        windows=len(windows),
        drain=args.drain,
        cpu=args.load_cpu,
    )
    clients = ctx.Process(
        target=clients_process, args=(spec, window, stop, sender), name="clients", daemon=True
    )
    clients.start()
    sender.close()
    attacks: dict[str, Any] = {}
    recovery: dict[str, float | None] = {}
    engine_died_in: str | None = None
    sampler: Sampler | None = None
    pending: tuple[Any, Any, Any] | None = None
    try:
        if not receiver.poll(60):
            raise RuntimeError(f"{setup}: the clients did not connect")
        ready = receiver.recv()
        if "failed" in ready:
            raise RuntimeError(f"{setup}: clients: {ready['failed']}")
        sampler = Sampler(engine, ready["ready"], args.engine_cpu)
        sampler.start()
        sampler.mark(0)
        window.value = 0
        _progress(setup, "baseline", args)
        time.sleep(args.baseline)
        # The next attacker is spawned while the previous one's cooldown runs.
        pending = _spawn_attacker(ctx, setup, phases[0], port, args) if phases else None
        for i, attack in enumerate(phases):
            assert pending is not None
            proc, go, result_pipe = pending
            index = 1 + 2 * i
            sampler.mark(index)
            window.value = index
            go.set()
            began = time.monotonic()
            _progress(setup, attack, args)
            if result_pipe.poll(args.duration + 20):
                attacks[attack] = result_pipe.recv()
            else:
                attacks[attack] = {"summary": "attacker overran: killed", "failed": "overran"}
            # An attacker that gave up early still gets a window of the full length.
            time.sleep(max(0.0, began + args.duration - time.monotonic()))
            _reap(proc)
            sampler.mark(index + 1)
            window.value = index + 1
            pending = None
            if i + 1 < len(phases):
                pending = _spawn_attacker(ctx, setup, phases[i + 1], port, args)
            recovery[attack] = recover(port, args.cooldown, args.recovery_limit)
            if engine.proc.poll() is not None:
                engine_died_in = attack
                break
        sampler.mark(len(windows))
        stop.set()
        if not receiver.poll(args.drain + 30):
            raise RuntimeError(f"{setup}: the clients did not report")
        result: dict[str, Any] = receiver.recv()
        if "failed" in result:
            raise RuntimeError(f"{setup}: clients: {result['failed']}")
    finally:
        try:
            if pending is not None:
                _reap(pending[0], 0)
            stop.set()
            if sampler is not None:
                sampler.stop()
            clients.join(10)
            if clients.is_alive():
                clients.kill()
        finally:
            stop_engine(engine)  # whatever failed above
    log = engine.log_path.read_bytes()
    assert sampler is not None
    return {
        "setup": setup,
        "port": port,
        "windows": windows,
        "phases": phases,
        "clients": result,
        "attacks": attacks,
        "recovery_s": recovery,
        "samples": sampler.samples,
        "marks": sampler.marks,
        "engine_died_in": engine_died_in,
        "engine_exit_code": engine.proc.returncode,
        "log": log,
        "log_tail": log[-3000:].decode(errors="replace"),
    }


def _progress(setup: str, phase: str, args: argparse.Namespace) -> None:
    if not args.no_progress:
        print(f"[{time.strftime('%H:%M:%S')}] {setup}: {phase}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.hostile",
        description="Well-behaved clients' latency, loss and engine memory under attack.",
    )
    a = p.add_argument
    a("--quick", action="store_true", help="short windows and smaller attacks (< 60 s)")
    a("--setups", default="echo,service", help="echo, service (both)")
    a("--phases", default="", help="attacks to run, comma-separated (all of the setup's)")
    a("--clients", type=int, default=50, help="well-behaved WebSocket clients (50)")
    a("--rate", type=float, default=10.0, help="echo requests per second per client (10)")
    a("--fanout-rate", type=float, default=5.0, help="publishes/s to the clients' room (5)")
    a("--health-rate", type=float, default=10.0, help="GET /health per second (10)")
    a("--baseline", type=float, help="seconds without attackers (8; quick 2.5)")
    a("--duration", type=float, help="seconds each attack runs (8; quick 2)")
    a("--cooldown", type=float, help="seconds after each attack (2; quick 0.75)")
    a(
        "--recovery-limit",
        type=float,
        help="longest wait after an attack for /health to be fast again (30; quick 3)",
    )
    a("--drain", type=float, help="seconds for late answers at the end (3; quick 2)")
    a("--tail", type=float, help="seconds an attacker reads after its attack (1; quick 0.5)")
    a("--engine-cpu", type=cpu_arg, default=0, help="core of the engine (0)")
    a("--load-cpu", type=cpu_arg, default=1, help="core of clients and attackers (1)")
    a("--attacker-nice", type=int, default=10, help="nice of the attackers (10)")
    a("--attacker-addresses", type=int, help="attackers' sources 127.0.0.2.. (8; quick 4)")
    a("--header-timeout", type=float, help="engine --header-timeout/--body-timeout (3; quick 2)")
    a("--max-connections", type=int, help="engine --max-connections (1000; quick 400)")
    a("--max-connections-per-ip", type=int, help="engine's per-IP cap (100; quick 64)")
    a(
        "--new-connections-per-ip",
        type=float,
        default=20.0,
        help="engine's new WebSockets per second per address (20; 0: off)",
    )
    a(
        "--new-connections-burst",
        type=float,
        default=100.0,
        help="engine's burst of those (100: the 50 clients connect at once from one address)",
    )
    limits = Limits()
    a("--max-message-size", type=int, default=limits.max_message_bytes, help="engine's")
    a("--max-outbound-buffer", type=int, default=limits.max_outbound_bytes, help="engine's")
    a("--max-header-size", type=int, default=limits.max_header_bytes, help="engine's")
    a("--pipeline-connections", type=int, default=2, help="pipelining connections (2)")
    a("--slow-readers", type=int, default=8, help="connections that stop reading (8)")
    a("--slowloris-connections", type=int, help="slow requests (200; quick 100)")
    a("--flood-connections", type=int, help="connection flood size (2000; quick 800)")
    a("--rss-slack", type=float, default=16.0, help="MiB added to every RSS bound (16)")
    a("--no-access-log", action="store_true", help="start the engine with --no-access-log")
    a("--engine-arg", action="append", default=[], help="extra engine flags (repeatable)")
    a("--output", help="JSON path (bench/results/hostile-<date>.json)")
    a("--no-progress", action="store_true", help="no progress lines")
    return p


_QUICK = {
    "baseline": 2.5,
    "duration": 2.0,
    "cooldown": 0.75,
    "header_timeout": 2.0,
    "recovery_limit": 3.0,
    "drain": 2.0,
    "tail": 0.5,
    "max_connections": 400,
    "max_connections_per_ip": 64,
    "attacker_addresses": 4,
    "slowloris_connections": 100,
    "flood_connections": 800,
}
_FULL = {
    "baseline": 8.0,
    "duration": 8.0,
    "cooldown": 2.0,
    "header_timeout": 3.0,
    "recovery_limit": 30.0,
    "drain": 3.0,
    "tail": 1.0,
    "max_connections": 1000,
    "max_connections_per_ip": 100,
    "attacker_addresses": 8,
    "slowloris_connections": 200,
    "flood_connections": 2000,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the engine and the processes are stopped in order.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The caps sit below the flood, so that the flood meets them.
    for key, value in (_QUICK if args.quick else _FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    if set(setups) - {"echo", "service"} or args.clients < 1 or args.rate <= 0:
        parser.error("--setups takes echo,service; --clients and --rate must be positive")
    if args.max_connections_per_ip and args.max_connections_per_ip < args.clients + 2:
        parser.error("--max-connections-per-ip must leave room for the clients on 127.0.0.1")
    if args.new_connections_per_ip and args.new_connections_burst < args.clients + 2:
        parser.error("--new-connections-burst must let the clients on 127.0.0.1 connect at once")
    wanted = {s.strip() for s in args.phases.split(",") if s.strip()}
    cores = os.cpu_count() or 1
    for flag in ("engine_cpu", "load_cpu"):
        if getattr(args, flag) is not None and getattr(args, flag) >= cores:
            setattr(args, flag, None)
    if args.load_cpu is not None:
        os.sched_setaffinity(0, {args.load_cpu})  # the orchestrator stays off the engine's core
    facts = machine()
    given = list(argv if argv is not None else sys.argv[1:])
    started = dt.datetime.now(dt.UTC)
    runs = []
    with tempfile.TemporaryDirectory(prefix="linkd-hostile-") as tmpdir:
        tmp = Path(tmpdir)
        args.jwt_secret = secrets.token_hex(24)
        args.jwks, args.jwks_public_pem = write_jwks(tmp)
        for setup in setups:
            phases = (ECHO_PHASES if setup == "echo" else SERVICE_PHASES).split(",")
            phases = [p for p in phases if not wanted or p in wanted]
            if phases:
                runs.append(run_setup(setup, phases, args, tmp))
    rows, after = build_rows(runs, args)
    report = {
        "benchmark": "hostile",
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench.hostile", *([shlex.join(given)] if given else [])]),
        "machine": facts,
        "parameters": {
            k: v
            for k, v in vars(args).items()
            if k not in ("jwt_secret", "jwks", "jwks_public_pem", "output")
        },
        "bounds": {
            "rule": "RSS growth within an attack window <= slack + the attacker's connections"
            " x their per-connection budget",
            "per_phase_mib": {
                f"{r['setup']} {p}": phase_bound(p, r["setup"], args)
                for r in runs
                for p in r["phases"]
            },
        },
        "rows": rows,
        "after": after,
        "runs": [
            {k: v for k, v in r.items() if k not in ("log", "samples")}
            | {"rss_samples": [[round(s[0] - r["marks"][0]["t"], 2), *s[1:]] for s in r["samples"]]}
            for r in runs
        ],
        "loadavg_end": list(os.getloadavg()),
    }
    path = output_path(args.output, "hostile")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(table(rows))
    print()
    print(after_table(after, args.recovery_limit))
    print()
    for r in runs:
        if r["engine_died_in"]:
            print(f"- {r['setup']}: the engine DIED during {r['engine_died_in']}:\n{r['log_tail']}")
    print(f"- load average at start {facts['loadavg']}, at end {report['loadavg_end']}")
    print(f"- written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
