"""The WebSocket attackers of ``bench/hostile.py``.

Each is ``async def attack(spec, deadline) -> dict``: it stops sending at ``deadline``
(loop time), every loop also has a count bound from ``spec.params``, and it spends at
most ``spec.tail`` s more reading what the engine did to it. The dict has a
``summary`` (the table's "attacker got") and the details for the JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import TYPE_CHECKING, Any

import orjson

from .hostile_net import RawConn, client_frame, connect, ws_handshake

if TYPE_CHECKING:
    from .hostile_attacks import AttackSpec

__all__ = ["drain_frames", "fragments", "garbage", "ping_flood", "slow_reader", "top"]

_KEY = b"\x5a\xa5\x0f\xf0"
#: Fragments of one message past which accepting it is a defect: any sane per-message
#: bound is far below (a message cut shorter by the attack's end is not judged).
_SANE_FRAGMENTS = 100_000


def top(counts: Counter[str], n: int = 3) -> str:
    """``"1009 x12, dropped x1"``: the most common outcomes."""
    if not counts:
        return "nothing"
    return ", ".join(f"{k} x{v:,}" for k, v in counts.most_common(n))


async def drain_frames(conn: RawConn, deadline: float) -> tuple[Counter[int], str]:
    """Read until the engine's close frame, the TCP close or ``deadline``.

    Returns the frames seen by opcode and the outcome: the close code, ``dropped``
    (TCP closed without a close frame) or ``open``.
    """
    conn.start_reading()
    seen: Counter[int] = Counter()
    while True:
        for opcode, payload in conn.frames():
            seen[opcode] += 1
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                return seen, str(code)
        if len(conn.buf) >= conn.keep:
            conn.buf.clear()  # an oversized frame we will not parse: skip it
        if conn.closed.is_set():
            return seen, "dropped"
        if not await conn.wait_data(deadline):
            return seen, "open"


async def _ws(spec: AttackSpec, source: str, **kw: Any) -> tuple[RawConn | None, int]:
    loop = asyncio.get_running_loop()
    try:
        conn = await connect(spec.port, source, **kw)
    except OSError:
        return None, -1
    status = await ws_handshake(conn, spec.path, spec.port, loop.time() + 5)
    if status != 101:
        conn.abort()
        return None, status
    return conn, status


# ------------------------------------------------------------- (2) fragments
async def fragments(spec: AttackSpec, deadline: float) -> dict[str, Any]:
    """Text messages of endless empty continuation frames (6 bytes each), as fast as
    the engine reads them; when it closes the connection, again on a new one."""
    loop = asyncio.get_running_loop()
    batch_frames = 8192
    batch = client_frame(b"", 0x0, fin=False, key=_KEY) * batch_frames
    limit = int(spec.params.get("max_frames", 50_000_000))
    outcomes: Counter[str] = Counter()
    sent = accepted = conns = 0
    per_conn: list[int] = []
    while sent < limit and loop.time() < deadline and conns < 10_000:
        conn, status = await _ws(spec, spec.sources[conns % len(spec.sources)])
        conns += 1
        if conn is None:
            outcomes[f"upgrade {status}"] += 1
            await asyncio.sleep(0.05)
            continue
        conn.write(client_frame(b"x", 0x1, fin=False, key=_KEY))
        mine = 0
        while sent < limit and await conn.writable(deadline):
            conn.write(batch)
            mine += batch_frames
            sent += batch_frames
            if conn.buf or conn.closed.is_set():
                break  # the engine answered: its close frame, or an error
        if conn.open and not conn.buf and mine < _SANE_FRAGMENTS:
            outcomes["cut off"] += 1  # by the deadline, before any sane limit: no verdict
            per_conn.append(mine)
            conn.abort()
            continue
        if conn.open:
            conn.write(client_frame(b"y", 0x0, fin=True, key=_KEY))  # finish the message
        seen, outcome = await drain_frames(conn, loop.time() + spec.tail)
        if seen[0x1] or seen[0x2]:
            accepted += 1
            outcome = "accepted"
        outcomes[outcome] += 1
        per_conn.append(mine)
        conn.abort()
    most = max(per_conn, default=0)
    return {
        "summary": f"{sent / 1e6:.2f} M empty fragments on {conns} conns "
        f"(≤ {most / 1e3:,.0f} k each): {top(outcomes)}",
        "fragments_sent": sent,
        "connections": conns,
        "fragments_per_connection": per_conn,
        "outcomes": dict(outcomes),
        "messages_accepted": accepted,
    }


# ------------------------------------------------------------- (3) ping flood
async def ping_flood(spec: AttackSpec, deadline: float) -> dict[str, Any]:
    """125-byte pings as fast as the engine reads them, never reading the pongs; when
    the engine closes the connection, again on a new one."""
    loop = asyncio.get_running_loop()
    per_batch = 256
    batch = client_frame(b"p" * 125, 0x9, key=_KEY) * per_batch
    limit = int(spec.params.get("max_pings", 20_000_000))
    outcomes: Counter[str] = Counter()
    sent = pongs = conns = 0
    while sent < limit and loop.time() < deadline and conns < 10_000:
        conn, status = await _ws(spec, spec.sources[conns % len(spec.sources)], keep=16 << 20)
        conns += 1
        if conn is None:
            outcomes[f"upgrade {status}"] += 1
            await asyncio.sleep(0.05)
            continue
        conn.stop_reading()
        while sent < limit and await conn.writable(deadline):
            conn.write(batch)
            sent += per_batch
        seen, outcome = await drain_frames(conn, loop.time() + spec.tail)
        pongs += seen[0xA]
        outcomes[outcome] += 1
        conn.abort()
    return {
        "summary": f"{sent:,} pings on {conns} conns, {pongs:,} pongs read after: {top(outcomes)}",
        "pings_sent": sent,
        "connections": conns,
        "pongs_read_after": pongs,
        "outcomes": dict(outcomes),
    }


# ------------------------------------------------------------- (5) garbage
def _garbage(kind: str, max_message: int) -> list[bytes]:
    """The writes of one bad message of ``kind``."""
    k = _KEY
    if kind == "too-big-header":  # announces max + 1 bytes, sends 1 KiB of them
        return [client_frame(b"a" * 1024, 0x1, key=k, length=max_message + 1)[: 14 + 1024]]
    if kind == "too-big-fragments":
        chunk = b"a" * 65536
        n = max_message // len(chunk) + 1
        return [
            client_frame(chunk, 0x1 if i == 0 else 0x0, fin=i == n, key=k) for i in range(n + 1)
        ]
    if kind == "bad-utf8":
        return [client_frame(b"caf\xc3\x28 \xff\xfe", 0x1, key=k)]
    if kind == "bad-utf8-split":  # a code point cut across fragments, then invalid
        return [
            client_frame(b"ok \xe2\x82", 0x1, fin=False, key=k),
            client_frame(b"\x28", 0x0, key=k),
        ]
    if kind == "reserved-opcode":
        return [client_frame(b"x", 0x3, key=k)]
    if kind == "rsv-bits":
        return [client_frame(b"x", 0x1, rsv=0b011, key=k)]
    if kind == "unmasked":
        return [client_frame(b"x", 0x1, masked=False)]
    if kind == "bad-close":
        return [client_frame(b"\x03\xe7\xff", 0x8, key=k)]  # code 999, bad UTF-8 reason
    if kind == "binary":
        return [client_frame(b"\x00\x01\x02", 0x2, key=k)]
    if kind == "bad-json":
        return [client_frame(b'{"type": "bench.echo", "data": {', 0x1, key=k)]
    if kind == "not-envelope":
        return [client_frame(b"[1, 2, 3]", 0x1, key=k)]
    if kind == "unknown-type":
        return [client_frame(b'{"type": "no.such", "data": 1, "id": 7}', 0x1, key=k)]
    if kind == "no-id-bad-type":
        return [client_frame(b'{"type": 12, "data": null}', 0x1, key=k)]
    raise ValueError(f"unknown garbage kind {kind!r}")


async def garbage(spec: AttackSpec, deadline: float) -> dict[str, Any]:
    """Connect, send one kind of bad message until the engine closes (at most
    ``per_connection``), record the close code or error replies; again, ``concurrency``
    loops at once, round-robin over ``kinds``."""
    loop = asyncio.get_running_loop()
    kinds = [k for k in str(spec.params["kinds"]).split(",") if k]
    per_conn = int(spec.params.get("per_connection", 25))
    limit = int(spec.params.get("max_attempts", 20_000))
    max_message = int(spec.params["max_message_size"])
    payloads = {k: _garbage(k, max_message) for k in kinds}
    outcomes: dict[str, Counter[str]] = {k: Counter() for k in kinds}
    replies: Counter[str] = Counter()
    attempts = 0

    async def one(kind: str, source: str) -> None:
        conn, status = await _ws(spec, source, keep=4 << 20)
        if conn is None:
            outcomes[kind][f"upgrade {status}"] += 1
            return
        result = "open"
        sends = answered = 0
        for _ in range(per_conn):
            for data in payloads[kind]:
                conn.write(data)
            sends += 1
            # Past the deadline too: an attempt under way gets its answer.
            wait = loop.time() + 0.3
            while True:
                got = conn.frames()
                for opcode, payload in got:
                    if opcode == 0x8:
                        result = str(int.from_bytes(payload[:2], "big")) if payload else "1005"
                    elif opcode == 0x1:
                        answered += 1
                        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                            error = orjson.loads(payload).get("error")
                            replies[error["code"] if error else "data reply"] += 1
                if result != "open" or got or conn.closed.is_set():
                    break
                if not await conn.wait_data(wait):
                    break
            if result != "open" or conn.closed.is_set():
                break
            if loop.time() >= deadline:
                result = "cut off"  # by the end of the attack, not by the engine
                break
        if result == "open" and conn.closed.is_set():
            result = "dropped"
        elif result == "open":
            # Never closed: acceptable only if every bad message got an error reply.
            result = "answered, kept open" if answered >= sends else "silently ignored"
        outcomes[kind][result] += 1
        conn.abort()

    async def worker(w: int) -> None:
        nonlocal attempts
        while attempts < limit and loop.time() < deadline:
            kind = kinds[attempts % len(kinds)]
            attempts += 1
            await one(kind, spec.sources[w % len(spec.sources)])

    await asyncio.gather(*(worker(w) for w in range(int(spec.params.get("concurrency", 4)))))
    total: Counter[str] = Counter()
    for counts in outcomes.values():
        total.update(counts)
    return {
        "summary": f"{attempts:,} connections: {top(total)}"
        + (f"; replies {top(replies, 2)}" if replies else ""),
        "attempts": attempts,
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "error_replies": dict(replies),
    }


# ------------------------------------------------------------- (6) slow reader
async def slow_reader(spec: AttackSpec, deadline: float) -> dict[str, Any]:
    """Clients that stop reading while the engine has to send them a lot.

    ``/echo``: each sends ``size``-byte messages at ``rate`` and never reads the
    echoes. A service (``fanout``): each joins the well-behaved clients' room and a
    flood room, then stops reading, while one more connection publishes ``size``-byte
    payloads to the flood room at ``rate``.
    """
    loop = asyncio.get_running_loop()
    n = int(spec.params.get("connections", 8))
    size = int(spec.params.get("size", 131072))
    rate = float(spec.params.get("rate", 50))
    fanout = bool(spec.params.get("fanout", False))
    slow: list[RawConn] = []
    refused: Counter[str] = Counter()
    for i in range(n):
        # A small receive window: the engine's own buffers fill, not the kernel's.
        conn, status = await _ws(
            spec, spec.sources[i % len(spec.sources)], keep=16 << 20, rcvbuf=16384
        )
        if conn is None:
            refused[str(status)] += 1
            continue
        if fanout:
            for msg_id, room in ((1, "wb"), (2, "flood")):
                body = {"type": "bench.sub", "data": {"room": room}, "id": msg_id}
                conn.write(client_frame(orjson.dumps(body), key=_KEY))
            acks = 0
            end = loop.time() + 5
            while acks < 2 and await conn.wait_data(end):
                acks += sum(1 for op, _ in conn.frames() if op == 0x1)
        conn.stop_reading()
        slow.append(conn)
    blob = "a" * size
    sent = blocked = 0
    pub_replies: Counter[str] = Counter()
    publisher: RawConn | None = None
    if fanout:
        publisher, status = await _ws(spec, spec.sources[0], keep=4 << 20)
    interval = 1.0 / rate
    next_at = loop.time()
    seq = 0
    while loop.time() < deadline and seq < rate * 600:
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at += interval
        seq += 1
        if fanout:
            if publisher is None or not publisher.open:
                break
            body = {"type": "bench.pub", "data": {"room": "flood", "payload": blob}, "id": seq}
            publisher.write(client_frame(orjson.dumps(body), key=_KEY))
            for op, payload in publisher.frames():
                if op == 0x1:
                    error = orjson.loads(payload).get("error")
                    pub_replies[error["code"] if error else "ok"] += 1
            sent += 1
            continue
        frame = client_frame(orjson.dumps({"type": "bench.blob", "data": blob}), key=_KEY)
        for conn in slow:
            if conn.open and conn.transport is not None:
                if conn.transport.get_write_buffer_size() > 256 * 1024:
                    blocked += 1  # the engine stopped reading us: TCP backpressure
                else:
                    conn.write(frame)
                    sent += 1
    outcomes: Counter[str] = Counter()
    frames_read = 0
    tail = loop.time() + spec.tail
    results = await asyncio.gather(*(drain_frames(c, tail) for c in slow))
    for seen, outcome in results:
        outcomes[outcome] += 1
        frames_read += seen[0x1]
    for conn in [*slow, *([publisher] if publisher else [])]:
        conn.abort()
    what = f"{sent:,} publishes ({size // 1024} KiB)" if fanout else f"{sent:,} msgs sent"
    if blocked:
        what += f", {blocked:,} held back (engine stopped reading)"
    return {
        "summary": f"{len(slow)} slow readers, {what}; close {top(outcomes)}",
        "slow_connections": len(slow),
        "refused": dict(refused),
        "messages_sent": sent,
        "held_back_by_backpressure": blocked,
        "outcomes": dict(outcomes),
        "frames_read_after": frames_read,
        "publish_replies": dict(pub_replies),
    }
