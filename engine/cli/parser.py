"""The argument parser under ``engine``: each flag is a setting with three lower layers.

A flag's value comes from, highest first: the command line, its ``LINKD_<FLAG>``
variable, the config file (``--config``), the built-in default. The parser takes the
file's values (already converted, engine/cli/configfile.py) and the environment when it
is built and makes the winner of those layers each flag's argparse default, so the
command line beats them all and ``--help`` shows what the engine would run with.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Parser", "Setting", "env_name", "from_text"]

_TRUE = ("1", "true", "yes", "on")


def env_name(flag: str) -> str:
    """``--max-body-size`` → ``LINKD_MAX_BODY_SIZE``."""
    return "LINKD_" + flag.lstrip("-").upper().replace("-", "_")


@dataclass(frozen=True, slots=True)
class Setting:
    """One flag as the config file and ``engine config example`` see it."""

    #: The flag without ``--``: also its key in the config file.
    key: str
    action: argparse.Action
    #: The help text without the ``[default: ...; env: ...]`` suffix.
    help: str
    #: Its variables, the first one ``LINKD_<FLAG>``.
    env: tuple[str, ...]
    #: The built-in default, before the file and the environment.
    default: Any


def from_text(action: argparse.Action, raw: str) -> Any:
    """A flag's value from one string, as from its variable (lists comma-separated).

    Raises ValueError or ``argparse.ArgumentTypeError`` with the reason.
    """
    convert = action.type if callable(action.type) else str
    if isinstance(action, argparse._AppendAction):
        return [convert(v) for v in raw.split(",") if v]
    if isinstance(action, argparse._StoreTrueAction):
        return raw.strip().lower() in _TRUE
    value = convert(raw)
    if action.choices is not None and value not in action.choices:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(map(str, action.choices))}")
    return value


class Parser(argparse.ArgumentParser):
    """Records every flag as a ``Setting`` and layers file and environment under it.

    Abbreviated flags are off (``allow_abbrev=False``): ``--conf`` would otherwise mean
    ``--config`` to argparse but not to the pre-parse that finds the file, and a new
    flag would silently change what an abbreviation in a deploy script means.
    """

    def __init__(
        self,
        *,
        file_values: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(allow_abbrev=False, **kwargs)
        self.settings: dict[str, Setting] = {}
        self._file = dict(file_values or {})
        self._environ = os.environ if environ is None else environ

    def add(self, flag: str, *, help: str, env: tuple[str, ...] = (), **kwargs: Any) -> None:
        """``add_argument`` with the layers below the command line and both shown in help."""
        key = flag.removeprefix("--")
        names = (env_name(flag), *env)
        builtin = kwargs.pop("default", None)
        action = self.add_argument(flag, default=builtin, **kwargs)
        default = self._file.get(key, builtin)
        for name in names:
            if name in self._environ:
                default = self._from_env(action, name)
                break
        shown = "none" if default is None else default
        if isinstance(action, argparse._StoreTrueAction):
            shown = "on" if default else "off"
        action.default = default
        action.help = f"{help} [default: {shown}; env: {' or '.join(names)}]"
        self.settings[key] = Setting(key, action, help, names, builtin)

    def _from_env(self, action: argparse.Action, name: str) -> Any:
        raw = self._environ[name]
        try:
            return from_text(action, raw)
        except argparse.ArgumentTypeError as exc:  # our converters say why
            self.error(f"{name}={raw!r}: {exc}")
        except ValueError:  # int(), float()
            self.error(f"{name}={raw!r} is not a valid value for {action.option_strings[0]}")
