"""The config file: TOML (stdlib ``tomllib``), one flat key per flag.

listen = "127.0.0.1:3000"
max-message-size = "4MiB"
echo = ["/echo"]

Keys are spelled like the flags without ``--``, dashes and all; the underscore spelling
is refused with the right one, so one file never holds one setting twice. Values are
checked by the flag's own converter: a size may be ``4194304`` or ``"4MiB"``, a
repeatable flag takes an array, a switch ``true``/``false``. Every problem is reported,
each with the file and its line (tomllib gives none for a value it parsed: the line is
found by scanning the text for the key), and the engine does not start with any.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any
from urllib.parse import urlsplit

from engine.cli import values
from engine.cli.parser import Setting

__all__ = ["LoadedFile", "convert", "load_file"]

#: Keys whose value is a credential: never echoed in a message; a file holding one
#: should be readable by the engine's user only.
SECRET_KEYS = frozenset({"jwt-secret", "api-key", "admin-password"})
#: Keys the file cannot set.
NOT_IN_FILE = {"config": "a config file cannot name another one"}


class _WrongType(ValueError):
    """A value of the wrong TOML type: its message names the type, never the value."""


@dataclass(slots=True)
class LoadedFile:
    path: str
    #: Key → value converted as its flag would be, for the keys without error.
    values: dict[str, Any] = field(default_factory=dict)
    #: ``FILE:LINE: message`` (``FILE: message`` when no line applies), in file order.
    errors: list[str] = field(default_factory=list)
    warnings: tuple[str, ...] = ()
    #: Key → the line that sets it (0: not found).
    lines: dict[str, int] = field(default_factory=dict)


def load_file(path: str, settings: Mapping[str, Setting]) -> LoadedFile:
    """Read, parse and check ``path`` against ``settings`` (the parser's registry)."""
    loaded = LoadedFile(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        mode = os.stat(path).st_mode
    except OSError as exc:
        loaded.errors.append(f"{path}: cannot read it: {exc.strerror or exc}")
        return loaded
    except UnicodeDecodeError as exc:
        loaded.errors.append(f"{path}: not UTF-8 text (byte {exc.start})")
        return loaded
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        where = f"{path}:{found.group(1)}" if found else path
        loaded.errors.append(f"{where}: not valid TOML: {exc}")
        return loaded
    lines = text.splitlines()
    problems: list[tuple[int, str]] = []  # (line or 0, message)
    for key, value in document.items():
        line = loaded.lines[key] = line_of(lines, key)
        try:
            loaded.values[key] = convert(key, value, settings)
        except ValueError as exc:
            problems.append((line, str(exc)))
    for line, message in sorted(problems, key=lambda p: (p[0] == 0, p[0])):
        loaded.errors.append(f"{path}:{line}: {message}" if line else f"{path}: {message}")
    loaded.warnings = _permission_warnings(path, mode, loaded.values)
    return loaded


def convert(key: str, value: Any, settings: Mapping[str, Setting]) -> Any:
    """The value of ``key`` as its flag would give it; ValueError says what is wrong."""
    if key in NOT_IN_FILE:
        raise ValueError(f"{key}: {NOT_IN_FILE[key]}")
    setting = settings.get(key)
    if setting is None:
        raise ValueError(_unknown(key, value, settings))
    action = setting.action
    try:
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise _WrongType(f"wants true or false, got {_kind(value)}")
            return value
        if isinstance(action, argparse._AppendAction):
            if not isinstance(value, list):
                raise _WrongType(f'wants an array, e.g. {key} = ["{_placeholder(action)}"]')
            return [_scalar(action, item) for item in value]
        return _scalar(action, value)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        if key in SECRET_KEYS and not isinstance(exc, _WrongType):  # it may quote the value
            raise ValueError(f"{key}: not a valid value") from None
        raise ValueError(f"{key}: {exc}") from None


def _scalar(action: argparse.Action, value: Any) -> Any:
    """One TOML value → the flag's value (type checked first: "30" is not a number)."""
    convert = action.type if callable(action.type) else str
    if convert is str:
        if not isinstance(value, str):
            raise _WrongType(f"wants a string, got {_kind(value)}")
        result: Any = value
    elif convert is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _WrongType(f"wants a whole number, got {_kind(value)}")
        result = value
    elif convert is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _WrongType(f"wants a number, got {_kind(value)}")
        result = float(value)
    elif convert is values.octal:
        # 0o600 and 384 are the same integer to tomllib, and 600 a different one.
        if not isinstance(value, str):
            raise _WrongType(f'wants the octal mode as a string, e.g. "0600", got {_kind(value)}')
        result = convert(value)
    else:  # a converter of text: sizes, uid lists, rules; numbers and arrays as text
        if isinstance(value, list) and all(_is_plain(v) for v in value):
            text = ",".join(str(v) for v in value)
        elif _is_plain(value):
            text = str(value)
        else:
            raise _WrongType(f"wants a string, got {_kind(value)}")
        result = convert(text)
    if action.choices is not None and result not in action.choices:
        raise ValueError(f"{result!r}: choose from {', '.join(map(str, action.choices))}")
    return result


def _is_plain(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def _unknown(key: str, value: Any, settings: Mapping[str, Setting]) -> str:
    known = [k for k in settings if k not in NOT_IN_FILE]
    what = f"table [{key}]" if isinstance(value, dict) else f"key {key!r}"
    dashed = key.replace("_", "-")
    if dashed != key and dashed in settings:
        return f"unknown {what}: keys are spelled like the flags, with dashes: {dashed!r}"
    message = f"unknown {what}"
    close = difflib.get_close_matches(dashed, known, n=1, cutoff=0.6)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    if isinstance(value, dict):
        message += "; settings are top-level keys, not in tables"
    return message


def _kind(value: Any) -> str:
    """The TOML name of a value's type, never the value (it may be a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime | date | time):
        return "a date or time"
    return type(value).__name__  # pragma: no cover - tomllib makes no other type


def _placeholder(action: argparse.Action) -> str:
    metavar = action.metavar
    return metavar if isinstance(metavar, str) else "..."


def line_of(lines: list[str], key: str) -> int:
    """The 1-based line that sets top-level ``key`` (``key =``, ``key.x =``, ``[key]``), or 0."""
    name = "|".join(re.escape(k) for k in (key, f'"{key}"', f"'{key}'"))
    assign = re.compile(rf"\s*(?:{name})\s*[=.]")
    header = re.compile(rf"\s*\[\[?\s*(?:{name})\s*[\].]")
    for number, line in enumerate(lines, 1):
        if assign.match(line) or header.match(line):
            return number
    return 0


def _permission_warnings(path: str, mode: int, found: Mapping[str, Any]) -> tuple[str, ...]:
    """Warn when others may read the file's secrets or change its settings (no values)."""
    warnings = []
    secrets = [k for k in sorted(found) if k in SECRET_KEYS]
    redis = found.get("redis")
    if isinstance(redis, str) and urlsplit(redis).password:
        secrets.append("redis (its password)")
    perms = stat.S_IMODE(mode)
    if secrets and perms & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(
            f"{path} holds {', '.join(secrets)} and is readable by other users "
            f"(mode {perms:04o}): chmod 600 {path}"
        )
    if perms & (stat.S_IWGRP | stat.S_IWOTH):
        warnings.append(
            f"{path} is writable by other users (mode {perms:04o}): they can change "
            f"the engine's settings; chmod go-w {path}"
        )
    return tuple(warnings)
