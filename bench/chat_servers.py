"""Start, probe and stop the servers under test of ``bench/chat.py``.

| name | process (one, pinned to the server core with its children) |
|---|---|
| ``linkd`` | ``engine --service bench.chat_service --workers 1 --ws-rate 0`` (per-IP caps off) |
| ``socketio`` | ``python -m bench.chat_peers.socketio_server PORT WS`` (on uvicorn) |
| ``node`` | ``node server.js PORT`` in ``bench/chat_peers/node`` (socket.io from its lock file) |

Each gets a free 127.0.0.1 port and its own session; affinity and the open-file limit
are set before ``exec`` and inherited by children (linkd's worker, Node's threads). A
server is ready when ``chat_load.probe`` passes: a client joins, an empty message is
refused, a valid one is delivered and acked. Stopping is SIGTERM, then SIGKILL, for
the server and every process it started, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from .chat_load import probe
from .fanout_servers import Server, stop_server
from .ipc import ROOT, engine_command

__all__ = ["NODE_DIR", "SERVERS", "Server", "ensure_node_modules", "start_server", "stop_server"]

HOST = "127.0.0.1"
SERVERS = ("linkd", "socketio", "node")
#: The wire adapter of ``bench.chat_load`` each server speaks.
PROTOCOL = {"linkd": "linkd", "socketio": "socketio", "node": "socketio"}
NODE_DIR = ROOT / "bench" / "chat_peers" / "node"
READY_TIMEOUT = 30.0


def ensure_node_modules() -> str:
    """``npm ci`` unless node_modules already holds the locked socket.io; its version."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/socket.io"]["version"]
    installed = NODE_DIR / "node_modules" / "socket.io" / "package.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        if json.loads(installed.read_text())["version"] == wanted:
            return str(wanted)
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("the node server needs node and npm on PATH")
    print(f"bench: npm ci in {NODE_DIR.relative_to(ROOT)} (socket.io {wanted})", file=sys.stderr)
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel", "error"],
        cwd=NODE_DIR,
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    return str(wanted)


def _preexec(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    return setup


def _command(
    name: str, port: int, ipc_path: str | None, socketio_ws: str, service_queue: int | None
) -> list[str]:
    if name == "linkd":
        assert ipc_path is not None
        cmd = [
            *engine_command(),
            *("--listen", f"{HOST}:{port}", "--ipc", ipc_path),
            *("--service", "bench.chat_service", "--workers", "1"),
            *("--ws-rate", "0"),  # every client sends as fast as acks come back
            *("--max-connections-per-ip", "0", "--new-connections-per-ip", "0"),
            *("--no-access-log", "--log-level", "warning", "--shutdown-grace", "2"),
        ]
        if service_queue is not None:
            cmd += ["--service-queue", str(service_queue)]
        return cmd
    if name == "socketio":
        return [sys.executable, "-m", "bench.chat_peers.socketio_server", str(port), socketio_ws]
    if name == "node":
        node = shutil.which("node") or "node"
        return [node, "server.js", str(port)]
    raise ValueError(f"unknown server {name!r}: {', '.join(SERVERS)}")


def start_server(
    name: str,
    port: int,
    *,
    cpu: int | None,
    tmp: Path,
    membership: str,
    socketio_ws: str,
    service_queue: int | None = None,
) -> Server:
    """Start ``name`` and wait until it passes the probe.

    ``service_queue``: linkd's ``--service-queue`` (None: its default, 1,024), the
    requests that wait for the worker before the engine answers ``OVERLOADED``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LINKD_", "BENCH_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["BENCH_CHAT_MEMBERSHIP"] = membership
    env["NODE_ENV"] = "production"
    # Short: a Unix socket path has a ~108-byte limit.
    ipc_path = f"/tmp/lk-chat-{os.getpid()}-{port}.sock" if name == "linkd" else None
    cmd = _command(name, port, ipc_path, socketio_ws, service_queue)
    log_path = tmp / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=NODE_DIR if name == "node" else ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_preexec(cpu),
            start_new_session=True,  # a Ctrl-C reaches us only; we stop it in order
        )
    server = Server(name, proc, log_path, ipc_path, {"server": proc.pid}, cmd)
    try:
        _wait_ready(server, port)
    except BaseException:
        stop_server(server)
        raise
    return server


def _wait_ready(server: Server, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    why: str | None = "not started"
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.name}: not ready in {READY_TIMEOUT}s ({why}):\n{server.log_tail()}"
            )
        why = asyncio.run(probe(PROTOCOL[server.name], port))
        if why is None:
            break
        if why.startswith("unexpected"):
            raise RuntimeError(f"{server.name}: the probe failed: {why}")
        time.sleep(0.2)
    children = psutil.Process(server.proc.pid).children(recursive=True)
    for i, child in enumerate(sorted(children, key=lambda p: p.pid)):
        server.pids[f"worker{i + 1}"] = child.pid
