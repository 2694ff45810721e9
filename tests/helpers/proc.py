"""Run the engine as a separate OS process, for tests of process-level guarantees.

with engine_process(["--echo", "/echo"]) as eng:
    eng.get("/health")           # (200, b'{"status":"healthy",...}')
    eng.rss()                    # resident set size of the engine, bytes
    eng.send_signal(signal.SIGTERM)
    eng.wait(5.0)                # exit code

The process listens on a free loopback port (found by binding port 0 first), is
considered ready once ``GET /health`` answers 200, and is always killed and reaped
when the block ends, whatever happened inside it. Its stdout and stderr go to a
temporary file (a pipe could fill up and stall it); ``output()`` reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
import psutil

__all__ = [
    "APPS_DIR",
    "EngineProcess",
    "app_command",
    "clean_env",
    "engine_command",
    "engine_process",
    "free_port",
    "run_engine",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
APPS_DIR = Path(__file__).resolve().parent / "apps"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def engine_command(*args: str) -> list[str]:
    """The engine CLI under the test interpreter (``python -m engine ARGS``).

    Without an explicit ``--ipc`` the engine gets none (``--ipc ""``): the default
    socket path is shared by every engine on the machine, and a test must neither
    collide with another engine there nor depend on whether one runs.
    """
    isolate = not any(a == "--ipc" or a.startswith("--ipc=") or a == "--help" for a in args)
    return [sys.executable, "-m", "engine", *args, *(["--ipc", ""] if isolate else [])]


def app_command(name: str, *args: str) -> list[str]:
    """A helper app script from ``tests/helpers/apps`` under the test interpreter."""
    script = APPS_DIR / f"{name}.py"
    if not script.is_file():
        raise FileNotFoundError(script)
    return [sys.executable, str(script), *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without any ``LINKD_*`` variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKD_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_engine(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    """Run the engine CLI to completion (``--help``, start-up failures)."""
    return subprocess.run(
        engine_command(*args),
        env=dict(env) if env is not None else clean_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class EngineProcess:
    """A running engine process: its pid, port, ``psutil.Process`` and HTTP helpers."""

    def __init__(self, popen: subprocess.Popen[bytes], port: int, log: IO[bytes]) -> None:
        self.popen = popen
        self.port = port
        self.host = "127.0.0.1"
        self.process = psutil.Process(popen.pid)
        self._log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def rss(self) -> int:
        """Resident set size, in bytes."""
        return int(self.process.memory_info().rss)

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def send_signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the exit and return its code (``subprocess.TimeoutExpired`` if late)."""
        return self.popen.wait(timeout)

    async def wait_async(self, within: float) -> int:
        """``wait`` without blocking the test's event loop."""
        deadline = time.monotonic() + within
        while (code := self.popen.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.popen.args, within)
            await asyncio.sleep(0.005)
        return code

    # ------------------------------------------------------------------ HTTP
    def request(
        self, method: str, path: str, body: bytes | None = None, *, timeout: float = 10.0
    ) -> tuple[int, bytes]:
        """One HTTP request on a fresh connection; returns (status, body)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"content-type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def post_json(self, path: str, data: Any, *, timeout: float = 30.0) -> tuple[int, Any]:
        status, body = self.request("POST", path, orjson.dumps(data), timeout=timeout)
        return status, orjson.loads(body) if body else None

    async def apost_json(self, path: str, data: Any) -> tuple[int, Any]:
        """``post_json`` in a worker thread, so the test's own clients keep reading."""
        return await asyncio.to_thread(self.post_json, path, data)

    def metrics(self) -> dict[str, float]:
        """``GET /metrics`` parsed into {"name{labels}": value} (comments skipped)."""
        status, body = self.get("/metrics")
        if status != 200:
            raise AssertionError(f"/metrics answered {status}")
        values: dict[str, float] = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    async def ametrics(self) -> dict[str, float]:
        return await asyncio.to_thread(self.metrics)


def _wait_ready(eng: EngineProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        if eng.returncode is not None:
            raise RuntimeError(
                f"engine exited with {eng.returncode} before it was ready:\n{eng.output()}"
            )
        try:
            status, _ = eng.request("GET", "/health", timeout=1.0)
        except (OSError, http.client.HTTPException) as exc:
            last_error = exc
        else:
            if status == 200:
                return
            last_error = RuntimeError(f"/health answered {status}")
        time.sleep(0.02)
    raise RuntimeError(f"engine not ready within {timeout}s ({last_error!r}):\n{eng.output()}")


@contextlib.contextmanager
def engine_process(
    args: Sequence[str] = (),
    *,
    app: str | None = None,
    port: int | None = None,
    listen_flag: bool = True,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 20.0,
    public_metrics: bool = True,
) -> Iterator[EngineProcess]:
    """Start the engine CLI (or ``app`` from ``tests/helpers/apps``), yield it, kill it.

    Args:
        args: extra command-line arguments.
        app: run ``tests/helpers/apps/<app>.py`` instead of ``python -m engine``;
            such scripts take ``--listen HOST:PORT`` like the CLI.
        port: the port to listen on; default: a free one.
        listen_flag: pass ``--listen 127.0.0.1:PORT``; turn off when ``args`` or
            ``env`` say where to listen (``port`` must then match).
        env: the whole environment; default: ours without ``LINKD_*`` variables.
        public_metrics: pass ``--public-metrics`` to the engine CLI, so ``metrics()``
            reads the client port (off by default in the engine: the admin listener's).
    """
    port = free_port() if port is None else port
    listen = ["--listen", f"127.0.0.1:{port}"] if listen_flag else []
    public = ["--public-metrics"] if public_metrics and not app else []
    argv = [*listen, "--no-access-log", *public, *args]
    cmd = app_command(app, *argv) if app else engine_command(*argv)
    log = tempfile.NamedTemporaryFile(prefix="linkd-engine-", suffix=".log", delete=False)  # noqa: SIM115
    popen: subprocess.Popen[bytes] | None = None
    try:
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else clean_env(),
            cwd=REPO_ROOT,
        )
        eng = EngineProcess(popen, port, log)
        _wait_ready(eng, ready_timeout)
        yield eng
    finally:
        if popen is not None:
            if popen.poll() is None:
                popen.kill()
            popen.wait(10)
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)
