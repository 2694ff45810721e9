"""The chat bench's load generator: C raw WebSocket clients in rooms of R, one process.

Each client connects to its room (``?room=R``), waits for ``chat.joined``, then sends
``chat.send {room, message}`` and times the ack; every member of the room (the sender
too) receives ``chat.message {id, room, from, message}`` and times the delivery. The
message text starts with ``@<time.monotonic_ns(), 19 digits>@`` (``message_text``), so
a receiver reads the send time by finding ``"@`` in the frame, without parsing JSON;
a delivery for another room than the client's is counted as an error.

Two wire adapters speak to the servers under test, on the same frame code
(``bench.wsload.Masker`` and ``parse_frames``: masked client frames, no extension
offered):

``LinkdClient``
    ``GET /ws/chat?room=R``; sends ``{"type":"chat.send","data":{...},"id":N}``; the
    ack is ``{"id":N,"type":"chat.send","data":{"id":M}}`` (or ``"error"``).
``SocketIoClient``
    socket.io v5 over Engine.IO v4, WebSocket transport from the start:
    ``GET /socket.io/?EIO=4&transport=websocket&room=R``; the server's open packet
    ``0{...}`` is answered with ``40`` (connect to ``/``), then ``40{"sid"}`` and
    ``42["chat.joined",{...}]`` arrive; sends ``42N["chat.send",{...}]`` and gets the
    ack ``43N[{"id":M}]``; the server's ping ``2`` is answered with ``3``.

Phases, on the same connections (``run_phases``): ``rate``, a fixed schedule that sends
``clients / interval`` messages per second spread evenly, each client once per
``interval`` (latency); ``saturation``, each client keeping ``window`` messages in
flight (throughput). Each phase warms up, measures, then stops sending and waits for
the acks in flight. Latencies go to ``bench.fanout_stats`` histograms (bounded
memory); the CPU of the server's processes and of this one is read at both ends of
the measured window (``bench.wsload.Snapshot``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import math
import os
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

import orjson

from . import fanout_stats as stats
from .fanout_peers import raise_nofile
from .wsload import Masker, Snapshot, parse_frames

__all__ = [
    "PROTOCOLS",
    "ChatClient",
    "LinkdClient",
    "LoadSpec",
    "SocketIoClient",
    "load_process",
    "message_text",
    "probe",
    "read_send_time",
]

HOST = "127.0.0.1"
PROTOCOLS = ("linkd", "socketio")
_FILLER = b"hello room, this is a chat line about the weather, the match and lunch. "
#: Where the send time starts in a delivery frame: after ``"@``.
_TS_MARK = b'"@'
CONNECT_TIMEOUT = 60.0
DRAIN_TIMEOUT = 10.0


def message_text(ts_ns: int, chars: int) -> bytes:
    """The chat line: ``@<19-digit send time>@`` then filler, ``chars`` long in all."""
    head = b"@%019d@ " % ts_ns
    body = (_FILLER * (chars // len(_FILLER) + 1))[: max(chars - len(head), 0)]
    return head + body


def read_send_time(frame: bytes) -> int:
    """The send time in a delivery frame (-1 when it has none)."""
    i = frame.find(_TS_MARK)
    if i < 0:
        return -1
    try:
        return int(frame[i + 2 : i + 21])
    except ValueError:
        return -1


@dataclass
class LoadSpec:
    """What the load process does (picklable: it crosses to a spawned process)."""

    protocol: str
    port: int
    clients: int
    room_size: int
    #: Seconds between two messages of one client in the ``rate`` phase.
    interval: float
    #: Messages in flight per client in the ``saturation`` phase.
    window: int
    warmup: float
    duration: float
    phases: tuple[str, ...]
    message_chars: int
    cpu: int | None
    #: Server processes whose CPU time is read at both ends of each window.
    pids: dict[str, int]
    connect_batch: int = 100
    #: The server's name, for the progress lines.
    label: str = ""

    @property
    def rooms(self) -> int:
        return self.clients // self.room_size


class Window:
    """What the clients count during one measured window (bounded: histograms)."""

    def __init__(self) -> None:
        self.sent = 0
        self.acks = 0
        self.deliveries = 0
        self.ack_hist = stats.new()
        self.ack_max_us = 0
        self.delivery_hist = stats.new()
        self.delivery_max_us = 0
        self.errors: dict[str, int] = {}

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acks": self.acks,
            "deliveries": self.deliveries,
            "ack_latency_ms": stats.summary(self.ack_hist, self.ack_max_us),
            "delivery_latency_ms": stats.summary(self.delivery_hist, self.delivery_max_us),
            "errors": sum(self.errors.values()),
            "error_kinds": dict(self.errors),
        }


class Load:
    """State shared by every client: the open window, whether acks trigger sends."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        #: Counters of the measured window; None outside it.
        self.window: Window | None = None
        #: Saturation: an ack sends the next message.
        self.closed_loop = False
        #: Errors outside the measured windows (connect, warm-up, drain).
        self.outside = Window()
        self.started = False

    def counting(self) -> Window:
        return self.window if self.window is not None else self.outside


class ChatClient(asyncio.Protocol):
    """One client: the WebSocket upgrade, frames, pings and the chat bookkeeping.

    Subclasses give the request target (``target``), encode a ``chat.send``
    (``encode_send``) and classify the server's text frames (``on_text``).
    """

    def __init__(self, load: Load, port: int, room: str) -> None:
        self.load = load
        self.port = port
        self.room = room
        self.room_json = orjson.dumps(room)
        #: Present in every delivery for this client's room.
        self.room_mark = b'"room":' + self.room_json
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.joined: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.buf = bytearray()
        self.upgraded = False
        self.masker = Masker()
        #: id → send time (ns) of the messages waiting for their ack.
        self.sent: dict[int, int] = {}
        self.next_id = 0
        self.idle = asyncio.Event()
        self.idle.set()

    # ------------------------------------------------------------ adapter hooks
    def target(self) -> bytes:
        raise NotImplementedError

    def encode_send(self, msg_id: int, text: bytes) -> bytes:
        raise NotImplementedError

    def on_text(self, payload: bytes, now: int, out: list[bytes]) -> None:
        raise NotImplementedError

    def on_upgraded(self, out: list[bytes]) -> None:
        """Called once after the 101 (socket.io waits for the open packet instead)."""

    # ------------------------------------------------------------ transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16))
        self.transport.write(
            b"GET " + self.target() + b" HTTP/1.1\r\n"
            b"Host: " + f"{HOST}:{self.port}".encode() + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.load.started:
            self.load.counting().error("connection lost")
        if not self.joined.done():
            self.joined.set_exception(ConnectionError("closed before chat.joined"))
        if not self.lost.done():
            self.lost.set_result(None)
        self.idle.set()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        if not self.upgraded:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            del buf[: head_end + 4]
            if b" 101 " not in status:
                self._fail(status.decode(errors="replace"))
                return
            self.upgraded = True
            self.on_upgraded(out)
        frames, used = parse_frames(buf)
        if used:
            del buf[:used]
        now = time.monotonic_ns()
        for opcode, payload in frames:
            if opcode == 0x1:
                self.on_text(payload, now, out)
            elif opcode == 0x9:
                out.append(self.masker.frame(payload, 0xA))
            elif opcode == 0x8:
                if self.load.started:
                    self.load.counting().error("closed by the server")
            elif opcode != 0xA:
                self.load.counting().error("bad frame")
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _fail(self, why: str) -> None:
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(why))
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ chat
    def joined_room(self, room: Any) -> None:
        if room != self.room:
            self._fail(f"joined {room!r}, not {self.room!r}")
        elif not self.joined.done():
            self.joined.set_result(None)

    def frame_send(self, text: bytes | None = None) -> bytes:
        """The next ``chat.send`` frame (``text``: instead of the timed chat line)."""
        self.next_id += 1
        now = time.monotonic_ns()
        self.sent[self.next_id] = now
        self.idle.clear()
        self.load.counting().sent += 1
        if text is None:
            text = message_text(now, self.load.spec.message_chars)
        return self.masker.frame(self.encode_send(self.next_id, text))

    def send_one(self) -> None:
        if self.transport is not None:
            self.transport.write(self.frame_send())

    def send_one_text(self, text: bytes) -> None:
        if self.transport is not None:
            self.transport.write(self.frame_send(text))

    def fill(self, out: list[bytes]) -> None:
        while len(self.sent) < self.load.spec.window:
            out.append(self.frame_send())

    def on_ack(self, msg_id: int, error: str | None, now: int, out: list[bytes]) -> None:
        """``error``: the error ack's code (linkd) or message (socket.io); None: acked."""
        started = self.sent.pop(msg_id, None)
        w = self.load.counting()
        if started is None:
            # Sent before a drain that timed out: the server was still backlogged.
            w.error("late ack (after the drain)")
            return
        if error is not None:
            w.error(f"error ack: {error}")
        elif self.load.window is not None:
            us = (now - started) // 1000
            w.acks += 1
            w.ack_hist[stats.bucket(us)] += 1
            w.ack_max_us = max(w.ack_max_us, us)
        if self.load.closed_loop:
            self.fill(out)
        elif not self.sent:
            self.idle.set()

    def on_delivery(self, payload: bytes, now: int) -> None:
        w = self.load.window
        if w is None:
            return
        started = read_send_time(payload)
        if started < 0 or self.room_mark not in payload:
            w.error("bad delivery")
            return
        us = (now - started) // 1000
        w.deliveries += 1
        w.delivery_hist[us if us < stats.FINE_US else stats.bucket(us)] += 1
        if us > w.delivery_max_us:
            w.delivery_max_us = us

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.masker.frame(struct.pack("!H", 1000), 0x8))


class LinkdClient(ChatClient):
    """linkd's JSON envelope ``{type, data, id}`` and ack ``{id, type, data|error}``."""

    _DELIVERY = b'{"type":"chat.message"'

    def target(self) -> bytes:
        return b"/ws/chat?room=" + self.room.encode()

    def encode_send(self, msg_id: int, text: bytes) -> bytes:
        return (
            b'{"type":"chat.send","data":{"room":'
            + self.room_json
            + b',"message":"'
            + text
            + b'"},"id":%d}' % msg_id
        )

    def on_text(self, payload: bytes, now: int, out: list[bytes]) -> None:
        if payload.startswith(self._DELIVERY):
            self.on_delivery(payload, now)
            return
        try:
            frame = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.load.counting().error("unexpected frame")
            return
        if not isinstance(frame, dict):
            self.load.counting().error("unexpected frame")
        elif "id" in frame:
            error = frame.get("error")
            code = (
                None
                if error is None
                else str(error.get("code") if isinstance(error, dict) else error)
            )
            self.on_ack(frame["id"], code, now, out)
        elif frame.get("type") == "chat.joined":
            self.joined_room((frame.get("data") or {}).get("room"))
        else:
            self.load.counting().error("unexpected frame")


class SocketIoClient(ChatClient):
    """socket.io v5 packets over Engine.IO v4 frames (one packet per WebSocket frame)."""

    _DELIVERY = b'42["chat.message"'
    _JOINED = b'42["chat.joined"'

    def target(self) -> bytes:
        return b"/socket.io/?EIO=4&transport=websocket&room=" + self.room.encode()

    def encode_send(self, msg_id: int, text: bytes) -> bytes:
        return (
            b'42%d["chat.send",{"room":' % msg_id + self.room_json + b',"message":"' + text + b'"}]'
        )

    def on_text(self, payload: bytes, now: int, out: list[bytes]) -> None:
        if payload.startswith(self._DELIVERY):
            self.on_delivery(payload, now)
        elif payload.startswith(b"43"):
            i = payload.find(b"[")
            try:
                msg_id = int(payload[2:i])
                body = orjson.loads(payload[i:])
            except (ValueError, orjson.JSONDecodeError):
                self.load.counting().error("unexpected frame")
                return
            ack = body[0] if body and isinstance(body, list) else None
            if not isinstance(ack, dict):
                error: str | None = "not an object"
            else:
                error = None if "error" not in ack else str(ack["error"])
            self.on_ack(msg_id, error, now, out)
        elif payload == b"2":
            out.append(self.masker.frame(b"3"))
        elif payload.startswith(self._JOINED):
            try:
                room = orjson.loads(payload[2:])[1]["room"]
            except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
                room = None
            self.joined_room(room)
        elif payload.startswith(b"0{"):
            out.append(self.masker.frame(b"40"))  # connect to the main namespace
        elif payload.startswith(b"40"):
            pass  # connected; chat.joined follows
        else:
            self.load.counting().error("unexpected frame")


_CLIENTS: dict[str, type[ChatClient]] = {"linkd": LinkdClient, "socketio": SocketIoClient}


def _cpu(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    wall = after.wall - before.wall
    seconds = {
        name: after.procs[name]["cpu_s"] - b["cpu_s"]
        for name, b in before.procs.items()
        if name in after.procs
    }
    cores = [
        100.0 * (a[0] - b[0]) / (a[1] - b[1]) if a[1] > b[1] else math.nan
        for a, b in zip(after.cores, before.cores, strict=True)
    ]
    return {
        "seconds": wall,
        "cpu_seconds": seconds,
        "cpu_percent": {name: 100.0 * s / wall for name, s in seconds.items()},
        "core_busy_percent": cores,
    }


async def _connect(spec: LoadSpec, load: Load) -> list[ChatClient]:
    """Connect every client, ``connect_batch`` at a time, each waiting for chat.joined.

    Client i is in room ``i % rooms``: consecutive clients are in different rooms.
    """
    loop = asyncio.get_running_loop()
    cls = _CLIENTS[spec.protocol]
    clients: list[ChatClient] = []

    async def one(i: int) -> ChatClient:
        room = f"room-{i % spec.rooms:05d}"
        _, client = await loop.create_connection(
            lambda: cls(load, spec.port, room), HOST, spec.port
        )
        await client.joined
        return client

    async with asyncio.timeout(CONNECT_TIMEOUT):
        for start in range(0, spec.clients, spec.connect_batch):
            stop = min(start + spec.connect_batch, spec.clients)
            clients += await asyncio.gather(*(one(i) for i in range(start, stop)))
    return clients


async def _pace(clients: Sequence[ChatClient], rate: float, seconds: float) -> None:
    """Send ``rate`` messages/s for ``seconds``, round-robin over ``clients``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    n = len(clients)
    k = 0
    while True:
        now = loop.time()
        if now - start >= seconds:
            return
        due = int((now - start) * rate)
        while k < due:
            clients[k % n].send_one()
            k += 1
        await asyncio.sleep(0.002)


async def _drain(clients: Sequence[ChatClient]) -> int:
    """Wait for the acks in flight; how many never came."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT):
            await asyncio.gather(*(c.idle.wait() for c in clients if c.sent))
    left = sum(len(c.sent) for c in clients)
    for c in clients:
        c.sent.clear()
        c.idle.set()
    return left


async def _phase(
    name: str, spec: LoadSpec, load: Load, clients: Sequence[ChatClient]
) -> dict[str, Any]:
    pids = {**spec.pids, "load": os.getpid()}
    rate = spec.clients / spec.interval
    window = Window()
    print(f"chat load: {spec.label or spec.protocol}: {name}", file=sys.stderr)
    if name == "rate":
        await _pace(clients, rate, spec.warmup)
        before = Snapshot.take(pids)
        load.window = window
        await _pace(clients, rate, spec.duration)
    else:
        load.closed_loop = True
        for c in clients:
            out: list[bytes] = []
            c.fill(out)
            if c.transport is not None:
                c.transport.write(b"".join(out))
        await asyncio.sleep(spec.warmup)
        before = Snapshot.take(pids)
        load.window = window
        await asyncio.sleep(spec.duration)
    after = Snapshot.take(pids)
    load.window = None
    load.closed_loop = False
    unanswered = await _drain(clients)
    cpu = _cpu(before, after)
    result = window.summary()
    seconds = cpu["seconds"]
    result.update(
        phase=name,
        offered_per_s=rate if name == "rate" else None,
        window=spec.window if name == "saturation" else None,
        sent_per_s=window.sent / seconds,
        acks_per_s=window.acks / seconds,
        deliveries_per_s=window.deliveries / seconds,
        unanswered_at_end=unanswered,
        **cpu,
    )
    return result


async def run_phases(spec: LoadSpec) -> dict[str, Any]:
    load = Load(spec)
    began = time.monotonic()
    clients = await _connect(spec, load)
    connect_s = time.monotonic() - began
    load.started = True
    phases = [await _phase(name, spec, load, clients) for name in spec.phases]
    load.started = False  # what follows is our own closing
    for c in clients:
        c.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3):
            await asyncio.gather(*(c.lost for c in clients))
    for c in clients:
        if c.transport is not None:
            c.transport.abort()
    return {
        "connect_seconds": connect_s,
        "phases": phases,
        "errors_outside_windows": load.outside.errors,
    }


def load_process(spec: LoadSpec, out: Connection) -> None:
    """Entry point of the spawned load process (pinned to ``spec.cpu``)."""
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    raise_nofile()
    try:
        import uvloop

        result = uvloop.run(run_phases(spec))
    except BaseException as exc:  # report it to the parent, whatever it is
        out.send({"failed": f"{type(exc).__name__}: {exc}"})
        raise
    out.send(result)


async def _until(done: Callable[[], bool]) -> None:
    """Poll ``done`` every 10 ms (the caller's timeout bounds it)."""
    for _ in itertools.count():
        if done():
            return
        await asyncio.sleep(0.01)


async def probe(protocol: str, port: int) -> str | None:
    """One client: joined, an empty message refused, a valid one delivered and acked.

    Returns None when the server behaves, else what went wrong: a connection error
    or a timeout (not up yet: the caller retries) or ``unexpected: ...`` (it answered
    wrong: the caller gives up).
    """
    spec = LoadSpec(protocol, port, 1, 1, 1.0, 1, 0.0, 0.0, (), 100, None, {})
    load = Load(spec)
    load.started = True
    window = load.window = Window()
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(3):
            _, client = await loop.create_connection(
                lambda: _CLIENTS[protocol](load, port, "room-probe"), HOST, port
            )
            try:
                await client.joined
                client.send_one_text(b"")
                await _until(lambda: any(k.startswith("error ack") for k in window.errors))
                client.send_one()
                await _until(lambda: window.acks >= 1 and window.deliveries >= 1)
            finally:
                client.close()
                if client.transport is not None:
                    client.transport.abort()
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    refused = sum(n for k, n in window.errors.items() if k.startswith("error ack"))
    if refused != 1 or len(window.errors) != 1:
        return f"unexpected: {window.errors}"
    return None
