"""Issue 10 #11: the whole stop is bounded by the grace that was asked for.

A worker's handler sleeps far longer than the grace and the request timeout is longer
too: on SIGTERM the engine must still exit within grace + a little, having answered
the HTTP client (503) and closed the WebSocket (1001), and leave no worker behind.
It used to take the engine's grace, then the supervisor's grace again (19 s for 10).
"""

from __future__ import annotations

import asyncio
import http.client
import signal
import time
from typing import Any

import psutil
import pytest

from tests.helpers.proc import EngineProcess
from tests.integration.support import Client, demo_engine, worker_pids

pytestmark = pytest.mark.asyncio

SLEEPER = "tests.helpers.services.sleeper"
#: What the stop may take beyond the grace: reaping processes, loop turns.
SLACK = 1.5


async def started(watcher: Client, what: str) -> dict[str, Any]:
    """The ``sleeper.started`` event of the next request of kind ``what``."""
    while True:
        event = await watcher.event("sleeper.started")
        if event["data"]["what"] == what:
            return dict(event["data"])


def get(eng: EngineProcess, path: str) -> tuple[int | None, bytes]:
    """One GET; (None, error) if the connection was cut without an answer."""
    try:
        return eng.request("GET", path, timeout=30.0)
    except (OSError, http.client.HTTPException) as exc:
        return None, repr(exc).encode()


async def test_sigterm_exits_within_grace_with_a_handler_sleeping_far_longer() -> None:
    grace = 2.0
    flags = ("--shutdown-grace", str(grace), "--request-timeout", "60")
    with demo_engine(*flags, services=(SLEEPER,), workers=2) as eng:
        workers = [psutil.Process(pid) for pid in worker_pids(eng)]
        assert len(workers) == 2
        async with (
            Client.open(eng.port, "/ws/sleeper") as watcher,
            Client.open(eng.port, "/ws/sleeper") as napper,
        ):
            # Acked: on_connect ran, both are in room "watch".
            await watcher.call("sleeper.nap", {"t": 0})
            await napper.call("sleeper.nap", {"t": 0})
            await started(watcher, "ws")
            await started(watcher, "ws")
            slow_http = asyncio.create_task(asyncio.to_thread(get, eng, "/sleeper/nap?t=60"))
            await started(watcher, "http")
            await napper.send("sleeper.nap", {"t": 60}, id="long")
            await started(watcher, "ws")
            began = time.monotonic()
            eng.send_signal(signal.SIGTERM)
            code = await eng.wait_async(grace + 10)
            elapsed = time.monotonic() - began
            status, body = await slow_http
            closes = [await asyncio.wait_for(c.closed, 5) for c in (watcher, napper)]
        # The workers were stopped (or killed) by the engine, not left running.
        _, alive = psutil.wait_procs(workers, timeout=0.5)
        log = eng.output()
    print(f"\ngrace {grace}s: exit {code} in {elapsed:.2f}s, HTTP {status}, closes {closes}")
    assert code == 0, log[-3000:]
    assert elapsed < grace + SLACK, f"stop took {elapsed:.2f}s for a {grace}s grace\n{log[-3000:]}"
    assert status in (503, 504), (status, body)
    assert [code for code, _ in closes] == [1001, 1001]
    assert not alive, f"workers left running: {alive}\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]
