"""The converters of flag values: one string (a flag, a ``LINKD_*`` variable) → a value.

Each raises ``argparse.ArgumentTypeError`` with a message that names what was wanted;
argparse prints it after the flag, the config file after the key and its line.
"""

from __future__ import annotations

import argparse
import os

from engine.config import parse_listen
from engine.limits.ratelimit import parse_type_limit
from engine.limits.slow import parse_rule
from protocol.http.forwarded import parse_networks
from protocol.http.origin import parse_origins

__all__ = [
    "cidrs",
    "cores",
    "listen",
    "octal",
    "origins",
    "processes",
    "rule",
    "rule_spec",
    "size",
    "type_limit_spec",
    "uids",
]


def listen(value: str) -> str:
    """``HOST:PORT``, ``:PORT`` or ``[::1]:PORT``, checked, returned as given."""
    try:
        parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def octal(value: str) -> int:
    """``0600``, ``600`` or ``0o600``: file permissions."""
    try:
        mode = int(value.strip().lower().removeprefix("0o"), 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an octal mode: {value!r}") from None
    if not 0 <= mode <= 0o7777:
        raise argparse.ArgumentTypeError(f"not an octal mode: {value!r}")
    return mode


def uids(value: str) -> tuple[int, ...]:
    """``1000,1001`` (empty: none)."""
    try:
        found = tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of uids: {value!r}") from None
    if any(u < 0 for u in found):
        raise argparse.ArgumentTypeError(f"not a list of uids: {value!r}")
    return found


def size(value: str) -> int:
    """``1048576``, ``64k``, ``1m``, ``16M``, ``1MiB``, ``1g`` (powers of 1024)."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if text and text[-1] in units:
            number = int(float(text[:-1]) * units[text[-1]])
        else:
            number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a size: {value!r} (bytes, or with k, m, g: 64k, 1MiB)"
        ) from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative: {value!r}")
    return number


def rule(spec: str) -> tuple[str, str]:
    """``PATTERN=POLICY`` → (pattern, policy label); ValueError names the bad part."""
    pattern, policy = parse_rule(spec)
    return pattern, policy.label


def rule_spec(spec: str) -> str:
    """``PATTERN=POLICY``, checked, returned as given (``rule`` parses it later)."""
    try:
        rule(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def type_limit_spec(spec: str) -> str:
    """``TYPE=RATE/BURST``, checked, returned as given."""
    try:
        parse_type_limit(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def cores() -> int:
    """The cores this process may run on: its affinity mask (taskset, a container's
    cpuset), not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def processes(value: str) -> int:
    """``auto`` (one per core, ``cores()``) or a number, at least 1."""
    text = value.strip().lower()
    if text == "auto":
        return cores()
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number of processes: {value!r} (or auto)"
        ) from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"--processes must be at least 1, got {number}")
    return number


def cidrs(value: str) -> tuple[str, ...]:
    """``10.0.0.0/8,127.0.0.1,::1``: networks or addresses, checked (empty: none)."""
    found = tuple(v.strip() for v in value.split(",") if v.strip())
    try:
        parse_networks(found)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return found


def origins(value: str) -> tuple[str, ...]:
    """``https://app.example.com,https://*.example.com``, checked (empty: none)."""
    found = tuple(v.strip() for v in value.split(",") if v.strip())
    try:
        parse_origins(found)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return found
