"""GET /metrics: every family issue 4 lists, driven through real sockets and a worker."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import Engine
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

SERVICE = m.Registration("stats", http=[m.HttpRoute("ping", "GET", "/stats/ping")])

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(engine: Engine) -> Samples:
    async with RawHttp(engine.port) as http:
        resp = await http.request("GET", "/metrics")
    assert resp.status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.asyncio
async def test_metrics_cover_connections_traffic_fanout_ipc_and_workers(tmp_path: Path) -> None:
    ipc = short_socket_path(tmp_path)
    async with running_engine(ipc_path=ipc) as engine, FakeWorker(ipc, SERVICE) as worker:
        worker.on("http", lambda w, request: _pong(request))
        await worker.start()
        async with RawWs(engine.port, "/echo") as a, RawWs(engine.port, "/echo") as b:
            a.send_text("hello")
            assert (await a.recv_frame()).payload == b"hello"
            assert engine.broadcast("news") == 2
            for ws in (a, b):
                assert (await ws.recv_frame()).payload == b"news"
            async with RawHttp(engine.port) as http:
                assert (await http.request("GET", "/stats/ping")).status == 200
            samples = await scrape(engine)

    assert value(samples, "linkd_ws_connections", path="/echo") == 2
    assert value(samples, "linkd_ws_messages_received_total") == 1
    # Frames on the wire: "hello" masked from the client (6 + 5 bytes)...
    assert value(samples, "linkd_ws_bytes_received_total") == 11
    # ... and "hello" back plus "news" twice (2 + 5, 2 * (2 + 4)).
    assert value(samples, "linkd_ws_bytes_sent_total") == 19
    assert value(samples, "linkd_fanout_publishes_total") == 1
    assert value(samples, "linkd_fanout_deliveries_total") == 2
    assert value(samples, "linkd_fanout_latency_seconds_count") == 1
    assert 0 < value(samples, "linkd_fanout_latency_seconds_sum") < 1
    assert value(samples, "linkd_fanout_latency_seconds_bucket", le="+Inf") == 1
    assert value(samples, "linkd_ipc_request_latency_seconds_count", service="stats") == 1
    assert value(samples, "linkd_service_workers", service="stats") == 1
    # Refusals, rate limits and slow consumers are there from the start, at zero.
    names = {name for name, _ in samples}
    for family in (
        "linkd_ws_rate_limited_messages_total",
        "linkd_slow_consumers_total",
        "linkd_dropped_messages_total",
    ):
        assert family in names


async def _pong(request: m.HttpRequest) -> m.Reply:
    return reply_json(request, "pong")
