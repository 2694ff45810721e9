"""The admin listener (issue 12 item 4): ``--admin-listen`` serves ``/metrics``,
``/health`` and ``/ready``; the client port serves ``/metrics`` only with
``--public-metrics``; readiness follows the workers, the broker and the drain.

Real engine processes (and a real SDK worker) wherever the CLI or a signal is part of
the claim; an in-process engine for the defaults of ``Config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import signal
import socket
import time
from pathlib import Path

import orjson
import psutil
import pytest

from engine import Engine
from tests.helpers.http_client import RawHttp
from tests.helpers.proc import EngineProcess, engine_process, free_port, run_engine
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config, running_engine
from tests.integration.support import DEMO, demo_engine, ipc_dir, worker_pids

pytestmark = pytest.mark.asyncio


def admin_get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_admin(port: int, path: str, status: int, timeout: float = 15.0) -> dict[str, object]:
    """Poll the admin ``path`` until it answers ``status``; its JSON body."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got, body = admin_get(port, path)
        except OSError as exc:
            last = exc
        else:
            if got == status:
                return dict(orjson.loads(body))
            last = (got, body)
        time.sleep(0.02)
    raise AssertionError(f"admin {path} never answered {status} in {timeout}s (last: {last!r})")


def listening_ports(eng: EngineProcess) -> set[int]:
    return {
        c.laddr.port
        for c in eng.process.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


async def test_admin_port_serves_metrics_health_ready_and_client_port_hides_metrics() -> None:
    admin = free_port()
    args = ["--echo", "/echo", "--admin-listen", f"127.0.0.1:{admin}"]
    with engine_process(args, public_metrics=False) as eng:
        status, body = eng.get("/metrics")
        assert status == 404, body
        # The client port's /health is what balancers use today: unchanged.
        status, body = eng.get("/health")
        assert status == 200
        assert orjson.loads(body) == {"status": "healthy", "version": "0.1.0"}

        async with RawWs(eng.port, "/echo") as ws:  # one WebSocket, seen by the admin port
            status, text = await asyncio.to_thread(admin_get, admin, "/metrics")
            assert status == 200
            assert 'linkd_connections{kind="websocket"} 1.0' in text.decode()
            ws.send_text("x")
            await ws.recv_frame()
            status, body = await asyncio.to_thread(admin_get, admin, "/health")
        assert status == 200
        health = orjson.loads(body)
        assert health["status"] == "healthy" and health["version"] == "0.1.0"
        assert health["connections"] == {"http": 0, "websocket": 1}
        assert 0 < health["uptime"] < 60

        status, body = admin_get(admin, "/ready")
        assert status == 200
        assert orjson.loads(body) == {
            "status": "ready",
            "failed": [],
            "checks": {"draining": {"ok": True}},
        }
        assert admin_get(admin, "/echo")[0] == 404  # the client routes are not here
        assert admin_get(admin, "/ready", "POST")[0] == 405
        assert admin_get(admin, "/metrics", "HEAD") == (200, b"")
        # Admin requests are not client traffic.
        metrics = admin_get(admin, "/metrics")[1].decode()
        assert 'linkd_http_requests_total{status="404"} 1.0' in metrics  # the client's
        assert 'status="405"' not in metrics


async def test_admin_listener_binds_only_where_asked() -> None:
    admin = free_port()
    with engine_process(["--echo", "/echo"], public_metrics=False) as eng:
        assert listening_ports(eng) == {eng.port}  # no admin listener unless asked
    with engine_process(["--echo", "/echo", "--admin-listen", f"127.0.0.1:{admin}"]) as eng:
        assert listening_ports(eng) == {eng.port, admin}
        assert admin_get(admin, "/health")[0] == 200
        # Bound to 127.0.0.1 only: another loopback address of this host is refused.
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.2", admin)):
            pass


async def test_public_metrics_brings_metrics_back_on_the_client_port() -> None:
    with engine_process(["--echo", "/echo", "--public-metrics"], public_metrics=False) as eng:
        status, body = eng.get("/metrics")
        assert status == 200 and b"linkd_connections" in body


async def test_config_defaults_hide_metrics_and_admin_port_zero_picks_one() -> None:
    engine = Engine(make_config(public_metrics=False, admin_host="127.0.0.1"))
    async with running_engine(engine):
        async with RawHttp(engine.port) as c:
            resp = await c.request("GET", "/metrics")
            assert resp.status == 404
        async with RawHttp(engine.admin_port) as c:
            # Keep-alive on the admin port: several answers on one connection.
            for path in ("/metrics", "/health", "/ready"):
                resp = await c.request("GET", path)
                assert resp.status == 200, (path, resp.body)
    with pytest.raises(RuntimeError, match="no admin listener"):
        _ = Engine(make_config()).admin_port


async def test_an_admin_port_in_use_fails_the_start_and_frees_the_client_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = free_port()
        config = make_config(port=port, admin_host="127.0.0.1", admin_port=taken.getsockname()[1])
        engine = Engine(config)
        with pytest.raises(OSError):
            await engine.start()
        with pytest.raises(RuntimeError, match="not listening"):
            _ = engine.port
        with socket.socket() as again:  # the client port was closed, not left open
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            again.bind(("127.0.0.1", port))
        await engine.stop()  # nothing left to stop: a no-op


async def test_ready_503_until_a_worker_registers_then_200() -> None:
    with ipc_dir() as tmp:
        engine = Engine(
            make_config(
                ipc_path=str(Path(tmp) / "l.sock"),
                services=(DEMO,),
                workers=1,
                admin_host="127.0.0.1",
            )
        )
        async with running_engine(engine):
            # The worker process is only being spawned: nothing has registered yet.
            status, body = await asyncio.to_thread(admin_get, engine.admin_port, "/ready")
            assert status == 503, body
            ready = orjson.loads(body)
            assert ready["failed"] == ["workers"]
            assert ready["checks"]["workers"] == {"ok": False, "services": {}, "expected": 1}
            ready = await asyncio.to_thread(wait_admin, engine.admin_port, "/ready", 200)
            workers = {"ok": True, "services": {"demo": 1}, "expected": 1}
            assert ready["checks"]["workers"] == workers


async def test_ready_503_while_the_only_worker_is_gone() -> None:
    admin = free_port()
    with demo_engine("--admin-listen", f"127.0.0.1:{admin}") as eng:
        assert admin_get(admin, "/ready")[0] == 200
        (pid,) = worker_pids(eng)
        psutil.Process(pid).kill()  # the supervisor restarts it after a backoff
        body = await asyncio.to_thread(wait_admin, admin, "/ready", 503, 5.0)
        assert body["failed"] == ["workers"]
        assert body["checks"]["workers"] == {"ok": False, "services": {"demo": 0}, "expected": 1}
        assert admin_get(admin, "/health")[0] == 200  # alive all along
        body = await asyncio.to_thread(wait_admin, admin, "/ready", 200)
        assert body["checks"]["workers"]["services"] == {"demo": 1}


async def test_ready_503_when_redis_is_unreachable_200_when_it_is() -> None:
    admin = free_port()
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    flags = ["--echo", "/echo", "--admin-listen", f"127.0.0.1:{admin}"]
    with engine_process([*flags, "--redis", dead]):
        status, body = admin_get(admin, "/ready")
        assert status == 503
        assert orjson.loads(body) == {
            "status": "not_ready",
            "failed": ["broker"],
            "checks": {"draining": {"ok": True}, "broker": {"ok": False}},
        }
        status, body = admin_get(admin, "/health")
        assert status == 200  # degraded, not dead: local clients are still served
        assert orjson.loads(body)["status"] == "degraded"
        assert orjson.loads(body)["redis"] == "unreachable"
    live = "redis://127.0.0.1:6379/0"
    with engine_process([*flags, "--redis", live]):
        body = wait_admin(admin, "/ready", 200, 5.0)
        assert body["checks"] == {"draining": {"ok": True}, "broker": {"ok": True}}


async def test_sigterm_ready_503_while_health_stays_200_for_the_grace() -> None:
    admin = free_port()
    grace = 3.0
    args = ["--echo", "/echo", "--admin-listen", f"127.0.0.1:{admin}"]
    args += ["--shutdown-grace", str(grace), "--close-timeout", "30"]
    with engine_process(args) as eng:
        assert admin_get(admin, "/ready")[0] == 200
        async with RawWs(eng.port, "/echo") as ws:
            # This client never answers the 1001: the drain lasts the whole grace.
            started = time.monotonic()
            eng.send_signal(signal.SIGTERM)
            assert await ws.recv_close_code(5.0) == 1001
            seen: list[tuple[int, int, str]] = []
            while time.monotonic() - started < grace - 0.5:
                ready, _ = await asyncio.to_thread(admin_get, admin, "/ready")
                alive, body = await asyncio.to_thread(admin_get, admin, "/health")
                seen.append((ready, alive, orjson.loads(body)["status"]))
                await asyncio.sleep(0.1)
            assert len(seen) >= 5
            assert set(seen) == {(503, 200, "draining")}, seen
            _, body = admin_get(admin, "/ready")
            assert orjson.loads(body)["failed"] == ["draining"]
            code = await eng.wait_async(grace + 5)
        assert code == 0, eng.output()[-2000:]
        with pytest.raises(OSError):  # the admin listener went with the process
            admin_get(admin, "/health")


async def test_processes_get_admin_port_plus_index() -> None:
    admin = free_port()
    args = ["--echo", "/echo", "--processes", "2", "--redis", "redis://127.0.0.1:6379/0"]
    args += ["--admin-listen", f"127.0.0.1:{admin}"]
    with engine_process(args) as eng:
        pids = set()
        for port in (admin, admin + 1):
            wait_admin(port, "/ready", 200)
            with contextlib.closing(socket.create_connection(("127.0.0.1", port))):
                pass
            for child in eng.process.children():
                ports = {
                    c.laddr.port
                    for c in child.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN
                }
                if port in ports:
                    pids.add(child.pid)
        assert len(pids) == 2  # one process behind each admin port
        assert admin not in listening_ports(eng)  # the parent binds nothing


async def test_processes_refuse_an_admin_port_of_zero() -> None:
    result = run_engine(
        ["--processes", "2", "--redis", "redis://127.0.0.1:6379/0", "--admin-listen", "127.0.0.1:0"]
    )
    assert result.returncode == 2
    assert "needs a fixed port in --admin-listen" in result.stderr
