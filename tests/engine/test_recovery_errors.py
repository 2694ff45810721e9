"""A recovery that fails on a single node still ends in a verdict (docs/recovery.md).

The Redis cases (paused, cut, too slow, down) are in tests/scaleout/test_recovery_failure.py.
"""

from __future__ import annotations

from typing import NoReturn

import pytest

from engine.brokers.history import StreamHistory
from tests.engine.test_recovery import encode, recovery_engine, recv_json
from tests.helpers.raw_ws import RawWs


@pytest.mark.asyncio
async def test_a_recovery_that_raises_ends_in_not_recovered_and_live_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with recovery_engine() as engine:
        async with RawWs(engine.port, "/ws?rooms=news") as first, RawWs(engine.port, "/ws") as pub:
            pub.send_text("news one")
            seen = await recv_json(first)

        def broken(*_: object) -> NoReturn:
            raise RuntimeError("history unreadable")

        monkeypatch.setattr(StreamHistory, "since", broken)
        recover = encode({"rooms": {"news": [seen["epoch"], seen["seq"]]}})
        async with (
            RawWs(engine.port, f"/ws?rooms=news&recover={recover}") as again,
            RawWs(engine.port, "/ws") as pub,
        ):
            verdict = await recv_json(again)
            pub.send_text("news two")
            live = await recv_json(again)
    assert verdict == {
        "type": "linkd.recovered",
        "data": {
            "room": "news",
            "recovered": False,
            "epoch": seen["epoch"],  # the client's own position: nothing was checked
            "seq": seen["seq"],
            "missed": 0,
        },
    }
    assert (live["seq"], live["data"]) == (seen["seq"] + 1, "two")
    assert engine.metrics.recoveries == {"incomplete": 1}
