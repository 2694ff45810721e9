"""A pipelining client that never reads, against a real engine process.

Issue 10 §1: 4.8 MiB of pipelined ``GET /metrics`` in 5 s grew the engine by 182 MiB
and held its loop (another client's echo took over 10 s). Here the attacker sends
for a bounded time from a thread; meanwhile a second client measures WebSocket echo
round trips, and the engine's RSS is sampled with psutil.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time

import pytest

from tests.helpers.http_client import RawHttp
from tests.helpers.proc import engine_process
from tests.helpers.raw_ws import RawWs

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024
ATTACK_SECONDS = 3.0


class Attacker(threading.Thread):
    """Pipelines ``GET /metrics`` for ``seconds`` and never reads a byte."""

    def __init__(self, port: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.port, self.seconds = port, seconds
        self.sent = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(0.05)

    def run(self) -> None:
        chunk = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
        deadline = time.monotonic() + self.seconds
        view = memoryview(chunk)
        while time.monotonic() < deadline:
            try:
                self.sent += self.sock.send(view[self.sent % len(chunk) :])
            except TimeoutError:
                continue  # the engine stopped reading: that is the point
            except OSError:
                return

    def stop(self) -> None:
        self.join()
        self.sock.close()  # unread responses in its buffer: the engine sees a reset


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--http-rate", "0"], id="backpressure-only"),
        pytest.param([], id="defaults"),  # the request rate answers most with 429
    ],
)
async def test_pipelining_flood_keeps_rss_bounded_and_others_fast(flags: list[str]) -> None:
    with engine_process(["--echo", "/echo", *flags]) as eng:
        async with RawWs(eng.port, "/echo") as ws:
            for _ in range(20):  # warm up
                ws.send_text("warm")
                await ws.recv_frame()
            baseline = eng.rss()
            attacker = Attacker(eng.port, ATTACK_SECONDS)
            attacker.start()
            rtts: list[float] = []
            peak = baseline
            try:
                while attacker.is_alive():
                    started = time.perf_counter()
                    ws.send_text("ping")
                    frame = await ws.recv_frame(timeout=5.0)
                    rtts.append(time.perf_counter() - started)
                    assert frame.payload == b"ping"
                    peak = max(peak, eng.rss())
                    await asyncio.sleep(0.01)
            finally:
                attacker.stop()
            growth = peak - baseline
            print(
                f"attacker sent {attacker.sent / MiB:.2f} MiB; RSS {baseline / MiB:.1f} → "
                f"peak {peak / MiB:.1f} MiB (+{growth / MiB:.2f}); echo during the attack: "
                f"n={len(rtts)} median {statistics.median(rtts) * 1000:.1f} ms, "
                f"max {max(rtts) * 1000:.1f} ms"
            )
            assert len(rtts) > 20
            assert max(rtts) < 0.2, f"echo took {max(rtts) * 1000:.0f} ms during the attack"
            assert growth < 8 * MiB, f"RSS grew {growth / MiB:.1f} MiB"
        # After the attacker left, /health answers at once.
        async with RawHttp(eng.port) as c:
            started = time.perf_counter()
            assert (await c.request("GET", "/health")).status == 200
            assert time.perf_counter() - started < 0.2
