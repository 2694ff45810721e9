"""The ``engine`` command line as a user meets it: --help, LINKD_* variables, start-up errors."""

from __future__ import annotations

import argparse
import base64
import os
import re
import socket

import psutil
import pytest

from engine import Config
from engine.cli import build_parser
from protocol import Limits
from tests.helpers.proc import clean_env, engine_process, free_port, run_engine


def help_blocks(text: str) -> dict[str, str]:
    """``--help`` output → {flag: its whole entry, whitespace collapsed}."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("  -"):  # "  --listen LISTEN   HOST:PORT ..." starts an entry
            current = entries.setdefault(line.split()[0].rstrip(","), [])
            current.append(line)
        elif current is not None and line.startswith("   "):  # its wrapped continuation
            current.append(line)
        else:
            current = None
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in entries.items()}


def option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def shown_default(action: argparse.Action) -> str:
    if isinstance(action, argparse._StoreTrueAction):
        return "on" if action.default else "off"
    return "none" if action.default is None else str(action.default)


def env_name(flag: str) -> str:
    return "LINKD_" + flag.removeprefix("--").upper().replace("-", "_")


def test_help_lists_every_flag_with_its_default_and_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("LINKD_"):
            monkeypatch.delenv(name)
    result = run_engine(["--help"], env=clean_env(COLUMNS="100"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    blocks = help_blocks(result.stdout)
    actions = option_actions(build_parser())
    assert len(actions) >= 20
    for action in actions:
        flag = action.option_strings[-1]
        assert flag in blocks, f"{flag} missing from --help"
        pattern = (
            rf"\[default: {re.escape(shown_default(action))}; "
            rf"env: {re.escape(env_name(flag))}( or LINKD_[A-Z_]+)*\]$"
        )
        assert re.search(pattern, blocks[flag]), f"{flag}: {blocks[flag]!r}"
    # The defaults shown are the ones the engine really runs with.
    config, limits = Config(), Limits()
    expected = {
        "--listen": f":{config.port}",
        "--heartbeat": str(config.heartbeat),
        "--close-timeout": str(config.close_timeout),
        "--shutdown-grace": str(config.shutdown_grace),
        "--header-timeout": str(config.header_timeout),
        "--max-message-size": str(limits.max_message_bytes),
        "--max-body-size": str(limits.max_body_bytes),
        "--max-header-size": str(limits.max_header_bytes),
        "--max-outbound-buffer": str(limits.max_outbound_bytes),
        "--max-inbound-queue": str(limits.max_inbound_queue),
        "--log-level": config.log_level,
        "--no-compression": "off",
    }
    for flag, default in expected.items():
        assert f"[default: {default}; env: {env_name(flag)}" in blocks[flag], blocks[flag]


def test_help_shows_defaults_taken_from_the_environment() -> None:
    env = clean_env(
        COLUMNS="100",
        LINKD_SHUTDOWN_GRACE="7",
        LINKD_MAX_MESSAGE_SIZE="64k",
        LINKD_NO_COMPRESSION="yes",
    )
    result = run_engine(["--help"], env=env)
    assert result.returncode == 0, result.stderr
    blocks = help_blocks(result.stdout)
    assert "[default: 7.0; env: LINKD_SHUTDOWN_GRACE]" in blocks["--shutdown-grace"]
    assert "[default: 65536; env: LINKD_MAX_MESSAGE_SIZE]" in blocks["--max-message-size"]
    assert "[default: on; env: LINKD_NO_COMPRESSION]" in blocks["--no-compression"]


def ws_handshake_status(port: int, path: str) -> int:
    """Status code of a WebSocket upgrade request on ``path``."""
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        return int(head.split()[1])


def listening_addresses(process: psutil.Process) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in process.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def test_environment_variables_are_honoured() -> None:
    port = free_port()
    env = clean_env(LINKD_LISTEN=f"127.0.0.1:{port}", LINKD_ECHO="/echo,/other")
    with engine_process(port=port, listen_flag=False, env=env) as eng:
        assert listening_addresses(eng.process) == {("127.0.0.1", port)}
        assert ws_handshake_status(port, "/echo") == 101
        assert ws_handshake_status(port, "/other") == 101
        assert ws_handshake_status(port, "/nothing") == 404


def test_flag_beats_environment_variable() -> None:
    port, other = free_port(), free_port()
    env = clean_env(LINKD_LISTEN=f"127.0.0.1:{other}")
    with (
        engine_process(["--listen", f"127.0.0.1:{port}"], port=port, listen_flag=False, env=env),
        pytest.raises(ConnectionRefusedError),
    ):
        socket.create_connection(("127.0.0.1", other), timeout=2.0).close()


def test_listen_port_only_form_binds_every_interface() -> None:
    port = free_port("0.0.0.0")
    with engine_process(["--listen", f":{port}"], port=port, listen_flag=False) as eng:
        assert listening_addresses(eng.process) == {("0.0.0.0", port)}
        assert eng.get("/health")[0] == 200


def test_port_in_use_exits_non_zero_with_a_clear_message() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_engine(["--listen", f"127.0.0.1:{port}", "--echo", "/echo"])
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("engine: cannot start:"), result.stderr
    assert "address already in use" in last.lower(), last


def test_malformed_listen_flag_is_a_usage_error() -> None:
    result = run_engine(["--listen", "nowhere"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr, result.stderr
    assert "--listen wants HOST:PORT or :PORT" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LINKD_SHUTDOWN_GRACE", "soon"),  # type=float
        ("LINKD_MAX_MESSAGE_SIZE", "big"),  # type=_size
        ("LINKD_LOG_LEVEL", "loud"),  # choices
    ],
)
def test_malformed_environment_variable_is_a_usage_error(name: str, value: str) -> None:
    """A bad LINKD_* value deserves what a bad flag gets: exit 2, a message, no traceback."""
    env = clean_env(**{name: value})
    result = run_engine(["--listen", f"127.0.0.1:{free_port()}"], env=env, timeout=10)
    assert "Traceback" not in result.stderr, result.stderr[-1500:]
    assert result.returncode == 2, (result.returncode, result.stderr[-1500:])
    assert name in result.stderr, result.stderr
