"""Hostile HTTP clients on real sockets: what one client sends (or does not read) cannot
hurt another, leak a secret into the log, or leave anyone without an answer.

- pipelining without reading: bounded buffers, TCP backpressure, a send timeout;
- framing that could smuggle a request (Content-Length with Transfer-Encoding);
- responses h11 refuses (CR/LF in a header, 1xx status): 502, never silence;
- credentials in the request target: redacted from the access log;
- HTTP connections hold a ``--max-connections`` slot; a per-address request rate.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from engine import Config, Engine
from engine.api.endpoint import WebSocketEndpoint
from engine.api.request import Request, Response
from engine.http.protocol import HttpProtocol
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import HttpResponse, RawHttp, build_request
from tests.helpers.raw_ws import RawWs, encode_client_frame
from tests.helpers.server import make_config, running_engine

pytestmark = pytest.mark.asyncio

KiB = 1024
JWT_SECRET = "a-development-secret-of-32-bytes!"
TOKEN_SECRET = "s3cr3t-t0ken-value-9f2a"
UPGRADE = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.005)


def only_connection(engine: Engine) -> HttpProtocol:
    (proto,) = engine.state.http_connections
    return proto


async def open_raw(port: int, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, Any]:
    """A connection whose receive buffer can be made tiny (set before connect)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**24)
    return reader, writer


async def read_all_responses(reader: asyncio.StreamReader, n: int) -> list[int]:
    """Statuses of ``n`` responses with a content-length body (parsed from raw chunks)."""
    statuses: list[int] = []
    buf = b""
    while len(statuses) < n:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 10)
        assert chunk, f"EOF after {len(statuses)} responses"
        buf += chunk
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].decode("latin-1")
            length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            if len(buf) < end + 4 + length:
                break
            statuses.append(int(head.split(" ", 2)[1]))
            buf = buf[end + 4 + length :]
    return statuses


# ====================================================== 1. write backpressure
PAGE = b"p" * (16 * KiB)


def paged_engine(**overrides: Any) -> Engine:
    """An engine with ``GET /page``: 16 KiB answers fill kernel buffers quickly."""

    async def page(request: Request) -> Response:
        return Response(200, [("content-type", "text/plain")], PAGE)

    engine = Engine(make_config(http_rate=0, **overrides))
    engine.route("GET", "/page", page)
    return engine


async def test_pipelining_client_that_never_reads_is_held_at_bounded_buffers() -> None:
    """Pipelined GETs for 32 MiB of answers, none read: the engine answers until its
    write buffer passes the high-water mark, then stops reading (the rest waits in
    the kernel). Once the client reads, every response arrives, in order."""
    count = 2000
    async with running_engine(paged_engine()) as engine:
        reader, writer = await open_raw(engine.port, rcvbuf=4096)
        try:
            writer.transport.pause_reading()  # the client reads nothing
            writer.write(build_request("GET", "/page") * count)
            await wait_until(lambda: len(engine.state.http_connections) == 1, 2, "accept")
            proto = only_connection(engine)
            await wait_until(lambda: proto.writing_paused, 5, "the engine to stop writing")
            transport = proto._transport
            assert transport is not None
            limits = engine.state.limits
            # Bounded: the high-water mark plus one response; one socket read in h11.
            assert transport.get_write_buffer_size() <= limits.write_high_water + len(PAGE) + 512
            assert proto._conn._buffered() <= 256 * KiB
            answered = sum(engine.metrics.http_requests.values())
            assert answered < count // 2
            # The loop is free: another client is answered while this one waits,
            # and the paused one takes nothing more meanwhile.
            async with RawHttp(engine.port) as other:
                resp = await other.request("GET", "/health", within=1.0)
                assert resp.status == 200
            assert sum(engine.metrics.http_requests.values()) == answered + 1
            writer.transport.resume_reading()
            statuses = await read_all_responses(reader, count)
            assert statuses == [200] * count
        finally:
            writer.close()
        await wait_until(lambda: not engine.state.http_connections, 2, "the close")
        assert engine.metrics.http_open == 0


async def test_client_that_reads_nothing_for_send_timeout_is_dropped() -> None:
    async with running_engine(paged_engine(send_timeout=0.3)) as engine:
        _reader, writer = await open_raw(engine.port, rcvbuf=4096)
        try:
            writer.transport.pause_reading()
            writer.write(build_request("GET", "/page") * 2000)
            await wait_until(lambda: len(engine.state.http_connections) == 1, 2, "accept")
            proto = only_connection(engine)
            await wait_until(lambda: proto.writing_paused, 5, "the engine to stop writing")
            paused_at = time.monotonic()
            await wait_until(lambda: not engine.state.http_connections, 3, "the drop")
            assert time.monotonic() - paused_at >= 0.2
            assert engine.metrics.http_open == 0
        finally:
            writer.close()


async def test_closing_connection_nobody_reads_is_dropped_after_close_timeout() -> None:
    """Once the engine closes (here: ``connection: close``), close_timeout bounds a
    peer that takes nothing, even while its buffer is over the mark."""
    blob = b"x" * (16 << 20)  # more than the kernel buffers can take

    async def big(request: Request) -> Response:
        return Response(200, [("content-type", "application/octet-stream")], blob)

    engine = Engine(make_config(close_timeout=0.3, http_rate=0))
    engine.route("GET", "/big", big)
    async with running_engine(engine):
        _reader, writer = await open_raw(engine.port, rcvbuf=4096)
        try:
            writer.transport.pause_reading()
            writer.write(build_request("GET", "/big", [("Connection", "close")]))
            await wait_until(lambda: len(engine.state.http_connections) == 1, 2, "accept")
            proto = only_connection(engine)
            await wait_until(lambda: proto.writing_paused, 5, "the engine to stop writing")
            # send_timeout is 30 s: only close_timeout can end it this soon.
            await wait_until(lambda: not engine.state.http_connections, 3, "the drop")
        finally:
            writer.close()


async def test_slow_reader_that_keeps_reading_is_not_dropped() -> None:
    """The send timeout measures time without progress, not the whole download."""
    big = b"x" * (512 * KiB)

    async def blob(request: Request) -> Response:
        return Response(200, [("content-type", "application/octet-stream")], big)

    engine = Engine(make_config(send_timeout=0.3, http_rate=0))
    engine.route("GET", "/blob", blob)
    async with running_engine(engine):
        reader, writer = await open_raw(engine.port, rcvbuf=4096)
        try:
            writer.write(build_request("GET", "/blob"))
            got = 0
            started = time.monotonic()
            while got < len(big):  # about 1.2 s in all, never silent for 0.3 s
                await asyncio.sleep(0.01)
                got += len(await reader.read(4 * KiB))
            assert time.monotonic() - started > 0.3
            writer.write(build_request("GET", "/health"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert b" 200 " in head.split(b"\r\n", 1)[0]
        finally:
            writer.close()


async def test_pipelined_requests_then_half_close_are_all_answered() -> None:
    async with running_engine() as engine, RawHttp(engine.port) as c:
        await c.send(build_request("GET", "/health") * 50 + build_request("GET", "/nowhere"))
        await c.send_eof()
        responses = await c.read_responses(51)
        assert [r.status for r in responses] == [200] * 50 + [404]
        await c.expect_eof(2.0)


# ============================================ 8. Content-Length + Transfer-Encoding
SMUGGLE = [
    pytest.param(
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\n",
        id="cl-then-te",
    ),
    pytest.param(
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n"
        b"\r\n0\r\n\r\n",
        id="te-then-cl",
    ),
    pytest.param(
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        id="duplicate-cl",
    ),
    pytest.param(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", id="cl-list"),
    pytest.param(
        b"POST /x HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        id="te-in-http10",
    ),
]


@pytest.mark.parametrize("smuggle", SMUGGLE)
async def test_ambiguous_framing_is_400_and_the_connection_closed(smuggle: bytes) -> None:
    async with running_engine() as engine, RawHttp(engine.port) as c:
        # A good request first, then the ambiguous one, then one that must never run.
        await c.send(build_request("GET", "/health") + smuggle + build_request("GET", "/smuggled"))
        first = await c.read_response()
        assert first.status == 200
        refused = await c.read_response()
        assert refused.status == 400
        assert refused.closes
        assert refused.json()["error"]["code"] == "BAD_REQUEST"
        await c.expect_eof(2.0)
    assert engine.metrics.http_requests.get(404, 0) == 0  # /smuggled never ran


async def test_chunk_size_past_the_body_limit_is_413_at_once() -> None:
    """A chunk of 2**68 bytes: refused when declared, not after the body timeout."""
    async with running_engine() as engine, RawHttp(engine.port) as c:
        await c.send(
            b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"ffffffffffffffff1\r\n" + b"a" * 64
        )
        refused = await c.read_response(within=1.0)
        assert refused.status == 413 and refused.closes
        await c.expect_eof(1.0)


# ====================================================== 3. unsendable responses
def bad_routes(engine: Engine) -> None:
    async def crlf(request: Request) -> Response:
        return Response(200, [("x-bad", "a\r\nSet-Cookie: injected=1")], b"")

    def crlf_sync(request: Request) -> Response:
        return Response(200, [("x-bad", "a\nb")], b"")

    async def informational(request: Request) -> Response:
        return Response(int(request.query or "100"), [], b"")

    async def wrong_length(request: Request) -> Response:
        return Response(200, [("content-length", "100")], b"short")

    async def not_latin1(request: Request) -> Response:
        return Response(200, [("x-snow", "\u2603")], b"")

    engine.route("GET", "/crlf", crlf)
    engine.route("GET", "/crlf-sync", crlf_sync)  # type: ignore[arg-type]
    engine.route("GET", "/informational", informational)
    engine.route("GET", "/wrong-length", wrong_length)
    engine.route("GET", "/not-latin1", not_latin1)


def http_gauge(text: str) -> float:
    match = re.search(r'^linkd_connections\{kind="http"\} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


def assert_502(resp: HttpResponse) -> None:
    assert resp.status == 502
    assert resp.closes
    assert resp.header("content-type") == "application/json"
    assert resp.header("x-bad") is None and b"injected" not in resp.raw
    assert resp.json() == {
        "error": {"code": "INTERNAL", "message": "the handler's response could not be sent"}
    }


@pytest.mark.parametrize(
    "target",
    [
        "/crlf",
        "/crlf-sync",
        "/informational?100",
        "/informational?101",
        "/informational?199",
        "/wrong-length",
        "/not-latin1",
    ],
)
async def test_unsendable_handler_response_is_502_and_the_connection_freed(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "linkd.http")
    engine = Engine(make_config())
    bad_routes(engine)
    async with running_engine(engine):
        async with RawHttp(engine.port) as c:
            # Pipelined behind it: a request that must not be served on a broken stream.
            await c.send(build_request("GET", target) + build_request("GET", "/health"))
            assert_502(await c.read_response(within=2.0))
            await c.expect_eof(2.0)  # closed by the engine, not left in CLOSE-WAIT
        await wait_until(lambda: engine.metrics.http_open == 0, 2, "the gauge to go down")
        async with RawHttp(engine.port) as c:
            resp = await c.request("GET", "/metrics")
            assert http_gauge(resp.body.decode()) == 1.0  # this one only
        assert 'status="502"' in resp.body.decode()
    lines = [r for r in caplog.records if "could not be sent" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None  # one line, no traceback


async def test_unsendable_upgrade_refusal_is_502() -> None:
    class Picky(WebSocketEndpoint):
        def reject_upgrade(self, request: Request) -> Response | None:
            return Response(403, [("x-why", "no\r\nevil: 1")], b"")

    async with running_engine() as engine:
        engine.websocket("/picky", Picky())
        async with RawHttp(engine.port) as c:
            await c.send(build_request("GET", "/picky", UPGRADE))
            resp = await c.read_response(within=2.0)
            assert resp.status == 502 and b"evil" not in resp.raw
            await c.expect_eof(2.0)
        await wait_until(lambda: engine.metrics.http_open == 0, 2, "the gauge to go down")


async def test_raising_upgrade_hook_is_500_not_silence() -> None:
    class Broken(WebSocketEndpoint):
        def select_subprotocol(self, offered: Sequence[str]) -> str | None:
            return "not-offered"  # validate_upgrade raises ValueError

    async with running_engine() as engine:
        engine.websocket("/broken", Broken())
        async with RawWs(engine.port, "/broken", headers=[("Sec-WebSocket-Protocol", "a")]) as ws:
            assert ws.status == 500
            assert orjson.loads(ws.response_body)["error"]["code"] == "INTERNAL"
        async with RawHttp(engine.port) as c:
            assert (await c.request("GET", "/health")).status == 200


# ================================================== 5. credentials in the log
def hs(claims: dict[str, Any] | None = None) -> str:
    base = {"sub": "u1", "exp": int(time.time()) + 600}
    return jwt.encode({**base, **(claims or {})}, JWT_SECRET, algorithm="HS256")


AUTH_REG = m.Registration(
    "svc",
    http=[m.HttpRoute("me", "GET", "/svc/me", auth="required")],
    ws=m.WsRoute("/ws/svc", catch_all=True, auth="required"),
)


@asynccontextmanager
async def logged_engine(tmp_path: Path) -> AsyncIterator[Engine]:
    ipc = short_socket_path(tmp_path)
    async with (
        running_engine(access_log=True, jwt_secret=JWT_SECRET, ipc_path=ipc) as engine,
        FakeWorker(ipc, AUTH_REG) as worker,
    ):

        async def http(worker: FakeWorker, request: m.HttpRequest) -> m.Reply:
            return reply_json(request, {"ok": True})

        worker.on("http", http)
        await worker.start()
        yield engine


async def test_credentials_never_reach_the_access_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "linkd.access")
    good = hs()
    async with logged_engine(tmp_path) as engine:
        async with RawHttp(engine.port) as c:
            # 200, 401 and 404 on HTTP actions and engine endpoints.
            assert (await c.request("GET", f"/svc/me?token={good}&x=1")).status == 200
            assert (await c.request("GET", f"/svc/me?token={TOKEN_SECRET}")).status == 401
            assert (await c.request("GET", f"/health?access_token={TOKEN_SECRET}")).status == 200
            nowhere = f"/nowhere?a=1&API_KEY={TOKEN_SECRET}&password={TOKEN_SECRET}"
            assert (await c.request("GET", nowhere)).status == 404
            encoded = f"/nowhere?%74oken={TOKEN_SECRET}&sig={TOKEN_SECRET}"
            assert (await c.request("GET", encoded)).status == 404
        # WebSocket upgrades: 101, 401 and 404.
        async with RawWs(engine.port, f"/ws/svc?token={good}") as ws:
            assert ws.status == 101
        async with RawWs(engine.port, f"/ws/svc?token={TOKEN_SECRET}") as ws:
            assert ws.status == 401
        async with RawWs(engine.port, f"/ws/none?jwt={TOKEN_SECRET}") as ws:
            assert ws.status == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "linkd.access"]
    assert len(lines) == 8, lines
    for line in lines:
        assert TOKEN_SECRET not in line and good not in line, line
    assert '"GET /svc/me?token=[redacted]&x=1 HTTP/1.1" 200' in lines[0]
    assert '"GET /svc/me?token=[redacted] HTTP/1.1" 401' in lines[1]
    assert "/health?access_token=[redacted] " in lines[2]
    assert "/nowhere?a=1&API_KEY=[redacted]&password=[redacted] " in lines[3]
    assert "/nowhere?%74oken=[redacted]&sig=[redacted] " in lines[4]
    assert '"GET /ws/svc?token=[redacted] HTTP/1.1" 101' in lines[5]
    assert "401" in lines[6] and "404" in lines[7]


# ============================================ 10a. HTTP connections hold a slot
async def test_http_connections_count_toward_max_connections() -> None:
    async with running_engine(max_connections=2) as engine:
        async with RawHttp(engine.port) as a, RawHttp(engine.port) as b:
            assert (await a.request("GET", "/health")).status == 200
            assert (await b.request("GET", "/health")).status == 200
            async with RawHttp(engine.port) as c:
                refused = await c.request("GET", "/health")
                assert refused.status == 503
                assert refused.closes and refused.header("retry-after") == "5"
                assert refused.json()["error"]["code"] == "OVERLOADED"
                await c.expect_eof(2.0)
            # The two holders are untouched.
            assert (await a.request("GET", "/health")).status == 200
        await wait_until(lambda: engine.metrics.http_open == 0, 2, "both to close")
        async with RawHttp(engine.port) as d:
            assert (await d.request("GET", "/health")).status == 200
        assert engine.metrics.ws_refused["global"] == 1


async def test_over_the_cap_a_silent_connection_is_refused_at_once() -> None:
    # A flood of idle TCP connections must not sit for a header timeout each: over
    # the cap the 503 and the FIN come before any request, and nothing is kept.
    async with (
        running_engine(max_connections=1, header_timeout=30.0) as engine,
        RawHttp(engine.port) as holder,
    ):
        assert (await holder.request("GET", "/health")).status == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with RawHttp(engine.port) as idle:
            refused = await idle.read_response()  # sent nothing
            assert refused.status == 503 and refused.closes
            assert refused.json()["error"]["code"] == "OVERLOADED"
            await idle.expect_eof(2.0)
        assert loop.time() - started < 1.0
        await wait_until(lambda: engine.metrics.http_open == 1, 2, "the refused one gone")
        assert (await holder.request("GET", "/health")).status == 200


async def test_upgrade_keeps_the_slot_of_its_http_connection() -> None:
    async with running_engine(max_connections=1) as engine:
        async with RawHttp(engine.port) as c:
            # Requests, then the upgrade on the same connection: one slot all along.
            assert (await c.request("GET", "/health")).status == 200
            await c.send(build_request("GET", "/echo", UPGRADE))
            assert (await c.read_response()).status == 101
            assert len(engine.state.ws_connections) == 1 and engine.metrics.http_open == 0
            await c.send(encode_client_frame(0x1, b"still one slot"))
            assert await c.reader.readexactly(16) == b"\x81\x0estill one slot"
            # The slot is taken: a second connection is refused, by its first request.
            refused = RawWs(engine.port, "/echo")
            assert await refused.connect() == 503
            await refused.__aexit__(None, None, None)
        await wait_until(lambda: not engine.state.ws_connections, 2, "the WebSocket to close")
        async with RawWs(engine.port, "/echo") as again:
            assert again.status == 101


# ============================================== 10b. per-address request rate
async def test_per_address_http_rate_is_429_with_retry_after() -> None:
    async with (
        running_engine(http_rate=2.0, http_burst=3.0) as engine,
        RawHttp(engine.port) as a,
        RawHttp(engine.port) as b,
    ):
        # The budget is the address's, whichever connection spends it.
        assert (await a.request("GET", "/health")).status == 200
        assert (await b.request("GET", "/health")).status == 200
        assert (await a.request("GET", "/nowhere")).status == 404
        refused = await b.request("GET", "/health")
        assert refused.status == 429
        assert refused.header("retry-after") == "1"
        error = refused.json()["error"]
        assert error["code"] == "RATE_LIMITED" and 0 < error["retryAfter"] <= 0.5
        assert not refused.closes  # a keep-alive client may simply wait
        # An upgrade is a request too.
        ws = RawWs(engine.port, "/echo")
        assert await ws.connect() == 429
        await ws.__aexit__(None, None, None)
        await asyncio.sleep(error["retryAfter"])
        assert (await b.request("GET", "/health")).status == 200


async def test_default_http_rate_lets_a_busy_client_through() -> None:
    defaults = Config()
    assert defaults.http_rate > 0 and defaults.http_burst >= defaults.http_rate
    async with (
        running_engine(http_rate=defaults.http_rate, http_burst=defaults.http_burst) as engine,
        RawHttp(engine.port) as c,
    ):
        await c.send(build_request("GET", "/health") * 500)
        assert [r.status for r in await c.read_responses(500)] == [200] * 500


async def test_over_rate_refusals_are_counted_and_logged_sparingly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "linkd.http")
    async with running_engine(http_rate=1.0, http_burst=1.0) as engine:
        async with RawHttp(engine.port) as c:
            await c.send(build_request("GET", "/health") * 40)
            statuses = [r.status for r in await c.read_responses(40)]
        assert statuses == [200] + [429] * 39
    lines = [r.getMessage() for r in caplog.records if "HTTP request rate" in r.getMessage()]
    assert 1 <= len(lines) <= 6
    assert "127.0.0.1" in lines[0] and "--http-rate" in lines[0]


async def test_worker_reply_http_cannot_carry_is_502_from_a_real_worker() -> None:
    """A real engine process and a real SDK worker process (``badreply``)."""
    from tests.integration.support import demo_engine

    with demo_engine(services=("tests.helpers.services.badreply",)) as eng:
        for target in ("/badreply/crlf", "/badreply/informational"):
            async with RawHttp(eng.port) as c:
                await c.send(build_request("GET", target) + build_request("GET", "/health"))
                resp = await c.read_response(within=5.0)
                assert resp.status == 502, target
                assert resp.closes and b"stolen" not in resp.raw
                assert resp.json()["error"]["code"] == "INTERNAL"
                await c.expect_eof(2.0)
        # The SDK refused the response in the handler: its author's bug, a 500.
        async with RawHttp(eng.port) as c:
            resp = await c.request("GET", "/badreply/refused")
            assert resp.status == 500 and resp.json()["error"]["code"] == "INTERNAL"
            assert (await c.request("GET", "/badreply/ok")).status == 200
        metrics = await eng.ametrics()
        assert metrics['linkd_connections{kind="http"}'] == 1.0  # the scrape's own
        assert metrics['linkd_http_requests_total{status="502"}'] == 2.0
        assert "session=stolen" not in eng.output()
