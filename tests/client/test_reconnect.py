"""linkd_client against the fake engine: which closes and refusals reconnect, the backoff,
the state callbacks, and close()."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from websockets.exceptions import InvalidStatus

from linkd_client import Backoff, State
from tests.client.support import FakeEngine, new_client, until_state

pytestmark = pytest.mark.asyncio


async def closed_by_server(fake: FakeEngine, code: int, **kwargs: object) -> tuple[bool, State]:
    """Have the fake close the connection with ``code``: (reconnected?, final state)."""
    client = new_client(fake.url, **kwargs)
    async with client:
        await client.send("close", {"code": code})
        try:
            await fake.wait_connections(2, timeout=0.3)
        except TimeoutError:
            return False, client.state
        await client.wait_open(5)
        return True, client.state


@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013])
async def test_reconnects_after_going_away_restart_and_errors(fake: FakeEngine, code: int) -> None:
    reconnected, state = await closed_by_server(fake, code)
    assert reconnected and state == "open"


@pytest.mark.parametrize("code", [1000, 1008, 4001])
async def test_stops_after_normal_and_policy_closes(fake: FakeEngine, code: int) -> None:
    states: list[State] = []
    client = new_client(fake.url)
    client.on_state(states.append)
    await client.connect()
    await client.send("close", {"code": code})
    await until_state(client, "closed")
    await asyncio.sleep(0.05)
    assert len(fake.handshakes) == 1
    assert client.close_code == code
    assert states == ["connecting", "open", "closed"]
    await client.close()


async def test_policy_close_reconnects_when_configured(fake: FakeEngine) -> None:
    reconnected, _ = await closed_by_server(fake, 1008, reconnect_on_policy_close=True)
    assert reconnected


async def test_reconnects_after_tcp_loss_with_state_changes(fake: FakeEngine) -> None:
    states: list[State] = []
    client = new_client(fake.url)
    client.on_state(states.append)
    async with client:
        await client.send("drop")
        await fake.wait_connections(2)
        await client.wait_open(5)
        assert client.close_code is None  # no close frame came
    assert states == ["connecting", "open", "reconnecting", "open", "closed"]
    assert client.stats.reconnects == 1


async def test_refused_upgrades_are_retried_with_backoff(fake: FakeEngine) -> None:
    states: list[State] = []
    client = new_client(fake.url)
    client.on_state(states.append)
    async with client:
        fake.refuse = [503, 503, 429, 500]
        await client.send("drop")
        await fake.wait_connections(2)
        await client.wait_open(5)
    assert len(fake.handshakes) == 6  # first, four refused, the one that worked
    # One "reconnecting" for the whole episode: attempts do not flap the state.
    assert states == ["connecting", "open", "reconnecting", "open", "closed"]


async def test_reconnect_attempts_wait_within_a_doubling_ceiling(fake: FakeEngine) -> None:
    client = new_client(fake.url, backoff=Backoff(initial=0.02, max=0.16, factor=2.0))
    random.seed(1)  # delays 0.003, 0.034, 0.061, 0.041, 0.079, 0.072
    async with client:
        fake.refuse = [503] * 5
        await client.send("drop")
        await fake.wait_connections(2)
    stamps = [h.at for h in fake.handshakes[1:]]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert len(gaps) == 5
    # Full jitter: the n-th wait is within min(max, initial * 2**n), plus some slack.
    ceilings = [min(0.16, 0.02 * 2**n) for n in range(1, 6)]
    assert all(gap <= c + 0.03 for gap, c in zip(gaps, ceilings, strict=True)), gaps
    assert sum(gaps) > 0.2, gaps  # without the doubling they would add up to 0.1 at most


async def test_connections_that_drop_at_once_keep_backing_off(fake: FakeEngine) -> None:
    client = new_client(fake.url, backoff=Backoff(initial=0.02, max=0.16, reset_after=5.0))
    random.seed(1)  # delays 0.003, 0.034, 0.061, 0.041, 0.079, 0.072
    async with client:
        fake.close_new = [1011] * 5
        await client.send("drop")
        await fake.wait_connections(7)
        await client.wait_open(5)
    stamps = [h.at for h in fake.handshakes[1:]]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # Opened, then closed at once: not a reason to start again from the shortest delay.
    assert sum(gaps) > 0.2, gaps
    assert client.stats.reconnects == 6


async def test_forbidden_reconnection_gives_up(fake: FakeEngine) -> None:
    client = new_client(fake.url)
    async with client:
        fake.refuse = [403]
        await client.send("drop")
        await until_state(client, "closed")
    assert isinstance(client.last_error, InvalidStatus)
    assert len(fake.handshakes) == 2


async def test_forbidden_reconnection_retries_when_configured(fake: FakeEngine) -> None:
    async with new_client(fake.url, reconnect_on_policy_close=True) as client:
        fake.refuse = [401, 403]
        await client.send("drop")
        await fake.wait_connections(2)
        await client.wait_open(5)
    assert len(fake.handshakes) == 4


async def test_first_connect_failure_raises(fake: FakeEngine) -> None:
    fake.refuse = [503]
    client = new_client(fake.url)
    with pytest.raises(InvalidStatus):
        await client.connect()
    assert client.state == "closed"
    with pytest.raises(OSError):
        await new_client("ws://127.0.0.1:1/ws").connect()


async def test_close_during_backoff_stops_reconnecting(fake: FakeEngine) -> None:
    client = new_client(fake.url, backoff=Backoff(initial=30.0, max=30.0))
    await client.connect()
    await client.send("drop")
    await until_state(client, "reconnecting")
    await client.close()
    assert client.state == "closed"
    await asyncio.sleep(0.05)
    assert len(fake.handshakes) == 1


async def test_close_sends_a_normal_close_and_does_not_reconnect(fake: FakeEngine) -> None:
    client = new_client(fake.url)
    await client.connect()
    await client.close()
    await asyncio.sleep(0.05)
    conn = fake.conns[0]
    assert conn.ws.close_code == 1000
    assert len(fake.handshakes) == 1
    await client.connect()  # a closed client can be opened again
    assert client.state == "open"
    await client.close()
