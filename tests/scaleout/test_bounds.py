"""Queues toward Redis are bounded: past the bound, events go to this node only."""

from __future__ import annotations

from typing import Any

import pytest

from engine.brokers.redis import MAX_QUEUED, RedisBroker
from engine.core.metrics import Metrics
from tests.helpers.server import make_config


class RecordingHub:
    def __init__(self) -> None:
        self.delivered: list[tuple[Any, ...]] = []

    def deliver(self, *args: Any) -> int:
        self.delivered.append(args)
        return 1


@pytest.mark.asyncio
async def test_publishes_past_the_queue_bound_are_delivered_locally() -> None:
    metrics = Metrics()
    broker = RedisBroker(make_config(redis_url="redis://127.0.0.1:1/0"), metrics)
    hub = RecordingHub()
    broker._hub = hub  # type: ignore[assignment]
    broker.healthy = True  # as if connected, with Redis far behind
    broker._ops.extend(("fence", None) for _ in range(MAX_QUEUED))
    broker.publish("r", "room", b'{"type":"e","data":1}', [], "e", 0.0)
    assert len(broker._ops) == MAX_QUEUED  # nothing more queued
    assert [args[:3] for args in hub.delivered] == [("r", "room", b'{"type":"e","data":1}')]
    assert metrics.broker_fallbacks == 1
    broker._ops.clear()
    broker.publish("r", "room", b'{"type":"e","data":2}', [], "e", 0.0)
    assert len(broker._ops) == 1 and len(hub.delivered) == 1  # queued for Redis again
    await broker.client.aclose()
