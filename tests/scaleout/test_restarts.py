"""Nodes going away under a steady stream of room emits: clients behind a balancer
reconnect to the other nodes by themselves (linkd_client) and recover what they missed.

Every subscriber must end with one gap-free, duplicate-free run of the room's
sequence numbers, containing every emit whose ack the publisher received.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from typing import Any

import pytest

from linkd_client import Backoff, Client, ClientError, ConnectionLostError
from tests.helpers.proc import EngineProcess, free_port
from tests.integration.support import demo_engine
from tests.scaleout.balancer import Balancer
from tests.scaleout.conftest import RedisServer

ROOM = "lobby"  # the demo service joins every connection to it on connect


class Nodes:
    """Three engine nodes on fixed ports, each restartable."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.ports = [free_port() for _ in range(3)]
        self.stacks: list[contextlib.ExitStack] = []
        self.procs: list[EngineProcess] = []

    def start(self, i: int) -> None:
        stack = contextlib.ExitStack()
        proc = stack.enter_context(
            demo_engine("--redis", self.redis_url, "--drain-interval", "0.05", port=self.ports[i])
        )
        if i < len(self.stacks):
            self.stacks[i], self.procs[i] = stack, proc
        else:
            self.stacks.append(stack)
            self.procs.append(proc)

    def stop(self, i: int, sig: signal.Signals) -> None:
        self.procs[i].send_signal(sig)
        self.procs[i].wait(15)
        self.stacks[i].close()

    def close(self) -> None:
        for stack in self.stacks:
            stack.close()


class Subscriber:
    def __init__(self, url: str) -> None:
        self.client = Client(url, backoff=Backoff(initial=0.05, max=0.5), request_timeout=5.0)
        self.seqs: list[int] = []
        self.ticks: set[int] = set()
        self.verdicts: list[dict[str, Any]] = []
        self.client.on("*", self._event)

    def _event(self, event: dict[str, Any]) -> None:
        if event.get("room") == ROOM and "seq" in event:
            self.seqs.append(event["seq"])
            if event["type"] == "tick":
                self.ticks.add(event["data"])
        elif event.get("type") == "linkd.recovered":
            self.verdicts.append(event["data"])


async def publish(url: str, acked: list[int], stop: asyncio.Event) -> None:
    async with Client(url, backoff=Backoff(initial=0.05, max=0.5), request_timeout=5.0) as pub:
        i = 0
        while not stop.is_set():
            try:
                await pub.request("demo.emit", {"room": ROOM, "event": "tick", "data": i})
            except (ConnectionLostError, ClientError, TimeoutError):
                await asyncio.sleep(0.05)  # not acked: it may or may not have gone out
                with contextlib.suppress(TimeoutError):
                    await pub.wait_open(5.0)
                i += 1  # a new number, so an unacked one is never counted twice
                continue
            acked.append(i)
            i += 1
            await asyncio.sleep(0.01)


async def run_scenario(
    redis: RedisServer, disrupt: Callable[[Nodes], Any], subscribers: int = 6
) -> tuple[list[Subscriber], list[int]]:
    nodes = Nodes(redis.url)
    try:
        for i in range(3):
            nodes.start(i)
        async with Balancer(nodes.ports).running() as lb:
            url = f"ws://127.0.0.1:{lb.port}/ws/demo"
            subs = [Subscriber(url) for _ in range(subscribers)]
            for sub in subs:
                await sub.client.connect()
            acked: list[int] = []
            stop = asyncio.Event()
            publisher = asyncio.create_task(publish(url, acked, stop))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(disrupt, nodes)
            await asyncio.sleep(1.0)
            stop.set()
            await publisher
            async with asyncio.timeout(20):
                while not all(set(acked) <= sub.ticks for sub in subs):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            for sub in subs:
                await sub.client.close()
            return subs, acked
    finally:
        nodes.close()


def check(subs: list[Subscriber], acked: list[int]) -> None:
    assert len(acked) > 50
    for sub in subs:
        seqs = sub.seqs
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a duplicate"
        assert set(acked) <= sub.ticks
        assert all(v["recovered"] for v in sub.verdicts), sub.verdicts


@pytest.mark.asyncio
async def test_rolling_restart_of_every_node_loses_nothing(own_redis: RedisServer) -> None:
    def restart_all(nodes: Nodes) -> None:
        for i in range(3):
            nodes.stop(i, signal.SIGTERM)  # drains: 1001 in batches, then exits
            nodes.start(i)

    subs, acked = await run_scenario(own_redis, restart_all)
    check(subs, acked)
    # Every subscriber moved at least once, and said where it was when it came back.
    assert all(sub.verdicts for sub in subs)


@pytest.mark.asyncio
async def test_clients_of_a_killed_node_recover_on_the_others(own_redis: RedisServer) -> None:
    def kill_one(nodes: Nodes) -> None:
        nodes.stop(0, signal.SIGKILL)

    subs, acked = await run_scenario(own_redis, kill_one)
    check(subs, acked)
    assert any(sub.verdicts for sub in subs)  # the killed node's clients recovered
