"""Behind a balancer: ``--proxy-protocol`` and ``--trusted-proxies`` on real sockets,
then through a real HAProxy (``send-proxy-v2``) and a real nginx (WebSocket upgrade
with ``X-Forwarded-For``), both from Debian's packages, on 127.0.0.1 only.

The client's address is read back where the engine uses it: what an HTTP handler
gets as ``Request.remote``, what a WebSocket endpoint gets as ``ws.remote`` (the
``remote`` the IPC Connect message carries to a worker), the access log and a
per-address cap that trips for 127.0.0.2 but not for 127.0.0.3.

A missing haproxy or nginx fails these tests (scripts/test.sh installs both);
``LINKD_ALLOW_SKIP=1`` turns that into a skip.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from engine import Engine, WebSocket
from engine.api.endpoint import WebSocketEndpoint
from engine.api.request import Request, Response
from engine.cli.build import load_settings
from tests.helpers.http_client import build_request
from tests.helpers.proc import free_port
from tests.helpers.server import make_config, running_engine
from tests.integration.support import demo_engine

pytestmark = pytest.mark.asyncio

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


async def whoami(request: Request) -> Response:
    assert request.remote is not None
    return Response.json({"host": request.remote[0], "port": request.remote[1]})


class Recorder(WebSocketEndpoint):
    """Remembers the ``remote`` of every WebSocket it accepts."""

    def __init__(self) -> None:
        self.remotes: list[tuple[str, int] | None] = []

    def on_connect(self, ws: WebSocket) -> None:
        self.remotes.append(ws.remote)


def app(**overrides: Any) -> tuple[Engine, Recorder]:
    overrides.setdefault("access_log", True)
    engine = Engine(make_config(**overrides))
    engine.route("GET", "/whoami", whoami)
    recorder = Recorder()
    engine.websocket("/ws", recorder)
    return engine, recorder


def v2_header(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 3000) -> bytes:
    payload = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(payload)) + payload


class Client:
    """One raw TCP connection from a chosen source address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0), limit=2**20
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 5) if length else b""
        return int(status_line.split()[1]), headers, body

    async def get(self, path: str, headers: list[tuple[str, str]] | None = None) -> Any:
        await self.send(build_request("GET", path, headers))
        status, _, body = await self.response()
        assert status == 200, (status, body)
        return orjson.loads(body)

    async def upgrade(self, path: str = "/ws", headers: list[tuple[str, str]] | None = None) -> int:
        key = base64.b64encode(os.urandom(16)).decode()
        ws_headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
            *(headers or []),
        ]
        await self.send(build_request("GET", path, ws_headers))
        status, _, _ = await self.response()
        return status

    async def eof(self, within: float = 5.0) -> bytes:
        """Everything until the server closes (a reset counts as a close)."""
        data = b""
        try:
            while chunk := await asyncio.wait_for(self.reader.read(65536), within):
                data += chunk
        except ConnectionResetError:
            pass
        return data

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


# ------------------------------------------------------------ PROXY protocol, raw
async def test_proxy_v1_and_v2_give_the_client_address(caplog: pytest.LogCaptureFixture) -> None:
    engine, _ = app(proxy_protocol=True)
    caplog.set_level(logging.INFO, "linkd.access")
    async with running_engine(engine):
        c = await Client.open(engine.port)
        await c.send(b"PROXY TCP4 198.51.100.7 127.0.0.1 40001 3000\r\n")
        assert await c.get("/whoami") == {"host": "198.51.100.7", "port": 40001}
        # Keep-alive: the header is read once, the next request keeps its address.
        assert await c.get("/whoami") == {"host": "198.51.100.7", "port": 40001}
        await c.close()
        # v2 split across writes, the request in the same segment as its end.
        c = await Client.open(engine.port)
        header = v2_header("203.0.113.9", 40002)
        await c.send(header[:7])
        await asyncio.sleep(0.05)
        await c.send(header[7:] + build_request("GET", "/whoami"))
        status, _, body = await c.response()
        assert (status, orjson.loads(body)) == (200, {"host": "203.0.113.9", "port": 40002})
        await c.close()
    assert any(r.getMessage().startswith("198.51.100.7 ") for r in caplog.records)
    assert any(r.getMessage().startswith("203.0.113.9 ") for r in caplog.records)


async def test_proxy_local_and_unknown_keep_the_socket_address() -> None:
    engine, _ = app(proxy_protocol=True)
    async with running_engine(engine):
        c = await Client.open(engine.port, "127.0.0.4")
        await c.send(V2_SIGNATURE + b"\x20\x00\x00\x00")  # LOCAL: the balancer's check
        assert (await c.get("/whoami"))["host"] == "127.0.0.4"
        await c.close()
        c = await Client.open(engine.port, "127.0.0.5")
        await c.send(b"PROXY UNKNOWN\r\n")
        assert (await c.get("/whoami"))["host"] == "127.0.0.5"
        await c.close()


@pytest.mark.parametrize(
    "data",
    [b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"],
    ids=["plain-http", "malformed"],
)
async def test_without_a_valid_header_the_connection_is_closed_unanswered(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    engine, _ = app(proxy_protocol=True)
    async with running_engine(engine):
        c = await Client.open(engine.port)
        await c.send(data)
        assert await c.eof() == b""  # not one byte: the peer is not the balancer
        await c.close()
        assert engine.state.metrics.ws_refused.get("proxy_header") == 1
    assert any("PROXY" in r.getMessage() for r in caplog.records if r.name == "linkd.http")


async def test_header_must_arrive_within_the_header_timeout() -> None:
    engine, _ = app(proxy_protocol=True, header_timeout=0.3)
    async with running_engine(engine):
        c = await Client.open(engine.port)
        await c.send(b"PROXY TCP4 1.2.3.4")
        started = time.monotonic()
        assert await c.eof() == b""
        assert 0.2 < time.monotonic() - started < 3.0
        await c.close()
        assert engine.state.metrics.ws_refused.get("proxy_header") == 1


async def test_refusals_are_logged_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine, _ = app(proxy_protocol=True)
    async with running_engine(engine):
        caplog.clear()
        for _ in range(20):
            c = await Client.open(engine.port)
            await c.send(b"garbage\r\n")
            await c.eof()
            await c.close()
        assert engine.state.metrics.ws_refused.get("proxy_header") == 20
    lines = [r for r in caplog.records if "PROXY" in r.getMessage()]
    assert 1 <= len(lines) <= 3


async def test_proxy_address_feeds_the_per_address_cap_and_the_websocket() -> None:
    engine, recorder = app(proxy_protocol=True, max_connections_per_ip=1)
    async with running_engine(engine):
        first = await Client.open(engine.port)
        await first.send(v2_header("127.0.0.2", 1111))
        assert await first.upgrade() == 101
        second = await Client.open(engine.port)
        await second.send(v2_header("127.0.0.2", 2222))
        assert await second.upgrade() == 429  # the same client, whatever the TCP peer
        other = await Client.open(engine.port)
        await other.send(v2_header("127.0.0.3", 3333))
        assert await other.upgrade() == 101
        for c in (first, second, other):
            await c.close()
    assert recorder.remotes == [("127.0.0.2", 1111), ("127.0.0.3", 3333)]


# ------------------------------------------------------------ trusted proxies, raw
async def test_forwarded_for_is_believed_only_from_a_trusted_peer() -> None:
    engine, _ = app(trusted_proxies=("127.0.0.1", "10.0.0.0/8"))
    async with running_engine(engine):
        trusted = await Client.open(engine.port, "127.0.0.1")
        xff = [("X-Forwarded-For", "6.6.6.6, 203.0.113.9, 10.0.0.5")]
        assert await trusted.get("/whoami", xff) == {"host": "203.0.113.9", "port": 0}
        # Per request: the next one on the same connection without the header is the peer.
        assert (await trusted.get("/whoami"))["host"] == "127.0.0.1"
        garbage = [("X-Forwarded-For", "203.0.113.9, not-an-address")]
        assert (await trusted.get("/whoami", garbage))["host"] == "127.0.0.1"
        # Only the configured header: Forwarded is not read by default.
        assert (await trusted.get("/whoami", [("Forwarded", "for=6.6.6.6")]))["host"] == (
            "127.0.0.1"
        )
        await trusted.close()
        spoofer = await Client.open(engine.port, "127.0.0.3")
        spoofed = await spoofer.get("/whoami", [("X-Forwarded-For", "6.6.6.6")])
        assert spoofed["host"] == "127.0.0.3"
        await spoofer.close()


async def test_forwarded_header_rfc7239() -> None:
    engine, _ = app(trusted_proxies=("127.0.0.1",), forwarded_header="forwarded")
    async with running_engine(engine):
        c = await Client.open(engine.port)
        fwd = [("Forwarded", 'for="[2001:db8::7]:4711";proto=https')]
        assert await c.get("/whoami", fwd) == {"host": "2001:db8::7", "port": 4711}
        xff = [("X-Forwarded-For", "6.6.6.6")]
        assert (await c.get("/whoami", xff))["host"] == "127.0.0.1"
        await c.close()


async def test_proxy_protocol_with_tls_is_refused_at_start(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    with pytest.raises(ValueError, match="--proxy-protocol and --tls-cert"):
        make_config(proxy_protocol=True, tls_cert=str(cert), tls_key=str(key))
    with pytest.raises(SystemExit):
        load_settings(["--proxy-protocol", "--tls-cert", str(cert), "--tls-key", str(key)], {})
    with pytest.raises(SystemExit):
        load_settings(["--trusted-proxies", "10.0.0.0/33"], {})
    config = load_settings(
        ["--proxy-protocol", "--trusted-proxies", "10.0.0.0/8, ::1"],
        {"LINKD_FORWARDED_HEADER": "forwarded"},
    ).config
    assert config.proxy_protocol
    assert config.trusted_proxies == ("10.0.0.0/8", "::1")
    assert config.forwarded_header == "forwarded"


# ----------------------------------------------------------- real HAProxy and nginx
def need(binary: str) -> str:
    """The binary's path; fails (or skips with LINKD_ALLOW_SKIP=1) when it is missing."""
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/sbin/{binary}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{binary} is not installed (apt-get install {binary}; scripts/test.sh does)"
        if os.environ.get("LINKD_ALLOW_SKIP") == "1":
            pytest.skip(message)
        pytest.fail(message)
    return path


def haproxy_config(front: int, engine_port: int) -> str:
    """The snippet of docs/deployment.md, on test ports."""
    return f"""\
global
    maxconn 1000

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend linkd
    bind 127.0.0.1:{front}
    default_backend linkd_engines

backend linkd_engines
    server engine1 127.0.0.1:{engine_port} send-proxy-v2
"""


def nginx_config(prefix: Path, front: int, engine_port: int) -> str:
    """The snippet of docs/deployment.md (the http block), on test ports, run as
    the current user in the foreground with everything under ``prefix``."""
    return f"""\
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    upstream linkd {{
        server 127.0.0.1:{engine_port};
    }}

    server {{
        listen 127.0.0.1:{front};

        location / {{
            proxy_pass http://linkd;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
        }}
    }}
}}
"""


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} not listening on {port}:\n{log.read_text()}")


@asynccontextmanager
async def foreground(cmd: list[str], port: int, log: Path) -> AsyncIterator[None]:
    """Run a proxy in the foreground until the block ends, then kill it (the wait
    for its port in a thread: the in-process engine keeps running meanwhile)."""
    with log.open("wb") as out:
        proc = await asyncio.to_thread(
            subprocess.Popen, cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        await asyncio.to_thread(_wait_port, port, proc, log)
        yield
    finally:
        proc.kill()
        await asyncio.to_thread(proc.wait, 10)


@asynccontextmanager
async def behind_haproxy(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[int, Engine]]:
    haproxy = need("haproxy")
    engine, _ = app(proxy_protocol=True, **overrides)
    async with running_engine(engine):
        front = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(haproxy_config(front, engine.port))
        check = await asyncio.to_thread(
            subprocess.run, [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        async with foreground([haproxy, "-db", "-f", str(cfg)], front, tmp_path / "haproxy.log"):
            yield front, engine


async def test_through_haproxy_send_proxy_v2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "linkd.access")
    async with behind_haproxy(tmp_path, max_connections_per_ip=1) as (front, engine):
        recorder = engine.state.routes.websocket["/ws"]
        assert isinstance(recorder, Recorder)
        c2 = await Client.open(front, "127.0.0.2")
        assert (await c2.get("/whoami"))["host"] == "127.0.0.2"
        await c2.close()
        # The per-address cap: one WebSocket per client, counted per real client.
        first = await Client.open(front, "127.0.0.2")
        assert await first.upgrade() == 101
        second = await Client.open(front, "127.0.0.2")
        assert await second.upgrade() == 429
        other = await Client.open(front, "127.0.0.3")
        assert await other.upgrade() == 101
        hosts = [r[0] for r in recorder.remotes if r is not None]
        assert hosts == ["127.0.0.2", "127.0.0.3"]
        for c in (first, second, other):
            await c.close()
        # HAProxy's own address never reaches the engine as a client's; a direct
        # connection that skips the balancer is closed unanswered.
        direct = await Client.open(engine.port, "127.0.0.3")
        await direct.send(build_request("GET", "/whoami"))
        assert await direct.eof() == b""
        await direct.close()
    access = [r.getMessage() for r in caplog.records if r.name == "linkd.access"]
    assert any(line.startswith("127.0.0.2 ") and "/whoami" in line for line in access)
    assert not any(line.startswith("127.0.0.1 ") for line in access)


async def test_through_nginx_websocket_with_x_forwarded_for(tmp_path: Path) -> None:
    nginx = need("nginx")
    engine, recorder = app(trusted_proxies=("127.0.0.1",), max_connections_per_ip=1)
    async with running_engine(engine):
        front = free_port()
        (tmp_path / "nginx.conf").write_text(nginx_config(tmp_path, front, engine.port))
        cmd = [nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"]
        async with foreground(cmd, front, tmp_path / "nginx.log"):
            # A client that forges X-Forwarded-For through nginx: nginx appends the
            # address it saw, and that rightmost untrusted hop wins.
            c2 = await Client.open(front, "127.0.0.2")
            forged = [("X-Forwarded-For", "6.6.6.6")]
            assert (await c2.get("/whoami", forged))["host"] == "127.0.0.2"
            await c2.close()
            first = await Client.open(front, "127.0.0.2")
            assert await first.upgrade(headers=forged) == 101
            second = await Client.open(front, "127.0.0.2")
            assert await second.upgrade() == 429
            other = await Client.open(front, "127.0.0.3")
            assert await other.upgrade() == 101
            # The WebSocket really is through nginx: an echo-less endpoint, so ping.
            await other.send(b"\x89\x80" + os.urandom(4))  # masked empty ping
            pong = await asyncio.wait_for(other.reader.readexactly(2), 5)
            assert pong == b"\x8a\x00"
            for c in (first, second, other):
                await c.close()
            # The same forged header sent straight to the engine from an untrusted
            # peer is ignored.
            spoofer = await Client.open(engine.port, "127.0.0.3")
            assert (await spoofer.get("/whoami", forged))["host"] == "127.0.0.3"
            await spoofer.close()
    hosts = [r[0] for r in recorder.remotes if r is not None]
    assert hosts == ["127.0.0.2", "127.0.0.3"]


# ------------------------------------------------------- what a worker sees (IPC)
async def test_a_worker_sees_the_forwarded_address() -> None:
    """``ctx.socket.remote_address`` (the IPC Connect's ``remote``) and the HTTP
    context's ``remote_address`` are the client's, behind a trusted proxy."""
    services = ("tests.helpers.services.remote",)
    with demo_engine("--trusted-proxies", "127.0.0.1", services=services) as eng:
        forged = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"}
        async with connect(
            f"ws://127.0.0.1:{eng.port}/ws/remote", additional_headers=forged, open_timeout=5
        ) as ws:
            event = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
            await ws.send(orjson.dumps({"type": "remote.whoami", "id": 1}).decode())
            ack = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["type"] == "remote.address", event
        assert event["data"]["remote"].startswith("203.0.113.9:"), event
        assert ack["id"] == 1 and ack["data"]["remote"].startswith("203.0.113.9:"), ack
        c = await Client.open(eng.port)
        reply = await c.get("/remote/whoami", [("X-Forwarded-For", "198.51.100.4")])
        await c.close()
        assert reply["remote"].startswith("198.51.100.4:"), reply
