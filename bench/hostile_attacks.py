"""The attackers of ``bench/hostile.py``: HTTP-level attacks and the process entry point.

Every attacker runs in its own process (``attack_process``), spawned by the
orchestrator, pinned to the load core and niced (``spec.nice``) so that it gets less
of that core than the well-behaved clients, with its open-file limit raised. It
connects to 127.0.0.1 only, from the loopback source addresses in ``spec.sources``
(127.0.0.2 and up: per-address limits then apply to it, not to the clients on
127.0.0.1). It waits for ``go``, attacks until ``spec.duration`` has passed (every loop
is also bounded in count), reads for at most ``spec.tail`` s what the engine did to it, and
sends a dict with a ``summary`` back. The WebSocket attacks are in
``bench/hostile_ws_attacks.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from .hostile_net import RawConn, connect, http_request, read_head, ws_upgrade_request
from .hostile_ws_attacks import fragments, garbage, ping_flood, slow_reader, top

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

__all__ = ["ATTACKS", "AttackSpec", "attack_process"]


@dataclass(frozen=True)
class AttackSpec:
    """What one attacker process does (picklable)."""

    attack: str
    port: int
    #: The setup's WebSocket path (``/echo`` or the service's).
    path: str
    duration: float
    sources: tuple[str, ...]
    cpu: int | None
    nice: int
    params: dict[str, Any] = field(default_factory=dict)
    #: Seconds the attacker reads, after the attack, to see what the engine did to it.
    tail: float = 1.0


# ------------------------------------------------------------- (1) pipelining
async def pipeline(spec: AttackSpec, deadline: float) -> dict[str, Any]:
    """Pipelined ``GET /metrics`` and ``GET /health`` as fast as the engine takes them,
    never reading a response (``connections`` connections, ``max_bytes`` each)."""
    loop = asyncio.get_running_loop()
    pair = http_request("GET", "/metrics") + http_request("GET", "/health")
    chunk = pair * 512
    limit = int(spec.params.get("max_bytes", 512 << 20))
    n = int(spec.params.get("connections", 2))

    async def one(i: int) -> dict[str, Any]:
        conn = await connect(
            spec.port, spec.sources[i % len(spec.sources)], keep=0, count_http=True
        )
        conn.stop_reading()
        sent = 0
        while sent < limit and await conn.writable(deadline):
            conn.write(chunk)
            sent += len(chunk)
        closed_during = conn.closed.is_set()
        conn.start_reading()  # now see what the engine kept for us
        tail = loop.time() + spec.tail
        while not conn.closed.is_set() and await conn.wait_data(tail):
            pass
        conn.abort()
        return {
            "bytes_sent": sent,
            "requests_sent": sent // len(pair) * 2,
            "closed_by_engine_during_attack": closed_during and conn.peer_closed,
            "bytes_read_after": conn.received,
            "statuses_read_after": dict(conn.statuses),
        }

    conns = await asyncio.gather(*(one(i) for i in range(n)))
    mib = sum(c["bytes_sent"] for c in conns) / (1 << 20)
    reqs = sum(c["requests_sent"] for c in conns)
    answers = sum(sum(c["statuses_read_after"].values()) for c in conns)
    closed = sum(1 for c in conns if c["closed_by_engine_during_attack"])
    return {
        "summary": f"{mib:.1f} MiB ({reqs:,} requests) on {n} conns; "
        f"{closed} closed by engine; {answers:,} answers read after",
        "connections": conns,
    }


# ------------------------------------------------------------- (4) slowloris
_SLOW_KINDS = ("header", "body", "request-line", "ws-upgrade")


async def slowloris(spec: AttackSpec, deadline: float) -> dict[str, Any]:
    """``connections`` requests that never finish: a header, a body byte or a byte of
    the request line every ``interval`` s."""
    loop = asyncio.get_running_loop()
    n = int(spec.params.get("connections", 200))
    interval = float(spec.params.get("interval", 1.0))
    outcomes: dict[str, Counter[str]] = {k: Counter() for k in _SLOW_KINDS}
    lifetimes: list[float] = []

    async def one(i: int) -> None:
        kind = _SLOW_KINDS[i % len(_SLOW_KINDS)]
        try:
            conn = await connect(spec.port, spec.sources[i % len(spec.sources)], count_http=True)
        except OSError as exc:
            outcomes[kind][f"connect {type(exc).__name__}"] += 1
            return
        opened = loop.time()
        if kind == "header":
            first, piece = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"X-Slow: %d\r\n"
        elif kind == "body":
            first = http_request("POST", "/health", b"Content-Length: 65536\r\n")
            piece = b"a"
        elif kind == "request-line":
            first, piece = b"GET /hea", b"l"
        else:
            first, piece = ws_upgrade_request(spec.path, spec.port)[:-2], b"X-Slow: %d\r\n"
        conn.write(first)
        tick = 0
        while not conn.closed.is_set() and loop.time() < deadline and tick < 10_000:
            wake = min(deadline, loop.time() + interval * (0.75 + 0.5 * (i % 7) / 7))
            if await conn.wait_data(wake):
                continue  # an answer or the close: look again
            tick += 1
            conn.write(piece % tick if b"%d" in piece else piece)
        # Give a header timeout that ends just after the attack the time to show.
        while not conn.closed.is_set() and await conn.wait_data(deadline + spec.tail):
            pass
        if conn.peer_closed:
            status = ",".join(str(s) for s in sorted(conn.statuses)) or "no status"
            outcomes[kind][f"closed ({status})"] += 1
            lifetimes.append(loop.time() - opened)
        else:
            outcomes[kind]["still open"] += 1
        conn.abort()

    await asyncio.gather(*(one(i) for i in range(n)))
    total: Counter[str] = Counter()
    for counts in outcomes.values():
        total.update(counts)
    longest = f"; closed after ≤ {max(lifetimes):.1f} s" if lifetimes else ""
    return {
        "summary": f"{n} slow requests: {top(total)}{longest}",
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "seconds_to_close": sorted(lifetimes),
    }


# ------------------------------------------------------------- (7) connection flood
async def conn_flood(spec: AttackSpec, deadline: float) -> dict[str, Any]:
    """Up to ``total`` connections from every source address, held open: half
    WebSocket upgrades, a quarter idle TCP, a quarter idle keep-alive HTTP."""
    loop = asyncio.get_running_loop()
    total = int(spec.params.get("total", 2000))
    gate = asyncio.Semaphore(int(spec.params.get("concurrency", 64)))
    outcomes: dict[str, Counter[str]] = {
        "websocket": Counter(),
        "idle": Counter(),
        "http": Counter(),
    }
    held: list[RawConn] = []
    peak = 0

    async def one(i: int) -> None:
        kind = ("websocket", "websocket", "idle", "http")[i % 4]
        async with gate:
            if loop.time() >= deadline:
                return
            try:
                # Every address gets every kind: i % 4 picks the kind, i // 4 the address.
                source = spec.sources[(i // 4) % len(spec.sources)]
                conn = await connect(spec.port, source, keep=4096)
            except OSError as exc:
                outcomes[kind][f"connect {type(exc).__name__}"] += 1
                return
            held.append(conn)
            if kind == "idle":
                outcomes[kind]["connected"] += 1
                return
            if kind == "websocket":
                conn.write(ws_upgrade_request(spec.path, spec.port))
            else:
                conn.write(http_request("GET", "/health"))
            status = await read_head(conn, min(deadline, loop.time() + 5))
            outcomes[kind][str(status) if status else "no answer"] += 1
            # Keep reading (``keep`` bounds what is kept): so we see the engine close.

    async def count() -> None:
        nonlocal peak
        while loop.time() < deadline:
            peak = max(peak, sum(1 for c in held if c.open))
            await asyncio.sleep(0.1)

    counter = loop.create_task(count())
    await asyncio.gather(*(one(i) for i in range(total)))
    await asyncio.sleep(max(0.0, deadline - loop.time()))  # hold them to the end
    await counter
    open_at_end = sum(1 for c in held if c.open)
    closed = sum(1 for c in held if c.peer_closed)
    for conn in held:
        conn.abort()
    ws = outcomes["websocket"]
    return {
        "summary": f"{len(held):,}/{total:,} connected, peak {peak:,} open; "
        f"upgrades {top(ws, 3)}; {closed:,} closed by engine",
        "attempted": total,
        "connected": len(held),
        "peak_open": peak,
        "open_at_end": open_at_end,
        "closed_by_engine": closed,
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
    }


# ------------------------------------------------------------- (8) smuggling
_SMUGGLED = http_request("GET", "/metrics")
_CHUNKED = b"0\r\n\r\n" + _SMUGGLED


def _smuggling_variants() -> dict[str, bytes]:
    def post(headers: bytes, body: bytes) -> bytes:
        return http_request("POST", "/health", headers, body)

    te_cl_body = b"5\r\nhello\r\n0\r\n\r\n" + _SMUGGLED
    n = str(len(_CHUNKED)).encode()
    return {
        "cl-te": post(b"Content-Length: " + n + b"\r\nTransfer-Encoding: chunked\r\n", _CHUNKED),
        "te-cl": post(b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", te_cl_body),
        "te-te": post(
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\nContent-Length: " + n + b"\r\n",
            _CHUNKED,
        ),
        "te-list": post(
            b"Transfer-Encoding: gzip, chunked\r\nContent-Length: " + n + b"\r\n", _CHUNKED
        ),
        "te-space-colon": post(
            b"Transfer-Encoding : chunked\r\nContent-Length: " + n + b"\r\n", _CHUNKED
        ),
        "cl-cl": post(b"Content-Length: 5\r\nContent-Length: " + n + b"\r\n", _CHUNKED),
        "cl-list": post(b"Content-Length: 5, " + n + b"\r\n", _CHUNKED),
        "cl-plus": post(b"Content-Length: +" + n + b"\r\n", _CHUNKED),
        "bare-lf": (
            b"POST /health HTTP/1.1\nHost: 127.0.0.1\nContent-Length: "
            + n
            + b"\nTransfer-Encoding: chunked\n\n"
            + _CHUNKED
        ),
        "chunk-overflow": post(
            b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff1\r\n" + b"a" * 64 + b"\r\n"
        ),
    }


async def smuggling(spec: AttackSpec, deadline: float) -> dict[str, Any]:
    """Ambiguous request framing (RFC 9112 §6.1, §6.3): each variant on a fresh
    connection; wanted: 400 (or 501) and the connection closed, never a second answer."""
    loop = asyncio.get_running_loop()
    variants = _smuggling_variants()
    names = list(variants)
    limit = int(spec.params.get("max_attempts", 5000))
    outcomes: dict[str, Counter[str]] = {k: Counter() for k in names}
    attempts = 0

    async def one(name: str, source: str) -> None:
        try:
            conn = await connect(spec.port, source, keep=0, count_http=True)
        except OSError as exc:
            outcomes[name][f"connect {type(exc).__name__}"] += 1
            return
        conn.write(variants[name])
        wait = min(deadline + spec.tail, loop.time() + 1.0)
        while not conn.statuses and not conn.closed.is_set() and await conn.wait_data(wait):
            pass
        # After the first answer: a second one (smuggled) or the close, within 0.3 s.
        wait = min(wait, loop.time() + 0.3)
        while sum(conn.statuses.values()) < 2 and not conn.closed.is_set():
            if not await conn.wait_data(wait):
                break
        statuses = "+".join(str(s) for s in sorted(conn.statuses.elements())) or "no answer"
        ending = "closed" if conn.peer_closed else "kept open"
        smuggled = " SMUGGLED" if sum(conn.statuses.values()) > 1 else ""
        outcomes[name][f"{statuses} {ending}{smuggled}"] += 1
        conn.abort()

    async def worker(w: int) -> None:
        nonlocal attempts
        while attempts < limit and loop.time() < deadline:
            name = names[attempts % len(names)]
            attempts += 1
            await one(name, spec.sources[w % len(spec.sources)])

    await asyncio.gather(*(worker(w) for w in range(int(spec.params.get("concurrency", 8)))))
    # 501 (a transfer coding it does not know, RFC 9112 §6.1) and close is a refusal too.
    refused = ("400 closed", "413 closed", "501 closed")
    bad = sorted(name for name, c in outcomes.items() if any(k not in refused for k in c))
    total: Counter[str] = Counter()
    for counts in outcomes.values():
        total.update(counts)
    return {
        "summary": f"{attempts:,} requests: {top(total, 2)}; not refused: "
        + (", ".join(bad) if bad else "none"),
        "attempts": attempts,
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "variants_not_refused": bad,
    }


# ------------------------------------------------------------- (9) bad tokens
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256(header: dict[str, Any], claims: dict[str, Any], key: str) -> str:
    """A token PyJWT refuses to sign (a PEM as the HMAC key), signed by hand."""
    signing = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    mac = hmac.new(key.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(mac)}"


def _token_variants(params: dict[str, Any]) -> dict[str, str]:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + 3600}
    kid = str(params["kid"])
    secret = str(params["secret"])
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    body = _b64(json.dumps(claims).encode())
    return {
        "garbage": "not-a-token",
        "alg-none": _b64(b'{"alg":"none","typ":"JWT"}') + f".{body}.",
        "wrong-secret": jwt.encode(claims, "not-the-secret-" + os.urandom(16).hex(), "HS256"),
        "es256-rsa-kid": _b64(json.dumps({"alg": "ES256", "kid": kid}).encode())
        + f".{body}.{_b64(os.urandom(64))}",
        "rs256-foreign-key": jwt.encode(claims, foreign, "RS256", headers={"kid": kid}),
        # HS256 keyed with the engine's own (public) JWKS key: RS/HS confusion.
        "hs256-key-confusion": _hs256(
            {"alg": "HS256", "kid": kid, "typ": "JWT"}, claims, str(params["public_pem"])
        ),
        "oversized": _b64(os.urandom(9000)),
        # Not an outsider's forgeries: a stale token and one that never expires.
        "expired": jwt.encode({**claims, "exp": now - 3600}, secret, "HS256"),
        "no-exp": jwt.encode({"sub": "alice", "iat": now}, secret, "HS256"),
    }


async def bad_tokens(spec: AttackSpec, deadline: float) -> dict[str, Any]:
    """Forged, broken and mismatched tokens on an ``auth=True`` HTTP action (bearer
    and ``?token=``) and on the service's WebSocket upgrade; wanted: 401 every time."""
    loop = asyncio.get_running_loop()
    tokens = _token_variants(spec.params)
    route = str(spec.params["route"])
    ways: dict[str, Callable[[str], bytes]] = {
        "http-bearer": lambda t: http_request(
            "GET", route, b"Authorization: Bearer " + t.encode() + b"\r\n"
        ),
        "http-query": lambda t: http_request("GET", f"{route}?token={t}"),
        "ws-query": lambda t: ws_upgrade_request(f"{spec.path}?token={t}", spec.port),
        "ws-bearer": lambda t: ws_upgrade_request(
            spec.path, spec.port, b"Authorization: Bearer " + t.encode() + b"\r\n"
        ),
    }
    cases = [(name, way) for name in tokens for way in ways]
    limit = int(spec.params.get("max_attempts", 20_000))
    outcomes: dict[str, Counter[str]] = {name: Counter() for name in tokens}
    attempts = 0

    async def one(name: str, way: str, source: str) -> None:
        try:
            conn = await connect(spec.port, source, keep=64 * 1024)
        except OSError as exc:
            outcomes[name][f"connect {type(exc).__name__}"] += 1
            return
        conn.write(ways[way](tokens[name]))
        status = await read_head(conn, min(deadline + spec.tail, loop.time() + 2))
        outcomes[name][str(status) if status else "no answer"] += 1
        conn.abort()

    async def worker(w: int) -> None:
        nonlocal attempts
        while attempts < limit and loop.time() < deadline:
            name, way = cases[attempts % len(cases)]
            attempts += 1
            await one(name, way, spec.sources[w % len(spec.sources)])

    await asyncio.gather(*(worker(w) for w in range(int(spec.params.get("concurrency", 4)))))
    total: Counter[str] = Counter()
    for counts in outcomes.values():
        total.update(counts)
    # 429: a per-address limit refused the upgrade before its token was looked at
    # (caps come first: a flood costs no signature checks). Refused either way.
    not_401 = sorted(name for name, c in outcomes.items() if set(c) - {"401", "429"})
    return {
        "summary": f"{attempts:,} requests: {top(total)}; not 401/429: "
        + (", ".join(not_401) if not_401 else "none"),
        "attempts": attempts,
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "variants_not_401": not_401,
        # For the orchestrator's look through the engine log: what must never be there.
        "secrets": [t.rsplit(".", 1)[-1] or t for t in tokens.values() if len(t) > 16],
    }


ATTACKS: dict[str, Callable[[AttackSpec, float], Awaitable[dict[str, Any]]]] = {
    "pipeline": pipeline,
    "fragments": fragments,
    "ping-flood": ping_flood,
    "slowloris": slowloris,
    "garbage": garbage,
    "slow-reader": slow_reader,
    "conn-flood": conn_flood,
    "smuggling": smuggling,
    "bad-tokens": bad_tokens,
}


async def _main(spec: AttackSpec, go: Event, out: Connection) -> dict[str, Any]:
    out.send({"ready": os.getpid()})
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    while not go.is_set():
        if time.monotonic() - started > 60:
            raise TimeoutError("never told to start")
        await asyncio.sleep(0.01)
    deadline = loop.time() + spec.duration
    # The hard stop: an attack that overran its tail is cut off here.
    async with asyncio.timeout(spec.duration + 4 * spec.tail + 5):
        result = await ATTACKS[spec.attack](spec, deadline)
    result["seconds"] = loop.time() - (deadline - spec.duration)
    result["cpu_s"] = time.process_time()
    return result


def attack_process(spec: AttackSpec, go: Event, out: Connection) -> None:
    """Entry point of one attacker process (spawned)."""
    if spec.cpu is not None:
        os.sched_setaffinity(0, {spec.cpu})
    if spec.nice:
        os.nice(spec.nice)  # the well-behaved clients share this core and come first
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        result = uvloop.run(_main(spec, go, out))
    except BaseException as exc:  # the orchestrator records it and goes on
        out.send({"failed": f"{type(exc).__name__}: {exc}", "summary": f"failed: {exc}"})
        raise
    out.send(result)
