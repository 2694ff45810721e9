"""Graceful shutdown of a real engine process on SIGTERM and SIGINT.

Every open WebSocket must get a 1001 close frame, and the process must exit with
code 0 within ``--shutdown-grace``, whether or not the clients answer the close.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import struct
import time

import pytest

from tests.helpers.proc import EngineProcess, engine_process
from tests.helpers.raw_ws import RawWs

pytestmark = pytest.mark.asyncio

GOING_AWAY = 1001


async def open_clients(eng: EngineProcess, n: int, stack: contextlib.AsyncExitStack) -> list[RawWs]:
    """``n`` echo clients, each proven open by one round trip, all closed by ``stack``."""
    clients = [RawWs(eng.port, "/echo") for _ in range(n)]
    for ws in clients:
        stack.push_async_exit(ws.__aexit__)
    statuses = await asyncio.gather(*(ws.connect() for ws in clients))
    assert statuses == [101] * n

    async def echo(ws: RawWs, i: int) -> None:
        ws.send_text(f"hello {i}")
        frame = await ws.recv_frame()
        assert (frame.opcode, frame.payload) == (0x1, f"hello {i}".encode())

    await asyncio.gather(*(echo(ws, i) for i, ws in enumerate(clients)))
    metrics = await eng.ametrics()
    assert metrics['linkd_connections{kind="websocket"}'] == n
    return clients


async def answer_close(ws: RawWs, within: float) -> int | None:
    """Wait for the server's close frame, echo its code (RFC 6455 §5.5.1), expect EOF."""
    code = await ws.recv_close_code(within)
    if code is not None:
        ws.send_frame(0x8, struct.pack("!H", code))
    await ws.expect_eof(within)
    return code


async def stop_with_signal(sig: signal.Signals, clients: int) -> None:
    grace = 5.0
    caps_off = ["--max-connections-per-ip", "0", "--new-connections-per-ip", "0"]
    with engine_process(["--echo", "/echo", "--shutdown-grace", str(grace), *caps_off]) as eng:
        async with contextlib.AsyncExitStack() as stack:
            conns = await open_clients(eng, clients, stack)
            started = time.monotonic()
            eng.send_signal(sig)
            codes = await asyncio.gather(*(answer_close(ws, grace) for ws in conns))
            code = await eng.wait_async(grace + 5)
            elapsed = time.monotonic() - started
        print(f"{sig.name}: {clients} clients closed with 1001, exit {code} in {elapsed:.3f}s")
        assert codes == [GOING_AWAY] * clients
        assert code == 0, eng.output()[-2000:]
        assert elapsed < grace, f"took {elapsed:.2f}s, grace is {grace}s"
        log = eng.output()
        assert "Traceback" not in log, log[-2000:]
        assert "grace period over" not in log  # every client answered: nobody was dropped


async def test_sigterm_closes_100_websockets_with_1001_and_exits_0() -> None:
    await stop_with_signal(signal.SIGTERM, 100)


async def test_sigint_closes_websockets_with_1001_and_exits_0() -> None:
    await stop_with_signal(signal.SIGINT, 20)


async def test_shutdown_grace_bounds_exit_when_clients_never_answer() -> None:
    """Clients that ignore the 1001 are dropped when the grace period ends, not later."""
    grace = 1.0
    with engine_process(
        ["--echo", "/echo", "--shutdown-grace", str(grace), "--close-timeout", "30"]
    ) as eng:
        async with contextlib.AsyncExitStack() as stack:
            conns = await open_clients(eng, 10, stack)
            started = time.monotonic()
            eng.send_signal(signal.SIGTERM)
            codes = await asyncio.gather(*(ws.recv_close_code(grace + 2) for ws in conns))
            assert codes == [GOING_AWAY] * len(conns)
            code = await eng.wait_async(grace + 5)
            elapsed = time.monotonic() - started
            for ws in conns:  # their TCP connection was dropped: EOF or reset
                with contextlib.suppress(ConnectionResetError):
                    await ws.expect_eof(2.0)
        print(f"grace {grace}s, silent clients: exit {code} in {elapsed:.3f}s")
        assert code == 0, eng.output()[-2000:]
        # It waited for the grace period (the clients could still have answered)...
        assert elapsed >= grace * 0.9
        # ...and not for the 30 s close timeout.
        assert elapsed < grace + 1.5, f"took {elapsed:.2f}s with grace {grace}s"
        assert "grace period over: dropping 10 connections" in eng.output()
