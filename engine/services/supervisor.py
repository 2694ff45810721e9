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


#: After SIGKILL, how long to wait for the kernel to reap the workers.
_REAP_TIMEOUT = 1.0


class Supervisor:
    """Keeps ``workers`` processes of each service running until ``stop``.

    Args:
        grace: the default stop budget, seconds; also given to each worker
            (``--grace``), so a worker never plans to take longer than the engine
            will wait for it.
    """

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
        command = ("-m", "sdk", spec, "--ipc", self.ipc_path, "--grace", str(self.grace))
        while not self._stopping:
            started = loop.time()
            proc = await asyncio.create_subprocess_exec(sys.executable, *command, env=env)
            self._procs.add(proc)
            log.info("started worker %s #%d (pid %d)", spec, n, proc.pid)
            if self._stopping:  # spawned while the stop began: it stops with the others
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
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

    def terminate(self) -> None:
        """No more restarts; SIGTERM every worker (each drains and exits)."""
        if self._stopping:
            return
        self._stopping = True
        for proc in list(self._procs):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    async def wait_exited(self) -> None:
        """Until every worker process has exited."""
        while procs := [p for p in self._procs if p.returncode is None]:
            waits = [asyncio.ensure_future(p.wait()) for p in procs]
            try:
                await asyncio.wait(waits)
            finally:
                for wait in waits:
                    wait.cancel()

    async def stop(self, deadline: float | None = None) -> None:
        """SIGTERM every worker, SIGKILL what is left at ``deadline`` (loop time;
        default: ``grace`` from now). Returns at most ``_REAP_TIMEOUT`` after it."""
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self.grace
        self.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.wait_exited()
        left = [p for p in self._procs if p.returncode is None]
        for proc in left:
            log.warning("worker pid %d still running at the end of the grace: killing", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if left:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_REAP_TIMEOUT):
                    await self.wait_exited()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
