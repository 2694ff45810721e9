"""``engine config example``: a commented config file with every flag at its default.

It is generated from the parser's registry, so it cannot miss a flag, and a test loads
it back and compares the ``Config`` with the built-in one.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Mapping
from typing import Any

from engine.cli import values
from engine.cli.configfile import NOT_IN_FILE
from engine.cli.parser import Setting
from engine.version import __version__

__all__ = ["example_text"]

_HEADER = """\
# Linkd engine settings, printed by `engine config example` (linkd {version}).
#
#   engine --config linkd.toml        (or LINKD_CONFIG=linkd.toml engine)
#   engine config check linkd.toml    (every error with its line; exit 2 if any)
#
# Each key is a flag of `engine` without its leading "--", spelled with dashes, taking
# what the flag takes. The values below are the built-in defaults: a key left out keeps
# its default; a key commented out has none. A flag on the command line wins over its
# LINKD_* variable, which wins over this file. Sizes are bytes, or strings like "64k",
# "4MiB", "1g"; repeatable flags take arrays (a flag given as well adds to the array).
# Secrets (jwt-secret, a redis URL with a password) may be kept here: chmod 600 the file.
"""


def example_text(settings: Mapping[str, Setting], width: int = 88) -> str:
    """The whole file, one commented block per setting, in ``--help`` order."""
    out = [_HEADER.format(version=__version__)]
    for setting in settings.values():
        if setting.key in NOT_IN_FILE:
            continue
        out.extend(textwrap.wrap(setting.help, width, initial_indent="# ", subsequent_indent="# "))
        action = setting.action
        if action.choices is not None:
            out.append(f"# one of: {', '.join(map(str, action.choices))}")
        out.append(f"# flag: {action.option_strings[0]}; env: {' or '.join(setting.env)}")
        value = render(action, setting.default)
        if value is None:
            metavar = action.metavar if isinstance(action.metavar, str) else "..."
            out.append(f"# {setting.key} = {json.dumps(metavar)}  (unset by default)")
        else:
            out.append(f"{setting.key} = {value}")
        out.append("")
    return "\n".join(out)


def render(action: argparse.Action, default: Any) -> str | None:
    """A default as a TOML value the file loader turns back into it; None: no default."""
    if isinstance(action, argparse._StoreTrueAction):
        return "true" if default else "false"
    if isinstance(action, argparse._AppendAction) and default is None:
        return "[]"
    if default is None:
        return None
    if action.type is values.octal and isinstance(default, int):
        return json.dumps(f"{default:04o}")
    return _toml(default)


def _toml(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes without ensure_ascii (\" \\ \n \uXXXX) are TOML's too.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        items = [_toml(v) for v in value]
        if any(item is None for item in items):
            return None
        return "[" + ", ".join(str(item) for item in items) + "]"
    return None
