"""Queues toward Redis are bounded: past the bound, events go to this node only."""

from __future__ import annotations

import pytest

from engine.brokers.publish import Publish
from engine.brokers.redis import MAX_QUEUED, RedisBroker
from engine.core.metrics import Metrics
from tests.helpers.server import make_config


class RecordingHub:
    def __init__(self) -> None:
        self.delivered: list[Publish] = []

    def deliver(self, publish: Publish) -> int:
        self.delivered.append(publish)
        return 1


@pytest.mark.asyncio
async def test_publishes_past_the_queue_bound_are_delivered_locally() -> None:
    metrics = Metrics()
    broker = RedisBroker(make_config(redis_url="redis://127.0.0.1:1/0"), metrics)
    hub = RecordingHub()
    broker._hub = hub  # type: ignore[assignment]
    broker.healthy = True  # as if connected, with Redis far behind
    broker._ops.extend(("fence", None) for _ in range(MAX_QUEUED))
    broker.publish(Publish.to(b'{"type":"e","data":1}', room="room", event="e"))
    assert len(broker._ops) == MAX_QUEUED  # nothing more queued
    assert [(p.kind, p.name, p.payload, p.seq) for p in hub.delivered] == [
        ("r", "room", b'{"type":"e","data":1}', None)  # unnumbered
    ]
    assert metrics.broker_fallbacks == 1
    broker._ops.clear()
    broker.publish(Publish.to(b'{"type":"e","data":2}', room="room", event="e"))
    assert len(broker._ops) == 1 and len(hub.delivered) == 1  # queued for Redis again
    await broker.client.aclose()
