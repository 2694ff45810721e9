"""Published API documents on the admin listener (docs/server-api.md, "Published API
documents"): OpenAPI 3.1 of the server API and of the services' HTTP actions, AsyncAPI
3.0 of each service's WebSocket messages.

The services' documents are built from the live registry at each request (a worker
that registers later appears at the next one), from the routes the workers register
and the optional ``docs`` they attach (docs/ipc.md §4.1), which the registry bounded
and checked to be JSON objects when it accepted them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from engine.http.openapi_asyncapi import asyncapi_document, asyncapi_index, ws_server
from engine.http.openapi_server import server_api_document
from protocol.ipc import messages as m

if TYPE_CHECKING:
    from engine.http.server_api import Answer
    from engine.node import Node

__all__ = [
    "ASYNCAPI_INDEX_PATH",
    "ASYNCAPI_PREFIX",
    "SERVER_API_PATH",
    "SERVICES_PATH",
    "ApiDocuments",
    "path_template",
    "route_docs",
    "services_document",
]

#: Where each document is served (GET, admin listener, no key).
SERVER_API_PATH = "/api/openapi.json"
SERVICES_PATH = "/openapi.json"
ASYNCAPI_INDEX_PATH = "/asyncapi.json"
ASYNCAPI_PREFIX = "/asyncapi/"

Schema = dict[str, Any]
_JSON = [("content-type", "application/json")]

#: The error body of the client port: the shared ``{"error": {code, message}}``, with
#: ``details`` (a service's validation error...) and ``retryAfter`` (a rate limit).
CLIENT_ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"description": "extra detail, e.g. the fields that failed"},
                "retryAfter": {"type": "number", "description": "seconds"},
            },
        }
    },
}


def route_docs(text: bytes | None) -> Schema:
    """A route's registered documentation, parsed ({} without any)."""
    if text is None:
        return {}
    value = orjson.loads(text)
    return value if isinstance(value, dict) else {}


def path_template(path: str) -> tuple[str, list[str]]:
    """``/chat/rooms/:id`` → (``/chat/rooms/{id}``, ``["id"]``)."""
    names: list[str] = []
    segments = []
    for segment in path.split("/"):
        if segment.startswith(":"):
            names.append(segment[1:])
            segments.append("{" + segment[1:] + "}")
        else:
            segments.append(segment)
    return "/".join(segments), names


def _error(description: str) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _security(auth: str) -> list[Schema]:
    if auth == "required":
        return [{"bearer": []}]
    if auth == "optional":
        return [{"bearer": []}, {}]  # {}: anonymous is allowed too
    return []


def _operation(service: str, route: m.HttpRoute) -> Schema:
    docs = route_docs(route.docs)
    _, params = path_template(route.path)
    answer: Schema = {"description": docs.get("summary") or "the action's answer"}
    if "response" in docs:
        answer["content"] = {"application/json": {"schema": docs["response"]}}
    responses: Schema = {
        "200": answer,
        "503": _error("the service has no live worker, or is overloaded"),
        "504": _error("the worker did not answer within --request-timeout"),
        "default": _error("an error of the engine or of the service"),
    }
    if route.auth != "none":
        responses["401"] = _error("the token is missing (auth required) or does not verify")
    operation: Schema = {
        "operationId": f"{service}.{route.action}",
        "tags": [service],
        "security": _security(route.auth),
        "responses": responses,
    }
    for key in ("summary", "description"):
        if isinstance(docs.get(key), str):
            operation[key] = docs[key]
    if params:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in params
        ]
    if "request" in docs:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": docs["request"]}},
        }
    return operation


def services_document(state: Node) -> Schema:
    """The OpenAPI 3.1 document of every registered service's HTTP actions."""
    paths: dict[str, Schema] = {}
    tags = []
    for name, entry in sorted(state.registry.services.items()):
        reg = entry.registration
        tags.append({"name": name, "description": f"service {name} {reg.version}"})
        for route in reg.http:
            template, _ = path_template(route.path)
            paths.setdefault(template, {})[route.method.lower()] = _operation(name, route)
    scheme, host = ws_server(state.config)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Linkd services' HTTP actions",
            "version": state.config.version,
            "description": "The HTTP actions the services' workers registered (docs/sdk.md).",
        },
        "servers": [{"url": f"{'https' if scheme == 'wss' else 'http'}://{host}"}],
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": {"Error": CLIENT_ERROR},
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "or the token in the ?token= query parameter",
                }
            },
        },
    }


class ApiDocuments:
    """The admin listener's document routes.

    Args:
        state: the engine's node (its config and live registry).
    """

    def __init__(self, state: Node) -> None:
        self.state = state
        # The server API's document changes only with the code: encoded once.
        self._server_api = orjson.dumps(server_api_document(state.config.version))

    def route(self, path: str) -> Callable[[], Answer] | None:
        """The route answering ``GET path``, or None (not a document's path)."""
        if path == SERVER_API_PATH:
            return lambda: (200, list(_JSON), self._server_api)
        if path == SERVICES_PATH:
            return lambda: _json(services_document(self.state))
        if path == ASYNCAPI_INDEX_PATH:
            return lambda: _json(asyncapi_index(self.state.registry.services, ASYNCAPI_PREFIX))
        if path.startswith(ASYNCAPI_PREFIX) and path.endswith(".json"):
            entry = self.state.registry.services.get(path[len(ASYNCAPI_PREFIX) : -len(".json")])
            if entry is not None and entry.registration.ws is not None:
                return lambda: _json(asyncapi_document(entry.registration, self.state.config))
        return None


def _json(document: Schema) -> Answer:
    return 200, list(_JSON), orjson.dumps(document)
