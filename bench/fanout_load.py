"""The fan-out load generator: subscriber and publisher processes on raw sockets (uvloop).

``bench/fanout.py`` spawns them pinned to the load core (never the server's). Each is
an ``asyncio.Protocol`` per connection speaking just enough RFC 6455: the upgrade
(optionally offering permessage-deflate), masked client frames (``bench.wsload.Masker``),
unmasked server frames parsed in place, pongs, close.

Subscribers (``subscriber_process``) connect in batches, send ``bench.sub`` and wait
for its ack; then, for each ``bench.msg`` frame, read the send time and sequence
number **by slicing the frame at fixed offsets** (``fanout_wire.TS_SLICE``,
``SEQ_SLICE``), no JSON parsing; one connection in ``sample_every`` also parses every
message fully with orjson and checks it (``verified`` / ``malformed`` in the result).
With permessage-deflate, compressed frames (RSV1) are inflated with one raw-deflate
``zlib.decompressobj`` per connection (context kept across messages, so both context
takeover and no-context-takeover servers work), after appending 00 00 ff ff
(RFC 7692 §7.2.2), on one connection in ``inflate_every``: inflating every delivery
would make the load generator the bottleneck, so the other connections inflate only
until their ``bench.sub`` ack, then count compressed frames (latency, order and
duplicates come from the inflating ones; their loss is published - frames counted).

Latency is the read time (``time.monotonic_ns()``, once per socket read) minus the
publisher's send time in the payload; it goes into a histogram (``fanout_stats``).
With one load core, the last of N subscribers is read after the N - 1 before it, so
latency includes the load's own reading time (the same for every server).

Each connection tracks its sequence numbers with a sliding bitmask, so messages
arriving out of order (linkd with ``per_connection`` > 1 handles a publisher's
messages concurrently) are not counted as lost; at the end, lost = published -
distinct received, per subscriber.

The publisher (``publisher_process``) keeps K publishes in flight (saturation: the
next one leaves when an ack comes back) or publishes at a fixed rate on an absolute
schedule, and times each ack.

With ``tls`` (the ``tls`` scenario) every connection is made over TLS 1.3
(``bench.fanout_tls.client_context``, one context per process): the load decrypts
too, so it runs out of core sooner than in ``saturation``.

Phases come from a shared control block written by the orchestrator: absolute
``time.monotonic()`` instants for start, measure and end (monotonic is one clock for
every process on Linux), then the number of messages published, which tells the
subscribers how many to wait for before they report.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
import zlib
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, cast

import orjson

from . import fanout_stats as stats
from .fanout_peers import raise_nofile
from .fanout_tls import client_context
from .fanout_wire import (
    MSG_PREFIX,
    SEQ_SLICE,
    TAIL,
    TEXT,
    TS_SLICE,
    handshake,
    negotiated_extensions,
    payload,
    pub,
    sub,
)
from .wsload import Masker

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

__all__ = [
    "EXPECTED",
    "T_END",
    "T_MEASURE",
    "T_START",
    "PubSpec",
    "SubSpec",
    "publisher_process",
    "subscriber_process",
]

HOST = "127.0.0.1"
#: Indices of the shared control block (``multiprocessing.Array("d", 4)``). A negative
#: T_START means "stop without publishing" (the idle scenario).
T_START, T_MEASURE, T_END, EXPECTED = 0, 1, 2, 3
CONNECTING, WARMUP, MEASURE, DONE = 0, 1, 2, 3
#: Out-of-order window tracked per subscriber, in messages; older gaps count as lost.
WINDOW = 4096
_TS, _SEQ = TS_SLICE, SEQ_SLICE
_TS_LEN = TS_SLICE.stop - TS_SLICE.start
_SEQ_LEN = SEQ_SLICE.stop - SEQ_SLICE.start
_FINE = stats.FINE_US
_CLOSE_1000 = b"\x03\xe8"

#: The orchestrator's shared ``multiprocessing.Array("d", 4, lock=False)``.
Control = Any


@dataclass
class SubSpec:
    """One subscriber process (picklable: it crosses to a spawned process)."""

    port: int
    count: int
    room: str
    deflate: bool
    sample_every: int
    cpu: int | None
    #: With deflate: inflate on 1 connection in N; the others count compressed frames.
    inflate_every: int = 1
    connect_batch: int = 250
    tls: bool = False


@dataclass
class PubSpec:
    """The publisher process: K in flight (rate 0) or ``rate`` publishes per second."""

    port: int
    room: str
    inflight: int
    rate: float
    cpu: int | None
    tls: bool = False


class SubLoad:
    """What the subscribers of one process share."""

    def __init__(self) -> None:
        self.phase = CONNECTING
        self.hist = stats.new()
        self.max_us = 0
        self.measured = 0  # deliveries in the measured window
        self.total = 0  # deliveries in any phase
        self.compressed = 0  # deliveries that came compressed (RSV1)
        self.verified = 0  # fully parsed and checked (sampled connections)
        self.message_bytes = 0  # size of a delivered message (sampled connections)
        #: Top-level keys a server added next to "type" and "data", and how often.
        self.extra_keys: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


class _Client(asyncio.Protocol):
    """The handshake and the frame loop; subclasses handle text frames."""

    def __init__(self, port: int, deflate: bool) -> None:
        loop = asyncio.get_running_loop()
        self.port = port
        self.deflate = deflate
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.rest = b""
        self.upgraded = False
        self.extensions = ""
        self.inflater: Any = None
        self.masker = Masker()
        self.done = False  # the run is over: a close is expected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(handshake(HOST, self.port, self.deflate))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.error("connection lost")
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed during the handshake"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.transport = None

    def error(self, kind: str) -> None:
        raise NotImplementedError

    def on_upgraded(self) -> None:
        """Called once after the 101."""

    def _handshake(self, data: bytes) -> bytes | None:
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0:
            self.rest = data
            return None
        head = data[:head_end]
        if b" 101 " not in head[: head.find(b"\r\n")]:
            self.ready.set_exception(ConnectionError(head[:80].decode(errors="replace")))
            if self.transport is not None:
                self.transport.close()
            return None
        self.upgraded = True
        self.extensions = negotiated_extensions(head)
        if "permessage-deflate" in self.extensions:
            self.inflater = zlib.decompressobj(-15)
        self.on_upgraded()
        self.ready.set_result(None)
        return data[head_end + 4 :]

    def control(self, b0: int, body: bytes) -> None:
        opcode = b0 & 0x0F
        if opcode == 0x9:
            if self.transport is not None:
                self.transport.write(self.masker.frame(body, 0xA))
        elif opcode == 0x8:
            if not self.done:
                code = int.from_bytes(body[:2], "big") if len(body) >= 2 else 1005
                self.error(f"closed by the server ({code})")
            if self.transport is not None:
                self.transport.close()
        elif opcode != 0xA:
            self.error("unexpected frame")

    def close(self) -> None:
        self.done = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.masker.frame(_CLOSE_1000, 0x8))


class SubClient(_Client):
    """One subscriber: joins the room, then counts, times and checks every delivery."""

    def __init__(self, load: SubLoad, spec: SubSpec, sample: bool, inflate: bool) -> None:
        super().__init__(spec.port, spec.deflate)
        self.load = load
        self.room = spec.room
        self.sample = sample
        #: Inflate compressed deliveries (else, once subscribed, only count them).
        self.inflate = inflate
        self.count_only = False
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Sequence numbers: every seq < next arrived; bit i of mask: next + i arrived.
        self.next = 1
        self.mask = 0
        self.received = 0
        self.unique = 0
        self.late = 0  # a seq below the window or already seen: duplicate or very late
        self.out_of_order = 0

    def error(self, kind: str) -> None:
        self.load.error(kind)

    def on_upgraded(self) -> None:
        if self.transport is not None:
            self.transport.write(self.masker.frame(sub(self.room)))

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
            self.rest = b""
        if not self.upgraded:
            after = self._handshake(data)
            if not after:
                return
            data = after
        load = self.load
        measuring = load.phase == MEASURE
        now = time.monotonic_ns()
        pos = 0
        end = len(data)
        while end - pos >= 2:
            b0 = data[pos]
            n = data[pos + 1]
            if n < 126:
                start = pos + 2
            elif n == 126:
                if end - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if end - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            stop = start + n
            if stop > end:
                break
            pos = stop
            if b0 == 0x81:
                text = data
            elif b0 == 0xC1 and self.inflater is not None:
                if self.count_only:  # a compressed delivery, counted, not inflated
                    self.received += 1
                    self.unique += 1
                    load.total += 1
                    load.compressed += 1
                    if measuring:
                        load.measured += 1
                    continue
                text = self.inflater.decompress(data[start:stop] + TAIL)
                start, stop = 0, len(text)
            else:
                self.control(b0, data[start:stop])
                continue
            if not text.startswith(MSG_PREFIX, start):
                self.other(text[start:stop])
                continue
            if text is not data:
                load.compressed += 1
            # A delivery: timestamp and sequence number at fixed offsets.
            ts = int(text[start + _TS.start : start + _TS.start + _TS_LEN])
            seq = int(text[start + _SEQ.start : start + _SEQ.start + _SEQ_LEN])
            self.received += 1
            if seq == self.next and not self.mask:  # in order: the common case
                self.next = seq + 1
                self.unique += 1
            else:
                self.track(seq)
            load.total += 1
            if measuring:
                load.measured += 1
                us = (now - ts) // 1000
                if us > load.max_us:
                    load.max_us = us
                load.hist[us if us < _FINE else stats.bucket(us)] += 1
            if self.sample:
                self.check(text[start:stop], ts, seq)
        if pos < end:
            self.rest = data[pos:]

    def track(self, seq: int) -> None:
        """A sequence number out of order: the sliding window of what arrived."""
        d = seq - self.next
        if d < 0:
            self.late += 1
            return
        if d > 0:
            self.out_of_order += 1
        if d >= WINDOW:  # slide: what falls out of the window unseen is lost
            shift = d - WINDOW + 1
            self.mask >>= shift
            self.next += shift
            d -= shift
        bit = 1 << d
        if self.mask & bit:
            self.late += 1
            return
        m = self.mask | bit
        n = self.next
        while m & 1:  # bit 0 is ``next``: advance over what arrived
            m >>= 1
            n += 1
        self.mask = m
        self.next = n
        self.unique += 1

    def check(self, frame: bytes, ts: int, seq: int) -> None:
        """Sampled connections: the whole message parsed and compared."""
        load = self.load
        load.message_bytes = len(frame)
        try:
            message = orjson.loads(frame)
            data = message["data"]
            if len(message) > 2:
                for key in message:
                    if key not in ("type", "data"):
                        load.extra_keys[key] = load.extra_keys.get(key, 0) + 1
            ok = (
                message["type"] == "bench.msg"
                and len(data) == 3
                and int(data["ts"]) == ts
                and int(data["seq"]) == seq
                and data["text"] == TEXT.decode()
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            ok = False
        if ok:
            load.verified += 1
        else:
            load.error("malformed message")

    def other(self, frame: bytes) -> None:
        """A text frame that is not a delivery: the sub ack, else an error."""
        try:
            ack = orjson.loads(frame)
        except orjson.JSONDecodeError:
            ack = None
        if (
            type(ack) is dict
            and ack.get("id") == 1
            and ack.get("type") == "bench.sub"
            and not self.subscribed.done()
        ):
            if ack.get("data") is True:
                self.subscribed.set_result(None)
                self.count_only = not self.inflate
            else:
                self.subscribed.set_exception(ConnectionError(f"sub refused: {ack}"))
            return
        self.error("unexpected text frame")


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    raise_nofile()
    # The hot path creates no cycles; a collection pause would show up as latency.
    gc.disable()


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _wait_start(ctl: Control) -> float:
    # Shared memory written by another process: nothing to wait on but time.
    while ctl[T_START] == 0:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    return float(ctl[T_START])


async def _report_progress(progress: Synchronized[int], read: Any) -> None:
    while True:
        progress.value = read()
        await asyncio.sleep(0.1)


async def _subscribe(
    spec: SubSpec, ctl: Control, progress: Synchronized[int], out: Connection
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    load = SubLoad()
    clients: list[SubClient] = []
    tls = client_context() if spec.tls else None
    for first in range(0, spec.count, spec.connect_batch):
        batch: list[SubClient] = []
        for i in range(first, min(first + spec.connect_batch, spec.count)):
            sample = spec.sample_every > 0 and i % spec.sample_every == 0
            inflate = i % spec.inflate_every == 0
            _, client = await loop.create_connection(
                lambda s=sample, f=inflate: SubClient(load, spec, s, f),
                HOST,
                spec.port,
                ssl=tls,
            )
            batch.append(client)
        async with asyncio.timeout(60):
            await asyncio.gather(*(c.subscribed for c in batch))
        clients.extend(batch)
        progress.value = len(clients)
    extensions: dict[str, int] = {}
    for c in clients:
        extensions[c.extensions] = extensions.get(c.extensions, 0) + 1
    gc.collect()
    gc.freeze()
    out.send({"ready": len(clients), "extensions": extensions})

    start = await _wait_start(ctl)
    if start < 0:  # idle scenario: nothing is published
        for c in clients:
            c.close()
        return {"subscribers": len(clients), "errors": load.errors}
    reporter = loop.create_task(_report_progress(progress, lambda: load.total))
    await _sleep_until(start)
    load.phase = WARMUP
    await _sleep_until(float(ctl[T_MEASURE]))
    load.phase = MEASURE
    measure_started = time.monotonic()
    await _sleep_until(float(ctl[T_END]))
    load.phase = DONE
    window = time.monotonic() - measure_started
    # Wait for the publisher's count, then for the deliveries still on their way.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            while ctl[EXPECTED] < 0:  # noqa: ASYNC110 (shared memory)
                await asyncio.sleep(0.01)
    expected = int(ctl[EXPECTED])
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while any(c.unique < expected for c in clients if c.transport):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    reporter.cancel()
    progress.value = load.total
    for c in clients:
        c.close()
    lost = sum(max(0, expected - c.unique) for c in clients) if expected >= 0 else -1
    return {
        "subscribers": len(clients),
        "window_s": window,
        "deliveries": load.measured,
        "deliveries_total": load.total,
        "compressed": load.compressed,
        "verified": load.verified,
        "expected_per_subscriber": expected,
        "lost": lost,
        "late_or_duplicate": sum(c.late for c in clients),
        "out_of_order": sum(c.out_of_order for c in clients),
        "errors": load.errors,
        "hist": stats.to_sparse(load.hist),
        "max_us": load.max_us,
        "sampled_connections": sum(c.sample for c in clients),
        "message_bytes": load.message_bytes,
        "extra_keys": load.extra_keys,
        "count_only_connections": sum(c.count_only for c in clients),
    }


def subscriber_process(
    spec: SubSpec, ctl: Control, progress: Synchronized[int], out: Connection
) -> None:
    """Entry point of a subscriber process (spawned; pinned to ``spec.cpu``)."""
    _pin(spec.cpu)
    try:
        import uvloop

        result = uvloop.run(_subscribe(spec, ctl, progress, out))
    except BaseException as exc:  # report it to the parent, whatever it is
        out.send({"failed": f"{type(exc).__name__}: {exc}"})
        raise
    out.send(result)


class PubClient(_Client):
    """The publisher: ``bench.pub`` with a fresh timestamp and the next sequence number."""

    def __init__(self, spec: PubSpec) -> None:
        super().__init__(spec.port, False)
        self.spec = spec
        self.room_json = orjson.dumps(spec.room)
        self.phase = CONNECTING
        self.seq = 0
        self.sent: dict[int, int] = {}
        self.acked = 0
        self.measured = 0  # publishes acked in the measured window
        self.hist = stats.new()
        self.max_us = 0
        self.errors: dict[str, int] = {}
        self.idle = asyncio.Event()

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def publish(self, out: list[bytes]) -> None:
        self.seq += 1
        now = time.monotonic_ns()
        out.append(self.masker.frame(pub(self.room_json, payload(now, self.seq), self.seq)))
        self.sent[self.seq] = now

    def fill(self) -> None:
        """Saturation: top up to K publishes in flight."""
        out: list[bytes] = []
        while len(self.sent) < self.spec.inflight:
            self.publish(out)
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def data_received(self, data: bytes) -> None:
        if self.rest:
            data = self.rest + data
            self.rest = b""
        if not self.upgraded:
            after = self._handshake(data)
            if not after:
                return
            data = after
        now = time.monotonic_ns()
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, n = data[pos], data[pos + 1]
            start = pos + 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                start = pos + 10
            if start + n > end:
                break
            pos = start + n
            if b0 != 0x81:
                self.control(b0, data[start:pos])
                continue
            try:
                ack = orjson.loads(data[start:pos])
                sent = self.sent.pop(ack["id"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.error("unexpected frame")
                continue
            if ack.get("data") is not True:
                self.error("error ack")
                continue
            self.acked += 1
            if self.phase == MEASURE:
                self.measured += 1
                us = (now - sent) // 1000
                self.max_us = max(self.max_us, us)
                self.hist[stats.bucket(us)] += 1
        if pos < end:
            self.rest = data[pos:]
        if self.phase in (WARMUP, MEASURE) and not self.spec.rate:
            self.fill()
        elif self.phase == DONE and not self.sent:
            self.idle.set()


async def _publish(
    spec: PubSpec, ctl: Control, progress: Synchronized[int], out: Connection
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tls = client_context() if spec.tls else None
    _, client = await loop.create_connection(lambda: PubClient(spec), HOST, spec.port, ssl=tls)
    async with asyncio.timeout(15):
        await client.ready
    out.send({"ready": 1})
    start = await _wait_start(ctl)
    if start < 0:
        client.close()
        return {"published": 0, "errors": client.errors}
    reporter = loop.create_task(_report_progress(progress, lambda: client.seq))
    await _sleep_until(start)
    client.phase = WARMUP
    measure_at, end_at = float(ctl[T_MEASURE]), float(ctl[T_END])
    if spec.rate:
        i = 0
        while True:
            due = start + i / spec.rate
            if due >= end_at:
                break
            if client.phase == WARMUP and due >= measure_at:
                client.phase = MEASURE
            await _sleep_until(due)
            frames: list[bytes] = []
            client.publish(frames)
            if client.transport is not None:
                client.transport.write(frames[0])
            i += 1
        await _sleep_until(end_at)
    else:
        client.fill()
        await _sleep_until(measure_at)
        client.phase = MEASURE
        await _sleep_until(end_at)
    client.phase = DONE
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            if client.sent:
                await client.idle.wait()
    reporter.cancel()
    progress.value = client.seq
    unanswered = len(client.sent)
    client.close()
    return {
        "published": client.seq,
        "acked": client.acked,
        "acked_in_window": client.measured,
        "unanswered": unanswered,
        "errors": client.errors,
        "hist": stats.to_sparse(client.hist),
        "max_us": client.max_us,
    }


def publisher_process(
    spec: PubSpec, ctl: Control, progress: Synchronized[int], out: Connection
) -> None:
    """Entry point of the publisher process (spawned; pinned to ``spec.cpu``)."""
    _pin(spec.cpu)
    try:
        import uvloop

        result = uvloop.run(_publish(spec, ctl, progress, out))
    except BaseException as exc:  # report it to the parent, whatever it is
        out.send({"failed": f"{type(exc).__name__}: {exc}"})
        raise
    out.send(result)
