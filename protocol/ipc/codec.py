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
import threading
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

Validator = Callable[[Any], Any]


class _Bad(Exception):
    """A value that is not what its field declares. ``where`` is its path below the
    message (``.service.http[0].path``), filled in on the way out: a valid message
    builds no path strings at all."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected
        self.where = ""

    def under(self, step: str) -> _Bad:
        self.where = step + self.where
        return self


def _scalar(kind: type, name: str) -> Validator:
    if kind is int:

        def check_int(value: Any) -> Any:
            # type() and not isinstance(): bool is an int, and must not pass for one.
            if type(value) is not int:
                raise _Bad(name)
            if not -_MAX_INT <= value <= _MAX_INT:
                raise _Bad("a 64-bit integer")
            return value

        return check_int

    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise _Bad(name)
        return value

    return check


def _float(value: Any) -> Any:
    if type(value) is int:
        return float(value)
    if type(value) is not float or not math.isfinite(value):
        raise _Bad("a finite number")
    return value


def _json_like(value: Any, depth: int = 0) -> Any:
    """``Any`` fields carry JSON-shaped data: maps with text keys, arrays, scalars."""
    if depth > MAX_DEPTH:
        raise _Bad(f"nesting at most {MAX_DEPTH} deep")
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if not math.isfinite(value):
            raise _Bad("a finite number")
        return value
    if kind is list:
        for i, v in enumerate(value):
            try:
                _json_like(v, depth + 1)
            except _Bad as exc:
                raise exc.under(f"[{i}]") from None
        return value
    if kind is dict:
        for k, v in value.items():
            if type(k) is not str:
                raise _Bad("text keys")
            try:
                _json_like(v, depth + 1)
            except _Bad as exc:
                raise exc.under(f".{k}") from None
        return value
    raise _Bad("JSON-like data")


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

        def optional(value: Any) -> Any:
            return None if value is None else check_inner(value)

        return optional
    if origin is list:
        (item,) = args
        check_item = _validator(item)

        def list_of(value: Any) -> Any:
            if type(value) is not list:
                raise _Bad("an array")
            out = []
            for i, v in enumerate(value):
                try:
                    out.append(check_item(v))
                except _Bad as exc:
                    raise exc.under(f"[{i}]") from None
            return out

        return list_of
    if origin is tuple:
        checks = [_validator(a) for a in args]

        def fixed(value: Any) -> Any:
            if type(value) is not list or len(value) != len(checks):
                raise _Bad(f"an array of {len(checks)}")
            out = []
            for i, (c, v) in enumerate(zip(checks, value, strict=True)):
                try:
                    out.append(c(v))
                except _Bad as exc:
                    raise exc.under(f"[{i}]") from None
            return tuple(out)

        return fixed
    if origin is dict:
        key_check, value_check = (_validator(a) for a in args)

        def map_of(value: Any) -> Any:
            if type(value) is not dict:
                raise _Bad("a map")
            out = {}
            for k, v in value.items():
                try:
                    out[key_check(k)] = value_check(v)
                except _Bad as exc:
                    raise exc.under(f".{k}") from None
            return out

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
    required = frozenset(
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    checks_get = checks.get
    # Fields of one scalar type (or None): a value of exactly that type needs no
    # validator call (ints still get their range check), the common case by far.
    fast_get = {f.name: k for f in fields if (k := _plain_kind(hints[f.name])) is not None}.get

    def build(value: Any) -> Any:
        if type(value) is not dict:
            raise _Bad("a map")
        kwargs = {}
        for name, item in value.items():
            kind = fast_get(name)
            if (
                kind is not None
                and type(item) is kind
                and (kind is not int or -_MAX_INT <= item <= _MAX_INT)  # type: ignore[operator]
            ):
                kwargs[name] = item
                continue
            check = checks_get(name)
            if check is None:
                if name == "t":
                    continue
                raise _Bad("no such field").under(f".{name}")
            try:
                kwargs[name] = check(item)
            except _Bad as exc:
                raise exc.under(f".{name}") from None
        if len(kwargs) < len(required) or not required <= kwargs.keys():
            missing = sorted(required - kwargs.keys())[0]
            raise _Missing(missing)
        return cls(**kwargs)

    _STRUCTS[cls] = build
    return build


def _plain_kind(hint: Any) -> type | None:
    """``int``, ``str``, ``bytes`` or ``bool`` for a field of that type (optional or
    not), else None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = inner[0] if len(inner) == 1 else None
    return hint if hint in (int, str, bytes, bool) else None


class _Missing(_Bad):
    """A required field is absent (its own error code, MISSING_FIELD)."""

    def __init__(self, name: str) -> None:
        super().__init__("")
        self.where = f".{name}"


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


#: One decoder per thread, given each body in turn: building a CBORDecoder with its
#: options costs more than decoding a reply with it.
_LOCAL = threading.local()


def _new_decoder() -> Any:
    return cbor2.CBORDecoder(
        io.BytesIO(b""),
        tag_hook=_reject_tag,
        semantic_decoders=_NO_SEMANTICS,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
        max_depth=MAX_DEPTH,
    )


def decode(body: bytes, receives: dict[str, type]) -> Any:
    """One frame body → a message object of a type in ``receives``.

    Raises:
        IpcProtocolError: for any body that is not a valid message (see ``IpcError``).
    """
    stream = io.BytesIO(body)
    local = _LOCAL
    decoder: Any = getattr(local, "decoder", None)
    try:
        if decoder is None:
            decoder = local.decoder = _new_decoder()
        decoder.fp = stream
        item = decoder.decode()
    except Exception as exc:
        local.decoder = None  # never reuse a decoder an error left half-way
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
        return _STRUCTS[cls](item)
    except _Missing as exc:
        raise IpcProtocolError(
            IpcError.MISSING_FIELD, f"{item['t']}{exc.where} is required"
        ) from None
    except _Bad as exc:
        where = f"{item['t']}{exc.where}"
        raise IpcProtocolError(IpcError.BAD_FIELD, f"{where}: expected {exc.expected}") from None


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
    writer = _WRITERS.get(type(msg))
    if writer is None:
        writer = _WRITERS[type(msg)] = _writer(type(msg))
    return writer(msg)


#: Per class, a function from a message to its map, generated from its layout: a
#: message is encoded on every request and reply, and a loop over the fields with
#: getattr and three comparisons each costs more than cbor2 itself.
_WRITERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _writer(cls: type) -> Callable[[Any], dict[str, Any]]:
    tag, fields = _layout(cls)
    lines = ["def write(msg):\n    out = {} if TAG is None else {'t': TAG}"]
    names: dict[str, Any] = {"TAG": tag, "_SCALARS": _SCALARS, "_plain": _plain}
    for i, (name, default, empty_default) in enumerate(fields):
        # Omit what the receiver would default anyway: smaller frames, same meaning.
        test = "v is not None"
        if empty_default:
            test += " and v"
        if default is not _OMIT:
            names[f"D{i}"] = default
            test += f" and v is not D{i} and v != D{i}"
        lines.append(f"    v = msg.{name}")
        lines.append(f"    if {test}:")
        lines.append(f"        out[{name!r}] = v if type(v) in _SCALARS else _plain(v)")
    lines.append("    return out")
    exec("\n".join(lines), names)
    return typing.cast(Callable[[Any], dict[str, Any]], names["write"])


def encode(msg: Any) -> bytes:
    """A message object → CBOR body (without the length prefix)."""
    return cbor2.dumps(_to_map(msg))
