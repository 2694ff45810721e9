"""JSON for what handlers return and emit, with a log-worthy account of what failed."""

from __future__ import annotations

import inspect
from typing import Any

import orjson

from .errors import InternalError

__all__ = ["EncodeError", "describe_unencodable", "dumps", "event_text"]

# orjson refuses deeper nesting than this; the search below stops there too.
_MAX_DEPTH = 254


class EncodeError(Exception):
    """A value JSON cannot encode; the message says which part and its Python type."""


def dumps(value: Any) -> bytes:
    """``orjson.dumps(value)``, or EncodeError naming the part that cannot be encoded."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise EncodeError(describe_unencodable(value, exc)) from None


def describe_unencodable(value: Any, exc: Exception) -> str:
    """``"set at ['when'] (Type is not JSON serializable: set)"``: the first part of
    ``value`` orjson refuses, where it is, and orjson's own reason."""
    found = _find(value, "", 0)
    path, kind = found if found is not None else ("", type(value).__qualname__)
    where = f" at {path}" if path else ""
    hint = ""
    if inspect.iscoroutine(value):
        hint = " (a coroutine: a missing await?)"
        value.close()  # nobody will await it: no "never awaited" warning later
    return f"{kind}{where} ({exc}){hint}"


def _find(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    if depth > _MAX_DEPTH:
        return path, "nesting deeper than JSON allows (a cycle?)"
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}[{key!r}]"
            if not isinstance(key, str):
                return here, f"{type(key).__qualname__} key"
            found = _find(item, here, depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find(item, f"{path}[{index}]", depth + 1)
            if found is not None:
                return found
        return None
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return path, type(value).__qualname__
    return None


def event_text(event: str, data: Any) -> bytes:
    """The client's whole event text ``{"type", "data"}``; the engine forwards it untouched.

    Raises:
        InternalError: ``data`` cannot be encoded (raised in the handler that emits:
            logged as its failure, INTERNAL to the client).
    """
    try:
        return orjson.dumps({"type": event, "data": data})
    except orjson.JSONEncodeError as exc:
        what = describe_unencodable(data, exc)
        raise InternalError(f"emit {event!r}: data JSON cannot encode: {what}") from None
