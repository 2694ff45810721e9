"""Slots: the worker's concurrency gate (sdk/slots.py), first come first served, and no
slot lost or doubled when a waiter is cancelled."""

from __future__ import annotations

import asyncio

import pytest

from sdk.slots import Slots

pytestmark = pytest.mark.asyncio


async def test_free_slots_are_taken_without_waiting_then_waiters_queue_in_order() -> None:
    slots = Slots(2)
    assert slots.try_take() and slots.try_take()
    assert not slots.try_take() and slots.free == 0
    order: list[int] = []

    async def wait(n: int) -> None:
        await slots.take()
        order.append(n)

    waiters = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert order == []
    slots.give()
    await asyncio.sleep(0)
    assert order == [0]
    slots.give()
    slots.give()
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert slots.free == 0  # each give went to a waiter
    for _ in range(2):
        slots.give()
    assert slots.free == 2


async def test_a_queued_request_cannot_jump_the_queue_with_try_take() -> None:
    slots = Slots(1)
    assert slots.try_take()
    waiter = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.give()  # handed to the waiter, not to the free count
    assert not slots.try_take()
    await waiter
    slots.give()
    assert slots.try_take()


async def test_a_cancelled_waiter_leaves_the_queue_and_one_handed_a_slot_passes_it_on() -> None:
    slots = Slots(1)
    assert slots.try_take()
    first = asyncio.create_task(slots.take())
    second = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    first.cancel()  # still waiting: it just leaves the queue
    with pytest.raises(asyncio.CancelledError):
        await first
    slots.give()  # to the second
    third = asyncio.create_task(slots.take())
    await second
    await asyncio.sleep(0)  # the third is queued now
    slots.give()  # to the third, which is cancelled before it runs: it passes it on
    third.cancel()
    with pytest.raises(asyncio.CancelledError):
        await third
    assert slots.free == 1 and slots.try_take()


async def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError):
        Slots(0)
