"""``--service MODULE[:ATTR] --workers N``: start worker processes, restart the ones
that crash (with backoff), stop them all when the engine stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

__all__ = ["Supervisor"]

log = logging.getLogger("linkd.supervisor")

# Restart backoff: 0.5 s doubling to 10 s; a worker that ran 30 s resets it.
_BACKOFF_START = 0.5
_BACKOFF_MAX = 10.0
_HEALTHY_AFTER = 30.0


class Supervisor:
    def __init__(self, services: tuple[str, ...], workers: int, ipc_path: str, grace: float):
        self.services = services
        self.workers = workers
        self.ipc_path = ipc_path
        self.grace = grace
        self._tasks: list[asyncio.Task[None]] = []
        self._procs: set[asyncio.subprocess.Process] = set()
        self._stopping = False

    def start(self) -> None:
        for spec in self.services:
            for n in range(self.workers):
                self._tasks.append(asyncio.create_task(self._keep_running(spec, n)))

    async def _keep_running(self, spec: str, n: int) -> None:
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_START
        env = {**os.environ, "LINKD_IPC": self.ipc_path}
        while not self._stopping:
            started = loop.time()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sdk", spec, "--ipc", self.ipc_path, env=env
            )
            self._procs.add(proc)
            log.info("started worker %s #%d (pid %d)", spec, n, proc.pid)
            code = await proc.wait()
            self._procs.discard(proc)
            if self._stopping:
                return
            ran = loop.time() - started
            if ran >= _HEALTHY_AFTER:
                backoff = _BACKOFF_START
            log.warning(
                "worker %s #%d (pid %d) exited with %d after %.1fs; restarting in %.1fs",
                spec,
                n,
                proc.pid,
                code,
                ran,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def stop(self) -> None:
        """SIGTERM every worker (they drain), SIGKILL what is left after the grace."""
        self._stopping = True
        for proc in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if self._procs:
            waits = [asyncio.create_task(p.wait()) for p in self._procs]
            _, pending = await asyncio.wait(waits, timeout=self.grace)
            for proc in list(self._procs):
                if proc.returncode is None:
                    log.warning(
                        "worker pid %d did not stop in %.1fs: killing", proc.pid, self.grace
                    )
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
