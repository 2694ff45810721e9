"""What the IPC hop costs: the same echo handler in-process, and behind 1 and 2 workers.

Run it from the repository root (one invocation runs every scenario, same load)::

    python -m bench.ipc                        # 50 connections, K = 1 and K = 8, 10 s each
    python -m bench.ipc -c 100 -k 1 --duration 5 --scenarios inproc,ipc1

What is compared, each in a fresh engine process pinned to core 0 (``--engine-cpu``):

``inproc`` (``bench/ipc_inprocess.py``)
    An ``Engine`` embedding a ``WebSocketEndpoint`` at ``/ws/bench`` whose plain
    (inline) ``on_message`` parses the frame with orjson and sends the ack
    ``{"id", "type", "data"}``: the same handler without IPC.
``inproc-async`` (optional)
    The same endpoint with an ``async def on_message``: a task per message, as the
    IPC path has, still without IPC.
``ipc1``, ``ipc2`` (``ipcN``)
    ``engine --service bench.ipc_service --workers N``: the engine forwards the frame
    over the Unix socket, the SDK worker runs ``bench.echo`` (returns ``ctx.data``),
    the engine turns the reply into the same ack. The workers inherit the engine's
    affinity: with one core for the engine, they share it.

The load generator (``bench/wsload.py``) is a separate process pinned to core 1
(``--load-cpu``), like the orchestrator: C connections (``-c``, default 50) each keep
K requests in flight (``-k``, default ``1,8``: strict round trips, then saturation),
a 98 B ``data``, for ``--duration`` s after ``--warmup`` s. It speaks WebSocket over
raw sockets on uvloop (masked frames, no compression offered) so that it costs little
next to the engine; its own CPU is reported so you can tell when it is the
bottleneck. With K > 1 the bench service registers ``per_connection = K``
(``--per-connection``), else the engine would handle one message per connection at a
time and queue the rest.

Reported per scenario and K: round trips/s, latency p50/p90/p99/max (ms, client-side),
errors, CPU % of the engine, of the workers and of the load generator over the
measured window (psutil; 100 % = one core), the other load on the engine's core, CPU
µs and read+write system calls per round trip (these two do not depend on how much
CPU other jobs left us), and the ratios IPC / in-process. The JSON
(``bench/results/ipc-<date>.json``) also has the machine, the git revision, the
parameters and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import math
import multiprocessing as mp
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psutil

from .cli import cpu_arg, output_path
from .cli import ms as _ms
from .wsload import CONNECTING, DATA, HOST, WARMUP, LoadSpec, load_process, message_size, probe

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

__all__ = ["Scenario", "main", "ratios", "table"]

ROOT = Path(__file__).resolve().parent.parent

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def engine_command() -> list[str]:
    """The ``engine`` console script next to this interpreter, else ``python -m engine``."""
    script = Path(sys.executable).with_name("engine")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


_REGISTERED = re.compile(rb"registered service bench .*?; (\d+) worker\(s\)")


@dataclass(frozen=True)
class Scenario:
    name: str
    #: 0: in-process endpoint; N: the bench service behind N workers.
    workers: int
    use_async: bool = False

    @classmethod
    def parse(cls, name: str) -> Scenario:
        if name == "inproc":
            return cls(name, 0)
        if name == "inproc-async":
            return cls(name, 0, use_async=True)
        match = re.fullmatch(r"ipc(\d+)", name)
        if match and int(match.group(1)) >= 1:
            return cls(name, int(match.group(1)))
        raise ValueError(f"unknown scenario {name!r}: inproc, inproc-async, ipc1, ipc2...")

    @property
    def description(self) -> str:
        if self.workers == 0:
            handler = "async def" if self.use_async else "inline"
            return f"in-process WebSocketEndpoint ({handler} on_message)"
        return f"engine --service bench.ipc_service --workers {self.workers}"


@dataclass
class Server:
    """A running engine process (and its workers) for one scenario."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    ipc_path: str | None
    pids: dict[str, int] = field(default_factory=dict)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _pin(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, {cpu})

    return pin


def start_server(
    scenario: Scenario,
    port: int,
    inflight: int,
    args: argparse.Namespace,
    tmp: Path,
) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINKD_", "BENCH_IPC_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    ipc_path: str | None = None
    if scenario.workers == 0:
        cmd = [sys.executable, "-m", "bench.ipc_inprocess", str(port)]
        if scenario.use_async:
            cmd.append("--async")
    else:
        # Short: a Unix socket path has a ~108-byte limit.
        ipc_path = f"/tmp/lkb-{os.getpid()}-{port}.sock"
        cmd = [
            *engine_command(),
            "--listen",
            f"{HOST}:{port}",
            "--ipc",
            ipc_path,
            "--service",
            "bench.ipc_service",
            "--workers",
            str(scenario.workers),
            "--no-access-log",
            "--log-level",
            "info",
            "--shutdown-grace",
            "3",
            "--ws-rate",
            "0",  # the load generator floods on purpose
        ]
        env["BENCH_IPC_PER_CONNECTION"] = str(per_connection(args, inflight))
        env["BENCH_IPC_CONCURRENCY"] = str(args.concurrency)
    log_path = tmp / f"{scenario.name}-k{inflight}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin(args.engine_cpu),
            start_new_session=True,  # a Ctrl-C reaches us only; we stop it in order
        )
    server = Server(proc, log_path, ipc_path, {"engine": proc.pid})
    try:
        _wait_ready(server, scenario, port)
    except BaseException:
        stop_server(server)
        raise
    return server


def _wait_ready(server: Server, scenario: Scenario, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{scenario.name}: the engine exited with {server.proc.returncode}:\n"
                + server.log_tail()
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{scenario.name}: not ready in {READY_TIMEOUT}s:\n{server.log_tail()}"
            )
        registered = 0
        if scenario.workers:
            with contextlib.suppress(OSError):
                counts = _REGISTERED.findall(server.log_path.read_bytes())
                registered = max((int(n) for n in counts), default=0)
        if registered >= scenario.workers and asyncio.run(probe(port)):
            break
        time.sleep(0.1)
    children = psutil.Process(server.proc.pid).children(recursive=True)
    if len(children) != scenario.workers:
        raise RuntimeError(
            f"{scenario.name}: expected {scenario.workers} worker processes, found {len(children)}"
        )
    for i, child in enumerate(sorted(children, key=lambda p: p.pid)):
        server.pids[f"worker{i + 1}"] = child.pid


def stop_server(server: Server) -> None:
    """SIGTERM the engine (it drains and stops its workers); SIGKILL what is left."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for name, pid in server.pids.items():
        if name == "engine":
            continue
        with contextlib.suppress(psutil.Error):
            child = psutil.Process(pid)
            child.wait(5)
    for name, pid in server.pids.items():
        if name != "engine":
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
    if server.ipc_path is not None:
        with contextlib.suppress(OSError):
            os.unlink(server.ipc_path)


def per_connection(args: argparse.Namespace, inflight: int) -> int:
    return inflight if args.per_connection == "auto" else int(args.per_connection)


# ============================================================ orchestration
def _check_affinity(server: Server, cpu: int | None) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = {}
    for name, pid in server.pids.items():
        with contextlib.suppress(OSError):
            if cpu is not None and os.sched_getaffinity(pid) != {cpu}:
                os.sched_setaffinity(pid, {cpu})
            seen[name] = sorted(os.sched_getaffinity(pid))
    return seen


def run_one(
    scenario: Scenario, inflight: int, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    port = free_port()
    load_before = os.getloadavg()
    server = start_server(scenario, port, inflight, args, tmp)
    try:
        affinity = _check_affinity(server, args.engine_cpu)
        spec = LoadSpec(
            port=port,
            connections=args.connections,
            inflight=inflight,
            warmup=args.warmup,
            duration=args.duration,
            cpu=args.load_cpu,
            pids=dict(server.pids),
        )
        ctx = mp.get_context("spawn")
        progress = ctx.Value("q", 0, lock=False)
        phase = ctx.Value("i", CONNECTING, lock=False)
        receiver, sender = ctx.Pipe(duplex=False)
        loader = ctx.Process(
            target=load_process, args=(spec, progress, phase, sender), name="bench-load"
        )
        loader.start()
        sender.close()
        try:
            result = _follow(loader, receiver, progress, phase, scenario, inflight, args)
        finally:
            if loader.is_alive():
                loader.terminate()
            loader.join(5)
        if "failed" in result:
            raise RuntimeError(f"{scenario.name} K={inflight}: load generator: {result['failed']}")
        if server.proc.poll() is not None:
            raise RuntimeError(f"{scenario.name}: the engine died:\n{server.log_tail()}")
    finally:
        stop_server(server)
    cpu = result["cpu_percent"]
    workers = [cpu.get(f"worker{i + 1}", math.nan) for i in range(scenario.workers)]
    engine_cpu = cpu.get("engine", math.nan)
    worker_cpu = sum(workers)
    nan = {"cpu_us": math.nan, "syscalls": math.nan, "context_switches": math.nan}
    counts = result["per_round_trip"]
    # Per round trip: does not depend on how much CPU other jobs left us.
    per_rt = {
        "engine": counts.get("engine", nan),
        "workers": {
            key: sum(counts.get(f"worker{i + 1}", nan)[key] for i in range(scenario.workers))
            for key in nan
        },
        "load": counts.get("load", nan),
    }
    other = math.nan
    if args.engine_cpu is not None and args.engine_cpu < len(result["core_busy_percent"]):
        other = result["core_busy_percent"][args.engine_cpu] - engine_cpu - worker_cpu
    result.update(
        scenario=scenario.name,
        description=scenario.description,
        workers=scenario.workers,
        inflight=inflight,
        connections=args.connections,
        per_connection=per_connection(args, inflight) if scenario.workers else None,
        engine_cpu_percent=engine_cpu,
        worker_cpu_percent=worker_cpu if workers else None,
        per_round_trip_summary=per_rt,
        other_cpu_percent_on_engine_core=other,
        per_worker_cpu_percent=workers,
        load_cpu_percent=cpu.get("load", math.nan),
        affinity=affinity,
        loadavg_before=list(load_before),
        loadavg_after=list(os.getloadavg()),
    )
    return result


def _follow(
    loader: mp.process.BaseProcess,
    receiver: Connection,
    progress: Synchronized[int],
    phase: Synchronized[int],
    scenario: Scenario,
    inflight: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Show progress until the load generator sends its result."""
    total = args.warmup + args.duration
    deadline = time.monotonic() + total + 60
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(
            total=round(total, 1),
            desc=f"{scenario.name:<12} K={inflight}",
            unit="s",
            bar_format="{desc} {bar} {n:.1f}/{total:.1f} s {postfix}",
            leave=False,
            file=sys.stderr,
        )
    started: float | None = None
    last_n, last_t = 0, time.monotonic()
    try:
        while not receiver.poll(0.2):
            now = time.monotonic()
            if now > deadline or not loader.is_alive():
                raise RuntimeError(f"{scenario.name} K={inflight}: the load generator stalled")
            if phase.value >= WARMUP and started is None:
                started = now
            if bar is not None and started is not None:
                n = progress.value
                rate = (n - last_n) / (now - last_t)
                last_n, last_t = n, now
                bar.n = round(min(now - started, total), 1)
                bar.set_postfix_str(f"{rate:,.0f} rt/s", refresh=False)
                bar.refresh()
        try:
            result: dict[str, Any] = receiver.recv()
        except EOFError:
            raise RuntimeError(f"{scenario.name} K={inflight}: the load generator died") from None
        return result
    finally:
        if bar is not None:
            bar.close()


def _git(*args: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
        return done.stdout.strip()
    return ""


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for name in ("uvloop", "orjson", "psutil", "cbor2", "wsproto", "h11"):
        with contextlib.suppress(ImportError, AttributeError):
            versions[name] = str(__import__(name).__version__)
    dirty = _git("status", "--porcelain")
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "versions": versions,
        "git_revision": _git("rev-parse", "HEAD"),
        "git_dirty_files": len(dirty.splitlines()) if dirty else 0,
        "loadavg": list(os.getloadavg()),
    }


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.0f}"


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table printed on stdout and pasted in bench/README.md."""
    head = (
        "| scenario | K | rt/s | p50 ms | p90 ms | p99 ms | max ms | errors "
        "| engine CPU % | worker CPU % | load CPU % | other on engine core % "
        "| engine µs/rt | worker µs/rt | engine syscalls/rt | worker syscalls/rt |"
    )
    rows = [head, "|" + "---|" * 16]
    for r in results:
        lat = r["latency_ms"]
        workers = r["per_worker_cpu_percent"]
        wcpu = _pct(r["worker_cpu_percent"]) if workers else "-"
        if len(workers) > 1:
            wcpu += " (" + " + ".join(_pct(w) for w in workers) + ")"
        per_rt = r["per_round_trip_summary"]
        eng, wrk = per_rt["engine"], per_rt["workers"]
        wus = f"{wrk['cpu_us']:.0f}" if workers else "-"
        wsys = f"{wrk['syscalls']:.2f}" if workers else "-"
        rows.append(
            f"| {r['scenario']} | {r['inflight']} | {r['rps']:,.0f} | {_ms(lat['p50'])} "
            f"| {_ms(lat['p90'])} | {_ms(lat['p99'])} | {_ms(lat['max'])} | {r['errors']} "
            f"| {_pct(r['engine_cpu_percent'])} | {wcpu} | {_pct(r['load_cpu_percent'])} "
            f"| {_pct(r['other_cpu_percent_on_engine_core'])} "
            f"| {eng['cpu_us']:.0f} | {wus} | {eng['syscalls']:.2f} | {wsys} |"
        )
    return "\n".join(rows)


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """IPC / in-process, per K: throughput, p50 and p99."""
    out = []
    for r in results:
        if not r["workers"]:
            continue
        base = next(
            (b for b in results if b["scenario"] == "inproc" and b["inflight"] == r["inflight"]),
            None,
        )
        if base is None:
            continue
        out.append(
            {
                "scenario": r["scenario"],
                "inflight": r["inflight"],
                "throughput": r["rps"] / base["rps"] if base["rps"] else math.nan,
                "p50": r["latency_ms"]["p50"] / base["latency_ms"]["p50"],
                "p99": r["latency_ms"]["p99"] / base["latency_ms"]["p99"],
                "cpu_per_round_trip": (
                    r["per_round_trip_summary"]["engine"]["cpu_us"]
                    + r["per_round_trip_summary"]["workers"]["cpu_us"]
                )
                / base["per_round_trip_summary"]["engine"]["cpu_us"],
            }
        )
    return out


def ratio_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| IPC / in-process | K | throughput | p50 | p99 | CPU per round trip |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['inflight']} | {r['throughput']:.2f}x "
            f"| {r['p50']:.2f}x | {r['p99']:.2f}x | {r['cpu_per_round_trip']:.2f}x |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.ipc",
        description="Cost of the IPC hop: the same echo handler in-process and over IPC.",
    )
    p.add_argument("-c", "--connections", type=int, default=50, help="client connections (50)")
    p.add_argument(
        "-k",
        "--inflight",
        default="1,8",
        help="requests in flight per connection, comma-separated runs (1,8)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (2)")
    p.add_argument(
        "--scenarios",
        default="inproc,ipc1,ipc2",
        help="comma-separated: inproc, inproc-async, ipcN (inproc,ipc1,ipc2)",
    )
    p.add_argument(
        "--per-connection",
        default="auto",
        help="the bench service's per_connection; auto = K (auto)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="the bench service's concurrency per worker (64, the SDK default)",
    )
    p.add_argument(
        "--engine-cpu", type=cpu_arg, default=0, help="core for the engine and workers (0)"
    )
    p.add_argument("--load-cpu", type=cpu_arg, default=1, help="core for the load generator (1)")
    p.add_argument("--output", help="JSON path (bench/results/ipc-<date>.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        scenarios = [Scenario.parse(s.strip()) for s in args.scenarios.split(",") if s.strip()]
        inflights = [int(k) for k in args.inflight.split(",") if k.strip()]
        if args.per_connection != "auto" and int(args.per_connection) < 1:
            raise ValueError("--per-connection must be auto or at least 1")
    except ValueError as exc:
        parser.error(str(exc))
    if any(k < 1 for k in inflights) or args.connections < 1:
        parser.error("-c and -k must be at least 1")
    cores = os.cpu_count() or 1
    for flag in ("engine_cpu", "load_cpu"):
        cpu = getattr(args, flag)
        if cpu is not None and cpu >= cores:
            print(f"bench: --{flag.replace('_', '-')} {cpu}: only {cores} cores; not pinning")
            setattr(args, flag, None)
    if args.load_cpu is not None:
        os.sched_setaffinity(0, {args.load_cpu})  # the orchestrator stays off the engine's core

    facts = machine()
    given = list(argv if argv is not None else sys.argv[1:])
    command = " ".join(["python -m bench.ipc", *([shlex.join(given)] if given else [])])
    started = dt.datetime.now(dt.UTC)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="linkd-bench-") as tmpdir:
        for inflight in inflights:
            for scenario in scenarios:
                results.append(run_one(scenario, inflight, args, Path(tmpdir)))
                r = results[-1]
                print(
                    f"{r['scenario']:<12} K={inflight}: {r['rps']:,.0f} rt/s, "
                    f"p50 {_ms(r['latency_ms']['p50'])} ms, p99 {_ms(r['latency_ms']['p99'])} ms, "
                    f"errors {r['errors']}",
                    file=sys.stderr,
                )
    ratio_rows = ratios(results)
    notes = [
        f"engine pinned to core {args.engine_cpu}, load generator to core {args.load_cpu}",
        "the workers inherit the engine's affinity: they share its core",
        "latency is measured by the client, from writing a request to parsing its ack",
        "CPU % is per process over the measured window, 100 = one core",
        "µs/rt is the process's CPU time per round trip, syscalls/rt its read+write"
        " system calls (/proc/PID/io) per round trip: neither depends on how much CPU"
        " other jobs of a shared machine left us, unlike rt/s",
        "other on engine core % = that core's busy time minus the engine and workers:"
        " other processes (and interrupts) competing for it",
    ]
    if any(k > 1 for k in inflights) and any(s.workers for s in scenarios):
        if args.per_connection == "auto":
            notes.append("K > 1: the bench service registers per_connection = K")
        else:
            notes.append(
                f"per_connection = {args.per_connection}: beyond it, a connection's "
                "requests queue in the engine"
            )
    report = {
        "benchmark": "ipc",
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": facts,
        "parameters": {
            "connections": args.connections,
            "inflight": inflights,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "scenarios": [s.name for s in scenarios],
            "per_connection": args.per_connection,
            "service_concurrency": args.concurrency,
            "engine_cpu": args.engine_cpu,
            "load_cpu": args.load_cpu,
            "data_bytes": len(orjson.dumps(DATA)),
            "message_bytes": message_size(),
        },
        "notes": notes,
        "results": results,
        "ratios": ratio_rows,
        "loadavg_end": list(os.getloadavg()),
    }
    path = output_path(args.output, "ipc")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(results))
    print()
    print(ratio_table(ratio_rows))
    print()
    for note in notes:
        print(f"- {note}")
    print(
        f"- load average (1/5/15 min) at start {facts['loadavg']}, at end {report['loadavg_end']}"
    )
    print(f"- written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
