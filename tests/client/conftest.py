"""Fixtures of the client tests: a fake engine that speaks the engine's client contract
(tests/client/support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.client.support import FakeEngine


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeEngine]:
    engine = FakeEngine()
    async with engine.running():
        yield engine


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engine_recovery: runs through a real engine and needs its recovery"
    )
