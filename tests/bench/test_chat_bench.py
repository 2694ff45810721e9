"""bench/chat.py against linkd only: a short run end to end, and the service's checks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.chat_load import HOST, LinkdClient, Load, LoadSpec, Window
from bench.chat_servers import Server, start_server, stop_server
from bench.ipc import ROOT, free_port

pytestmark = pytest.mark.timeout(60)


def test_a_short_run_acks_and_delivers_to_the_whole_room(tmp_path: Path) -> None:
    out = tmp_path / "chat.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.chat", "--servers", "linkd",
            "--clients", "40", "--room-size", "10", "--interval", "0.5",
            "--warmup", "0.5", "--duration", "1.5",
            "--server-cpu", "none", "--load-cpu", "none", "--output", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=50, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {r["phase"]: r for r in report["results"]}
    assert set(rows) == {"rate", "saturation"}
    rate, sat = rows["rate"], rows["saturation"]
    # 40 clients once per 0.5 s: 80 msg/s offered, all acked, each to 10 members.
    assert 60 <= rate["acks_per_s"] <= 100
    for row in (rate, sat):
        assert row["errors"] == 0 and row["unanswered_at_end"] == 0, row["error_kinds"]
        assert row["acks"] > 0
        assert 0.9 <= row["kept_up"] <= 1.1
        assert row["cpu_us_per_message"] > 0
    assert sat["acks_per_s"] > rate["acks_per_s"]
    assert "| linkd | rate |" in done.stdout


@pytest.fixture
def linkd(tmp_path: Path) -> Iterator[tuple[Server, int]]:
    port = free_port()
    server = start_server(
        "linkd", port, cpu=None, tmp=tmp_path, membership="worker", socketio_ws="websockets"
    )
    try:
        yield server, port
    finally:
        stop_server(server)


async def _acks(port: int, payloads: list[bytes]) -> list[dict[str, object]]:
    """Send each raw ``chat.send`` from a client of ``room-a``; the acks, in order."""
    spec = LoadSpec("linkd", port, 1, 1, 1.0, 1, 0.0, 0.0, (), 100, None, {})
    load = Load(spec)
    load.window = Window()
    acks: list[dict[str, object]] = []
    all_acked = asyncio.Event()

    class Client(LinkdClient):
        def on_text(self, payload: bytes, now: int, out: list[bytes]) -> None:
            if payload.startswith(b'{"id":'):
                acks.append(json.loads(payload))
                if len(acks) == len(payloads):
                    all_acked.set()
            else:
                super().on_text(payload, now, out)

    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(load, port, "room-a"), HOST, port)
    try:
        async with asyncio.timeout(5):
            await client.joined
            assert client.transport is not None
            for payload in payloads:
                client.transport.write(client.masker.frame(payload))
            await all_acked.wait()
    finally:
        client.close()
        if client.transport is not None:
            client.transport.abort()
    return acks


def test_the_service_refuses_other_rooms_and_bad_messages(linkd: tuple[Server, int]) -> None:
    _, port = linkd
    send = b'{"type":"chat.send","data":%b,"id":%d}'
    acks = asyncio.run(
        _acks(
            port,
            [
                send % (b'{"room":"room-b","message":"hi"}', 1),
                send % (b'{"room":"room-a","message":"' + b"x" * 1001 + b'"}', 2),
                send % (b'{"room":"room-a"}', 3),
                send % (b'"text"', 4),
                send % (b'{"room":"room-a","message":"hi"}', 5),
            ],
        )
    )
    by_id = {a["id"]: a for a in acks}
    for bad in (1, 2, 3, 4):
        assert "error" in by_id[bad] and "data" not in by_id[bad], by_id[bad]
    assert by_id[1]["error"]["code"] == "FORBIDDEN"  # type: ignore[index]
    assert isinstance(by_id[5]["data"], dict) and "id" in by_id[5]["data"]
