"""Inbound WebSocket message limits over real sockets: service endpoints and echo."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs, encode_client_frame
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio

CHAT = m.Registration("chat", ws=m.WsRoute("/ws/chat", types=["chat.send", "echo"]))


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


async def echo_data(worker: FakeWorker, request: m.Message) -> m.Reply:
    return reply_json(request, orjson.loads(request.json).get("data"))


@asynccontextmanager
async def chat_service(ipc_path: str, **config: Any) -> AsyncIterator[tuple[Engine, FakeWorker]]:
    async with (
        running_engine(ipc_path=ipc_path, **config) as engine,
        FakeWorker(ipc_path, CHAT) as worker,
    ):
        worker.on("message", echo_data)
        await worker.start()
        yield engine, worker


def frames(*messages: Any) -> bytes:
    """Client text frames for ``messages`` (JSON-encoded), to be written in one go."""
    return b"".join(encode_client_frame(0x1, orjson.dumps(msg)) for msg in messages)


async def recv_json(ws: RawWs, timeout: float = 2.0) -> Any:  # noqa: ASYNC109
    frame = await ws.recv_frame(timeout)
    assert frame.opcode == 0x1, frame
    return orjson.loads(frame.payload)


def forwarded(worker: FakeWorker) -> list[Any]:
    """The ``id`` of every client message the worker received, in order."""
    return [orjson.loads(r.json)["id"] for r in worker.requests if isinstance(r, m.Message)]


async def metrics_text(engine: Engine) -> str:
    async with RawHttp(engine.port) as http:
        return (await http.request("GET", "/metrics")).body.decode()


async def test_burst_over_the_limit_is_refused_and_not_forwarded(ipc_path: str) -> None:
    async with (
        chat_service(ipc_path, ws_rate=2.0, ws_burst=3.0, ws_abuse_limit=100) as (engine, worker),
        RawWs(engine.port, "/ws/chat") as ws,
    ):
        ws.send_raw(frames(*({"type": "echo", "data": i, "id": i} for i in range(1, 6))))
        replies = {}
        for _ in range(5):
            reply = await recv_json(ws)
            replies[reply["id"]] = reply
        for i in (1, 2, 3):
            assert replies[i] == {"id": i, "type": "echo", "data": i}
        for i in (4, 5):
            error = replies[i]["error"]
            assert replies[i]["type"] == "echo"
            assert error["code"] == "RATE_LIMITED"
            assert isinstance(error["message"], str)
            # Seconds until the next token (1/rate at most), with millisecond precision.
            assert 0 < error["retryAfter"] <= 0.5
            assert round(error["retryAfter"], 3) == error["retryAfter"]
        assert forwarded(worker) == [1, 2, 3]  # the refused ones never reached the worker

        # Waiting what the engine announced is enough for the next message to pass.
        await asyncio.sleep(replies[5]["error"]["retryAfter"])
        ws.send_raw(frames({"type": "echo", "data": "again", "id": 6}))
        assert await recv_json(ws) == {"id": 6, "type": "echo", "data": "again"}
        assert forwarded(worker) == [1, 2, 3, 6]
        assert engine.metrics.ws_rate_limited == 2
        assert "linkd_ws_rate_limited_messages_total 2.0" in await metrics_text(engine)


async def test_refused_messages_without_id_or_json_are_counted_in_one_report(
    ipc_path: str,
) -> None:
    async with (
        chat_service(ipc_path, ws_rate=1.0, ws_burst=1.0, ws_abuse_limit=100) as (engine, _),
        RawWs(engine.port, "/ws/chat") as ws,
    ):
        ws.send_raw(
            frames({"type": "echo", "data": 1, "id": "a"}, {"type": "echo"})
            + encode_client_frame(0x1, b"not json")
        )
        replies = [await recv_json(ws) for _ in range(2)]  # the report comes before the ack
        assert {"id": "a", "type": "echo", "data": 1} in replies
        # Nothing to answer them with: one event counts them (tests/engine/test_ws_refusals.py).
        (report,) = [r for r in replies if r["type"] == "linkd.rate_limited"]
        assert report["data"]["dropped"] == 2


async def test_type_limit_applies_to_that_type_only(ipc_path: str) -> None:
    async with (
        chat_service(
            ipc_path, ws_rate=0, ws_type_limits=(("chat.send", 1.0, 2.0),), ws_abuse_limit=100
        ) as (engine, worker),
        RawWs(engine.port, "/ws/chat") as ws,
    ):
        sends = [{"type": "chat.send", "data": i, "id": f"s{i}"} for i in range(4)]
        echoes = [{"type": "echo", "data": i, "id": f"e{i}"} for i in range(6)]
        ws.send_raw(frames(*sends, *echoes))
        replies = {}
        for _ in range(10):
            reply = await recv_json(ws)
            replies[reply["id"]] = reply
        assert [replies[f"s{i}"].get("error", {}).get("code") for i in range(4)] == [
            None,
            None,
            "RATE_LIMITED",
            "RATE_LIMITED",
        ]
        assert replies["s3"]["type"] == "chat.send"
        assert 0 < replies["s3"]["error"]["retryAfter"] <= 1.0
        assert all("error" not in replies[f"e{i}"] for i in range(6))
        assert sorted(forwarded(worker)) == sorted(["s0", "s1", *(f"e{i}" for i in range(6))])


async def test_sustained_abuse_closes_1008_with_a_metric_and_one_log_line(
    ipc_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "linkd.ws")
    async with (
        chat_service(ipc_path, ws_rate=1.0, ws_burst=1.0, ws_abuse_limit=3) as (engine, worker),
        RawWs(engine.port, "/ws/chat") as ws,
    ):
        ws.send_raw(frames(*({"type": "echo", "data": i, "id": i} for i in range(20))))
        codes = []
        while True:
            frame = await ws.recv_frame()
            if frame.opcode == 0x8:
                assert frame.close_code == 1008
                break
            codes.append(orjson.loads(frame.payload).get("error", {}).get("code"))
        # One passed (its ack may lose the race with the close), three were answered
        # RATE_LIMITED, the fourth refusal closed the connection.
        assert codes in (["RATE_LIMITED"] * 3, [None] + ["RATE_LIMITED"] * 3)
        assert forwarded(worker) == [0]
        ws.send_frame(0x8, (1008).to_bytes(2, "big"))  # complete the closing handshake
        await ws.expect_disconnect()
        assert engine.metrics.ws_abuse_closes == 1
        text = await metrics_text(engine)
        assert "linkd_ws_abuse_closes_total 1.0" in text
        assert 'linkd_ws_closes_total{code="1008"} 1.0' in text
    lines = [r.getMessage() for r in caplog.records if "1008" in r.getMessage()]
    assert len(lines) == 1  # not one per refused message
    assert "127.0.0.1" in lines[0] and "/ws/chat" in lines[0]


class RefusingEcho(WebSocketEndpoint):
    """An echo that refuses messages over the rate instead of throttling (the echo
    endpoint throttles: tests/engine/test_ws_hostile.py)."""

    throttle = False

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        ws.send(data)


def refusing_engine(**config: Any) -> Engine:
    engine = Engine(make_config(**config))
    engine.websocket("/refusing", RefusingEcho())
    return engine


async def test_refusing_endpoint_over_the_limit_drops_until_abuse_closes() -> None:
    engine = refusing_engine(ws_rate=5.0, ws_burst=5.0, ws_abuse_limit=30)
    async with running_engine(engine), RawWs(engine.port, "/refusing") as ws:
        # One write: one read on the engine side, so one report.
        ws.send_raw(b"".join(encode_client_frame(0x1, f"m{i}".encode()) for i in range(20)))
        # The marker goes once a token is back; everything echoed before it is counted.
        await asyncio.sleep(0.25)
        ws.send_text("marker")
        echoed, reports = [], []
        while (payload := (await ws.recv_frame()).payload) != b"marker":
            if payload.startswith(b'{"type":"linkd.rate_limited"'):
                reports.append(orjson.loads(payload)["data"]["dropped"])
            else:
                echoed.append(payload)
        assert 5 <= len(echoed) <= 6  # the burst (plus a token if the read was split)
        assert echoed[:5] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        assert sum(reports) == 20 - len(echoed)  # the drops did not go unnoticed
        assert len(engine.state.ws_connections) == 1  # dropped, not closed
        assert engine.metrics.ws_abuse_closes == 0

        # 14 or 15 refusals so far; 20 more pass the abuse limit of 30: close 1008.
        for i in range(20):
            ws.send_frame(0x1, f"n{i}".encode())
        assert await ws.recv_close_code() == 1008
        assert engine.metrics.ws_abuse_closes == 1


async def test_abuse_limit_zero_never_closes() -> None:
    engine = refusing_engine(ws_rate=1.0, ws_burst=1.0, ws_abuse_limit=0)
    async with running_engine(engine), RawWs(engine.port, "/refusing") as ws:
        ws.send_raw(b"".join(encode_client_frame(0x1, f"m{i}".encode()) for i in range(200)))
        assert (await ws.recv_frame()).payload == b"m0"
        report = orjson.loads((await ws.recv_frame()).payload)
        assert report["type"] == "linkd.rate_limited" and report["data"]["dropped"] == 199
        await asyncio.sleep(1.0)
        ws.send_text("after")
        assert (await ws.recv_frame()).payload == b"after"
        assert engine.metrics.ws_rate_limited == 199
        assert engine.metrics.ws_abuse_closes == 0


async def test_on_rate_limited_hook_gets_the_message_and_retry_after() -> None:
    seen: list[tuple[str | bytes, float]] = []

    class Endpoint(WebSocketEndpoint):
        throttle = False

        def on_message(self, ws: WebSocket, data: str | bytes) -> None:
            ws.send(data)

        def on_rate_limited(self, ws: WebSocket, data: str | bytes, retry_after: float) -> None:
            seen.append((data, retry_after))
            ws.send("slow down")

    engine = Engine(make_config(ws_rate=10.0, ws_burst=2.0, ws_abuse_limit=100))
    engine.websocket("/hooked", Endpoint())
    async with running_engine(engine), RawWs(engine.port, "/hooked") as ws:
        for text in ("a", "b", "c"):
            ws.send_text(text)
        assert [(await ws.recv_frame()).payload for _ in range(3)] == [b"a", b"b", b"slow down"]
        assert [data for data, _ in seen] == ["c"]
        assert 0 < seen[0][1] <= 0.1


async def test_no_limit_when_disabled() -> None:
    async with running_engine(ws_rate=0) as engine, RawWs(engine.port) as ws:
        for i in range(500):
            ws.send_frame(0x1, f"m{i}".encode())
        for i in range(500):
            assert (await ws.recv_frame()).payload == f"m{i}".encode()
        assert engine.metrics.ws_rate_limited == 0
