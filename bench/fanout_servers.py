"""Start, probe, measure and stop the servers under test of ``bench/fanout.py``.

Each run gets a fresh server process on a free 127.0.0.1 port, started in its own
session with its affinity set to the server core and its open-file limit raised
before ``exec`` (``_preexec``); children (linkd's service worker) inherit both.

| name | process |
|---|---|
| ``linkd`` | ``engine --service bench.fanout_service --workers 1 --ws-rate 0`` (per-IP caps off) |
| ``linkd-inproc`` | ``python -m bench.fanout_inproc``: an embedded ``Engine``, no IPC |
| ``websockets`` | ``python -m bench.fanout_peers websockets`` |
| ``picows`` | ``python -m bench.fanout_peers picows`` |

With ``tls=(cert, key)`` (the ``tls`` scenario) every server serves TLS with that pair:
linkd with ``--tls-cert/--tls-key``, the others with an ``ssl.SSLContext``
(``bench/fanout_tls.py``). A server is ready when a fresh client completes the upgrade
(over TLS when it serves TLS) and gets its ``bench.sub`` acked. Stopping is SIGTERM,
then SIGKILL for the server and every process it started, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path

import psutil

from .fanout_tls import client_context
from .fanout_wire import handshake, sub
from .ipc import ROOT, engine_command
from .wsload import Masker, parse_frames

__all__ = [
    "SERVERS",
    "Server",
    "cpu_seconds",
    "rss_bytes",
    "start_server",
    "stop_everything",
    "stop_server",
    "write_syscalls",
]

HOST = "127.0.0.1"
SERVERS = ("linkd", "linkd-inproc", "websockets", "picows")
READY_TIMEOUT = 30.0


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    ipc_path: str | None
    #: "server" (the process we started) and "worker1"... (its children).
    pids: dict[str, int] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _preexec(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return setup


def _command(
    name: str,
    port: int,
    ipc_path: str | None,
    max_outbound: int | None,
    tls: tuple[str, str] | None = None,
) -> list[str]:
    return [*_base_command(name, port, ipc_path, max_outbound), *_tls_args(name, tls)]


def _tls_args(name: str, tls: tuple[str, str] | None) -> list[str]:
    if tls is None:
        return []
    if name == "linkd":
        return ["--tls-cert", tls[0], "--tls-key", tls[1]]
    return [tls[0], tls[1]]  # the peers' and linkd-inproc's CERT KEY arguments


def _base_command(
    name: str, port: int, ipc_path: str | None, max_outbound: int | None
) -> list[str]:
    if name == "linkd":
        assert ipc_path is not None
        cmd = [
            *engine_command(),
            *("--listen", f"{HOST}:{port}", "--ipc", ipc_path),
            *("--service", "bench.fanout_service", "--workers", "1"),
            *("--ws-rate", "0"),  # the publisher floods on purpose
            *("--max-connections-per-ip", "0", "--new-connections-per-ip", "0"),
            # Every load connection comes from a few loopback addresses: the per-address
            # HTTP rate (1000/s by default) would refuse the connect storm with 429.
            *("--http-rate", "0"),
            *("--no-access-log", "--log-level", "warning", "--shutdown-grace", "2"),
        ]
        if max_outbound is not None:
            cmd += ["--max-outbound-buffer", str(max_outbound)]
        return cmd
    if name == "linkd-inproc":
        return [sys.executable, "-m", "bench.fanout_inproc", str(port)]
    if name in ("websockets", "picows"):
        return [sys.executable, "-m", "bench.fanout_peers", name, str(port)]
    raise ValueError(f"unknown server {name!r}: {', '.join(SERVERS)}")


def start_server(
    name: str,
    port: int,
    *,
    cpu: int | None,
    per_connection: int,
    tmp: Path,
    max_outbound: int | None = None,
    tls: tuple[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Server:
    """``extra``: more arguments for the server's command line (bench/scale.py)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINKD_", "BENCH_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["BENCH_FANOUT_PER_CONNECTION"] = str(per_connection)
    # Short: a Unix socket path has a ~108-byte limit.
    ipc_path = f"/tmp/lk-bench-{os.getpid()}-{port}.sock" if name == "linkd" else None
    cmd = [*_command(name, port, ipc_path, max_outbound, tls), *extra]
    log_path = tmp / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_preexec(cpu),
            start_new_session=True,  # a Ctrl-C reaches us only; we stop it in order
        )
    server = Server(name, proc, log_path, ipc_path, {"server": proc.pid}, cmd)
    try:
        _wait_ready(server, port, client_context() if tls else None)
    except BaseException:
        stop_server(server)
        raise
    return server


async def probe(port: int, tls: ssl.SSLContext | None = None) -> bool:
    """Upgrade, ``bench.sub`` to a room of its own, wait for the ack."""
    try:
        async with asyncio.timeout(2):
            reader, writer = await asyncio.open_connection(HOST, port, ssl=tls)
            try:
                writer.write(handshake(HOST, port, deflate=False))
                head = await reader.readuntil(b"\r\n\r\n")
                if b" 101 " not in head.split(b"\r\n", 1)[0]:
                    return False
                masker = Masker()
                writer.write(masker.frame(sub("bench-probe")))
                buf = bytearray()
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return False
                    buf += chunk
                    frames, _ = parse_frames(buf)
                    if frames:
                        writer.write(masker.frame(b"\x03\xe8", 0x8))
                        return frames[0][1] == b'{"id":1,"type":"bench.sub","data":true}'
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False


def _wait_ready(server: Server, port: int, tls: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.name}: not ready in {READY_TIMEOUT}s:\n{server.log_tail()}"
            )
        if asyncio.run(probe(port, tls)):
            break
        time.sleep(0.1)
    children = psutil.Process(server.proc.pid).children(recursive=True)
    for i, child in enumerate(sorted(children, key=lambda p: p.pid)):
        server.pids[f"worker{i + 1}"] = child.pid


def rss_bytes(server: Server) -> dict[str, int]:
    """Resident set size of the server and each of its children."""
    out: dict[str, int] = {}
    for name, pid in server.pids.items():
        with contextlib.suppress(psutil.Error):
            out[name] = psutil.Process(pid).memory_info().rss
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process (missing ones are left out)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
    return out


def write_syscalls(pids: dict[str, int]) -> dict[str, int]:
    """Write-type system calls so far (Linux ``/proc/PID/io`` ``syscw``) per process."""
    out: dict[str, int] = {}
    for name, pid in pids.items():
        with contextlib.suppress(psutil.Error, AttributeError):
            out[name] = psutil.Process(pid).io_counters().write_count
    return out


def stop_server(server: Server) -> None:
    """SIGTERM the server (linkd stops its workers); SIGKILL whatever is left, by pid."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for name, pid in server.pids.items():
        if name == "server":
            continue
        with contextlib.suppress(psutil.Error):
            child = psutil.Process(pid)
            try:
                child.wait(5)
            except psutil.TimeoutExpired:
                child.kill()
    if server.ipc_path is not None:
        with contextlib.suppress(OSError):
            os.unlink(server.ipc_path)


def stop_everything(servers: list[Server], children: Sequence[BaseProcess]) -> None:
    """At exit or on a signal: every server still running, then every load process."""
    for server in list(servers):
        with contextlib.suppress(Exception):
            stop_server(server)
    for proc in children:
        if proc.is_alive():
            proc.terminate()
            proc.join(3)
            if proc.is_alive():
                proc.kill()
