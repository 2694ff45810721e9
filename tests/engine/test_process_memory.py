"""Memory stays bounded in a real engine process: slow consumers and decompression bombs.

The engine runs as its own process (``tests.helpers.proc``) so that its resident set
size, measured with psutil, is the engine's alone.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import socket
import struct
import time
import zlib
from collections.abc import Callable

import pytest

from tests.helpers.proc import EngineProcess, engine_process
from tests.helpers.raw_ws import RawWs, encode_client_frame

pytestmark = pytest.mark.asyncio

MiB = 1024 * 1024
MESSAGE_SIZE = 1000
#: Messages per POST /broadcast: 500 x 1004 wire bytes stays under the 1 MiB cap, so a
#: client that reads everything between two batches can never be a slow consumer.
BATCH = 500
WARM_UP = 10


# ---------------------------------------------------------------- helpers
async def wait_until(
    predicate: Callable[[], bool], within: float, what: str, interval: float = 0.005
) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


def never_reading_client(port: int, path: str = "/echo", rcvbuf: int = 4096) -> socket.socket:
    """A blocking socket with a tiny receive buffer; after the handshake nobody reads it.

    SO_RCVBUF is set before ``connect`` so the advertised window stays small.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5.0)
        sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):  # byte by byte: read nothing past the head
            byte = sock.recv(1)
            if not byte:
                raise AssertionError(f"EOF during the handshake: {head!r}")
            head += byte
        assert head.startswith(b"HTTP/1.1 101 "), head
        return sock
    except BaseException:
        sock.close()
        raise


def read_until_close(
    sock: socket.socket, timeout: float, *, stop_at_close_frame: bool = False
) -> tuple[bytes, BaseException | None]:
    """What the socket yields until EOF, a reset, ``timeout`` seconds of silence or,
    with ``stop_at_close_frame``, the end of a close frame; and the error if any."""
    sock.settimeout(timeout)
    data = bytearray()
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
            if stop_at_close_frame and b"\x88" in data[-len(chunk) - 1 :]:
                frames, _ = parse_frames(bytes(data))
                if frames and frames[-1][0] == 0x8:
                    break
    except OSError as exc:  # ConnectionResetError, TimeoutError
        return bytes(data), exc
    return bytes(data), None


def parse_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Split unmasked server frames: ([(opcode, payload)], incomplete tail)."""
    frames: list[tuple[int, bytes]] = []
    pos = 0
    while pos + 2 <= len(data):
        b0, b1 = data[pos], data[pos + 1]
        n, head = b1 & 0x7F, 2
        if n == 126:
            if pos + 4 > len(data):
                break
            (n,) = struct.unpack_from("!H", data, pos + 2)
            head = 4
        elif n == 127:
            if pos + 10 > len(data):
                break
            (n,) = struct.unpack_from("!Q", data, pos + 2)
            head = 10
        if pos + head + n > len(data):
            break
        assert b0 & 0x80 and not b0 & 0x70 and not b1 & 0x80, f"odd frame header at {pos}"
        frames.append((b0 & 0x0F, data[pos + head : pos + head + n]))
        pos += head + n
    return frames, data[pos:]


def engine_peers(eng: EngineProcess) -> set[tuple[str, int]]:
    """Remote addresses of the engine's TCP sockets, seen from outside (psutil)."""
    return {(c.raddr.ip, c.raddr.port) for c in eng.process.net_connections(kind="tcp") if c.raddr}


class GoodClient:
    """A RawWs that reads every broadcast as it comes and checks each one."""

    def __init__(self, ws: RawWs) -> None:
        self.ws = ws
        self.received = 0
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        # Raw chunks parsed here: a wait_for per frame would make this client the bottleneck.
        expected = (0x1, b"x" * MESSAGE_SIZE)
        buf = b""
        while chunk := await self.ws.reader.read(1 << 20):
            frames, buf = parse_frames(buf + chunk)
            for frame in frames:
                if frame[0] == 0x8:
                    raise AssertionError(f"the reading client was closed: {frame[1][:2]!r}")
                assert frame == expected, frame[:1]
            self.received += len(frames)
        raise AssertionError("the reading client got EOF")

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        def done() -> bool:
            if self.task.done():
                self.task.result()  # raises what the reader saw
                raise AssertionError("reader stopped")
            return self.received >= count

        await wait_until(done, within, f"{count} messages (have {self.received})")
        assert self.received == count

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def broadcast_batches(eng: EngineProcess, good: GoodClient, total: int) -> tuple[int, int]:
    """POST /broadcast in batches, each fully read by ``good`` before the next.

    Returns (sum of "delivered", peak RSS seen after a batch).
    """
    delivered = 0
    peak = eng.rss()
    sent = 0
    while sent < total:
        count = min(BATCH, total - sent)
        status, body = await eng.apost_json("/broadcast", {"size": MESSAGE_SIZE, "count": count})
        assert status == 200, body
        delivered += body["delivered"]
        sent += count
        await good.wait_for(sent)
        peak = max(peak, eng.rss())
    return delivered, peak


# ---------------------------------------------------------- slow consumer
async def test_slow_consumer_memory_bounded_and_closed_with_1013() -> None:
    """20 000 x 1000 B broadcast with one client that never reads: RSS stays bounded.

    The non-reader is cut off with 1013 once its unsent bytes pass the 1 MiB cap;
    when it reads again (within close_timeout) it finds whole data frames, then the
    1013 close frame. The reading client gets every single message.
    """
    total = 20_000
    with engine_process(
        ["--max-outbound-buffer", "1m", "--close-timeout", "30"], app="broadcaster"
    ) as eng:
        slow = never_reading_client(eng.port)
        try:
            async with RawWs(eng.port, "/echo") as ws:
                good = GoodClient(ws)
                try:
                    # Warm the code paths (JSON, route, fan-out) before the baseline.
                    await eng.apost_json("/broadcast", {"size": MESSAGE_SIZE, "count": WARM_UP})
                    await good.wait_for(WARM_UP)
                    good.received = 0
                    baseline = eng.rss()
                    delivered, peak = await broadcast_batches(eng, good, total)
                    assert good.received == total
                    growth = peak - baseline
                    print(
                        f"slow consumer: RSS baseline {baseline / MiB:.1f} MiB, "
                        f"peak {peak / MiB:.1f} MiB, growth {growth / MiB:.2f} MiB"
                    )
                    # Without the cap its buffer alone would reach ~16 MiB.
                    assert growth < 8 * MiB, f"RSS grew {growth / MiB:.1f} MiB"
                    metrics = await eng.ametrics()
                    assert metrics["linkd_slow_consumers_total"] == 1
                    assert metrics['linkd_connections{kind="websocket"}'] == 2  # not yet dropped
                    # Every queued message reached one of the two; the slow one took less.
                    slow_queued = delivered - total
                    assert 0 < slow_queued < total
                finally:
                    await good.stop()
            # The slow client wakes up: whole data frames, then 1013.
            data, error = await asyncio.to_thread(
                functools.partial(read_until_close, slow, 5.0, stop_at_close_frame=True)
            )
            frames, tail = parse_frames(data)
            assert frames, f"nothing readable ({error!r})"
            *data_frames, close = frames
            assert close[0] == 0x8, f"last frame opcode {close[0]}, tail {tail[:20]!r}"
            assert struct.unpack("!H", close[1][:2])[0] == 1013
            assert all(f == (0x1, b"x" * MESSAGE_SIZE) for f in data_frames)
            assert len(data_frames) < slow_queued + WARM_UP  # what passed the cap was dropped
            # Each message meant for it was either written out or counted as dropped.
            metrics = await eng.ametrics()
            assert metrics["linkd_dropped_messages_total"] == total + WARM_UP - len(data_frames)
            # It answers the close; the engine then closes TCP.
            slow.sendall(encode_client_frame(0x8, close[1][:2]))
            rest, error = await asyncio.to_thread(read_until_close, slow, 5.0)
            assert (rest, error) == (b"", None)
        finally:
            slow.close()


async def test_slow_consumer_that_never_reads_is_dropped_after_close_timeout() -> None:
    """The documented policy's second half: no read within close_timeout → TCP dropped.

    The engine forgets the connection (and its corked and buffered bytes) once
    close_timeout has passed. ``abort()`` closes the socket without SO_LINGER, so what
    the kernel had already accepted may still reach the client: whole data frames,
    possibly the 1013 close frame if it made it into the kernel, then EOF or a reset.
    The client must never be left hanging on an open connection.

    The HTTP connections of the broadcasts closed before their keep-alive deadline
    (0.3 s) came up, so the timer wheel meets closed connections before the 1013
    deadline; and the drop is watched with psutil, not over HTTP, so no new request
    wakes the timers up (a sweeper that stopped on a closed connection fails here).
    """
    close_timeout = 2.0
    with engine_process(
        [
            "--max-outbound-buffer",
            "1m",
            "--close-timeout",
            str(close_timeout),
            "--keep-alive-timeout",
            "0.3",
        ],
        app="broadcaster",
    ) as eng:
        slow = never_reading_client(eng.port)
        slow_addr = slow.getsockname()[:2]
        try:
            async with RawWs(eng.port, "/echo") as ws:
                good = GoodClient(ws)
                try:
                    baseline = eng.rss()
                    _, peak = await broadcast_batches(eng, good, 10_000)
                    metrics = await eng.ametrics()
                    assert metrics["linkd_slow_consumers_total"] == 1
                    assert peak - baseline < 8 * MiB
                    ended = time.monotonic()
                    while slow_addr in engine_peers(eng):
                        waited = time.monotonic() - ended
                        assert waited < close_timeout + 2, (
                            f"slow consumer still connected {waited:.1f}s after the broadcasts "
                            f"(close_timeout {close_timeout}s); engine log tail:\n"
                            f"{eng.output()[-1500:]}"
                        )
                        await asyncio.sleep(0.05)
                    metrics = await eng.ametrics()
                    assert metrics['linkd_connections{kind="websocket"}'] == 1
                    assert metrics['linkd_ws_closes_total{code="1013"}'] == 1
                finally:
                    await good.stop()
            data, error = await asyncio.to_thread(read_until_close, slow, 5.0)
            assert not isinstance(error, TimeoutError), "the connection is still open"
            frames, _ = parse_frames(data)  # the tail may be a frame cut by the drop
            if frames and frames[-1][0] == 0x8:
                assert struct.unpack("!H", frames.pop()[1][:2])[0] == 1013
            assert all(f == (0x1, b"x" * MESSAGE_SIZE) for f in frames)
        finally:
            slow.close()


# --------------------------------------------------------- deflate bombs
BOMB_INFLATED = 100 * MiB
PMD_OFFER = "permessage-deflate; client_max_window_bits"


@functools.cache
def deflate_bomb() -> bytes:
    """Raw deflate (RFC 7692 message body) of 100 MiB of zeros: about 100 KiB at level 9."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(MiB)
    parts = [comp.compress(zeros) for _ in range(BOMB_INFLATED // MiB)]
    parts.append(comp.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


async def send_bomb(port: int) -> int | None:
    """One connection, one compressed binary frame; returns the close code received."""
    async with RawWs(port, "/echo", extensions=PMD_OFFER) as ws:
        assert ws.status == 101
        assert ws.response_headers["sec-websocket-extensions"].startswith("permessage-deflate")
        ws.send_frame(0x2, deflate_bomb(), rsv1=True)
        return await ws.recv_close_code(timeout=5.0)


async def test_deflate_bomb_is_refused_with_1009_without_inflating_it() -> None:
    bomb = deflate_bomb()
    # It is what it claims: 100 MiB of zeros once inflated, over 800:1.
    inflated = zlib.decompressobj(-15).decompress(bomb + b"\x00\x00\xff\xff")
    assert len(inflated) == BOMB_INFLATED and not inflated.strip(b"\0")
    assert len(bomb) < 128 * 1024
    del inflated
    with engine_process(["--echo", "/echo"]) as eng:
        await send_bomb(eng.port)  # warm-up: first connection, first inflater
        before = eng.rss()
        assert await send_bomb(eng.port) == 1009
        after = eng.rss()
        growth = after - before
        print(
            f"deflate bomb: {len(bomb)} B on the wire → {BOMB_INFLATED // MiB} MiB "
            f"(ratio {BOMB_INFLATED / len(bomb):.0f}:1); RSS {before / MiB:.1f} → "
            f"{after / MiB:.1f} MiB ({growth / MiB:+.2f} MiB)"
        )
        assert growth < 8 * MiB
        metrics = await eng.ametrics()
        assert metrics['linkd_ws_closes_total{code="1009"}'] == 2
        assert metrics["linkd_ws_messages_received_total"] == 0


async def test_repeated_deflate_bombs_leave_rss_flat() -> None:
    """20 bombs in a row on a default engine: RSS stays flat after the first ones.

    A refused connection may stay reachable until its next timer slot (the 20 s
    heartbeat by default), so whatever it still holds then counts here: it must be
    small, not the bomb's unread compressed input.
    """
    with engine_process(["--echo", "/echo"]) as eng:
        for _ in range(2):  # warm-up: allocator arenas, first inflater
            assert await send_bomb(eng.port) == 1009
        start = eng.rss()
        rss = []
        for _ in range(20):
            assert await send_bomb(eng.port) == 1009
            rss.append(eng.rss())
        growth = rss[-1] - start
        print(
            f"repeated bombs: RSS {start / MiB:.1f} MiB after 2, then "
            f"{', '.join(f'{(r - start) / MiB:+.2f}' for r in rss[4::5])} MiB every 5 more"
        )
        assert growth < MiB, (
            f"RSS grew {growth / MiB:.2f} MiB over 20 refused bombs "
            f"({growth / 20 / 1024:.0f} KiB per closed connection)"
        )


async def test_bomb_memory_is_released_once_timers_pass() -> None:
    """20 bombs, a pause longer than every per-connection timer, 20 more: no net growth.

    With heartbeat and close timeout at 1 s, every refused connection is unreachable
    after the pause, so the second round must reuse the first round's memory. A leak
    (connections kept for good) shows as a second round costing as much as the first.
    """
    with engine_process(["--echo", "/echo", "--heartbeat", "1", "--close-timeout", "1"]) as eng:
        start = eng.rss()
        rss: list[int] = []
        for round_ in range(2):
            for _ in range(20):
                assert await send_bomb(eng.port) == 1009
                rss.append(eng.rss())
            if round_ == 0:
                await asyncio.sleep(2.5)
        first, second = rss[19] - start, rss[39] - rss[19]
        print(
            f"bombs with 1 s timers: RSS {start / MiB:.1f} MiB, +{first / MiB:.2f} MiB "
            f"after 20, {second / MiB:+.2f} MiB more after a pause and 20 more"
        )
        assert max(rss) - start < 8 * MiB
        assert second < MiB, (
            f"RSS grew {second / MiB:.2f} MiB over the second 20 bombs "
            f"({first / MiB:.2f} MiB over the first 20): closed connections are retained"
        )
