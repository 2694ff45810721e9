"""Events between services through a real engine and real worker processes: one worker
of every subscribing service gets each event, a worker SIGKILLed mid-event loses
nothing while another lives, the bound refuses with a clear error, and a publish
nobody subscribed to says so (docs/sdk.md, "Events between services")."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

import pytest

from engine.brokers.events import MAX_WAITING_EVENTS
from tests.integration.support import Client, demo_engine

PUB = "tests.helpers.services.pub"
CONSUMER = "tests.helpers.services.consumer"


async def reports(watcher: Client, kind: str, count: int, within: float) -> list[dict[str, Any]]:
    """The next ``count`` ``consumer.<kind>`` events (others are kept aside)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while len(got) < count:
            frame = await watcher.events.get()
            if frame.get("type") == f"consumer.{kind}":
                got.append(frame["data"])
    return got


@pytest.mark.asyncio
async def test_an_event_goes_to_one_worker_of_each_subscriber() -> None:
    with demo_engine(services=[PUB, CONSUMER], workers=2) as eng:
        async with Client.open(eng.port, "/ws/pub") as watcher:
            await watcher.call("pub.join", {"room": "events-watch"})
            data = {"n": "copy"}
            answer = await watcher.call("pub.publish", {"name": "job.created", "data": data})
            # Two services consume it: each gets a copy, handled by one of its workers.
            assert answer == {"services": ["consumer", "pub"], "subscribers": 2}
            seen: dict[str, Any] = {}
            async with asyncio.timeout(5.0):
                while not {"consumer.done", "pub.got"} <= seen.keys():
                    frame = await watcher.events.get()
                    seen[frame["type"]] = frame["data"]
            done = seen["consumer.done"]
            assert done["n"] == "copy" and done["attempt"] == 1 and done["source"] == "pub"
            assert seen["pub.got"] == {"attempt": 1}
            await watcher.no_event("consumer.done", 0.5)  # one worker, once
            await watcher.no_event("pub.got", 0.1)


@pytest.mark.asyncio
async def test_a_publish_nobody_subscribed_to_succeeds_with_no_subscriber() -> None:
    with demo_engine(services=[PUB]) as eng:
        async with Client.open(eng.port, "/ws/pub") as client:
            answer = await client.call("pub.publish", {"name": "nobody.cares", "data": 1})
            assert answer == {"services": [], "subscribers": 0}
            frame = await client.request("pub.publish", {"name": "bad name!", "data": 1})
            assert frame["error"]["code"] == "BAD_REQUEST", frame


@pytest.mark.asyncio
async def test_a_worker_killed_mid_event_loses_nothing_and_the_event_is_redelivered() -> None:
    total = 40
    with demo_engine(services=[PUB, CONSUMER], workers=2) as eng:
        async with Client.open(eng.port, "/ws/pub") as watcher:
            await watcher.call("pub.join", {"room": "events-watch"})
            flood = await watcher.call(
                "pub.flood", {"name": "job.created", "n": total, "data": {"sleep": 0.3}}
            )
            assert flood["queued"] == total
            # The first event a worker starts: kill that worker while it handles it.
            (victim,) = await reports(watcher, "started", 1, 5.0)
            os.kill(victim["pid"], signal.SIGKILL)
            started: list[dict[str, Any]] = [victim]
            done: list[dict[str, Any]] = []
            async with asyncio.timeout(30.0):
                while {d["n"] for d in done} != set(range(total)):
                    frame = await watcher.events.get()
                    if frame.get("type") == "consumer.done":
                        done.append(frame["data"])
                    elif frame.get("type") == "consumer.started":
                        started.append(frame["data"])
    assert not [d for d in done if d["pid"] == victim["pid"] and d["n"] == victim["n"]]
    again = [d for d in done if d["n"] == victim["n"]]
    assert again and again[0]["attempt"] >= 2 and again[0]["pid"] != victim["pid"]
    # Every event the victim held was handled again elsewhere, counted as a redelivery.
    held = {s["n"] for s in started if s["pid"] == victim["pid"]}
    finished_there = {d["n"] for d in done if d["pid"] == victim["pid"]}
    for n in held - finished_there:
        assert any(d["n"] == n and d["attempt"] >= 2 for d in done), n


@pytest.mark.asyncio
async def test_past_the_bound_a_publish_is_refused_with_a_clear_error() -> None:
    with demo_engine(services=[PUB, CONSUMER]) as eng:
        async with Client.open(eng.port, "/ws/pub") as client:
            result = await client.call(
                "pub.flood",
                {"name": "job.created", "n": MAX_WAITING_EVENTS + 5, "data": {"block": True}},
                timeout=60.0,
            )
            assert result["queued"] == MAX_WAITING_EVENTS
            assert result["refusedCount"] == 5
            refusal = result["refused"][0]
            assert refusal["code"] == "OVERLOADED"
            assert "consumer" in refusal["message"] and "10000" in refusal["message"]
            # Another event the full service does not consume still goes through.
            answer = await client.call("pub.publish", {"name": "nobody.cares"})
            assert answer["subscribers"] == 0
            with contextlib.suppress(Exception):
                await client.ws.close()
