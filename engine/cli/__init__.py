"""``engine``: the command line. Every flag also reads ``LINKD_<FLAG>`` from the
environment and a key of the ``--config`` file; the command line wins, then the
environment, then the file, then the built-in default.

engine --listen :3000 --ipc /tmp/linkd.sock --echo /echo
engine --config linkd.toml
engine --processes auto --redis redis://127.0.0.1:6379/0 --service examples.chat.service
engine config check linkd.toml | engine config example | engine token --sub ID
engine publish ROOM EVENT JSON | engine disconnect USER | engine info | engine api METHOD JSON

The package by job: ``flags`` declares every flag, ``parser`` layers file and
environment under them, ``values`` converts values, ``configfile`` loads and checks the
file, ``example`` writes one, ``build`` turns all of it into a ``Config``,
``config_command`` and ``token`` are the subcommands (``api_client`` the server API's:
publish, disconnect, info, api), ``processes`` runs several
engines on one port (``--processes``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Sequence

from engine.cli.api_client import API_COMMANDS, api_main
from engine.cli.build import Settings, config_from_args, load_settings
from engine.cli.config_command import config_main
from engine.cli.flags import build_parser
from engine.cli.processes import Processes, child_config, label_logs, run_child, split_child_argv
from engine.cli.token import token_main
from engine.log import configure_logging
from engine.server import Engine

__all__ = ["build_parser", "config_from_args", "load_settings", "main", "token_main"]


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    if argv[:1] == ["config"]:
        return config_main(argv[1:])
    if argv and argv[0] in API_COMMANDS:
        return api_main(argv[0], argv[1:])
    # A child of `engine --processes N` (engine/cli/processes.py).
    index, argv = split_child_argv(argv)
    settings = load_settings(argv)
    config = settings.config
    configure_logging(config.log_level)
    if index is not None:
        label_logs(index)
        config = child_config(config, index)
    elif config.processes > 1:
        # The parent: it only starts, watches and stops the children.
        log_settings(settings)
        return asyncio.run(Processes(argv, config.processes, config.shutdown_grace).run())
    loop_name = _install_uvloop()
    log = logging.getLogger("linkd.server")
    if index is None:  # the parent said it for the children
        log_settings(settings)
    log.info("linkd %s on %s", config.version, loop_name)
    engine = Engine(config)
    # What start-up made (modules, classes, tables: ~70 000 objects) lives as long as
    # the process: collected once, then frozen, full collections no longer walk it.
    # Under load they run every few seconds (requests queued for a busy worker reach
    # the old generation); the chat bench's took 27-59 ms frozen, 57-97 ms not.
    gc.collect()
    gc.freeze()
    try:
        asyncio.run(engine.serve() if index is None else run_child(engine))
    except (OSError, ValueError) as exc:
        print(f"engine: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def log_settings(settings: Settings) -> None:
    """Where the settings came from, and the warnings about the file."""
    if settings.file is not None:
        logging.getLogger("linkd.config").info("settings from %s", settings.file)
    for warning in settings.warnings:
        logging.getLogger("linkd.config").warning("%s", warning)
