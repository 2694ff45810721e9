"""Process-level guarantees: several workers, a worker killed mid-request, an engine
restart under hand-started workers, garbage on the IPC socket, graceful shutdown.

These tests drive processes and sockets only, so they are synchronous (one run each,
whatever the test event loop): threads stand in where two things happen at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from protocol.ipc import IpcConn, Role, encode, encode_frame
from protocol.ipc import messages as m
from tests.helpers.proc import EngineProcess, engine_process, free_port
from tests.integration.support import (
    DEMO,
    WorkerProcess,
    demo_engine,
    ipc_dir,
    wait_http,
    worker_pids,
)

# ------------------------------------------------------------------- helpers


def get_pid(eng: EngineProcess) -> int:
    status, body = eng.request("GET", "/demo/pid", timeout=5.0)
    assert status == 200, body
    return int(orjson.loads(body)["pid"])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` until true; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


def serving_pids(eng: EngineProcess, want: int, timeout: float = 10.0) -> set[int]:
    """Request ``/demo/pid`` until ``want`` distinct workers answered."""
    seen: set[int] = set()

    def enough() -> bool:
        seen.add(get_pid(eng))
        return len(seen) >= want

    wait_until(enough, timeout, f"{want} workers answering")
    return seen


@contextlib.contextmanager
def ws_client(eng: EngineProcess, path: str = "/ws/demo") -> Iterator[ClientConnection]:
    with connect(
        f"ws://127.0.0.1:{eng.port}{path}",
        open_timeout=5,
        close_timeout=2,
        compression=None,
    ) as ws:
        yield ws


def send(ws: ClientConnection, type: str, data: Any = None, id: Any = None) -> None:
    frame: dict[str, Any] = {"type": type, "data": data}
    if id is not None:
        frame["id"] = id
    ws.send(orjson.dumps(frame).decode())


def recv_until(
    ws: ClientConnection, match: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """The next frame that ``match`` accepts (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        frame: dict[str, Any] = orjson.loads(ws.recv(timeout=max(deadline - time.monotonic(), 0.0)))
        if match(frame):
            return frame


def call(ws: ClientConnection, type: str, data: Any = None, timeout: float = 5.0) -> Any:
    msg_id = f"{type}-{time.monotonic_ns()}"
    send(ws, type, data, msg_id)
    ack = recv_until(ws, lambda f: f.get("id") == msg_id, timeout)
    assert "error" not in ack, ack
    return ack["data"]


def recv_close(ws: ClientConnection, timeout: float) -> tuple[int | None, str | None]:
    """Read until the server's close; its (code, reason)."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ConnectionClosed):
        while True:
            ws.recv(timeout=max(deadline - time.monotonic(), 0.0))
    rcvd = ws.protocol.close_rcvd
    return (rcvd.code, rcvd.reason) if rcvd is not None else (None, None)


# --------------------------------------------------------------------- tests
def test_two_workers_share_load() -> None:
    with demo_engine(workers=2) as eng:
        children = worker_pids(eng)
        assert len(children) == 2
        serving_pids(eng, 2)  # both registered
        counts: dict[int, int] = {}
        for _ in range(50):
            pid = get_pid(eng)
            counts[pid] = counts.get(pid, 0) + 1
        assert set(counts) == children
        assert min(counts.values()) >= 10, counts
        # Concurrent requests spread too.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            pids = list(pool.map(lambda _: get_pid(eng), range(40)))
        assert set(pids) == children


def test_killed_worker_fails_its_request_and_is_restarted() -> None:
    with demo_engine(workers=2) as eng:
        pids = serving_pids(eng, 2)
        with ws_client(eng) as ws:
            send(ws, "demo.slow", {"t": 10}, "slow")
            started = recv_until(ws, lambda f: f.get("type") == "demo.slow.started")
            victim = started["data"]["pid"]
            assert victim in pids
            os.kill(victim, signal.SIGKILL)
            ack = recv_until(ws, lambda f: f.get("id") == "slow", 3.0)
            assert ack["type"] == "demo.slow"
            assert ack["error"]["code"] == "SERVICE_UNAVAILABLE", ack
            # The client's connection stayed open; the next request goes to the survivor.
            (survivor,) = pids - {victim}
            assert call(ws, "demo.whoami")["pid"] == survivor
            assert get_pid(eng) == survivor
            # The supervisor starts a replacement, which registers and serves.
            took = wait_until(
                lambda: len(worker_pids(eng) - pids) == 1, 5.0, "a replacement worker process"
            )
            (replacement,) = worker_pids(eng) - pids
            wait_until(
                lambda: replacement in {get_pid(eng) for _ in range(4)},
                5.0,
                "the replacement serving requests",
            )
            assert victim not in worker_pids(eng)
            assert call(ws, "demo.echo", 1)["echo"] == 1
            print(f"\nreplacement process after {took:.2f}s")


def test_hand_started_worker_reregisters_after_engine_restart() -> None:
    port = free_port()
    with ipc_dir() as tmp:
        ipc = str(Path(tmp) / "l.sock")
        args = ["--ipc", ipc, "--ipc-heartbeat", "1"]
        worker = WorkerProcess(DEMO, ipc)
        try:
            with engine_process(args, port=port) as first:
                wait_http(first, "/demo/ready")
                assert get_pid(first) == worker.pid
                first.send_signal(signal.SIGTERM)
                assert first.wait(5.0) == 0
            assert worker.popen.poll() is None, worker.output()
            with engine_process(args, port=port) as second:
                took, _ = wait_http(second, "/demo/ready", timeout=8.0)
                assert get_pid(second) == worker.pid
                with ws_client(second) as ws:
                    assert call(ws, "demo.echo", "again")["echo"] == "again"
                print(f"\nworker re-registered {took:.2f}s after the new engine was up")
                # Backoff is capped at 5 s (+20 % jitter).
                assert took < 6.5
        finally:
            worker.close()


def _expect_closed(sock: socket.socket, timeout: float, *, silent: bool = True) -> None:
    """The engine closes the socket within ``timeout``: EOF or reset.

    ``silent``: it sends nothing before (else frames it had queued are skipped).
    """
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return
        except TimeoutError:
            raise AssertionError(f"the engine kept the connection open {timeout}s") from None
        if not data:
            return
        assert not silent, data


def _ipc_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(3.0)
    sock.connect(path)
    return sock


def test_bad_ipc_frames_drop_only_that_connection() -> None:
    with ipc_dir() as tmp:
        ipc = str(Path(tmp) / "l.sock")
        with demo_engine(workers=1, ipc=ipc) as eng:
            pid = get_pid(eng)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                # A request in flight on the real worker while garbage arrives.
                slow = pool.submit(eng.request, "GET", "/demo/slow?t=1")
                garbage = [
                    b"\x00\x00\x00\x05\xff\xff\xff\xff\xff",  # not CBOR
                    b"\xff\xff\xff\xff",  # 4 GiB length prefix
                    (64 * 1024 * 1024).to_bytes(4, "big") + b"\xa1" * 1000,  # above max_frame
                    b"\x00\x00\x00\x00",  # empty frame
                    b"\x00\x00\x00\x02\x82\x01",  # CBOR, but an array, not a map
                    encode_frame(encode(m.Drain())),  # well-formed, but not before hello
                ]
                for junk in garbage:
                    with _ipc_socket(ipc) as sock:
                        sock.sendall(junk)
                        _expect_closed(sock, 1.0)

                # A worker that registered properly, then sends an oversize frame.
                with _ipc_socket(ipc) as sock:
                    conn = IpcConn(Role.WORKER)
                    reg = m.Registration(
                        name="ghost",
                        http=[m.HttpRoute(action="ready", method="GET", path="/ghost/ready")],
                    )
                    sock.sendall(
                        conn.send(
                            m.Hello(versions=[m.PROTOCOL_VERSION], service=reg, pid=os.getpid())
                        )
                    )
                    welcome = None
                    while welcome is None:
                        conn.receive_data(sock.recv(65536))
                        welcome = conn.next_message()
                    assert isinstance(welcome, m.Welcome)
                    # Well before a missed heartbeat (2 s) could explain the close.
                    sock.sendall((welcome.max_frame + 1).to_bytes(4, "big"))
                    _expect_closed(sock, 0.5, silent=False)
                # Its routes stay, without a worker behind them.
                status, body = eng.request("GET", "/ghost/ready")
                assert status == 503, body
                assert orjson.loads(body)["error"]["code"] == "SERVICE_UNAVAILABLE"

                assert slow.result(5.0) == (200, orjson.dumps({"pid": pid}))
            # The real worker was never disturbed: same process, still serving.
            for _ in range(20):
                assert get_pid(eng) == pid
            assert worker_pids(eng) == {pid}


def test_worker_sigterm_drains_in_flight_work() -> None:
    with demo_engine(workers=2) as eng:
        pids = serving_pids(eng, 2)
        with ws_client(eng) as ws:
            send(ws, "demo.slow", {"t": 1}, "slow")
            started = recv_until(ws, lambda f: f.get("type") == "demo.slow.started")
            stopping = started["data"]["pid"]
            proc = psutil.Process(stopping)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)  # let it send its drain
            # New work goes to the other worker meanwhile, even when several requests are
            # in flight at once (least-loaded balancing alone would use both workers) ...
            (other,) = pids - {stopping}
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda _: eng.request("GET", "/demo/slow?t=0.3"), range(6)))
            assert answers == [(200, orjson.dumps({"pid": other}))] * 6
            # ... and the request in flight completes on the draining one.
            ack = recv_until(ws, lambda f: f.get("id") == "slow", 3.0)
            assert ack == {"id": "slow", "type": "demo.slow", "data": {"pid": stopping}}
            wait_until(
                lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE,
                3.0,
                "the drained worker's exit",
            )
            assert call(ws, "demo.whoami")["pid"] != stopping


def test_graceful_shutdown_with_supervised_workers() -> None:
    grace = 4.0
    with demo_engine("--shutdown-grace", str(grace), workers=2) as eng:
        pids = serving_pids(eng, 2)
        workers = [psutil.Process(p) for p in pids]
        with (
            ws_client(eng) as first,
            ws_client(eng) as second,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            call(first, "demo.echo", 1)
            call(second, "demo.echo", 2)
            slow = pool.submit(eng.request, "GET", "/demo/slow?t=1")
            time.sleep(0.3)  # in flight
            started = time.monotonic()
            eng.send_signal(signal.SIGTERM)
            assert recv_close(first, grace)[0] == 1001
            assert recv_close(second, grace)[0] == 1001
            # The HTTP request in flight is finished, not cut.
            status, body = slow.result(grace)
            assert status == 200, body
            code = eng.wait(grace + 1.0)
            elapsed = time.monotonic() - started
        assert code == 0, eng.output()
        # Workers stopped by themselves (SIGTERM, drain) before the grace ran out.
        _, alive = psutil.wait_procs(workers, timeout=0.5)
        assert not alive
        assert elapsed < grace, f"{elapsed:.2f}s: workers had to be killed?\n{eng.output()}"
        assert "did not stop" not in eng.output()
        print(f"\nengine exited 0 in {elapsed:.2f}s")


def test_engine_shutdown_sends_drain_to_workers() -> None:
    """docs/ipc.md §4.5: "The engine sends `drain` to every worker when it shuts down"."""
    with ipc_dir() as tmp:
        ipc = str(Path(tmp) / "l.sock")
        with (
            engine_process(["--ipc", ipc, "--shutdown-grace", "2"]) as eng,
            _ipc_socket(ipc) as sock,
        ):
            conn = IpcConn(Role.WORKER)
            reg = m.Registration(name="hand", http=[])
            sock.sendall(
                conn.send(m.Hello(versions=[m.PROTOCOL_VERSION], service=reg, pid=os.getpid()))
            )
            received: list[Any] = []
            while not received:
                conn.receive_data(sock.recv(65536))
                received.extend(iter(conn.next_message, None))
            assert isinstance(received[0], m.Welcome)
            eng.send_signal(signal.SIGTERM)
            sock.settimeout(3.0)
            with contextlib.suppress(ConnectionResetError):
                while data := sock.recv(65536):
                    conn.receive_data(data)
                    for msg in iter(conn.next_message, None):
                        received.append(msg)
                        if isinstance(msg, m.Ping):
                            sock.sendall(conn.send(m.Pong(n=msg.n)))
            assert eng.wait(3.0) == 0
        kinds = [type(msg).__name__ for msg in received]
        assert "Drain" in kinds, f"the engine closed the socket after {kinds}, without a drain"
