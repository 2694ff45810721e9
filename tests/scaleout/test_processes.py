"""``engine --processes 2``: two engine processes on one port sharing rooms and presence
through a real Redis; a killed one comes back; SIGTERM drains both.

Which process holds a client: ``demo.whoami`` answers with the pid of the worker that
handled it, and each process runs its own workers, so the worker's parent is the
engine process the client is connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import jwt
import psutil
import pytest
from websockets.exceptions import InvalidStatus

from engine.cli import values
from tests.helpers.proc import EngineProcess, engine_process, free_port, run_engine
from tests.integration.support import DEMO, Client, ipc_dir, kill_tree
from tests.scaleout.conftest import RedisServer

SECRET = "a-development-secret-of-32-bytes!"
GRACE = 5.0


def token_path(user: str) -> str:
    claims = {"sub": user, "preferred_username": user.title(), "exp": int(time.time()) + 600}
    return f"/ws/demo?token={jwt.encode(claims, SECRET, 'HS256')}"


def engine_children(eng: EngineProcess) -> list[psutil.Process]:
    """The live engine processes under the parent (workers are their children)."""
    found = []
    for child in eng.process.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


@pytest.fixture
def cluster(own_redis: RedisServer) -> Iterator[tuple[EngineProcess, str]]:
    """``engine --processes 2`` with the demo service; yields it and its --ipc path."""
    with ipc_dir() as directory, contextlib.ExitStack() as stack:
        ipc = str(Path(directory) / "l.sock")
        args = [
            "--processes",
            "2",
            "--redis",
            own_redis.url,
            "--ipc",
            ipc,
            "--service",
            DEMO,
            "--ipc-heartbeat",
            "1",
            "--ws-rate",
            "0",
            "--jwt-secret",
            SECRET,
            "--presence-grace",
            "0.5",
            "--presence-lease",
            "2",
            "--shutdown-grace",
            str(GRACE),
        ]
        eng = stack.enter_context(engine_process(args))
        seen: set[psutil.Process] = set()
        # Runs before the parent is killed: every process it ever had, workers too
        # (children are in sessions of their own; a SIGKILLed parent orphans them).
        stack.callback(lambda: kill_tree(list(seen)))
        stack.callback(lambda: seen.update(_tree(eng)))
        yield eng, ipc


def sockets(ipc: str) -> set[str]:
    """The IPC socket files next to ``ipc``."""
    return {p.name for p in Path(ipc).parent.iterdir()}


def _tree(eng: EngineProcess) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return eng.process.children(recursive=True)
    return []


async def engine_of(client: Client) -> int:
    """The pid of the engine process holding ``client``."""
    answer = await client.call("demo.whoami")
    return int(psutil.Process(answer["pid"]).ppid())


@contextlib.asynccontextmanager
async def spread(
    port: int, *, each: int, users: bool = False, within: float = 20.0
) -> AsyncIterator[dict[int, list[Client]]]:
    """Clients opened until both engine processes hold at least ``each`` of them:
    {engine pid: its clients}. With ``users``, client n is user ``u<n>``."""
    async with contextlib.AsyncExitStack() as stack:
        by_engine: dict[int, list[Client]] = {}
        deadline = time.monotonic() + within
        n = 0
        while len(by_engine) < 2 or min(len(c) for c in by_engine.values()) < each:
            assert time.monotonic() < deadline, f"clients not spread: {by_engine}"
            path = token_path(f"u{n}") if users else "/ws/demo"
            try:
                client = await stack.enter_async_context(Client.open(port, path))
            except (InvalidStatus, OSError):  # a process whose worker is not in yet: 404
                await asyncio.sleep(0.05)
                continue
            n += 1
            by_engine.setdefault(await engine_of(client), []).append(client)
        yield by_engine


@pytest.mark.asyncio
async def test_a_room_emit_reaches_the_clients_of_both_processes(
    cluster: tuple[EngineProcess, str],
) -> None:
    eng, ipc = cluster
    pids = {p.pid for p in engine_children(eng)}
    assert len(pids) == 2
    room = f"room-{uuid.uuid4().hex[:6]}"
    async with spread(eng.port, each=3) as by_engine:
        assert set(by_engine) == pids
        # Each process has its own IPC socket (and its own worker: spread saw both).
        assert sockets(ipc) == {"l.sock.0", "l.sock.1"}
        everyone = [c for clients in by_engine.values() for c in clients]
        for client in everyone:
            await client.call("demo.join", {"room": room})
        for pid, clients in by_engine.items():  # an emit from each process
            data = {"from": pid}
            await clients[0].call("demo.emit", {"room": room, "event": "t.ev", "data": data})
            for client in everyone:
                event = await client.event("t.ev")
                assert event["data"] == data


@pytest.mark.asyncio
async def test_presence_is_one_view_from_both_processes(
    cluster: tuple[EngineProcess, str],
) -> None:
    eng, _ = cluster
    room = f"room-{uuid.uuid4().hex[:6]}"
    async with spread(eng.port, each=2, users=True) as by_engine:
        everyone = [c for clients in by_engine.values() for c in clients]
        for client in everyone:
            await client.call("demo.join", {"room": room})
        expected = sorted(f"u{n}" for n in range(len(everyone)))
        views = []
        for clients in by_engine.values():
            answer = await clients[0].call("demo.presence", {"room": room, "user": "u0"})
            assert answer["online"] is True
            views.append(sorted(u["userId"] for u in answer["users"]))
        assert views == [expected, expected]


@pytest.mark.asyncio
async def test_a_killed_process_is_restarted_and_serves_again(
    cluster: tuple[EngineProcess, str],
) -> None:
    eng, _ = cluster
    async with spread(eng.port, each=1):
        pass  # both processes serve, their workers registered
    victim, survivor = engine_children(eng)
    old_workers = victim.children()
    assert old_workers
    victim.kill()
    victim.wait(5)
    # The parent starts another in its place, and ends the workers it left behind.
    deadline = time.monotonic() + 15
    while True:
        pids = {p.pid for p in engine_children(eng)}
        if len(pids) == 2 and victim.pid not in pids:
            break
        assert time.monotonic() < deadline, f"not restarted: {pids}"
        await asyncio.sleep(0.05)
    psutil.wait_procs(old_workers, timeout=5)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in old_workers)
    assert survivor.pid in pids
    assert "was killed by SIGKILL" in eng.output()
    room = f"room-{uuid.uuid4().hex[:6]}"
    async with spread(eng.port, each=2) as by_engine:
        assert set(by_engine) == pids  # the new process serves clients
        everyone = [c for clients in by_engine.values() for c in clients]
        for client in everyone:
            await client.call("demo.join", {"room": room})
        await everyone[0].call("demo.emit", {"room": room, "event": "t.ev", "data": 1})
        for client in everyone:
            assert (await client.event("t.ev"))["data"] == 1


@pytest.mark.asyncio
async def test_sigterm_drains_both_processes_and_the_parent_exits_0(
    cluster: tuple[EngineProcess, str],
) -> None:
    eng, ipc = cluster
    tree = _tree(eng)
    async with spread(eng.port, each=2) as by_engine:
        everyone = [c for clients in by_engine.values() for c in clients]
        started = time.monotonic()
        eng.send_signal(signal.SIGTERM)
        codes = Counter([(await c.wait_closed(GRACE))[0] for c in everyone])
        assert codes == Counter({1001: len(everyone)})  # every client on both: 1001
        assert await eng.wait_async(GRACE) == 0
        assert time.monotonic() - started < GRACE
    _, alive = psutil.wait_procs(tree, timeout=2)
    assert not alive, alive  # both processes and every worker
    assert sockets(ipc) == set()  # each removed its socket
    output = eng.output()
    assert "engine process 0" in output and "engine process 1" in output
    assert output.count("exited with 0") == 2


def test_more_than_one_process_without_redis_is_refused() -> None:
    port = free_port()
    result = run_engine(["--processes", "2", "--listen", f"127.0.0.1:{port}", "--echo", "/e"])
    assert result.returncode == 2
    assert "--processes 2 needs --redis URL" in result.stderr
    assert "redis://127.0.0.1:6379/0" in result.stderr  # says how to fix it
    with pytest.raises(OSError):  # nothing was started
        socket.create_connection(("127.0.0.1", port), 1).close()


def test_auto_is_one_process_per_usable_core() -> None:
    assert values.processes("auto") == len(os.sched_getaffinity(0))
    assert values.processes("3") == 3
