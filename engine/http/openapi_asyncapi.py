"""The AsyncAPI 3.0 document of a service's WebSocket endpoint (docs/clients.md, the
envelope; docs/ipc.md §4.2, what the engine answers): what clients may send, what each
message gets back, and what the engine and the service may push.

The client contract it states, as engine/services/routing.py implements it:

- a client sends ``{"type", "data", "id"?}``; every message that carries an ``id`` (a
  string or a number) gets exactly one ack, ``{"id", "type", "data"}`` on success or
  ``{"id", "type", "error": {"code", "message", ...}}``, engine refusals included
  (``UNKNOWN_MESSAGE_TYPE``, ``RATE_LIMITED``); without an ``id`` a success gets
  nothing and an error comes back as ``{"type", "error"}``;
- a binary frame (``WsRoute.binary``) has no envelope and no ack;
- ``linkd.*`` events come from the engine itself (docs/clients.md, "Engine events").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from protocol.ipc import messages as m

if TYPE_CHECKING:
    from engine.config import Config
    from engine.services.registry import ServiceEntry

__all__ = ["asyncapi_document", "asyncapi_index", "ws_server"]

Schema = dict[str, Any]

_ID: Schema = {"type": ["string", "integer"], "description": "asks for an ack"}
_ERROR: Schema = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string"},
        "message": {"type": "string"},
        "details": {"description": "extra detail, e.g. the fields that failed"},
        "retryAfter": {"type": "number", "description": "seconds (RATE_LIMITED)"},
    },
}
_POSITION: Schema = {
    "room": {"type": "string"},
    "user": {"type": "string"},
    "seq": {"type": "integer"},
    "epoch": {"type": "string"},
}
#: Events the engine itself sends (docs/clients.md, "Engine events"): name → (summary,
#: payload properties besides ``type``).
ENGINE_EVENTS: dict[str, tuple[str, Schema]] = {
    "linkd.recovered": (
        "a recovery's verdict for a room or the user stream",
        {
            "data": {
                "type": "object",
                "properties": {
                    **_POSITION,
                    "recovered": {"type": "boolean"},
                    "missed": {"type": "integer"},
                },
            }
        },
    ),
    "linkd.skip": ("an event this connection was excluded from: only its number", _POSITION),
    "linkd.rate_limited": (
        "messages without an id were refused by a rate limit",
        {
            "data": {
                "type": "object",
                "properties": {"dropped": {"type": "integer"}, "retryAfter": {"type": "number"}},
            }
        },
    ),
    "linkd.join_refused": (
        "a join over --max-rooms-per-connection was refused",
        {
            "data": {
                "type": "object",
                "properties": {"room": {"type": "string"}, "limit": {"type": "integer"}},
            }
        },
    ),
}
_KEY = re.compile(r"[^A-Za-z0-9._-]")


def ws_server(config: Config) -> tuple[str, str]:
    """(``ws`` or ``wss``, ``host:port``) of the client port, as configured."""
    scheme = "wss" if config.tls_cert else "ws"
    host = config.host if config.host not in ("", "0.0.0.0", "::") else "localhost"
    if ":" in host:
        host = f"[{host}]"
    return scheme, f"{host}:{config.port}"


def _key(name: str) -> str:
    """A component key (AsyncAPI allows ``[A-Za-z0-9._-]``) for a message type."""
    return _KEY.sub("_", name) or "_"


def _envelope(type_schema: Schema, data: Schema | None) -> Schema:
    properties: Schema = {"type": type_schema, "data": data if data is not None else {}}
    properties["id"] = _ID
    return {"type": "object", "required": ["type"], "properties": properties}


def _ack(type_schema: Schema, result: Schema | None) -> Schema:
    success = {
        "type": "object",
        "required": ["id", "type", "data"],
        "properties": {"id": _ID, "type": type_schema, "data": result or {}},
    }
    failure = {
        "type": "object",
        "required": ["type", "error"],
        "properties": {"id": _ID, "type": type_schema, "error": _ERROR},
    }
    return {"oneOf": [success, failure]}


def _docs(text: bytes | None) -> Schema:
    return _map(orjson.loads(text) if text is not None else None)


def _map(value: object) -> Schema:
    """``value`` if it is a JSON object, else ``{}`` (a worker's docs, read leniently)."""
    return value if isinstance(value, dict) else {}


def _text(docs: Mapping[str, Any], key: str) -> dict[str, str]:
    value = docs.get(key)
    return {key: value} if isinstance(value, str) else {}


class _Builder:
    """The channel, messages and operations of one endpoint, added one by one."""

    def __init__(self) -> None:
        self.messages: Schema = {}
        self.operations: Schema = {}

    def request(self, key: str, title: str, payload: Schema, ack: Schema, docs: Schema) -> None:
        """A message clients send, answered by an ack when it carries an id."""
        self.messages[key] = {"name": title, "title": title, "payload": payload, **docs}
        self.messages[f"{key}.ack"] = {
            "name": f"{title} ack",
            "summary": "the answer to a message that carried an id",
            "payload": ack,
        }
        self.operations[f"receive.{key}"] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/endpoint"},
            "messages": [{"$ref": f"#/channels/endpoint/messages/{key}"}],
            "reply": {
                "channel": {"$ref": "#/channels/endpoint"},
                "messages": [{"$ref": f"#/channels/endpoint/messages/{key}.ack"}],
            },
            "x-linkd-ack": "one ack for each message carrying an id",
        }

    def event(self, key: str, title: str, payload: Schema, docs: Schema) -> None:
        """An event the endpoint pushes to clients."""
        self.messages[key] = {"name": title, "title": title, "payload": payload, **docs}
        self.operations[f"send.{key}"] = {
            "action": "send",
            "channel": {"$ref": "#/channels/endpoint"},
            "messages": [{"$ref": f"#/channels/endpoint/messages/{key}"}],
        }


def _handled(builder: _Builder, ws: m.WsRoute, docs: Schema) -> None:
    """What clients may send: each type, each group prefix, the catch-all."""
    documented = _map(docs.get("types"))
    types = sorted({*ws.types, *documented})
    for name in types:
        entry = _map(documented.get(name))
        const = {"const": name}
        extra: Schema = {**_text(entry, "summary"), **_text(entry, "description")}
        extra["x-linkd-ordered"] = name not in ws.concurrent
        extra["x-linkd-idempotent"] = name not in ws.not_idempotent
        builder.request(
            _key(name),
            name,
            _envelope(const, entry.get("schema")),
            _ack(const, entry.get("result")),
            extra,
        )
    for prefix in ws.prefixes:
        pattern = {"type": "string", "pattern": "^" + re.escape(prefix)}
        builder.request(
            _key("group." + prefix.rstrip(".")),
            prefix + "*",
            _envelope(pattern, None),
            _ack(pattern, None),
            {"summary": f"any type starting with {prefix!r}, handled by the service's group"},
        )
    if ws.catch_all:
        anything = {"type": "string"}
        builder.request(
            "any",
            "any other type",
            _envelope(anything, None),
            _ack(anything, None),
            {"summary": "every other type: the service's catch-all handler takes it"},
        )
    if ws.auth != "none":
        refresh = {"const": "linkd.refresh"}
        builder.request(
            "linkd.refresh",
            "linkd.refresh",
            _envelope(refresh, {"type": "object", "properties": {"token": {"type": "string"}}}),
            _ack(
                refresh,
                {"type": "object", "properties": {"expiresAt": {"type": ["integer", "null"]}}},
            ),
            {"summary": "a new token for the open connection (the engine answers it)"},
        )


def _pushed(builder: _Builder, ws: m.WsRoute, docs: Schema) -> None:
    """What the endpoint may push: the service's declared events, the engine's own."""
    emits = _map(docs.get("emits"))
    for name in sorted(emits):
        entry = _map(emits[name])
        payload = {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"const": name},
                "data": entry.get("schema") or {},
                **_POSITION,
            },
        }
        extra = {**_text(entry, "summary"), **_text(entry, "description")}
        extra["x-linkd-source"] = "service"
        builder.event(_key(name), name, payload, extra)
    for name, (summary, properties) in ENGINE_EVENTS.items():
        payload = {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"const": name}, **properties},
        }
        builder.event(name, name, payload, {"summary": summary, "x-linkd-source": "engine"})
    failure = {
        "type": "object",
        "required": ["type", "error"],
        "properties": {"type": {"type": "string"}, "error": _ERROR},
    }
    builder.event(
        "error",
        "error",
        failure,
        {
            "summary": "a message without an id failed, or was not a valid envelope",
            "description": "type is the message's type, or 'error' when it had none",
            "x-linkd-source": "engine",
        },
    )
    if ws.binary:
        builder.messages["linkd.binary"] = {
            "name": "linkd.binary",
            "summary": "a binary frame: no envelope, no ack",
            "contentType": "application/octet-stream",
            "payload": {"type": "string", "format": "binary"},
        }
        builder.operations["receive.linkd.binary"] = {
            "action": "receive",
            "channel": {"$ref": "#/channels/endpoint"},
            "messages": [{"$ref": "#/channels/endpoint/messages/linkd.binary"}],
        }


def asyncapi_document(reg: m.Registration, config: Config) -> Schema:
    """The AsyncAPI 3.0 document of ``reg``'s WebSocket endpoint (it must have one)."""
    ws = reg.ws
    assert ws is not None
    docs = _docs(ws.docs)
    builder = _Builder()
    _handled(builder, ws, docs)
    _pushed(builder, ws, docs)
    scheme, host = ws_server(config)
    server: Schema = {"host": host, "protocol": scheme, "description": "the engine's client port"}
    if ws.auth != "none":
        server["security"] = [{"$ref": "#/components/securitySchemes/token"}]
    query: Schema = {
        "type": "object",
        "properties": {
            "token": {"type": "string", "description": "the JWT (or Authorization: Bearer)"},
            "recover": {"type": "string", "description": "positions to recover (recovery.md)"},
        },
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"{reg.name} WebSocket API",
            "version": reg.version,
            "description": (
                "Messages are JSON text frames {type, data, id}. Every message that "
                "carries an id gets one ack {id, type, data} or {id, type, error}; "
                "without an id a success gets nothing and an error is sent as "
                "{type, error}. linkd.* types are the engine's own."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {"engine": server},
        "channels": {
            "endpoint": {
                "address": ws.path,
                "title": f"{reg.name} at {ws.path}",
                "servers": [{"$ref": "#/servers/engine"}],
                "messages": builder.messages,
                "bindings": {"ws": {"method": "GET", "query": query}},
                "x-linkd-auth": ws.auth,
                "x-linkd-per-connection": ws.per_connection,
            }
        },
        "operations": builder.operations,
        "components": {
            "securitySchemes": {
                "token": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "a JWT; Authorization: Bearer <token> works as well",
                }
            }
        },
    }


def asyncapi_index(services: Mapping[str, ServiceEntry], prefix: str) -> Schema:
    """Where each service's AsyncAPI document is, for the services with a WebSocket path."""
    found = {
        name: {"path": entry.registration.ws.path, "document": f"{prefix}{name}.json"}
        for name, entry in sorted(services.items())
        if entry.registration.ws is not None
    }
    return {"services": found}
