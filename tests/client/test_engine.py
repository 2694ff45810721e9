"""linkd_client through a REAL engine process and the demo service: a client whose TCP
connection is cut while events are emitted gets exactly what it missed, then the
``linkd.recovered`` verdict; beyond the history (``--history-size 3``) it is told the
recovery is incomplete.

Engine-dependent (marker ``engine_recovery``): they need the engine's recovery
(engine/brokers/history.py, docs/recovery.md) and are skipped where it is missing.
"""

from __future__ import annotations

import asyncio
import importlib.util
import uuid
from collections.abc import Iterator

import pytest

from linkd_client import Client, Event, Stream
from tests.client.support import Proxy, new_client, until_state
from tests.helpers.proc import EngineProcess
from tests.integration.support import demo_engine

pytestmark = [
    pytest.mark.engine_recovery,
    pytest.mark.skipif(
        importlib.util.find_spec("engine.brokers.history") is None,
        reason="the engine has no recovery yet (engine/brokers/history.py: ?recover=)",
    ),
]

HISTORY = 3


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineProcess]:
    with demo_engine("--history-size", str(HISTORY)) as eng:
        yield eng


class Watcher:
    """A client through a proxy, recording events and verdicts."""

    def __init__(self, proxy: Proxy) -> None:
        self.client = new_client(f"ws://127.0.0.1:{proxy.port}/ws/demo")
        self.events: list[Event] = []
        self.verdicts: list[tuple[Stream, bool]] = []
        self.arrived = asyncio.Event()
        self.client.on("*", self._event)
        self.client.on_recovered(lambda stream, ok: self.verdicts.append((stream, ok)))

    def _event(self, event: Event) -> None:
        self.events.append(event)
        self.arrived.set()

    def seen(self, room: str) -> list[tuple[str, object]]:
        """(type, data) of the events of ``room`` and of its verdicts, in order."""
        out: list[tuple[str, object]] = []
        for e in self.events:
            if e["type"] == "linkd.skip":
                continue  # an event this connection was excluded from: only its number
            if e.get("room") == room:
                out.append((e["type"], e["data"]))
            elif e["type"] == "linkd.recovered" and e["data"].get("room") == room:
                out.append((e["type"], e["data"]["recovered"]))
        return out

    async def wait_for(self, count: int, room: str) -> None:
        async with asyncio.timeout(5):
            while len(self.seen(room)) < count:
                self.arrived.clear()
                await self.arrived.wait()


async def cut_and_emit(proxy: Proxy, watcher: Watcher, other: Client, room: str, n: range) -> None:
    """Cut the watcher's TCP connection; emit ``n`` while it cannot come back."""
    proxy.blocked = True
    proxy.cut()
    await until_state(watcher.client, "reconnecting", "closed")
    for i in n:
        await other.request("demo.emit", {"room": room, "event": "news", "data": i})
    proxy.blocked = False
    await watcher.client.wait_open(5)


@pytest.mark.asyncio
async def test_missed_room_events_are_replayed_then_recovered(engine: EngineProcess) -> None:
    room = f"news-{uuid.uuid4().hex[:8]}"
    direct = f"ws://127.0.0.1:{engine.port}/ws/demo"
    async with Proxy(engine.port).running() as proxy, new_client(direct) as other:
        watcher = Watcher(proxy)
        async with watcher.client as client:
            await client.request("demo.join", {"room": room})
            await other.request("demo.emit", {"room": room, "event": "news", "data": 1})
            await watcher.wait_for(1, room)

            await cut_and_emit(proxy, watcher, other, room, range(2, 4))
            await client.request("demo.join", {"room": room})  # replays before its ack
            await other.request("demo.emit", {"room": room, "event": "news", "data": 4})
            await watcher.wait_for(5, room)
    assert watcher.seen(room) == [
        ("news", 1),
        ("news", 2),
        ("news", 3),
        ("linkd.recovered", True),
        ("news", 4),
    ]
    verdict = next(
        e
        for e in watcher.events
        if e["type"] == "linkd.recovered" and e["data"].get("room") == room
    )
    assert verdict["data"]["seq"] == 3 and verdict["data"]["missed"] == 2
    assert (Stream("room", room), True) in watcher.verdicts
    assert client.stats.duplicates == 0 and client.stats.gaps == 0
    epoch = verdict["data"]["epoch"]
    assert client.positions()["rooms"][room] == [epoch, 4]


@pytest.mark.asyncio
async def test_beyond_the_history_the_verdict_is_not_recovered(engine: EngineProcess) -> None:
    room = f"news-{uuid.uuid4().hex[:8]}"
    direct = f"ws://127.0.0.1:{engine.port}/ws/demo"
    async with Proxy(engine.port).running() as proxy, new_client(direct) as other:
        watcher = Watcher(proxy)
        async with watcher.client as client:
            await client.request("demo.join", {"room": room})
            await other.request("demo.emit", {"room": room, "event": "news", "data": 1})
            await watcher.wait_for(1, room)

            await cut_and_emit(proxy, watcher, other, room, range(2, 2 + HISTORY + 2))
            await client.request("demo.join", {"room": room})
            await watcher.wait_for(2 + HISTORY, room)
    # 2 and 3 left the history: what it still held, then the verdict says so.
    assert watcher.seen(room) == [
        ("news", 1),
        *[("news", i) for i in range(4, 2 + HISTORY + 2)],
        ("linkd.recovered", False),
    ]
    assert (Stream("room", room), False) in watcher.verdicts
    assert client.stats.gaps == 1  # 4 came after 1
    assert client.positions()["rooms"][room][1] == 1 + HISTORY + 2


@pytest.mark.asyncio
async def test_rooms_joined_on_connect_are_recovered_without_a_request(
    engine: EngineProcess,
) -> None:
    direct = f"ws://127.0.0.1:{engine.port}/ws/demo"
    async with Proxy(engine.port).running() as proxy:
        watcher = Watcher(proxy)
        async with watcher.client:
            async with new_client(direct):  # the demo service: user.joined in lobby
                await watcher.wait_for(1, "lobby")
            proxy.blocked = True
            proxy.cut()
            await until_state(watcher.client, "reconnecting", "closed")
            async with new_client(direct) as late:  # joins while the watcher is away
                socket = (await late.request("demo.whoami"))["socket"]
                proxy.blocked = False
                await watcher.wait_for(3, "lobby")
    seen = watcher.seen("lobby")
    assert seen[1:] == [("user.joined", {"socket": socket}), ("linkd.recovered", True)]
