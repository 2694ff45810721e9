"""The timer wheel: one registration per item, moved or cancelled, never kept past use."""

from __future__ import annotations

import asyncio
import gc
import math

import pytest

from engine.core.sweeper import Sweeper

pytestmark = pytest.mark.asyncio


class Item:
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired: list[float] = []

    def on_deadline(self, now: float) -> None:
        self.fired.append(now)
        self.deadline = math.inf


async def test_fires_once_after_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    sweeper = Sweeper(loop, resolution=0.01)
    item = Item(loop.time() + 0.03)
    sweeper.schedule(item)
    sweeper.schedule(item)  # registering twice is still one entry
    assert len(sweeper) == 1
    await asyncio.sleep(0.1)
    assert len(item.fired) == 1 and item.fired[0] >= item.fired[0]
    assert len(sweeper) == 0
    sweeper.close()


async def test_a_moved_deadline_fires_at_the_new_time_only() -> None:
    loop = asyncio.get_running_loop()
    sweeper = Sweeper(loop, resolution=0.01)
    item = Item(loop.time() + 0.02)
    sweeper.schedule(item)
    item.deadline = loop.time() + 0.15
    sweeper.schedule(item)
    assert len(sweeper) == 1
    await asyncio.sleep(0.08)
    assert item.fired == []
    await asyncio.sleep(0.15)
    assert len(item.fired) == 1
    sweeper.close()


async def test_cancel_and_infinity_let_go_of_the_item_at_once() -> None:
    # A closed connection must not stay referenced until its old deadline: under
    # churn that was thousands of dead connections and what they held.
    loop = asyncio.get_running_loop()
    sweeper = Sweeper(loop, resolution=0.01)
    cancelled, infinite = Item(loop.time() + 60), Item(loop.time() + 60)
    sweeper.schedule(cancelled)
    sweeper.schedule(infinite)
    sweeper.cancel(cancelled)
    infinite.deadline = math.inf
    sweeper.schedule(infinite)
    assert len(sweeper) == 0
    counted = sum(1 for o in gc.get_referrers(cancelled) if isinstance(o, dict))
    assert counted == 0  # no slot holds it any more
    sweeper.cancel(cancelled)  # twice: nothing happens
    sweeper.close()


async def test_a_handler_that_cancels_a_later_item_of_the_same_slot() -> None:
    loop = asyncio.get_running_loop()
    sweeper = Sweeper(loop, resolution=0.05)
    now = loop.time()
    second = Item(now + 0.01)

    class Canceller(Item):
        def on_deadline(self, when: float) -> None:
            super().on_deadline(when)
            sweeper.cancel(second)

    first = Canceller(now + 0.01)
    sweeper.schedule(first)
    sweeper.schedule(second)
    await asyncio.sleep(0.15)
    assert len(first.fired) == 1 and second.fired == []
    sweeper.close()
