"""The engine under attack for ``bench/hostile.py``: start, stop, watch.

``start_engine`` runs ``engine`` (the ``echo`` or the ``service`` setup) pinned to its
core, listening on 127.0.0.1 only, with the limits the bench states and its log in a
file; ``Sampler`` reads its RSS every 100 ms and marks each window's start (CPU time,
RSS, log offset); ``recover`` waits until ``/health`` is fast again after an attack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from .ipc import engine_command

__all__ = ["KID", "Engine", "Sampler", "recover", "start_engine", "stop_engine", "write_jwks"]

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
KID = "bench-rsa"


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    log_path: Path
    ipc_path: str
    workers: list[int] = field(default_factory=list)


def _preexec(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the flood wants thousands


def _healthy(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as sock:
        sock.settimeout(1)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return sock.recv(64).startswith(b"HTTP/1.1 200")
    return False


def recover(port: int, cooldown: float, limit: float) -> float | None:
    """Wait out the cooldown, and longer (at most ``limit`` s) until a fresh
    ``GET /health`` is answered within 50 ms; when that first happened, or None."""
    started = time.monotonic()
    fast: float | None = None
    while True:
        now = time.monotonic()
        if fast is None and _healthy(port) and time.monotonic() - now < 0.05:
            fast = now - started
        if (fast is not None and now - started >= cooldown) or now - started > limit:
            return fast
        time.sleep(0.1)


def start_engine(setup: str, port: int, args: argparse.Namespace, tmp: Path) -> Engine:
    ipc_path = f"/tmp/lkh-{os.getpid()}-{port}.sock"  # short: sun_path is ~108 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKD_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    # --public-metrics: the attacks pipeline and smuggle GET /metrics on the client port.
    cmd = [*engine_command(), "--listen", f"{HOST}:{port}", "--ipc", ipc_path, "--public-metrics"]
    if setup == "echo":
        cmd += ["--echo", "/echo"]
    else:
        cmd += ["--service", "bench.hostile_service", "--workers", "1", "--jwks", args.jwks]
        env["LINKD_JWT_SECRET"] = args.jwt_secret  # not on the command line
    cmd += [
        "--log-level", "info", "--shutdown-grace", "2",
        "--header-timeout", str(args.header_timeout), "--body-timeout", str(args.header_timeout),
        "--max-connections", str(args.max_connections),
        "--max-connections-per-ip", str(args.max_connections_per_ip),
        "--new-connections-per-ip", str(args.new_connections_per_ip),
        "--new-connections-burst", str(args.new_connections_burst),
        "--max-message-size", str(args.max_message_size),
        "--max-outbound-buffer", str(args.max_outbound_buffer),
        "--max-header-size", str(args.max_header_size),
    ]  # fmt: skip
    if args.no_access_log:
        cmd.append("--no-access-log")
    for extra in args.engine_arg:
        cmd += shlex.split(extra)
    log_path = tmp / f"engine-{setup}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _preexec(args.engine_cpu),
            start_new_session=True,  # Ctrl-C reaches us only; we stop it in order
        )
    engine = Engine(proc, log_path, ipc_path)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-2000:]
            stop_engine(engine)
            raise RuntimeError(f"{setup}: the engine did not start:\n{tail}")
        registered = setup == "echo" or b"registered service hostile" in log_path.read_bytes()
        if registered and _healthy(port):
            break
        time.sleep(0.1)
    engine.workers = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    return engine


def stop_engine(engine: Engine) -> None:
    """SIGTERM (the engine drains and stops its workers), then SIGKILL by pid."""
    if engine.proc.poll() is None:
        engine.proc.send_signal(signal.SIGTERM)
        try:
            engine.proc.wait(15)
        except subprocess.TimeoutExpired:
            engine.proc.kill()
            engine.proc.wait(5)
    for pid in engine.workers:
        with contextlib.suppress(psutil.Error):
            child = psutil.Process(pid)
            try:
                child.wait(5)
            except psutil.TimeoutExpired:
                child.kill()
    with contextlib.suppress(OSError):
        os.unlink(engine.ipc_path)


class Sampler(threading.Thread):
    """The engine's RSS every 100 ms, and CPU/log marks at each window's start."""

    def __init__(self, engine: Engine, clients_pid: int, core: int | None) -> None:
        super().__init__(daemon=True)
        self.core = core
        self.engine = psutil.Process(engine.proc.pid)
        self.workers = [psutil.Process(p) for p in engine.workers]
        self.clients = psutil.Process(clients_pid)
        self.log_path = engine.log_path
        self.window = 0
        #: (monotonic, window, engine RSS, workers' RSS)
        self.samples: list[tuple[float, int, int, int]] = []
        self.marks: list[dict[str, float]] = []
        self._halt = threading.Event()

    def rss(self) -> tuple[int, int]:
        workers = 0
        for w in self.workers:
            with contextlib.suppress(psutil.Error):
                workers += w.memory_info().rss
        return self.engine.memory_info().rss, workers

    def run(self) -> None:
        while not self._halt.wait(0.1):
            with contextlib.suppress(psutil.Error):
                self.samples.append((time.monotonic(), self.window, *self.rss()))

    def mark(self, window: int) -> None:
        """Called when ``window`` begins (and once more at the very end)."""
        try:
            cpu = self.engine.cpu_times()
            client_cpu = self.clients.cpu_times()
            rss, workers = self.rss()
        except psutil.Error:  # the engine (or the clients) died: the last mark stands
            if self.marks:
                self.marks.append({**self.marks[-1], "t": time.monotonic()})
            self.window = window
            return
        workers_cpu = 0.0
        for w in self.workers:
            with contextlib.suppress(psutil.Error):
                t = w.cpu_times()
                workers_cpu += t.user + t.system
        busy = 0.0
        if self.core is not None:
            core = psutil.cpu_times(percpu=True)[self.core]
            busy = sum(core) - core.idle - getattr(core, "iowait", 0.0)
        self.marks.append(
            {
                "t": time.monotonic(),
                "engine_cpu_s": cpu.user + cpu.system,
                "workers_cpu_s": workers_cpu,
                "core_busy_s": busy,
                "clients_cpu_s": client_cpu.user + client_cpu.system,
                "rss": rss,
                "workers_rss": workers,
                "log_offset": self.log_path.stat().st_size,
            }
        )
        self.window = window
        self.samples.append((time.monotonic(), window, rss, workers))

    def stop(self) -> None:
        self._halt.set()
        self.join(2)


def write_jwks(tmp: Path) -> tuple[str, str]:
    """A JWKS file with one fresh RSA public key; its path and the key's PEM."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = json.loads(RSAAlgorithm.to_jwk(public))
    jwk.update(kid=KID, use="sig", alg="RS256")
    path = tmp / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return str(path), pem.decode()
