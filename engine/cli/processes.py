"""``engine --processes N``: N engine processes on one port, kept running by a parent.

The parent binds nothing and serves nothing. It starts N children, each the same
``engine`` command line with ``--process-index I`` in front (an internal argument, read
by ``engine.cli.main`` before the flags), and each child is a whole engine of its own:

- it binds ``--listen`` with ``SO_REUSEPORT``, so the kernel spreads new connections
  over the N listening sockets (by a hash of the client's address and port);
- it has its own IPC socket, ``--ipc PATH`` + ``.I`` (``/run/linkd/linkd.sock.0``, ...),
  and starts its own ``--service`` workers there (``--workers`` per child): a worker
  serves the connections of one process, as it serves those of one node;
- it is a broker node of ``--redis`` (required for N > 1, engine/config.py says why):
  rooms, users and presence span the processes as they span machines;
- its metrics are its own, and so is its admin listener: ``--admin-listen`` port + ``I``
  (scrape and probe each; one port cannot speak for N processes that drain apart).

Children are restarted with the backoff of ``--service`` workers (0.5 s doubling to
10 s, reset by 30 s of uptime), except one that exits with 2 (its settings refused:
no restart would fix them), which stops them all. The parent tells a child to stop by
closing the pipe on the child's stdin, never by a signal: EOF there starts the child's
drain (as SIGTERM does) unless it is draining already, so a SIGTERM that also reaches
the child directly (systemd signals the whole cgroup, a terminal the whole process
group) does not count twice, and a parent that dies (even by SIGKILL) takes its
children down gracefully. SIGTERM/SIGINT to the parent: every child drains at once,
within one ``--shutdown-grace``; the parent exits when all have (0), and kills what is
left ``_MARGIN`` after the grace (1). SIGHUP is forwarded (each child reloads).

Each child leads a process group of its own and its workers, so the parent can end
the workers a crashed (SIGKILLed) child leaves behind before it starts another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence

from engine.config import Config
from engine.server import Engine

__all__ = ["CHILD_ARGUMENT", "Processes", "child_config", "run_child", "split_child_argv"]

log = logging.getLogger("linkd.processes")

#: ``engine --process-index I ...``: what the parent puts in front of a child's
#: arguments. Not a flag: it is no setting, so neither a config key nor a variable.
CHILD_ARGUMENT = "--process-index"

# Restart backoff, as engine/services/supervisor.py's for workers.
_BACKOFF_START = 0.5
_BACKOFF_MAX = 10.0
_HEALTHY_AFTER = 30.0
#: Past the grace, how long the children may take to finish their own stop (its
#: cleanup takes up to 1.5 s, see Engine.stop) and exit before they are killed.
_MARGIN = 5.0
#: The exit code of a refused command line or config (argparse's).
_USAGE = 2


def split_child_argv(argv: Sequence[str]) -> tuple[int | None, list[str]]:
    """``[--process-index, I, *rest]`` → ``(I, rest)``; anything else → ``(None, argv)``."""
    if len(argv) >= 2 and argv[0] == CHILD_ARGUMENT and argv[1].isdigit():
        return int(argv[1]), list(argv[2:])
    return None, list(argv)


def child_config(config: Config, index: int) -> Config:
    """The ``Config`` of child ``index``: its own IPC socket and admin port (the
    ``--admin-listen`` port + ``index``: each process answers for itself), the client
    port shared."""
    ipc = f"{config.ipc_path}.{index}" if config.ipc_path else None
    return dataclasses.replace(
        config,
        process_index=index,
        ipc_path=ipc,
        reuse_port=True,
        admin_port=config.admin_port + index if config.admin_host else config.admin_port,
    )


def label_logs(index: int) -> None:
    """Every log line of this child names it: ``linkd.server[1]: ...``."""
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.name = f"{record.name}[{index}]"
        return record

    logging.setLogRecordFactory(factory)


async def run_child(engine: Engine) -> None:
    """``engine.serve()``, plus: EOF on stdin (the parent closed the pipe, or died) is
    a SIGTERM, unless the engine is stopping already."""
    loop = asyncio.get_running_loop()
    watching = stat.S_ISFIFO(os.fstat(0).st_mode)

    def readable() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # the parent never writes; nothing to act on
        loop.remove_reader(0)
        state = engine._state
        if state is None or not state.shutting_down:
            log.info("the parent process closed the pipe: draining")
            os.kill(os.getpid(), signal.SIGTERM)

    if watching:
        os.set_blocking(0, False)
        loop.add_reader(0, readable)
    try:
        await engine.serve()
    finally:
        if watching:
            loop.remove_reader(0)


@dataclasses.dataclass(slots=True)
class _Child:
    index: int
    proc: asyncio.subprocess.Process
    #: The write end of the pipe on the child's stdin: closing it stops the child.
    pipe: int | None
    started: float

    def close_pipe(self) -> None:
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None


class Processes:
    """The parent of ``count`` engine processes running ``argv``.

    Args:
        argv: the engine's arguments, as given (each child gets them after
            ``--process-index I`` and reads flags, variables and file like the parent).
        count: how many children.
        grace: ``--shutdown-grace``: the children's stop budget, and so the parent's.
    """

    def __init__(self, argv: Sequence[str], count: int, grace: float) -> None:
        self.argv = list(argv)
        self.count = count
        self.grace = grace
        self.children: dict[int, _Child] = {}
        self._stopping = False
        self._stop = asyncio.Event()
        self._refused = False

    def command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "engine", CHILD_ARGUMENT, str(index), *self.argv]

    async def run(self) -> int:
        """Until SIGTERM/SIGINT and every child gone; the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        log.info("starting %d engine processes", self.count)
        tasks = [asyncio.create_task(self._keep_running(i)) for i in range(self.count)]
        try:
            await self._stop.wait()
            clean = await self._stop_children(tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        if self._refused:
            return _USAGE
        return 0 if clean else 1

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if not self._stopping:
            log.info(
                "%s: draining %d engine processes (grace %.1fs)",
                sig.name,
                len(self.children),
                self.grace,
            )
        self._stop.set()

    def _forward(self, sig: signal.Signals) -> None:
        log.info("%s: forwarded to %d engine processes", sig.name, len(self.children))
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(sig)

    async def _keep_running(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_START
        while not self._stopping:
            read, write = os.pipe()
            try:
                # A session (and process group) of its own: see _end_group.
                proc = await asyncio.create_subprocess_exec(
                    *self.command(index), stdin=read, start_new_session=True
                )
            except BaseException:
                os.close(write)
                raise
            finally:
                os.close(read)
            child = _Child(index, proc, write, loop.time())
            self.children[index] = child
            log.info("started engine process %d (pid %d)", index, proc.pid)
            if self._stopping:  # spawned while the stop began: it stops with the others
                child.close_pipe()
            code = await proc.wait()
            child.close_pipe()
            ran = loop.time() - child.started
            # Workers a killed child left behind serve nobody now; the next child
            # starts its own.
            _end_group(proc.pid, signal.SIGKILL)
            if self._stopping:
                log.info("engine process %d (pid %d) %s", index, proc.pid, _exit_text(code))
                return
            if code == _USAGE:
                log.error(
                    "engine process %d (pid %d) exited with 2 (its settings were refused, "
                    "see above): not restarting, stopping all",
                    index,
                    proc.pid,
                )
                self._refused = True
                self._stop.set()
                return
            if ran >= _HEALTHY_AFTER:
                backoff = _BACKOFF_START
            log.warning(
                "engine process %d (pid %d) %s after %.1fs; restarting in %.1fs",
                index,
                proc.pid,
                _exit_text(code),
                ran,
                backoff,
            )
            with contextlib.suppress(TimeoutError):  # a stop cuts the backoff short
                await asyncio.wait_for(self._stop.wait(), backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _stop_children(self, tasks: list[asyncio.Task[None]]) -> bool:
        """Every child drains at once; True if all exited by themselves in time.

        ``tasks`` (one per child, ``_keep_running``) return once their child has
        exited, a child spawned while the stop began included.
        """
        self._stopping = True
        for child in self.children.values():
            child.close_pipe()
        _, pending = await asyncio.wait(tasks, timeout=self.grace + _MARGIN)
        left = [c.proc for c in self.children.values() if c.proc.returncode is None]
        for proc in left:
            log.warning("engine process pid %d still running after the grace: killing", proc.pid)
            _end_group(proc.pid, signal.SIGKILL)
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        codes = [c.proc.returncode for c in self.children.values()]
        log.info("all engine processes stopped")
        # -SIGTERM: told to stop while still starting, before its handlers were set.
        return not left and all(code in (0, -signal.SIGTERM) for code in codes)


def _end_group(pgid: int, sig: signal.Signals) -> None:
    """``sig`` to the process group a child led (it and the workers it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with {code}"
