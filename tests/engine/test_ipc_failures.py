"""Failures the engine handles (docs/ipc.md §7): balancing, worker death, timeouts,
overload, no worker; and malformed input or a missed heartbeat from one worker."""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import cbor2
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from engine import Engine
from protocol.ipc import encode_frame
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import HttpResponse, RawHttp
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio

SVC = m.Registration(
    "svc",
    http=[m.HttpRoute("quick", "GET", "/svc/quick"), m.HttpRoute("hold", "GET", "/svc/hold")],
    ws=m.WsRoute("/ws/svc", catch_all=True),
)
OTHER = m.Registration("other", http=[m.HttpRoute("ping", "GET", "/other/ping")])


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


class Gate:
    """Requests named "hold" (HTTP action or message type) wait until ``release``."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.held: list[tuple[FakeWorker, m.HttpRequest | m.Message]] = []
        self.arrived = asyncio.Event()

    def release(self) -> None:
        self.opened.set()

    async def wait_held(self, n: int, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            while len(self.held) < n:
                self.arrived.clear()
                await self.arrived.wait()

    async def handler(self, worker: FakeWorker, request: m.HttpRequest | m.Message) -> m.Reply:
        name = request.action if isinstance(request, m.HttpRequest) else request.type
        if name == "hold":
            self.held.append((worker, request))
            self.arrived.set()
            await self.opened.wait()
        return reply_json(request, {"worker": worker.pid, "name": name})


@asynccontextmanager
async def cluster(
    ipc_path: str, n_workers: int, **overrides: Any
) -> AsyncIterator[tuple[Engine, list[FakeWorker], Gate, AsyncExitStack]]:
    gate = Gate()
    async with running_engine(ipc_path=ipc_path, **overrides) as engine, AsyncExitStack() as st:
        workers = []
        for pid in range(1, n_workers + 1):
            worker = await st.enter_async_context(FakeWorker(ipc_path, SVC, pid=pid))
            worker.on("http", gate.handler)
            worker.on("message", gate.handler)
            await worker.start()
            workers.append(worker)
        try:
            yield engine, workers, gate, st
        finally:
            gate.release()


async def http_get(engine: Engine, path: str) -> HttpResponse:
    async with RawHttp(engine.port) as client:
        return await client.request("GET", path)


async def ws_client(engine: Engine, stack: AsyncExitStack) -> ClientConnection:
    return await stack.enter_async_context(connect(f"ws://127.0.0.1:{engine.port}/ws/svc"))


async def ws_request(ws: ClientConnection, message_type: str, msg_id: int) -> None:
    await ws.send(orjson.dumps({"type": message_type, "id": msg_id}).decode())


async def ws_recv(ws: ClientConnection, timeout: float = 2.0) -> Any:  # noqa: ASYNC109
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


def served_by(worker: FakeWorker) -> int:
    return len(worker.requests)


# ------------------------------------------------------------------ balancing
async def test_ties_are_round_robin(ipc_path: str) -> None:
    async with cluster(ipc_path, 2) as (engine, (w1, w2), _, _):
        pids = [(await http_get(engine, "/svc/quick")).json()["worker"] for _ in range(10)]
        assert sorted(pids) == [1] * 5 + [2] * 5
        assert all(a != b for a, b in itertools.pairwise(pids))
        assert served_by(w1) == served_by(w2) == 5


async def test_least_in_flight_gets_the_request(ipc_path: str) -> None:
    async with cluster(ipc_path, 2) as (engine, workers, gate, stack):
        ws = await ws_client(engine, stack)
        held = asyncio.create_task(http_get(engine, "/svc/hold"))
        await gate.wait_held(1)
        busy = gate.held[0][0]
        (idle,) = [w for w in workers if w is not busy]
        # The busy worker has one call in flight: every quick one goes to the idle one.
        for i in range(6):
            await ws_request(ws, "quick", i)
            assert (await ws_recv(ws))["data"]["worker"] == idle.pid
        assert served_by(busy) == 1
        gate.release()
        assert (await held).json()["worker"] == busy.pid


# --------------------------------------------------------------- worker death
async def test_worker_death_fails_its_calls_and_the_other_serves(ipc_path: str) -> None:
    async with cluster(ipc_path, 2) as (engine, workers, gate, stack):
        ws = await ws_client(engine, stack)
        await ws_request(ws, "hold", 1)
        held_http = asyncio.create_task(http_get(engine, "/svc/hold"))
        await gate.wait_held(2)
        # Least in flight: one held call on each worker. Crash the one holding the ack.
        (victim,) = [w for w, r in gate.held if isinstance(r, m.Message)]
        (survivor,) = [w for w in workers if w is not victim]
        victim.abort()
        assert await ws_recv(ws) == {
            "id": 1,
            "type": "hold",
            "error": {"code": "SERVICE_UNAVAILABLE", "message": "the service worker went away"},
        }
        # The WebSocket stayed open; the next request goes to the survivor.
        await ws_request(ws, "quick", 2)
        assert await ws_recv(ws) == {
            "id": 2,
            "type": "quick",
            "data": {"worker": survivor.pid, "name": "quick"},
        }
        gate.release()
        assert (await held_http).json()["worker"] == survivor.pid


async def test_worker_death_during_http_is_503(ipc_path: str) -> None:
    async with cluster(ipc_path, 2) as (engine, workers, gate, _):
        held = asyncio.create_task(http_get(engine, "/svc/hold"))
        await gate.wait_held(1)
        victim = gate.held[0][0]
        victim.abort()
        resp = await held
        assert resp.status == 503
        assert resp.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        (survivor,) = [w for w in workers if w is not victim]
        assert (await http_get(engine, "/svc/quick")).json()["worker"] == survivor.pid


async def test_no_worker_left_is_service_unavailable(ipc_path: str) -> None:
    async with cluster(ipc_path, 1) as (engine, (worker,), _, stack):
        ws = await ws_client(engine, stack)
        await ws_request(ws, "quick", 1)
        assert (await ws_recv(ws))["data"]["worker"] == worker.pid
        await worker.close()
        await asyncio.sleep(0.05)  # let the engine see the socket close
        resp = await http_get(engine, "/svc/quick")
        assert resp.status == 503
        assert resp.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        await ws_request(ws, "quick", 2)
        ack = await ws_recv(ws)
        assert (ack["id"], ack["error"]["code"]) == (2, "SERVICE_UNAVAILABLE")


async def test_queued_calls_fail_when_the_last_worker_dies(ipc_path: str) -> None:
    overrides = {"worker_concurrency": 1, "service_queue": 4}
    async with cluster(ipc_path, 1, **overrides) as (engine, (worker,), gate, _):
        first = asyncio.create_task(http_get(engine, "/svc/hold"))
        await gate.wait_held(1)
        queued = asyncio.create_task(http_get(engine, "/svc/quick"))
        await asyncio.sleep(0.05)
        assert served_by(worker) == 1  # the second waits in the queue
        worker.abort()
        for resp in await asyncio.gather(first, queued):
            assert resp.status == 503
            assert resp.json()["error"]["code"] == "SERVICE_UNAVAILABLE"


# ------------------------------------------------------------------- timeouts
async def test_the_worker_timer_moves_on_to_its_next_call(ipc_path: str) -> None:
    """Deadlines are kept per worker (and per service queue), not per call: the call in
    flight times out, the queued one takes its slot with the deadline it was given when
    it queued, and times out then; a call after them gets its reply."""
    overrides = {"worker_concurrency": 1, "service_queue": 4, "request_timeout": 0.4}
    async with cluster(ipc_path, 1, **overrides) as (engine, (worker,), gate, _):
        started = time.monotonic()
        first = asyncio.create_task(http_get(engine, "/svc/hold"))
        await gate.wait_held(1)
        queued = asyncio.create_task(http_get(engine, "/svc/hold"))
        await asyncio.sleep(0.05)
        assert served_by(worker) == 1  # the second waits in the queue
        for resp in await asyncio.gather(first, queued):
            assert resp.status == 504, resp.body
            assert resp.json()["error"]["code"] == "TIMEOUT"
        # Not 0.8 s: the second's deadline ran from when it was queued.
        assert 0.4 <= time.monotonic() - started < 0.75
        assert len(gate.held) == 2
        gate.release()  # the late reply is dropped; the worker serves the next call
        resp = await http_get(engine, "/svc/quick")
        assert resp.status == 200, resp.body


async def test_timeout_then_late_reply_is_dropped(
    ipc_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="linkd.ipc")
    async with cluster(ipc_path, 1, request_timeout=0.3) as (engine, (worker,), gate, stack):
        ws = await ws_client(engine, stack)
        started = time.monotonic()
        await ws_request(ws, "hold", 1)
        ack = await ws_recv(ws)
        elapsed = time.monotonic() - started
        assert ack == {
            "id": 1,
            "type": "hold",
            "error": {"code": "TIMEOUT", "message": "the service did not answer"},
        }
        assert 0.25 <= elapsed < 1.0
        # HTTP: 504.
        resp = await http_get(engine, "/svc/hold")
        assert resp.status == 504
        assert resp.json()["error"]["code"] == "TIMEOUT"
        assert len(gate.held) == 2
        # Now the worker answers both, late: dropped, and the worker is not punished.
        gate.release()
        await asyncio.sleep(0.05)
        result = await worker.query("members", room="x")
        assert result.json == b"[]"
        assert not worker.is_closed
        await ws_request(ws, "quick", 2)
        assert await ws_recv(ws) == {
            "id": 2,
            "type": "quick",
            "data": {"worker": worker.pid, "name": "quick"},
        }
        assert (await http_get(engine, "/svc/quick")).status == 200
        assert not any("disconnecting" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------- overload
async def test_overloaded_when_worker_and_queue_are_full(ipc_path: str) -> None:
    overrides = {"worker_concurrency": 1, "service_queue": 1}
    async with cluster(ipc_path, 1, **overrides) as (engine, (worker,), gate, stack):
        first = asyncio.create_task(http_get(engine, "/svc/hold"))
        await gate.wait_held(1)
        second = asyncio.create_task(http_get(engine, "/svc/quick"))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        third = await http_get(engine, "/svc/quick")
        assert time.monotonic() - started < 0.2  # at once, not after a timeout
        assert third.status == 503
        assert third.json()["error"]["code"] == "OVERLOADED"
        # WebSocket: the same, as an ack.
        ws = await ws_client(engine, stack)
        await ws_request(ws, "quick", 7)
        ack = await ws_recv(ws)
        assert (ack["id"], ack["error"]["code"]) == (7, "OVERLOADED")
        # Only the first has reached the worker; the second is served once it completes.
        assert served_by(worker) == 1
        assert not second.done()
        gate.release()
        assert (await first).status == 200
        resp = await second
        assert resp.status == 200
        assert resp.json() == {"worker": worker.pid, "name": "quick"}
        assert served_by(worker) == 2


# ---------------------------------------------------------- malformed worker
def cbor_frame(value: Any) -> bytes:
    return encode_frame(cbor2.dumps(value))


MALFORMED: dict[str, tuple[bytes, str]] = {
    "not-cbor": (encode_frame(b"\xff\xfe\xfd"), "BAD_CBOR"),
    "trailing-bytes": (encode_frame(cbor2.dumps({"t": "ping", "n": 1}) + b"\x00"), "BAD_CBOR"),
    "oversize-prefix": (struct.pack("!I", 4097), "FRAME_TOO_LARGE"),
    "empty-frame": (struct.pack("!I", 0), "EMPTY_FRAME"),
    "reply-unknown-id": (cbor_frame({"t": "reply", "id": 999}), "UNEXPECTED"),
    "tag-epoch": (cbor_frame({"t": "ping", "n": cbor2.CBORTag(1, 5)}), "UNSUPPORTED_CBOR"),
    "tag-custom": (cbor_frame({"t": "ping", "n": cbor2.CBORTag(40000, 5)}), "UNSUPPORTED_CBOR"),
    "unknown-type": (cbor_frame({"t": "bogus"}), "UNKNOWN_TYPE"),
    "engine-only-type": (cbor_frame({"t": "result", "id": 1}), "UNKNOWN_TYPE"),
    "not-a-map": (cbor_frame(["t", "ping"]), "NOT_A_MESSAGE"),
    "missing-field": (cbor_frame({"t": "join", "conn": 1}), "MISSING_FIELD"),
    "bad-field": (cbor_frame({"t": "join", "conn": "1", "room": "r"}), "BAD_FIELD"),
    "emit-two-targets": (
        cbor_frame({"t": "emit", "payload": b"{}", "room": "r", "conn": 1}),
        "BAD_FIELD",
    ),
    "emit-no-target": (cbor_frame({"t": "emit", "payload": b"{}"}), "BAD_FIELD"),
    "close-code-1005": (cbor_frame({"t": "close", "conn": 1, "code": 1005}), "BAD_FIELD"),
    "second-hello": (
        cbor_frame({"t": "hello", "versions": [1], "service": {"name": "svc"}}),
        "UNEXPECTED",
    ),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
async def test_malformed_input_disconnects_only_that_worker(
    ipc_path: str, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.INFO, logger="linkd.ipc")
    data, reason = MALFORMED[kind]
    async with cluster(ipc_path, 1, ipc_max_frame=4096) as (engine, (bad,), gate, stack):
        good = await stack.enter_async_context(FakeWorker(ipc_path, OTHER, pid=99))
        good.on("http", gate.handler)
        await good.start()
        ws = await ws_client(engine, stack)
        await ws_request(ws, "hold", 1)
        await gate.wait_held(1)
        bad.send_raw(data)
        await bad.wait_closed(2.0)
        logged = [r.getMessage() for r in caplog.records if r.name == "linkd.ipc"]
        assert any("disconnecting" in line and reason in line for line in logged), logged
        # Its call in flight failed; its client's connection is still open.
        ack = await ws_recv(ws)
        assert (ack["id"], ack["error"]["code"]) == (1, "SERVICE_UNAVAILABLE")
        await ws_request(ws, "quick", 2)
        ack = await ws_recv(ws)
        assert (ack["id"], ack["error"]["code"]) == (2, "SERVICE_UNAVAILABLE")
        # The other service's worker is untouched.
        assert not good.is_closed
        resp = await http_get(engine, "/other/ping")
        assert resp.status == 200
        assert resp.json() == {"worker": 99, "name": "ping"}


# ------------------------------------------------------------------ heartbeat
async def test_worker_missing_heartbeat_is_disconnected(
    ipc_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="linkd.ipc")
    async with (
        running_engine(ipc_path=ipc_path, ipc_heartbeat=0.2) as engine,
        FakeWorker(ipc_path, SVC, answer_pings=False, pid=1) as mute,
        FakeWorker(ipc_path, OTHER, pid=2) as alive,
    ):
        alive.on("http", Gate().handler)
        welcome = await mute.start()
        started = time.monotonic()
        assert welcome.heartbeat == 0.2
        await alive.start()
        await mute.wait_closed(1.5)
        elapsed = time.monotonic() - started
        assert mute.pings >= 1
        assert elapsed < 0.7, f"dropped after {elapsed:.2f}s"
        assert any("missed heartbeat" in r.getMessage() for r in caplog.records)
        # The one that answers stays, through several heartbeats.
        await asyncio.sleep(1.0)
        assert not alive.is_closed
        assert alive.pings >= 3
        resp = await http_get(engine, "/other/ping")
        assert resp.status == 200


async def test_heartbeat_zero_means_no_pings(ipc_path: str) -> None:
    """docs/ipc.md §4.6: ``heartbeat: 0`` means the engine sends no pings, expects none."""
    async with (
        running_engine(ipc_path=ipc_path, ipc_heartbeat=0) as engine,
        FakeWorker(ipc_path, OTHER, answer_pings=False, pid=3) as worker,
    ):
        worker.on("http", Gate().handler)
        welcome = await worker.start()
        assert welcome.heartbeat == 0
        await asyncio.sleep(0.5)
        assert worker.pings == 0
        assert not worker.is_closed
        assert (await http_get(engine, "/other/ping")).json() == {"worker": 3, "name": "ping"}


async def test_engine_answers_a_worker_ping(ipc_path: str) -> None:
    async with running_engine(ipc_path=ipc_path), FakeWorker(ipc_path, OTHER) as worker:
        await worker.start()
        worker.send(m.Ping(77))
        assert await worker.next_notification() == m.Pong(77)


# ---------------------------------------------------------------------- queue
async def test_queued_call_goes_to_a_worker_that_registers(ipc_path: str) -> None:
    overrides = {"worker_concurrency": 1}
    async with cluster(ipc_path, 1, **overrides) as (engine, (first,), gate, stack):
        held = asyncio.create_task(http_get(engine, "/svc/hold"))
        await gate.wait_held(1)
        queued = asyncio.create_task(http_get(engine, "/svc/quick"))
        await asyncio.sleep(0.05)
        assert not queued.done()
        second = await stack.enter_async_context(FakeWorker(ipc_path, SVC, pid=2))
        second.on("http", gate.handler)
        await second.start()
        resp = await asyncio.wait_for(queued, 2)
        assert resp.json() == {"worker": 2, "name": "quick"}
        gate.release()
        assert (await held).json()["worker"] == first.pid


async def test_queued_call_survives_the_death_of_a_worker(ipc_path: str) -> None:
    overrides = {"worker_concurrency": 1}
    async with cluster(ipc_path, 2, **overrides) as (engine, workers, gate, _):
        holds = [asyncio.create_task(http_get(engine, "/svc/hold")) for _ in range(2)]
        await gate.wait_held(2)
        queued = asyncio.create_task(http_get(engine, "/svc/quick"))
        await asyncio.sleep(0.05)
        victim = gate.held[0][0]
        (survivor,) = [w for w in workers if w is not victim]
        victim.abort()
        await asyncio.sleep(0.05)
        assert not queued.done()  # still waiting: the survivor is busy
        gate.release()
        statuses = sorted(resp.status for resp in await asyncio.gather(*holds))
        assert statuses == [200, 503]
        resp = await asyncio.wait_for(queued, 2)
        assert resp.json() == {"worker": survivor.pid, "name": "quick"}


# ---------------------------------------------------------------------- drain
async def test_worker_drain_routes_new_requests_elsewhere(ipc_path: str) -> None:
    async with cluster(ipc_path, 2) as (engine, workers, gate, _):
        held = asyncio.create_task(http_get(engine, "/svc/hold"))
        await gate.wait_held(1)
        draining = gate.held[0][0]
        (other,) = [w for w in workers if w is not draining]
        draining.send(m.Drain())
        await draining.query("members", room="-")  # the drain is applied
        for _ in range(4):
            assert (await http_get(engine, "/svc/quick")).json()["worker"] == other.pid
        # Its call in flight is still answered.
        gate.release()
        assert (await held).json()["worker"] == draining.pid
        assert not draining.is_closed


async def test_request_larger_than_the_worker_max_frame(ipc_path: str) -> None:
    async with running_engine(ipc_path=ipc_path) as engine, AsyncExitStack() as stack:
        worker = await stack.enter_async_context(FakeWorker(ipc_path, SVC, max_frame=1024))
        worker.on("message", Gate().handler)
        await worker.start()
        ws = await ws_client(engine, stack)
        await ws.send(orjson.dumps({"type": "big", "data": "x" * 2000, "id": 1}).decode())
        ack = await ws_recv(ws)
        assert ack["id"] == 1 and "error" in ack
        assert worker.requests == []
        # Neither the worker nor the client was disconnected.
        await ws_request(ws, "quick", 2)
        assert (await ws_recv(ws))["data"] == {"worker": worker.pid, "name": "quick"}


async def test_engine_sends_drain_to_workers_when_it_stops(ipc_path: str) -> None:
    """docs/ipc.md §4.5: "The engine sends drain to every worker when it shuts down"."""
    async with FakeWorker(ipc_path, OTHER, close_on_drain=True) as worker:
        async with running_engine(ipc_path=ipc_path):
            await worker.start()
            started = time.monotonic()
        # The worker closed on drain: the engine did not need its whole grace period.
        assert time.monotonic() - started < 0.5
        await worker.wait_closed(2.0)
        notes = []
        while not worker.notifications.empty():
            notes.append(worker.notifications.get_nowait())
        assert m.Drain() in notes, f"no drain before the socket closed: {notes}"
