"""Issue 10 #12: both ends of the worker socket check who is on the other end.

While the engine is down its socket path is free: another local user could bind it,
take the workers and send them forged identities. Workers now accept only an engine
of their own uid (or one listed in ``LINKD_ENGINE_UIDS``), the engine only workers of
its own uid (or ``--ipc-allowed-uids``), from ``SO_PEERCRED``. Real processes, real
users: the other user is ``nobody`` (the tests run as root).
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import orjson
import pytest

from tests.helpers.proc import REPO_ROOT, EngineProcess, clean_env, engine_process
from tests.integration.support import ipc_dir, wait_http

pytestmark = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another user"
)

NOBODY = 65534
SLEEPER = "tests.helpers.services.sleeper"
RUN_AS = str(REPO_ROOT / "tests" / "helpers" / "run_as.py")


class Proc:
    """A process started through ``run_as.py``; output to a file; killed on close."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, pipe: bool = False) -> None:
        self._log: IO[bytes] = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="linkd-peer-", suffix=".log", delete=False
        )
        self.popen = subprocess.Popen(
            [sys.executable, RUN_AS, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe else self._log,
            stderr=self._log,
            env=clean_env(**(env or {})),
            cwd=REPO_ROOT,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        if pipe:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self.lines.put(raw.decode().strip())

    def line(self, timeout: float = 10.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s:\n{self.output()}") from None

    def output(self) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()
        with contextlib.suppress(OSError):
            Path(self._log.name).unlink()


@contextlib.contextmanager
def proc(*args: str, env: dict[str, str] | None = None, pipe: bool = False) -> Iterator[Proc]:
    p = Proc(*args, env=env, pipe=pipe)
    try:
        yield p
    finally:
        p.close()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


def test_worker_refuses_an_engine_of_another_user() -> None:
    with ipc_dir() as tmp:
        os.chown(tmp, NOBODY, NOBODY)  # nobody may bind the socket here
        os.chmod(tmp, 0o755)
        path = f"{tmp}/l.sock"
        with proc(str(NOBODY), "fake-engine", path, pipe=True) as impostor:
            assert impostor.line() == "listening"
            with proc("0", "worker", SLEEPER, path) as worker:
                # It keeps trying (with backoff), and never says a word to the impostor.
                attempts = [impostor.line() for _ in range(3)]
                assert attempts == ["silent"] * 3, worker.output()
                log = worker.output()
            refusals = [line for line in log.splitlines() if "refusing the engine" in line]
            # Logged once for the whole episode, with the reason.
            assert len(refusals) == 1, log
            assert f"uid {NOBODY}" in refusals[0] and "WARNING" in refusals[0]
            # Listed, the same engine is trusted: the worker says hello.
            with proc("0", "worker", SLEEPER, path, env={"LINKD_ENGINE_UIDS": str(NOBODY)}):
                assert impostor.line() == "hello"


def _whoami(eng: EngineProcess) -> dict[str, int]:
    _, body = wait_http(eng, "/sleeper/whoami")
    return dict(orjson.loads(body))


def test_engine_refuses_a_worker_of_another_user_unless_listed() -> None:
    trusting = {"LINKD_ENGINE_UIDS": "0"}  # the worker accepts our root engine
    with ipc_dir() as tmp:
        os.chmod(tmp, 0o755)  # nobody may reach the socket (mode 0666 below)
        path = f"{tmp}/l.sock"
        args = ["--ipc", path, "--ipc-mode", "0666"]
        with (
            engine_process(args) as eng,
            proc(str(NOBODY), "worker", SLEEPER, path, env=trusting) as worker,
        ):
            wait_for(lambda: eng.output().count(f"uid {NOBODY}") >= 2, "two refused attempts")
            assert eng.get("/sleeper/whoami")[0] == 404, eng.output()
            refused = [line for line in eng.output().splitlines() if f"uid {NOBODY}" in line]
            assert all("not allowed" in line and "WARNING" in line for line in refused), refused
            # The worker heard the engine go away, and retries (quietly).
            assert worker.popen.poll() is None
        with (
            engine_process([*args, "--ipc-allowed-uids", f"1000,{NOBODY}"]) as eng,
            proc(str(NOBODY), "worker", SLEEPER, path, env=trusting),
        ):
            assert _whoami(eng)["uid"] == NOBODY
