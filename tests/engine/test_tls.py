"""TLS on the listening port: wss:// and https:// through real engine processes and real
TLS clients, with a CA and certificates made here; the policy (versions, suites, ALPN);
SIGHUP swapping the certificate and the token keys while connections stay open; the
flow-control limits over TLS in-process (both event loops)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import http.client
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from engine.auth import Authenticator, AuthError
from engine.tls import Certificates, build_context, key_file_warning
from tests.helpers.proc import REPO_ROOT, clean_env, engine_command, free_port
from tests.helpers.raw_ws import RawWs, deflate_bomb
from tests.helpers.server import make_config, running_engine
from tests.integration.support import DEMO, Client, ipc_dir, kill_tree, processes_using

# ------------------------------------------------------------------ certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Pki:
    """A CA in ``root`` and server certificates it signs, for 127.0.0.1 and localhost."""

    def __init__(self, root: Path, name: str = "Linkd test CA") -> None:
        self.root = root
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.ca = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = root / f"{name.replace(' ', '-')}.pem"
        self.ca_file.write_bytes(_pem(self.ca))
        self.cert = root / "server.crt"
        self.key = root / "server.key"

    def issue(self, serial: int) -> tuple[bytes, bytes]:
        """A server certificate chain (leaf, CA) and its key, as PEM."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(self.ca.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return _pem(leaf) + _pem(self.ca), key_pem

    def install(self, serial: int) -> None:
        """Write a new certificate and key in place, as certbot's renewal does
        (each file replaced by a rename, the key created 0600)."""
        chain, key = self.issue(serial)
        _replace(self.cert, chain, 0o644)
        _replace(self.key, key, 0o600)

    def client_context(self) -> ssl.SSLContext:
        """What a client trusting this CA uses (hostname checked: 127.0.0.1 is in the SAN)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def _replace(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    authority = Pki(tmp_path)
    authority.install(1001)
    return authority


def peer_serial(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> int:
    assert ssl_object is not None
    der = ssl_object.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def handshake(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A blocking TLS connection to the engine, handshake done (raises if refused)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    except BaseException:
        sock.close()
        raise


def serial_of_new_connection(port: int, pki: Pki) -> int:
    with handshake(port, pki.client_context()) as tls:
        return peer_serial(tls)


# ------------------------------------------------------------------ an engine over TLS
@dataclass
class TlsEngine:
    popen: subprocess.Popen[bytes]
    port: int
    pki: Pki
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def request(self, method: str, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=timeout, context=self.pki.client_context()
        )
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def hup(self) -> None:
        self.popen.send_signal(signal.SIGHUP)

    def wait_log(self, text: str, within: float = 5.0) -> None:
        deadline = time.monotonic() + within
        while text not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not logged within {within}s:\n{self.output()}")
            assert self.popen.poll() is None, self.output()
            time.sleep(0.02)


def _wait_https(eng: TlsEngine, path: str, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        if eng.popen.poll() is not None:
            raise RuntimeError(f"engine exited with {eng.popen.returncode}:\n{eng.output()}")
        try:
            status, _ = eng.request("GET", path, timeout=1.0)
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        else:
            if status == 200:
                return
            last = status
        time.sleep(0.05)
    raise RuntimeError(f"GET {path} over TLS not 200 within {within}s ({last!r}):\n{eng.output()}")


@contextlib.contextmanager
def tls_engine(pki: Pki, *args: str, services: tuple[str, ...] = ()) -> Iterator[TlsEngine]:
    """``engine --tls-cert --tls-key ARGS`` (and ``--service`` each of ``services``), ready."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        argv = ["--listen", f"127.0.0.1:{port}", "--no-access-log", "--ws-rate", "0"]
        argv += ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key), *args]
        if services:
            ipc = str(Path(stack.enter_context(ipc_dir())) / "l.sock")
            argv += ["--ipc", ipc, "--workers", "1", "--ipc-heartbeat", "1"]
            for spec in services:
                argv += ["--service", spec]
        log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "engine.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                engine_command(*argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                cwd=REPO_ROOT,
            )

        def stop() -> None:
            if popen.poll() is None:
                popen.kill()
            popen.wait(10)

        stack.callback(stop)
        if services:
            stack.callback(lambda: kill_tree(processes_using(ipc)))
        eng = TlsEngine(popen, port, pki, log)
        _wait_https(eng, "/health")
        for spec in services:
            _wait_https(eng, f"/{spec.rsplit('.', 1)[-1]}/ready")
        yield eng


@contextlib.asynccontextmanager
async def wss_client(
    port: int, ctx: ssl.SSLContext, path: str = "/ws/demo", **kwargs: Any
) -> AsyncIterator[Client]:
    """The integration tests' demo ``Client`` over ``wss://``."""
    async with websockets.connect(
        f"wss://127.0.0.1:{port}{path}",
        ssl=ctx,
        ping_interval=None,
        open_timeout=5,
        close_timeout=2,
        compression=None,
        **kwargs,
    ) as ws:
        client = Client(ws)
        try:
            yield client
        finally:
            client._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await client._reader


def ws_serial(client: Client) -> int:
    return peer_serial(client.ws.transport.get_extra_info("ssl_object"))


# ------------------------------------------------------------------ wss, https, policy
@pytest.mark.asyncio
async def test_wss_echo_fan_out_and_https_on_the_listening_port(pki: Pki) -> None:
    with tls_engine(pki, "--echo", "/echo", services=(DEMO,)) as eng:
        status, body = eng.request("GET", "/health")
        assert status == 200 and orjson.loads(body)["status"] == "healthy"
        ctx = pki.client_context()
        ctx.set_alpn_protocols(["http/1.1"])  # as browsers offer it (websockets does not)
        async with websockets.connect(
            f"wss://127.0.0.1:{eng.port}/echo", ssl=ctx, compression="deflate"
        ) as ws:
            tls = ws.transport.get_extra_info("ssl_object")
            assert tls.selected_alpn_protocol() == "http/1.1"
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            for size in (5, 70_000, 1_000_000):  # one record, several, compressed or not
                text = "é" * (size // 2)
                await ws.send(text)
                assert await ws.recv() == text
        # Fan-out: five clients in one room, one emit reaches each exactly once.
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(wss_client(eng.port, ctx)) for _ in range(5)]
            for client in clients:
                assert (await client.call("demo.join", {"room": "r"})) == {"joined": "r"}
            data = {"room": "r", "event": "room.news", "data": {"n": 7}}
            assert (await clients[0].call("demo.emit", data)) == {"emitted": "r"}
            for client in clients:
                event = await client.event("room.news")
                assert event["data"] == {"n": 7}
                await client.no_event("room.news", within=0.1)
        # Plain HTTP on the TLS port is not served (the bytes are no ClientHello).
        with socket.create_connection(("127.0.0.1", eng.port), timeout=5) as plain:
            plain.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert b"healthy" not in plain.recv(4096)
        assert eng.popen.poll() is None


def test_a_client_that_trusts_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = Pki(tmp_path / "other", "Other CA")
    with tls_engine(pki) as eng:
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(eng.port, other.client_context())
        # The same client trusting the right CA gets in: the refusal was the CA.
        assert serial_of_new_connection(eng.port, pki) == 1001


def test_policy_tls12_aead_only_alpn_http11(pki: Pki) -> None:
    with tls_engine(pki) as eng:
        # TLS 1.1 and below: refused in the handshake.
        old = pki.client_context()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")  # so the client itself offers TLS 1.1
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            handshake(eng.port, old)
        # TLS 1.2 with a CBC suite: refused; with an ECDHE AEAD suite: accepted.
        cbc = pki.client_context()
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
        with pytest.raises(ssl.SSLError):
            handshake(eng.port, cbc)
        for suite in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
            aead = pki.client_context()
            aead.maximum_version = ssl.TLSVersion.TLSv1_2
            aead.set_ciphers(suite)
            aead.set_alpn_protocols(["h2", "http/1.1"])
            with handshake(eng.port, aead) as tls:
                assert tls.version() == "TLSv1.2"
                cipher = tls.cipher()
                assert cipher is not None and cipher[0] == suite
                assert tls.selected_alpn_protocol() == "http/1.1"  # never h2
        with handshake(eng.port, pki.client_context()) as tls:
            assert tls.version() == "TLSv1.3"


def test_tls13_only_when_asked(pki: Pki) -> None:
    with tls_engine(pki, "--tls-min-version", "1.3") as eng:
        v12 = pki.client_context()
        v12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            handshake(eng.port, v12)
        with handshake(eng.port, pki.client_context()) as tls:
            assert tls.version() == "TLSv1.3"


# ------------------------------------------------------------------ SIGHUP
@pytest.mark.asyncio
async def test_sighup_swaps_the_certificate_and_open_connections_stay(pki: Pki) -> None:
    with tls_engine(pki, "--echo", "/echo") as eng:
        async with websockets.connect(
            f"wss://127.0.0.1:{eng.port}/echo", ssl=pki.client_context(), ping_interval=None
        ) as before:
            await before.send("one")
            assert await before.recv() == "one"
            assert peer_serial(before.transport.get_extra_info("ssl_object")) == 1001

            pki.install(2002)
            eng.hup()
            eng.wait_log("TLS: reloaded")
            assert await asyncio.to_thread(serial_of_new_connection, eng.port, pki) == 2002
            await before.send("two")  # opened before the HUP: still served
            assert await before.recv() == "two"

            # A broken certificate: the reload is refused, the engine keeps serving 2002.
            pki.cert.write_text("-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
            eng.hup()
            eng.wait_log("no PEM certificate in it")
            assert await asyncio.to_thread(serial_of_new_connection, eng.port, pki) == 2002
            # A certificate with somebody else's key: refused too.
            chain, _ = pki.issue(3003)
            _, other_key = pki.issue(3004)
            _replace(pki.cert, chain, 0o644)
            _replace(pki.key, other_key, 0o600)
            eng.hup()
            eng.wait_log("KEY_VALUES_MISMATCH")
            assert await asyncio.to_thread(serial_of_new_connection, eng.port, pki) == 2002

            await before.send("three")
            assert await before.recv() == "three"
            assert eng.output().count("the previous one stays") == 2
        # Fixed files: the next HUP takes them.
        pki.install(4004)
        eng.hup()
        eng.wait_log("serial fa4")  # 4004 in hex, as the log line writes serials
        assert serial_of_new_connection(eng.port, pki) == 4004
        assert eng.popen.poll() is None


def _ec_public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _token(key: ec.EllipticCurvePrivateKey, sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, key, algorithm="ES256")


@pytest.mark.asyncio
async def test_sighup_reloads_the_token_key(pki: Pki, tmp_path: Path) -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "jwt.pem"
    public.write_bytes(_ec_public_pem(old))
    with tls_engine(pki, "--jwt-public-key", str(public), services=(DEMO,)) as eng:
        ctx = pki.client_context()
        async with wss_client(eng.port, ctx, f"/ws/demo?token={_token(old, 'u-old')}") as kept:
            assert (await kept.call("demo.echo", {"a": 1}))["echo"] == {"a": 1}
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with wss_client(eng.port, ctx, f"/ws/demo?token={_token(new, 'u-new')}"):
                    pass
            assert refused.value.response.status_code == 401

            public.write_bytes(_ec_public_pem(new))
            eng.hup()
            eng.wait_log("token keys reloaded")
            async with wss_client(eng.port, ctx, f"/ws/demo?token={_token(new, 'u-new')}") as c:
                assert (await c.call("demo.echo", {"b": 2}))["echo"] == {"b": 2}
            with pytest.raises(websockets.InvalidStatus):  # the old key is gone
                async with wss_client(eng.port, ctx, f"/ws/demo?token={_token(old, 'u-old')}"):
                    pass
            # A key file that does not parse: the new key stays in use.
            public.write_text("garbage")
            eng.hup()
            eng.wait_log("token keys not reloaded")
            async with wss_client(eng.port, ctx, f"/ws/demo?token={_token(new, 'u-new')}") as c:
                assert (await c.call("demo.echo", {"c": 3}))["echo"] == {"c": 3}
            # Tokens are checked at the upgrade: the connection made before stays.
            assert (await kept.call("demo.echo", {"d": 4}))["echo"] == {"d": 4}
            assert ws_serial(kept) == 1001


def test_sighup_without_tls_or_key_files_does_not_stop_the_engine(tmp_path: Path) -> None:
    from tests.helpers.proc import engine_process

    with engine_process(["--echo", "/echo"]) as eng:
        eng.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert eng.get("/health")[0] == 200
        assert eng.returncode is None


def test_authenticator_reload_is_all_or_nothing(tmp_path: Path) -> None:
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]

    def jwks(*which: ec.EllipticCurvePrivateKey) -> str:
        entries = []
        for n, key in enumerate(which):
            jwk = orjson.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            entries.append({**jwk, "kid": f"k{n}"})
        return orjson.dumps({"keys": entries}).decode()

    def signed(key: ec.EllipticCurvePrivateKey, kid: str) -> str:
        claims = {"sub": "u", "exp": int(time.time()) + 60}
        return jwt.encode(claims, key, "ES256", headers={"kid": kid})

    path = tmp_path / "jwks.json"
    path.write_text(jwks(keys[0]))
    auth = Authenticator(jwks=str(path))
    assert auth.verify(signed(keys[0], "k0")).user_id == "u"
    path.write_text(jwks(keys[0], keys[1]))  # a key added by the IdP's rotation
    assert auth.reload() is None
    assert auth.verify(signed(keys[1], "k1")).user_id == "u"
    path.write_text('{"keys": [{"kty": "EC"}]}')  # broken: nothing changes
    error = auth.reload()
    assert error is not None and "jwks" in error
    assert auth.verify(signed(keys[1], "k1")).user_id == "u"
    path.unlink()
    assert auth.reload() is not None
    assert auth.verify(signed(keys[0], "k0")).user_id == "u"
    with pytest.raises(AuthError):
        auth.verify(signed(keys[2], "k1"))


# ------------------------------------------------------------------ start-up checks
def test_start_refuses_bad_files_and_warns_about_a_readable_key(pki: Pki, tmp_path: Path) -> None:
    from tests.helpers.proc import run_engine

    listen = ["--listen", f"127.0.0.1:{free_port()}"]
    missing = run_engine([*listen, "--tls-cert", str(pki.cert)])
    assert missing.returncode == 2 and "--tls-cert and --tls-key go together" in missing.stderr
    absent = tmp_path / "absent.pem"
    result = run_engine([*listen, "--tls-cert", str(absent), "--tls-key", str(pki.key)])
    assert result.returncode == 1
    assert f"--tls-cert {absent}: No such file or directory" in result.stderr
    assert key_file_warning(str(pki.key)) is None  # 0600
    pki.key.chmod(0o644)
    warning = key_file_warning(str(pki.key))
    assert warning is not None and "chmod 600" in warning
    with pytest.raises(ValueError, match="no cipher"):
        build_context(str(pki.cert), str(pki.key), ciphers="NOT-A-SUITE")


# ------------------------------------------------------------------ limits over TLS
class TlsRawWs(RawWs):
    """``RawWs`` over TLS: the same frames, written and read through an SSL transport."""

    def __init__(self, port: int, pki: Pki, path: str = "/echo", **kwargs: Any) -> None:
        super().__init__(port, path, **kwargs)
        self.pki = pki

    async def connect(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
        self.reader, self.writer = await asyncio.open_connection(
            sock=sock, ssl=self.pki.client_context(), server_hostname=self.host, limit=2**24
        )
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.extensions:
            lines.append(f"Sec-WebSocket-Extensions: {self.extensions}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        self.status = int(head.split(b" ", 2)[1])
        return self.status


def tls_config(pki: Pki, **overrides: Any) -> Any:
    return make_config(tls_cert=str(pki.cert), tls_key=str(pki.key), **overrides)


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - engine state, no event to wait on
            await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_slow_consumer_over_tls_is_closed_1013_at_the_outbound_limit(pki: Pki) -> None:
    limits = {"max_outbound_bytes": 256 * 1024}
    engine = Engine(tls_config(pki, limits=limits, close_timeout=0.5))
    async with running_engine(engine):
        slow = TlsRawWs(engine.port, pki, rcvbuf=4096)
        fast = TlsRawWs(engine.port, pki)
        assert await slow.connect() == 101 and await fast.connect() == 101
        try:
            await wait_for(lambda: len(engine.state.ws_connections) == 2)
            slow.pause_reading()
            received = 0

            async def read_fast() -> None:
                nonlocal received
                while True:
                    frame = await fast.recv_frame()
                    assert frame.payload == b"x" * 1000
                    received += 1

            reader = asyncio.create_task(read_fast())
            sent = 0
            while engine.metrics.slow_consumers == 0 and sent < 40_000:
                for _ in range(50):
                    engine.broadcast("x" * 1000)
                    sent += 1
                await asyncio.sleep(0.001)
            assert engine.metrics.slow_consumers == 1
            # Cut off once its unsent bytes passed the limit: what TLS buffers beyond the
            # engine's view (the socket transport's, the client's) is bounded too.
            assert sent * 1000 < 64 * 256 * 1024
            await wait_for(lambda: len(engine.state.ws_connections) == 1)
            await wait_for(lambda: received == sent)  # the fast one lost nothing
            reader.cancel()
            assert engine.metrics.ws_closes.get(1013) == 1
        finally:
            for client in (slow, fast):
                client.writer.close()


class Gated(WebSocketEndpoint):
    """Each message waits for the gate before it is recorded (the inbound queue fills)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.handled: list[str | bytes] = []

    async def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        await self.gate.wait()
        self.handled.append(data)


@pytest.mark.asyncio
async def test_a_full_inbound_queue_pauses_reading_over_tls(pki: Pki) -> None:
    endpoint = Gated()
    engine = Engine(tls_config(pki, limits={"max_inbound_queue": 16}))
    engine.websocket("/gated", endpoint)
    async with running_engine(engine), TlsRawWs(engine.port, pki, "/gated") as raw:
        for i in range(100):
            raw.send_text(f"m{i:03d}")
        await raw.writer.drain()
        (proto,) = engine.state.ws_connections
        await wait_for(lambda: bool(proto._paused))
        # Paused: what is sent now stays in the TLS and TCP buffers, unparsed.
        seen = engine.metrics.ws_messages_in
        for i in range(100, 120):
            raw.send_text(f"m{i:03d}")
        await raw.writer.drain()
        await asyncio.sleep(0.2)
        assert engine.metrics.ws_messages_in == seen < 120
        endpoint.gate.set()
        await wait_for(lambda: len(endpoint.handled) == 120)
        assert endpoint.handled == [f"m{i:03d}" for i in range(120)]
        assert not proto._paused


@pytest.mark.asyncio
async def test_a_deflate_bomb_over_tls_gets_1009(pki: Pki) -> None:
    async with (
        running_engine(Engine(tls_config(pki))) as engine,
        TlsRawWs(engine.port, pki, extensions="permessage-deflate") as raw,
    ):
        raw.send_frame(0x2, deflate_bomb(100), rsv1=True)
        assert await raw.recv_close_code(timeout=3.0) == 1009
        await raw.expect_disconnect(timeout=3.0)
        await wait_for(lambda: engine.metrics.ws_closes.get(1009) == 1)


@pytest.mark.asyncio
async def test_engine_reload_in_process_serves_the_new_certificate(pki: Pki) -> None:
    async with running_engine(Engine(tls_config(pki))) as engine:
        assert engine.tls is not None
        assert await asyncio.to_thread(serial_of_new_connection, engine.port, pki) == 1001
        pki.install(5005)
        assert engine.reload() == []
        assert await asyncio.to_thread(serial_of_new_connection, engine.port, pki) == 5005
        pki.key.write_text("nope")
        (error,) = engine.reload()
        assert "cannot use" in error
        assert await asyncio.to_thread(serial_of_new_connection, engine.port, pki) == 5005


def test_certificates_refuse_a_mismatched_key_at_start(pki: Pki) -> None:
    _, other = pki.issue(9)
    pki.key.write_bytes(other)
    with pytest.raises(ValueError, match="KEY_VALUES_MISMATCH"):
        Certificates(str(pki.cert), str(pki.key))
