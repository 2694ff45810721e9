"""Issue 10 #13: demo mode is not open to the network.

``POST /chat/demo/token`` makes its caller any demo user, so it answers clients on
this machine only: the engine's TCP peer address (which it hands the service) must be
a loopback one, and so must every client a proxy says it forwards for. The start log
says plainly that demo mode is on.

Through a real engine and real chat workers: a client connecting to this machine's
own non-loopback address is a non-loopback peer (the engine listens on 0.0.0.0 for
that one test, on a random port), a client bound to 127.0.0.2 is still loopback.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import psutil
import pytest

from examples.chat.pages import is_local_client
from tests.chat.support import ALICE, BOB, SECRET
from tests.helpers.proc import EngineProcess, clean_env, engine_process, free_port
from tests.integration.support import ipc_dir, kill_tree, processes_using, wait_http


def own_external_address() -> str | None:
    """An IPv4 address of this machine that is not a loopback one."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return str(address.address)
    return None


class _BoundConnection(http.client.HTTPConnection):
    """An HTTP connection whose client end is bound to ``source`` first."""

    def __init__(self, host: str, port: int, source: str) -> None:
        super().__init__(host, port, timeout=15, source_address=(source, 0))


def post_token(
    host: str,
    port: int,
    *,
    source: str | None = None,
    headers: dict[str, str] | None = None,
    user: str = ALICE,
) -> tuple[int, Any]:
    conn = (
        _BoundConnection(host, port, source)
        if source
        else http.client.HTTPConnection(host, port, timeout=15)
    )
    try:
        conn.request(
            "POST",
            "/chat/demo/token",
            body=orjson.dumps({"userId": user}),
            headers={"content-type": "application/json", **(headers or {})},
        )
        resp = conn.getresponse()
        return resp.status, orjson.loads(resp.read())
    finally:
        conn.close()


# ------------------------------------------------------------------- unit
@pytest.mark.parametrize(
    ("remote", "headers", "local"),
    [
        ("127.0.0.1:5000", [], True),
        ("127.0.0.2:5000", [], True),
        ("::1:5000", [], True),
        ("::ffff:127.0.0.1:5000", [], True),
        ("192.0.2.7:5000", [], False),
        ("2001:db8::1:5000", [], False),
        ("::ffff:192.0.2.7:5000", [], False),
        (None, [], False),
        ("", [], False),
        ("garbage", [], False),
        # A proxy on this machine forwarding for someone: that someone must be local.
        ("127.0.0.1:5000", [("X-Forwarded-For", "127.0.0.1")], True),
        ("127.0.0.1:5000", [("X-Forwarded-For", "203.0.113.9")], False),
        ("127.0.0.1:5000", [("x-forwarded-for", "127.0.0.1, 203.0.113.9")], False),
        (
            "127.0.0.1:5000",
            [("X-Forwarded-For", "127.0.0.1"), ("X-Forwarded-For", "10.1.1.1")],
            False,
        ),
        ("127.0.0.1:5000", [("X-Real-IP", "198.51.100.1")], False),
        ("127.0.0.1:5000", [("Forwarded", 'for="[::1]:4711";proto=http')], True),
        ("127.0.0.1:5000", [("Forwarded", "for=127.0.0.1, for=192.0.2.60")], False),
        ("127.0.0.1:5000", [("Forwarded", "for=unknown")], False),
        ("127.0.0.1:5000", [("Forwarded", "for=_hidden")], False),
        # A forwarded header does not make a remote peer local.
        ("192.0.2.7:5000", [("X-Forwarded-For", "127.0.0.1")], False),
    ],
)
def test_is_local_client(remote: str | None, headers: list[tuple[str, str]], local: bool) -> None:
    assert is_local_client(remote, headers) is local


# ----------------------------------------------------------- real sockets
@contextlib.contextmanager
def chat_on_all_interfaces(database_url: str) -> Iterator[EngineProcess]:
    """A demo-mode engine with one chat worker listening on 0.0.0.0 (random port)."""
    with contextlib.ExitStack() as stack:
        ipc = f"{stack.enter_context(ipc_dir())}/l.sock"
        port = free_port("0.0.0.0")
        env = clean_env(LINKD_JWT_SECRET=SECRET, DATABASE_URL=database_url, CHAT_DEMO="1")
        args = ["--listen", f"0.0.0.0:{port}", "--ipc", ipc]
        args += ["--service", "examples.chat.service", "--workers", "1"]
        eng = stack.enter_context(engine_process(args, env=env, port=port, listen_flag=False))
        stack.callback(lambda: kill_tree(processes_using(ipc)))
        wait_http(eng, "/chat/ready", timeout=30)
        yield eng


def test_demo_token_is_refused_to_a_client_on_another_address(database_url: str) -> None:
    external = own_external_address()
    if external is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with chat_on_all_interfaces(database_url) as eng:
        status, answer = post_token(external, eng.port)
        assert status == 403, answer
        assert answer["error"]["code"] == "FORBIDDEN"
        assert "token" not in answer
        # The same engine still serves the page's other routes to that client...
        conn = http.client.HTTPConnection(external, eng.port, timeout=15)
        conn.request("GET", "/chat/config")
        assert conn.getresponse().status == 200
        conn.close()
        # ...and demo tokens to this machine.
        status, answer = post_token("127.0.0.1", eng.port)
        assert status == 200 and answer["user"]["id"] == ALICE


def test_demo_token_is_served_to_any_loopback_address(chat: EngineProcess) -> None:
    status, answer = post_token(chat.host, chat.port, source="127.0.0.2", user=BOB)
    assert status == 200, answer
    assert answer["user"]["id"] == BOB


def test_demo_token_is_refused_when_a_proxy_forwards_an_outside_client(
    chat: EngineProcess,
) -> None:
    for headers in (
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=198.51.100.4;proto=https"},
    ):
        status, answer = post_token(chat.host, chat.port, headers=headers)
        assert status == 403, (headers, answer)
        assert answer["error"]["code"] == "FORBIDDEN"


def test_the_start_log_says_demo_mode_is_on(chat: EngineProcess) -> None:
    # The fixture waited for every worker to register: their start hooks ran.
    lines = [line for line in chat.output().splitlines() if "DEMO MODE IS ON" in line]
    assert len(lines) == 2, chat.output()  # one per worker
    assert all("WARNING" in line for line in lines)
