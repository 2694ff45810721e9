"""clients/js/linkd.js under Node against the fake engine: positions, the ``recover``
parameter of a reconnection, replays, verdicts (``onRecovered``) and duplicates.

Needs Node with a WebSocket (Node 22, or 20 with ``--experimental-websocket``);
skipped without one."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.client.support import FakeEngine

SCENARIO = Path(__file__).with_name("linkd_scenario.cjs")
NODE = shutil.which("node")


def node_args() -> list[str] | None:
    """How to run Node with a global WebSocket here, or None."""
    if NODE is None:
        return None
    for flags in ([], ["--experimental-websocket"]):
        probe = [NODE, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"]
        if subprocess.run(probe, capture_output=True, check=False, timeout=30).returncode == 0:
            return [NODE, *flags]
    return None


NODE_ARGS = node_args()
pytestmark = pytest.mark.skipif(NODE_ARGS is None, reason="no Node with a WebSocket")


@pytest.mark.asyncio
async def test_js_client_recovers_missed_events(fake: FakeEngine) -> None:
    fake.auto_join = ("r",)
    assert NODE_ARGS is not None
    proc = await asyncio.create_subprocess_exec(
        *NODE_ARGS,
        str(SCENARIO),
        fake.url + "?token=t",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    got: dict[str, Any] = orjson.loads(out.splitlines()[-1])

    old_epoch = fake.handshakes[1].recover["rooms"]["r"][0]  # type: ignore[index]
    assert [h.query.get("token") for h in fake.handshakes] == [["t"]] * 3
    assert "recover" not in fake.handshakes[0].query
    assert fake.handshakes[1].recover == {"rooms": {"r": [old_epoch, 1]}}
    assert fake.handshakes[2].recover == {"rooms": {"r": [old_epoch, 4]}}
    assert got["positionsBefore"] == {"rooms": {"r": [old_epoch, 1]}}
    assert got["recovering"] == {"rooms": {"r": [old_epoch, 1]}}

    assert got["events"] == [
        ["m", 1],  # the repeat of m 1 was dropped
        ["m", 2],
        ["m", 3],
        ["linkd.recovered", None],
        ["m", 4],
        ["linkd.recovered", None],  # new epoch: nothing replayed
    ]
    assert got["verdicts"] == [["room", "r", True, 2], ["room", "r", False, 0]]
    assert got["positionsAfter"] == {"rooms": {"r": [fake.history("r").epoch, 1]}}
    stats = got["stats"]
    assert (stats["duplicates"], stats["reconnects"], stats["recovered"]) == (1, 2, 1)
    assert stats["notRecovered"] == 1
    assert got["states"][:2] == ["connecting", "open"]
    assert got["states"].count("reconnecting") >= 2 and got["states"][-1] == "closed"
