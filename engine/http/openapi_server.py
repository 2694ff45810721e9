"""The OpenAPI 3.1 document of the server API (engine/http/server_api.py,
docs/server-api.md): every method's request body and answers, as the code gives them.

Written by hand next to the code it describes, and held to it by a schemathesis run
against a live engine (tests/engine/test_server_api_schemathesis.py): a field added to
a method in ``ServerApi.methods`` without its schema here fails that test's requests
(``additionalProperties: false`` is the code's "unknown fields are 400").
"""

from __future__ import annotations

from typing import Any

from engine.brokers.history import MAX_HISTORY_LIMIT
from engine.http.server_api import _MAX_REASON, _SENDABLE, MAX_BROADCAST_ROOMS, PREFIX
from protocol import ErrorCode

__all__ = ["ERROR_SCHEMA", "server_api_document"]

Schema = dict[str, Any]

#: The body of every Linkd HTTP error (engine/api/request.py ``error_body``).
ERROR_SCHEMA: Schema = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
                "message": {"type": "string"},
            },
        }
    },
}

_TEXT: Schema = {"type": "string", "minLength": 1}
_INT: Schema = {"type": "integer"}
_COUNT: Schema = {"type": "integer", "minimum": 0}
#: A connection id of an ``exclude`` list (``ctx.socket.id``): a number, or its
#: decimal string.
_CONN_ID: Schema = {
    "description": "a connection id: an integer, or its decimal string",
    "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]{1,19}$"}],
}
#: A target connection: this node's id, or ``"<node>:<id>"`` (engine/brokers/commands.py).
_CONN: Schema = {
    "description": "a connection id of the node called (an integer or its decimal "
    "string), or <node>:<id> for a connection of another node",
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": "^([^:]{1,64}:)?[0-9]{1,19}$"},
    ],
}
_EVENT: Schema = {
    "type": "string",
    "minLength": 1,
    "not": {"pattern": "^linkd\\."},
    "description": "the event's type; linkd.* types are the engine's own",
}
_DATA: Schema = {"description": "any JSON value: the event's data"}
_EXCLUDE: Schema = {"type": "array", "items": _CONN_ID, "description": "connections left out"}
_OFFSET: Schema = {
    "type": "object",
    "required": ["epoch", "seq"],
    "additionalProperties": False,
    "properties": {"epoch": {"type": "string"}, "seq": _INT},
}
_TARGET: Schema = {
    "oneOf": [
        {"required": ["user"]},
        {"required": ["connection"]},
    ],
}


#: With ``--redis``, a command's answer also says how many nodes acted on it.
_NODES_ANSWERED: Schema = {
    "nodes_answered": {"type": "integer", "minimum": 0},
    "complete": {"type": "boolean"},
}


def _object(properties: Schema, required: tuple[str, ...] = (), **more: Any) -> Schema:
    schema: Schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return {**schema, **more}


_PUBLISH = _object(
    {
        "room": _TEXT,
        "user": _TEXT,
        "connection": _CONN,
        "everyone": {"type": "boolean"},
        "event": _EVENT,
        "data": _DATA,
        "exclude": _EXCLUDE,
    },
    ("event",),
    oneOf=[
        {"required": ["room"]},
        {"required": ["user"]},
        {"required": ["connection"]},
        {"required": ["everyone"], "properties": {"everyone": {"const": True}}},
    ],
    description="exactly one target: room, user, connection or everyone: true",
)
_CLOSE_CODE: Schema = {
    "type": "integer",
    "anyOf": [{"enum": sorted(_SENDABLE)}, {"minimum": 3000, "maximum": 4999}],
    "default": 1000,
}
_USERS: Schema = {
    "type": "array",
    "items": _object(
        {
            "userId": {"type": "string"},
            "username": {"type": ["string", "null"]},
            "connections": _COUNT,
        },
        ("userId", "username", "connections"),
    ),
}

#: method → (summary, request body schema, 200 body schema, may answer 503).
METHODS: dict[str, tuple[str, Schema, Schema, bool]] = {
    "publish": (
        "Publish an event to a room, a user, a connection or everyone",
        _PUBLISH,
        _object({"offset": _OFFSET, "delivered": {"enum": [0, 1]}, **_NODES_ANSWERED}),
        False,
    ),
    "broadcast": (
        "Publish one event to several rooms",
        _object(
            {
                "rooms": {
                    "type": "array",
                    "items": _TEXT,
                    "minItems": 1,
                    "maxItems": MAX_BROADCAST_ROOMS,
                },
                "event": _EVENT,
                "data": _DATA,
                "exclude": _EXCLUDE,
            },
            ("rooms", "event"),
        ),
        _object(
            {
                "results": {
                    "type": "array",
                    "items": _object({"room": {"type": "string"}, "offset": _OFFSET}, ("room",)),
                }
            },
            ("results",),
        ),
        False,
    ),
    "presence": (
        "The authenticated users in a room",
        _object({"room": _TEXT}, ("room",)),
        _object({"room": {"type": "string"}, "users": _USERS}, ("room", "users")),
        True,
    ),
    "presence_stats": (
        "How many users and connections are in a room",
        _object({"room": _TEXT}, ("room",)),
        _object(
            {"room": {"type": "string"}, "users": _COUNT, "connections": _COUNT},
            ("room", "users", "connections"),
        ),
        True,
    ),
    "rooms": (
        "The rooms with a connection on this node",
        _object({"prefix": {"type": "string"}}),
        _object(
            {
                "rooms": {
                    "type": "array",
                    "items": _object(
                        {"room": {"type": "string"}, "members": _COUNT}, ("room", "members")
                    ),
                },
                "more": {"type": "boolean"},
                "scope": {"const": "node"},
            },
            ("rooms", "more", "scope"),
        ),
        False,
    ),
    "history": (
        "A page of a room's kept events",
        _object(
            {
                "room": _TEXT,
                "since": {"type": "integer", "minimum": 0},
                "epoch": _TEXT,
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_HISTORY_LIMIT,
                    "default": 100,
                },
            },
            ("room",),
        ),
        _object(
            {
                "room": {"type": "string"},
                "epoch": {"type": ["string", "null"]},
                "seq": _COUNT,
                "complete": {"type": "boolean"},
                "more": {"type": "boolean"},
                "events": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "description": "an event as clients received it, plus time (ms)",
                    },
                },
            },
            ("room", "epoch", "seq", "complete", "more", "events"),
        ),
        True,
    ),
    "disconnect": (
        "Close a user's connections on this node, or one connection",
        _object(
            {
                "user": _TEXT,
                "connection": _CONN,
                "code": _CLOSE_CODE,
                "reason": {
                    "type": "string",
                    "maxLength": _MAX_REASON,
                    "description": f"at most {_MAX_REASON} bytes of UTF-8",
                },
            },
            **_TARGET,
        ),
        _object({"disconnected": _COUNT, **_NODES_ANSWERED}, ("disconnected",)),
        False,
    ),
    "subscribe": (
        "Join a room for a user's connections on this node, or one connection",
        _object({"user": _TEXT, "connection": _CONN, "room": _TEXT}, ("room",), **_TARGET),
        _object({"subscribed": _COUNT, **_NODES_ANSWERED}, ("subscribed",)),
        False,
    ),
    "unsubscribe": (
        "Leave a room for a user's connections on this node, or one connection",
        _object({"user": _TEXT, "connection": _CONN, "room": _TEXT}, ("room",), **_TARGET),
        _object({"unsubscribed": _COUNT, **_NODES_ANSWERED}, ("unsubscribed",)),
        False,
    ),
    "info": (
        "This node: version, uptime, connections, services",
        _object({}, maxProperties=0),
        _object(
            {
                "node": {"type": ["string", "null"]},
                "version": {"type": "string"},
                "uptime": {"type": "number", "minimum": 0},
                "draining": {"type": "boolean"},
                "connections": _object(
                    {"http": _COUNT, "websocket": _COUNT}, ("http", "websocket")
                ),
                "users": _COUNT,
                "rooms": _COUNT,
                "services": {"type": "object", "additionalProperties": _COUNT},
                "broker": {"enum": ["connected", "unreachable"]},
                "nodes": {"type": ["array", "null"], "items": {"type": "string"}},
            },
            ("node", "version", "uptime", "draining", "connections", "users", "rooms", "services"),
        ),
        False,
    ),
}


def _error(description: str, headers: Schema | None = None) -> Schema:
    answer: Schema = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def _header(description: str, schema: Schema) -> Schema:
    return {"description": description, "schema": schema, "required": True}


def _operation(name: str, summary: str, request: Schema, answer: Schema, may_503: bool) -> Schema:
    responses: Schema = {
        "200": {"description": "done", "content": {"application/json": {"schema": answer}}},
        "400": _error("not JSON, not an object, a wrong or missing field, unknown fields"),
        "401": _error(
            "no Authorization: apikey <key>, or a key that is not configured",
            {"WWW-Authenticate": _header("the scheme to use", {"const": "apikey"})},
        ),
        "404": _error("the server API is off (no --api-key)"),
        "405": _error("not POST", {"Allow": _header("the allowed method", {"const": "POST"})}),
        "413": _error("the body is over --api-max-body"),
        "429": _error(
            "over --api-rate per key (or per address while its key is wrong)",
            {"Retry-After": _header("seconds to wait", {"type": "string", "pattern": "^[0-9]+$"})},
        ),
    }
    if may_503:
        responses["503"] = _error("Redis cannot be read now (with --redis)")
    return {
        "operationId": name,
        "summary": summary,
        "description": f"docs/server-api.md, `{name}`.",
        "requestBody": {
            "required": False,
            "description": "a JSON object; an empty body is {}",
            "content": {"application/json": {"schema": request}},
        },
        "responses": responses,
    }


def server_api_document(version: str) -> Schema:
    """The OpenAPI 3.1 document of the server API (its paths are on the listener that
    serves it: the admin listener, or the client port with --api-on-client-port)."""
    paths = {
        f"{PREFIX}{name}": {"post": _operation(name, summary, request, answer, may_503)}
        for name, (summary, request, answer, may_503) in METHODS.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Linkd server API",
            "version": version,
            "description": (
                "Publish, presence, history and connection control for backends "
                "(docs/server-api.md). Send `Authorization: apikey <key>`."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"apikey": []}],
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "apikey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": (
                        "The header's value is `apikey ` followed by a key given to "
                        "--api-key: `Authorization: apikey <key>`."
                    ),
                }
            },
        },
    }
