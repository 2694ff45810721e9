"""Helpers for integration tests: a real engine process, real SDK worker processes,
real WebSocket clients.

Every process started here is killed and reaped when its block ends, including the
workers the engine supervises (a SIGKILLed engine would otherwise leave them
reconnecting forever).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.helpers.proc import REPO_ROOT, EngineProcess, clean_env, engine_process

__all__ = [
    "DEMO",
    "STRICT",
    "Client",
    "WorkerProcess",
    "demo_engine",
    "ipc_dir",
    "kill_tree",
    "processes_using",
    "wait_http",
    "worker_pids",
]

DEMO = "tests.helpers.services.demo"
STRICT = "tests.helpers.services.strict"


@contextlib.contextmanager
def ipc_dir() -> Iterator[str]:
    """A short directory under /tmp for the IPC socket (sun_path is ~107 bytes)."""
    path = tempfile.mkdtemp(prefix="lk-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def kill_tree(procs: Sequence[psutil.Process]) -> None:
    """SIGKILL each process still alive and wait for it to go."""
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def processes_using(ipc: str) -> list[psutil.Process]:
    """Every other process whose command line names ``ipc`` (engines and workers)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if ipc in cmdline and proc.pid != os.getpid():
            found.append(proc)
    return found


def worker_pids(eng: EngineProcess) -> set[int]:
    """PIDs of the engine's live child processes (the supervised workers)."""
    pids = set()
    for child in eng.process.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
    return pids


def wait_http(
    eng: EngineProcess, path: str, *, status: int = 200, timeout: float = 10.0
) -> tuple[float, bytes]:
    """Poll ``GET path`` until it answers ``status``; returns (seconds waited, body)."""
    started = time.monotonic()
    deadline = started + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got, body = eng.request("GET", path, timeout=2.0)
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        else:
            if got == status:
                return time.monotonic() - started, body
            last = (got, body)
        time.sleep(0.02)
    raise AssertionError(f"GET {path} never answered {status} in {timeout}s (last: {last!r})")


@contextlib.contextmanager
def demo_engine(
    *extra: str,
    services: Sequence[str] = (DEMO,),
    workers: int = 1,
    ipc: str | None = None,
    port: int | None = None,
) -> Iterator[EngineProcess]:
    """An engine process supervising ``workers`` workers of each service, all ready."""
    with contextlib.ExitStack() as stack:
        if ipc is None:
            ipc = str(Path(stack.enter_context(ipc_dir())) / "l.sock")
        args = ["--ipc", ipc, "--workers", str(workers), "--ipc-heartbeat", "1"]
        # Tests pipeline a thousand messages from one client: no message rate limit.
        args += ["--ws-rate", "0"]
        for spec in services:
            args += ["--service", spec]
        eng = stack.enter_context(engine_process([*args, *extra], port=port))
        # Registered last, runs first: the workers go before the engine is killed, even
        # if the engine already exited and left them behind.
        stack.callback(lambda: kill_tree(processes_using(ipc)))
        for spec in services:
            name = spec.rsplit(".", 1)[-1]
            wait_http(eng, f"/{name}/ready")
        yield eng


class WorkerProcess:
    """``python -m sdk SPEC --ipc PATH`` started by hand (not by the engine)."""

    def __init__(self, spec: str, ipc: str) -> None:
        self._log: IO[bytes] = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="linkd-worker-", suffix=".log", delete=False
        )
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "sdk", spec, "--ipc", ipc],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            cwd=REPO_ROOT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        self._log.close()
        with contextlib.suppress(OSError):
            Path(self._log.name).unlink()


class Client:
    """A real WebSocket client (``websockets``) speaking the ``{type, data, id}`` envelope.

    A reader task sorts what arrives: acks (frames with an ``id``) resolve the
    ``request`` waiting for them, events go to a queue; ``frames`` keeps everything in
    arrival order for ordering assertions.
    """

    _ids = itertools.count(1)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.acks: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.closed: asyncio.Future[tuple[int | None, str | None]] = (
            asyncio.get_running_loop().create_future()
        )
        self._reader = asyncio.create_task(self._read())

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, port: int, path: str = "/ws/demo") -> AsyncIterator[Client]:
        async with connect(
            f"ws://127.0.0.1:{port}{path}",
            ping_interval=None,
            open_timeout=5,
            close_timeout=2,
            max_queue=None,
            compression=None,
        ) as ws:
            client = cls(ws)
            try:
                yield client
            finally:
                client._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client._reader

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = orjson.loads(raw)
                self.frames.append(frame)
                msg_id = frame.get("id")
                if msg_id is not None:
                    future = self.acks.setdefault(
                        msg_id, asyncio.get_running_loop().create_future()
                    )
                    if not future.done():
                        future.set_result(frame)
                else:
                    self.events.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            if not self.closed.done():
                rcvd = self.ws.protocol.close_rcvd
                self.closed.set_result(
                    (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)
                )

    def new_id(self) -> str:
        return f"m{next(self._ids)}"

    async def send(self, type: str, data: Any = None, id: Any = None) -> None:
        """Send one message; with an ``id`` its ack can be awaited with ``ack(id)``."""
        frame: dict[str, Any] = {"type": type, "data": data}
        if id is not None:
            frame["id"] = id
            self.acks.setdefault(id, asyncio.get_running_loop().create_future())
        await self.ws.send(orjson.dumps(frame).decode())

    async def ack(self, id: Any, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        future = self.acks.setdefault(id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def request(self, type: str, data: Any = None, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Send with a fresh id and return the whole ack frame."""
        msg_id = self.new_id()
        await self.send(type, data, msg_id)
        return await self.ack(msg_id, timeout)

    async def call(self, type: str, data: Any = None, timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        """``request`` that expects success and returns the ack's ``data``."""
        frame = await self.request(type, data, timeout)
        if "error" in frame:
            raise AssertionError(f"{type} failed: {frame}")
        return frame["data"]

    async def event(self, type: str, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The next event of ``type`` (events of other types are skipped)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            frame = await asyncio.wait_for(self.events.get(), max(left, 0.0))
            if frame.get("type") == type:
                return frame

    async def no_event(self, type: str, within: float) -> None:
        """Fail if an event of ``type`` arrives within ``within`` seconds."""
        with contextlib.suppress(TimeoutError):
            frame = await self.event(type, within)
            raise AssertionError(f"unexpected event {frame}")

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str | None]:  # noqa: ASYNC109
        return await asyncio.wait_for(asyncio.shield(self.closed), timeout)
