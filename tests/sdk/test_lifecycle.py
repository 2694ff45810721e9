"""Connection management: reconnect with backoff, reject, drain, grace, heartbeat, CLI."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from protocol.ipc import messages as m
from sdk import HttpContext, Service, Worker, WsContext, start_services
from sdk.testing import FakeEngine

from .helpers import chat_service, running, socket_path, until

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]


def slow_service() -> tuple[Service, asyncio.Event, asyncio.Event]:
    service = chat_service()
    entered = asyncio.Event()
    release = asyncio.Event()

    @service.ws.on("slow")
    async def slow(ctx: WsContext) -> str:
        entered.set()
        await release.wait()
        return "done"

    return service, entered, release


async def test_reconnects_with_backoff_after_the_engine_goes_away() -> None:
    service = Service("svc")

    @service.action("hi")
    async def hi(ctx: HttpContext) -> str:
        return "hi"

    with socket_path() as path:
        first = await FakeEngine(path).start()
        worker = Worker(service, path)
        task = asyncio.get_running_loop().create_task(worker.run())
        try:
            await first.worker()
            await first.close()  # engine crash: listener gone, socket dropped
            lost = time.monotonic()
            await asyncio.sleep(0.5)
            assert not worker.connected.is_set()
            async with FakeEngine(path) as second:
                peer = await second.worker()
                # Attempts near 0.1, 0.3, 0.7 s (±20 %): the third one finds it.
                assert 0.5 <= time.monotonic() - lost < 1.5
                assert peer.hello is not None and peer.hello.service == service.registration()
                assert (await peer.http("hi")).json == b'"hi"'
                assert worker.sessions == 2
        finally:
            worker.stop()
            await asyncio.wait_for(task, 5)


async def test_waits_for_an_engine_that_is_not_up_yet() -> None:
    with socket_path() as path:
        worker = Worker(Service("svc"), path)
        task = asyncio.get_running_loop().create_task(worker.run())
        await asyncio.sleep(0.3)
        async with FakeEngine(path) as engine:
            await engine.worker()
            worker.stop()
            await asyncio.wait_for(task, 5)


async def test_rejected_registration_is_retried_with_backoff() -> None:
    with socket_path() as path:
        async with FakeEngine(path, reject=("ROUTE_CONFLICT", "taken")) as engine:
            worker = Worker(Service("svc"), path)
            task = asyncio.get_running_loop().create_task(worker.run())
            await until(lambda: len(engine.rejected) >= 3)
            assert not worker.connected.is_set()
            worker.stop()
            await asyncio.wait_for(task, 5)


async def test_stop_drains_finishes_in_flight_requests_then_closes() -> None:
    service, entered, release = slow_service()
    stopped: list[str] = []

    @service.after_stop
    async def cleanup(svc: Service) -> None:
        stopped.append(svc.name)

    async with running(service) as run:
        pending = run.peer.start(run.peer.message_request(1, "slow"))
        await asyncio.wait_for(entered.wait(), 5)
        run.worker.stop()
        await run.peer.wait_type(m.Drain)
        await asyncio.sleep(0.05)
        assert not pending.done() and not run.peer.closed
        release.set()
        reply = await pending
        assert reply.json == b'"done"'
        kinds = [type(x) for x in run.peer.received]
        assert kinds.index(m.Drain) < kinds.index(m.Reply)
        await run.peer.wait_closed()
        await run.stop()
        assert stopped == ["chat"]


async def test_grace_period_bounds_the_drain() -> None:
    service, entered, _ = slow_service()
    async with running(service, grace=0.2) as run:
        pending = run.peer.start(run.peer.message_request(1, "slow"))
        await asyncio.wait_for(entered.wait(), 5)
        started = time.monotonic()
        await run.stop()
        assert time.monotonic() - started < 1.0
        await run.peer.wait_closed()
        with pytest.raises(ConnectionError):
            await pending


async def test_engine_drain_finishes_work_then_reconnects() -> None:
    service, entered, release = slow_service()
    async with running(service) as run:
        pending = run.peer.start(run.peer.message_request(1, "slow"))
        await asyncio.wait_for(entered.wait(), 5)
        run.peer.send(m.Drain())
        await asyncio.sleep(0.05)
        assert not run.peer.closed
        release.set()
        assert (await pending).json == b'"done"'
        await run.peer.wait_closed()
        again = await run.engine.worker()
        assert again is not run.peer and run.worker.sessions >= 1


async def test_answers_engine_pings() -> None:
    async with running(chat_service()) as run:
        run.peer.send(m.Ping(n=42))
        pong = await run.peer.wait_type(m.Pong)
        assert pong.n == 42


async def test_pings_the_engine_and_reconnects_when_it_stops_answering() -> None:
    async with running(chat_service(), engine={"heartbeat": 0.1}) as run:
        await run.peer.wait_for(lambda x: isinstance(x, m.Ping) and x.n >= 3)
        assert not run.peer.closed  # answered pings keep it alive

        run.engine.answer_pings = False
        await run.peer.wait_closed()
        again = await run.engine.worker()
        run.engine.answer_pings = True
        await again.wait_type(m.Ping)
        assert not again.closed


async def test_before_start_failure_stops_start_services() -> None:
    service = Service("svc")

    @service.before_start
    async def broken(svc: Service) -> None:
        raise RuntimeError("no database")

    with socket_path() as path, pytest.raises(RuntimeError, match="no database"):
        await asyncio.wait_for(start_services([service], ipc=path, handle_signals=False), 5)


async def test_start_services_runs_several_services_until_stopped() -> None:
    one, two = Service("one"), Service("two")
    hooks: list[str] = []

    @one.before_start
    async def before(svc: Service) -> None:
        hooks.append("before")
        svc.db = "pool"

    @one.action("db")
    async def db(ctx: HttpContext) -> str:
        return str(ctx.db)

    @one.after_start
    async def after(svc: Service) -> None:
        hooks.append("after")

    with socket_path() as path:
        async with FakeEngine(path) as engine:
            stop = asyncio.Event()
            task = asyncio.get_running_loop().create_task(
                start_services([one, two], ipc=path, handle_signals=False, stop=stop)
            )
            peers = [await engine.worker(), await engine.worker()]
            names = sorted(p.hello.service.name for p in peers if p.hello)
            assert names == ["one", "two"]
            peer = next(p for p in peers if p.hello and p.hello.service.name == "one")
            assert (await peer.http("db")).json == b'"pool"'
            stop.set()
            await asyncio.wait_for(task, 5)
            assert hooks == ["before", "after"]
            for p in peers:
                await p.wait_type(m.Drain)


async def test_python_m_sdk_serves_and_exits_cleanly_on_sigterm() -> None:
    with socket_path() as path:
        async with FakeEngine(path) as engine:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "sdk",
                "tests.sdk.sample_app",
                "--ipc",
                path,
                cwd=ROOT,
                env={**os.environ, "LINKD_LOG_LEVEL": "warning"},
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                peer = await engine.worker()
                assert peer.hello is not None and peer.hello.service.name == "sample"
                assert (await peer.http("hello")).json == b'"hello"'
                proc.send_signal(signal.SIGTERM)
                await peer.wait_type(m.Drain)
                async with asyncio.timeout(5):
                    assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            stderr = await proc.stderr.read() if proc.stderr else b""
            assert b"Traceback" not in stderr, stderr.decode()
