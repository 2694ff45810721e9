"""``engine config check FILE`` and ``engine config example``.

Like ``centrifugo checkconfig`` / ``genconfig``, and ``nginx -t``: check a file before a
deploy or a reload, print a file to start from.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine.cli.build import config_from_args
from engine.cli.configfile import load_file
from engine.cli.example import example_text
from engine.cli.flags import build_parser

__all__ = ["config_main"]


def config_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="engine config", description="Check or write an engine config file (TOML)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="check FILE: exit 0 and a summary, or exit 2 and every error with its line",
        description="Check FILE alone: its keys, its values, and the settings they make "
        "together (the environment and flags are not read).",
    )
    check.add_argument("file", metavar="FILE")
    commands.add_parser(
        "example",
        help="print a commented file with every setting at its default",
        description="Print a commented config file with every setting at its default.",
    )
    args = parser.parse_args(argv)
    if args.command == "example":
        sys.stdout.write(example_text(build_parser(environ={}).settings))
        return 0
    return check_file(args.file)


def check_file(path: str) -> int:
    """Print every problem of ``path`` (exit 2) or an ``ok`` summary (exit 0)."""
    loaded = load_file(path, build_parser(environ={}).settings)
    errors = list(loaded.errors)
    if loaded.values or not errors:
        # The settings together, as the engine would build them (cross-field checks).
        try:
            config_from_args(build_parser(loaded.values, environ={}).parse_args([]))
        except ValueError as exc:
            # Config names its fields (history_ttl): point at the first such key's line.
            named = [k for k in loaded.values if k.replace("-", "_") in str(exc)]
            line = loaded.lines.get(max(named, key=len), 0) if named else 0
            errors.append(f"{path}:{line}: {exc}" if line else f"{path}: {exc}")
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        print(f"{path}: {_count(len(errors), 'error')}", file=sys.stderr)
        return 2
    summary = f"{path}: ok, {_count(len(loaded.values), 'setting')}"
    if 0 < len(loaded.values) <= 12:
        summary += f" ({', '.join(loaded.values)})"
    print(summary)
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
