"""The config file (``engine --config FILE``), ``engine config check`` and ``example``.

Keys are the flags without ``--``; precedence is flag > ``LINKD_*`` > file > default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from engine import Config
from engine.cli import build_parser, load_settings
from engine.cli.configfile import line_of, load_file
from protocol import Limits
from protocol.ws import DeflateOptions
from tests.helpers.proc import REPO_ROOT, clean_env, engine_process, free_port


def write(tmp_path: Path, text: str, *, name: str = "linkd.toml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m engine ARGS`` to completion, nothing added to ``ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        env=env if env is not None else clean_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def load(path: Path) -> list[str]:
    """The errors of a file, as ``engine`` reports them."""
    return load_file(str(path), build_parser(environ={}).settings).errors


def config_of(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    return load_settings(argv, environ or {}).config


# ------------------------------------------------------------------ keys and values


def test_keys_are_the_flags_and_values_go_through_their_converters(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        listen = "127.0.0.1:4100"
        ipc = ""
        ipc-mode = "0660"
        ipc-allowed-uids = [1000, 1001]
        max-message-size = "4MiB"       # a size as text
        max-body-size = 65536           # a size as bytes
        heartbeat = 7                   # an integer where a float is wanted
        max-connections = 10
        no-compression = true
        echo = ["/a", "/b"]
        slow-consumer = "drop_oldest"
        slow-consumer-path = ["/feed=conflate"]
        ws-type-limit = ["chat.send=5/10"]
        log-level = "debug"
        jwt-secret = "file-secret"
        """.replace("\n        ", "\n"),
    )
    config = config_of(["--config", str(path)])
    assert (config.host, config.port, config.ipc_path) == ("127.0.0.1", 4100, None)
    assert config.ipc_mode == 0o660
    assert config.ipc_allowed_uids == (1000, 1001)
    assert config.limits.max_message_bytes == 4 * 1024 * 1024
    assert config.limits.max_body_bytes == 65536
    assert config.heartbeat == 7.0 and isinstance(config.heartbeat, float)
    assert config.max_connections == 10
    assert config.deflate.enabled is False
    assert config.echo_paths == ("/a", "/b")
    assert config.slow_consumer == "drop_oldest"
    assert config.slow_consumer_paths == (("/feed", "conflate"),)
    assert config.ws_type_limits == (("chat.send", 5.0, 10.0),)
    assert config.log_level == "debug"
    assert config.jwt_secret == "file-secret"


def test_unknown_keys_are_refused_with_their_line_and_a_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# settings\n"
        'listen = "127.0.0.1:4100"\n'
        "\n"
        "max-conections = 5\n"
        "max_connections = 10\n"
        '"hearbeat" = 1\n'
        "frobnicate = true\n"
        "config = 'other.toml'\n"
        "[server]\n"
        "port = 1\n",
    )
    assert load(path) == [
        f"{path}:4: unknown key 'max-conections' (did you mean 'max-connections'?)",
        f"{path}:5: unknown key 'max_connections': keys are spelled like the flags, "
        "with dashes: 'max-connections'",
        f"{path}:6: unknown key 'hearbeat' (did you mean 'heartbeat'?)",
        f"{path}:7: unknown key 'frobnicate'",
        f"{path}:8: config: a config file cannot name another one",
        f"{path}:9: unknown table [server] (did you mean 'service'?); settings are "
        "top-level keys, not in tables",
    ]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('heartbeat = "20"', "heartbeat: wants a number, got a string"),
        ("max-connections = 1.5", "max-connections: wants a whole number, got a float"),
        ("max-connections = true", "max-connections: wants a whole number, got a boolean"),
        ("no-compression = 1", "no-compression: wants true or false, got an integer"),
        ('echo = "/echo"', 'echo: wants an array, e.g. echo = ["PATH"]'),
        ("echo = [1]", "echo: wants a string, got an integer"),
        ("listen = 3000", "listen: --listen wants HOST:PORT or :PORT, got '3000'"),
        ('listen = "nowhere"', "listen: --listen wants HOST:PORT or :PORT, got 'nowhere'"),
        ('max-message-size = "big"', "max-message-size: not a size: 'big'"),
        ("ipc-mode = 0o600", 'ipc-mode: wants the octal mode as a string, e.g. "0600"'),
        ('log-level = "loud"', "log-level: 'loud': choose from critical, error"),
        ('slow-consumer-path = ["/x"]', "slow-consumer-path: expected PATTERN=POLICY"),
        ('slow-consumer-event = ["a=lossy"]', "slow-consumer-event: "),
        ('ws-type-limit = ["chat=x"]', "ws-type-limit: --ws-type-limit wants TYPE=RATE/BURST"),
        ("history-size = 1979-05-27", "history-size: wants a whole number, got a date or time"),
        ("heartbeat = { seconds = 5 }", "heartbeat: wants a number, got a table"),
    ],
)
def test_values_are_type_checked(tmp_path: Path, line: str, error: str) -> None:
    path = write(tmp_path, f"# one bad value\n{line}\n")
    errors = load(path)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{path}:2: {error}"), errors


def test_a_secret_is_never_quoted_in_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'jwt-secret = ["hunter2-secret"]\nredis = 5\n')
    errors = load(path)
    assert errors == [
        f"{path}:1: jwt-secret: wants a string, got an array",
        f"{path}:2: redis: wants a string, got an integer",
    ]


def test_invalid_toml_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = ":3000"\necho = ["/a",\nheartbeat =\n')
    (error,) = load(path)
    assert re.match(rf"{re.escape(str(path))}:3: not valid TOML: ", error), error


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    (error,) = load(tmp_path / "nope.toml")
    assert error == f"{tmp_path / 'nope.toml'}: cannot read it: No such file or directory"


def test_line_of_finds_quoted_dotted_and_table_keys() -> None:
    lines = ["# x", "  'a' = 1", "b.c = 2", "[ d ]", "e=1", "[[f.g]]", 'g = "h = 1"']
    assert [line_of(lines, k) for k in ("a", "b", "d", "e", "f", "h", "x")] == [
        2,
        3,
        4,
        5,
        6,
        0,
        0,
    ]


# ------------------------------------------------------------------ precedence


def test_file_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat = 7\nno-compression = true\necho = ['/a']\n")
    assert config_of([]).heartbeat == Config().heartbeat == 20.0
    config = config_of(["--config", str(path)])
    assert (config.heartbeat, config.deflate.enabled, config.echo_paths) == (7.0, False, ("/a",))


def test_environment_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat = 7\nno-compression = true\necho = ['/a']\n")
    env = {"LINKD_HEARTBEAT": "8", "LINKD_NO_COMPRESSION": "0", "LINKD_ECHO": "/b,/c"}
    config = config_of(["--config", str(path)], env)
    assert (config.heartbeat, config.deflate.enabled) == (8.0, True)
    assert config.echo_paths == ("/b", "/c")  # a variable replaces the file's list


def test_flag_beats_environment(tmp_path: Path) -> None:
    config = config_of(["--heartbeat", "9"], {"LINKD_HEARTBEAT": "8"})
    assert config.heartbeat == 9.0


def test_flag_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat = 7\necho = ['/a']\n")
    config = config_of(["--config", str(path), "--heartbeat", "9", "--echo", "/z"])
    assert config.heartbeat == 9.0
    assert config.echo_paths == ("/a", "/z")  # a repeated flag adds to the list


def test_flag_beats_environment_beats_file_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat = 7\nclose-timeout = 1\nbody-timeout = 2\n")
    env = {"LINKD_HEARTBEAT": "8", "LINKD_CLOSE_TIMEOUT": "3"}
    config = config_of(["--config", str(path), "--heartbeat", "9"], env)
    assert (config.heartbeat, config.close_timeout, config.body_timeout) == (9.0, 3.0, 2.0)
    assert config.keep_alive_timeout == Config().keep_alive_timeout


def test_config_path_from_flag_or_environment(tmp_path: Path) -> None:
    from_env = write(tmp_path, "heartbeat = 5\n", name="env.toml")
    from_flag = write(tmp_path, "heartbeat = 6\n", name="flag.toml")
    env = {"LINKD_CONFIG": str(from_env)}
    assert config_of([], env).heartbeat == 5.0
    assert config_of(["--config", str(from_flag)], env).heartbeat == 6.0
    assert config_of([f"--config={from_flag}"], env).heartbeat == 6.0
    assert config_of(["--config", ""], env).heartbeat == 20.0  # empty: no file


def test_abbreviated_config_flag_is_refused(tmp_path: Path) -> None:
    """``--conf`` would reach argparse but not the pre-parse that reads the file."""
    path = write(tmp_path, "heartbeat = 5\n")
    with pytest.raises(SystemExit) as exc:
        load_settings(["--conf", str(path)], {})
    assert exc.value.code == 2


def test_a_bad_file_stops_the_start_with_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "heartbeat = 'x'\nfrobnicate = 1\n")
    with pytest.raises(SystemExit) as exc:
        load_settings(["--config", str(path)], {})
    assert exc.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"engine: {path}:1: heartbeat: wants a number, got a string",
        f"engine: {path}:2: unknown key 'frobnicate'",
        f"engine: {path}: 2 errors, not started",
    ]


# ------------------------------------------------------------------ check and example


def test_check_reports_ok(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = ":4000"\necho = ["/echo"]\n')
    result = cli("config", "check", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{path}: ok, 2 settings (listen, echo)\n"


def test_check_reports_every_error_and_exits_2(tmp_path: Path) -> None:
    path = write(tmp_path, "max-conections = 5\nheartbeat = 'x'\nhistory-ttl = 0\n")
    result = cli("config", "check", str(path))
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:1: unknown key 'max-conections' (did you mean 'max-connections'?)",
        f"{path}:2: heartbeat: wants a number, got a string",
        # Settings valid alone but not together: Config's own check, at the key's line.
        f"{path}:3: history_size must not be negative and history_ttl positive",
        f"{path}: 3 errors",
    ]


def test_check_warns_about_a_readable_secret_without_printing_it(tmp_path: Path) -> None:
    text = 'jwt-secret = "hunter2-secret"\nredis = "redis://:pa55word@127.0.0.1:6379/0"\n'
    private = cli("config", "check", str(write(tmp_path, text, name="a.toml", mode=0o600)))
    assert (private.returncode, private.stderr) == (0, "")
    shared = write(tmp_path, text, name="b.toml", mode=0o644)
    result = cli("config", "check", str(shared))
    assert result.returncode == 0
    assert result.stderr == (
        f"warning: {shared} holds jwt-secret, redis (its password) and is readable by "
        f"other users (mode 0644): chmod 600 {shared}\n"
    )
    assert "hunter2" not in result.stdout + result.stderr
    assert "pa55word" not in result.stdout + result.stderr


def test_example_has_every_flag_passes_check_and_loads_to_the_defaults(tmp_path: Path) -> None:
    result = cli("config", "example")
    assert (result.returncode, result.stderr) == (0, "")
    text = result.stdout
    settings = build_parser(environ={}).settings
    for key, setting in settings.items():
        if key == "config":
            continue
        block = re.search(rf"^(# )?{re.escape(key)} = .*$", text, re.MULTILINE)
        assert block, f"{key} missing from the example"
        assert setting.help.split()[0] in text  # its help is there too
    path = write(tmp_path, text)
    checked = cli("config", "check", str(path))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{path}: ok, ")
    # Every uncommented key really is set by the file, and to the built-in default.
    assert set(tomllib.loads(text)) == {
        k for k, s in settings.items() if k != "config" and f"\n{k} = " in text
    }
    from_file = config_of(["--config", str(path)])
    assert from_file == config_of([])
    # ... which is the library's Config but for the CLI's own defaults (listen, ipc).
    assert dataclasses.replace(from_file, ipc_path=None) == Config()
    assert from_file.limits == Limits() and from_file.deflate == DeflateOptions()


def test_config_subcommand_usage_errors() -> None:
    assert cli("config").returncode == 2
    assert cli("config", "check").returncode == 2
    assert cli("config", "frob").returncode == 2
    assert cli("config", "--help").returncode == 0


# ------------------------------------------------------------------ a real engine


def listening(process: psutil.Process) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in process.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def test_engine_started_with_a_config_file_serves_what_it_says(tmp_path: Path) -> None:
    port = free_port()
    path = write(
        tmp_path,
        f'listen = "127.0.0.1:{port}"\necho = ["/from-file"]\nmax-message-size = "1k"\n'
        'jwt-secret = "hunter2-secret"\n',
        mode=0o644,
    )
    with engine_process(["--config", str(path)], port=port, listen_flag=False) as eng:
        assert listening(eng.process) == {("127.0.0.1", port)}
        with connect(f"ws://127.0.0.1:{port}/from-file", max_size=None) as ws:
            ws.send("x" * 1000)
            assert ws.recv(timeout=5) == "x" * 1000
            ws.send("x" * 1025)  # over the file's 1 KiB
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert eng.get("/echo")[0] == 404  # not mounted: the file's list is the list
        output = eng.output()
    assert "is readable by other users (mode 0644)" in output
    assert "hunter2" not in output


def test_engine_flag_beats_linkd_config_file(tmp_path: Path) -> None:
    file_port, flag_port = free_port(), free_port()
    path = write(tmp_path, f'listen = "127.0.0.1:{file_port}"\necho = ["/e"]\n')
    env = clean_env(LINKD_CONFIG=str(path))
    args = ["--listen", f"127.0.0.1:{flag_port}"]
    with engine_process(args, port=flag_port, listen_flag=False, env=env) as eng:
        assert listening(eng.process) == {("127.0.0.1", flag_port)}
        with connect(f"ws://127.0.0.1:{flag_port}/e") as ws:
            ws.send("hi")
            assert ws.recv(timeout=5) == "hi"


def test_engine_refuses_to_start_on_a_bad_file(tmp_path: Path) -> None:
    path = write(tmp_path, f'listen = "127.0.0.1:{free_port()}"\n\nmax-conections = 5\n')
    result = cli("--config", str(path), "--ipc", "")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"engine: {path}:3: unknown key 'max-conections'" in result.stderr


def test_help_shows_the_file_values_as_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "shutdown-grace = 3\n")
    result = cli("--config", str(path), "--help", env=clean_env(COLUMNS="200"))
    assert result.returncode == 0, result.stderr
    assert "[default: 3.0; env: LINKD_SHUTDOWN_GRACE]" in result.stdout
    assert "[default: none; env: LINKD_CONFIG]" in result.stdout


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat = 5\n", mode=0o000)
    result = cli("config", "check", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{path}: cannot read it: Permission denied")


def test_the_snippet_in_the_docs_passes_check(tmp_path: Path) -> None:
    docs = (REPO_ROOT / "docs" / "configuration.md").read_text()
    snippets = re.findall(r"```toml\n(.*?)```", docs, re.DOTALL)
    assert snippets, "docs/configuration.md has no toml example"
    for i, snippet in enumerate(snippets):
        path = write(tmp_path, snippet, name=f"doc{i}.toml")
        assert load(path) == []
        config_of(["--config", str(path)])  # and it builds a Config
