"""CBOR ⇄ IPC messages, with the strict validation of docs/ipc.md §3.

Decoding accepts a profile of CBOR: definite lengths, text keys, no duplicate keys,
no tags, nesting at most 32 deep, and only the value types a message declares.
Anything else raises ``IpcProtocolError`` with the rule that was broken; nothing
else escapes. The validators are derived once, at import, from the annotations of
``messages.py``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import types
import typing
from collections.abc import Callable
from typing import Any

import cbor2

from . import messages as m
from .errors import IpcError, IpcProtocolError

__all__ = ["ENGINE_RECEIVES", "WORKER_RECEIVES", "decode", "encode"]

MAX_DEPTH = 32
_MAX_INT = 2**63 - 1

#: Message types each side may receive.
ENGINE_RECEIVES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (
        m.Hello,
        m.Reply,
        m.Join,
        m.Leave,
        m.Emit,
        m.Close,
        m.Query,
        m.Publish,
        m.Ping,
        m.Pong,
        m.Drain,
    )
}
WORKER_RECEIVES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (
        m.Welcome,
        m.Reject,
        m.HttpRequest,
        m.Connect,
        m.Message,
        m.Event,
        m.Disconnect,
        m.Presence,
        m.Result,
        m.Ping,
        m.Pong,
        m.Drain,
    )
}

Validator = Callable[[Any, str], Any]


class _Bad(Exception):
    def __init__(self, path: str, expected: str) -> None:
        super().__init__(f"{path}: expected {expected}")


def _scalar(kind: type, name: str) -> Validator:
    def check(value: Any, path: str) -> Any:
        # type() and not isinstance(): bool is an int, and must not pass for one.
        if type(value) is not kind:
            raise _Bad(path, name)
        if kind is int and not -_MAX_INT <= typing.cast(int, value) <= _MAX_INT:
            raise _Bad(path, "a 64-bit integer")
        return value

    return check


def _float(value: Any, path: str) -> Any:
    if type(value) is int:
        return float(value)
    if type(value) is not float or not math.isfinite(value):
        raise _Bad(path, "a finite number")
    return value


def _json_like(value: Any, path: str, depth: int = 0) -> Any:
    """``Any`` fields carry JSON-shaped data: maps with text keys, arrays, scalars."""
    if depth > MAX_DEPTH:
        raise _Bad(path, f"nesting at most {MAX_DEPTH} deep")
    kind = type(value)
    if kind in (str, int, bool) or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _Bad(path, "a finite number")
        return value
    if kind is list:
        return [_json_like(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _Bad(path, "text keys")
            _json_like(v, f"{path}.{k}", depth + 1)
        return value
    raise _Bad(path, "JSON-like data")


def _validator(hint: Any) -> Validator:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return _json_like
    if hint is float:
        return _float
    if hint in (int, str, bytes, bool):
        return _scalar(hint, hint.__name__)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {hint}")
        check_inner = _validator(inner[0])

        def optional(value: Any, path: str) -> Any:
            return None if value is None else check_inner(value, path)

        return optional
    if origin is list:
        (item,) = args
        check_item = _validator(item)

        def list_of(value: Any, path: str) -> Any:
            if type(value) is not list:
                raise _Bad(path, "an array")
            return [check_item(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return list_of
    if origin is tuple:
        checks = [_validator(a) for a in args]

        def fixed(value: Any, path: str) -> Any:
            if type(value) is not list or len(value) != len(checks):
                raise _Bad(path, f"an array of {len(checks)}")
            return tuple(
                c(v, f"{path}[{i}]") for i, (c, v) in enumerate(zip(checks, value, strict=True))
            )

        return fixed
    if origin is dict:
        key_check, value_check = (_validator(a) for a in args)

        def map_of(value: Any, path: str) -> Any:
            if type(value) is not dict:
                raise _Bad(path, "a map")
            return {key_check(k, path): value_check(v, f"{path}.{k}") for k, v in value.items()}

        return map_of
    if dataclasses.is_dataclass(hint):
        return _struct(typing.cast(type, hint))
    raise TypeError(f"no validator for {hint!r}")


_STRUCTS: dict[type, Validator] = {}


def _struct(cls: type) -> Validator:
    """Validator building ``cls`` from a map: required fields, defaults, no extras."""
    if cls in _STRUCTS:
        return _STRUCTS[cls]
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name in hints]
    checks = {f.name: _validator(hints[f.name]) for f in fields}
    required = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    allowed = set(checks) | {"t"}

    def build(value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise _Bad(path, "a map")
        for key in value:
            if key not in allowed:
                raise _Bad(f"{path}.{key}", "no such field")
        missing = required - value.keys()
        if missing:
            raise IpcProtocolError(
                IpcError.MISSING_FIELD, f"{path}.{sorted(missing)[0]} is required"
            )
        kwargs = {
            name: check(value[name], f"{path}.{name}")
            for name, check in checks.items()
            if name in value
        }
        return cls(**kwargs)

    _STRUCTS[cls] = build
    return build


for _cls in {**ENGINE_RECEIVES, **WORKER_RECEIVES}.values():
    _struct(_cls)


def _reject_tag(decoder: object, tag: object) -> object:
    raise ValueError("CBOR tags are not allowed")


def _reject_semantic(decoder: Any, *args: Any) -> Any:
    raise ValueError("CBOR tags are not allowed")


# Tags cbor2 would otherwise decode by itself (datetimes, bignums, decimals, sets...).
_NO_SEMANTICS = dict.fromkeys(
    (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 100, 256, 258, 260, 261, 1004, 55799),
    _reject_semantic,
)


def decode(body: bytes, receives: dict[str, type]) -> Any:
    """One frame body → a message object of a type in ``receives``.

    Raises:
        IpcProtocolError: for any body that is not a valid message (see ``IpcError``).
    """
    stream = io.BytesIO(body)
    try:
        item = cbor2.CBORDecoder(
            stream,
            tag_hook=_reject_tag,
            semantic_decoders=_NO_SEMANTICS,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
            max_depth=MAX_DEPTH,
        ).decode()
    except Exception as exc:
        # cbor2 raises CBORDecodeError, and on hostile input also ValueError,
        # OverflowError, RecursionError...: all of them mean "not our CBOR".
        text = f"{exc} ({exc.__cause__})" if exc.__cause__ else str(exc)
        reason = IpcError.UNSUPPORTED_CBOR if _is_profile_error(text) else IpcError.BAD_CBOR
        raise IpcProtocolError(reason, text) from None
    if stream.tell() != len(body):
        raise IpcProtocolError(IpcError.BAD_CBOR, "trailing bytes after the CBOR item")
    if type(item) is not dict or type(item.get("t")) is not str:
        raise IpcProtocolError(IpcError.NOT_A_MESSAGE, "expected a map with a text 't'")
    cls = receives.get(item["t"])
    if cls is None:
        raise IpcProtocolError(IpcError.UNKNOWN_TYPE, f"unknown message type {item['t']!r}")
    try:
        return _STRUCTS[cls](item, item["t"])
    except _Bad as exc:
        raise IpcProtocolError(IpcError.BAD_FIELD, str(exc)) from None


def _is_profile_error(text: str) -> bool:
    lowered = text.lower()
    return any(
        word in lowered
        for word in ("tag", "indefinite", "duplicate", "depth", "hashable", "undefined", "simple")
    )


_OMIT = object()  # "no default": the field is always written
# Written as they are; anything else (lists, nested messages) goes through _plain.
_SCALARS = frozenset({int, str, bytes, bool, float, dict})

# Per class: (type tag, [(field, default or _OMIT, omit-when-empty)]), built once;
# dataclasses.fields() per message costs more than the encoding itself.
_LAYOUTS: dict[type, tuple[str | None, list[tuple[str, Any, bool]]]] = {}


def _layout(cls: type) -> tuple[str | None, list[tuple[str, Any, bool]]]:
    layout = _LAYOUTS.get(cls)
    if layout is None:
        fields = [
            (
                f.name,
                f.default if f.default is not dataclasses.MISSING else _OMIT,
                f.default_factory is not dataclasses.MISSING,
            )
            for f in dataclasses.fields(cls)
        ]
        layout = _LAYOUTS[cls] = (getattr(cls, "TYPE", None), fields)
    return layout


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _LAYOUTS or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return _to_map(value)
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    return value


def _to_map(msg: Any) -> dict[str, Any]:
    tag, fields = _layout(type(msg))
    out: dict[str, Any] = {} if tag is None else {"t": tag}
    for name, default, empty_default in fields:
        value = getattr(msg, name)
        # Omit what the receiver would default anyway: smaller frames, same meaning.
        if value is None or value is default or (empty_default and not value):
            continue
        if default is not _OMIT and value == default:
            continue
        if type(value) not in _SCALARS:
            value = _plain(value)
        out[name] = value
    return out


def encode(msg: Any) -> bytes:
    """A message object → CBOR body (without the length prefix)."""
    return cbor2.dumps(_to_map(msg))
