"""Routes: the HTTP route table (exact paths and ``:name`` parameters, ``GET /chat/rooms/:id``)
and the WebSocket endpoints by exact path.

Pure matching, no I/O. Static paths are a dict lookup; parameterised ones are
matched segment by segment, static segments winning over parameters, so
``/chat/rooms/new`` and ``/chat/rooms/:id`` can coexist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

from engine.api.endpoint import WebSocketEndpoint
from engine.api.request import HttpHandler

__all__ = ["MethodNotAllowed", "RouteConflict", "Router", "Routes"]

T = TypeVar("T")


class RouteConflict(ValueError):
    """Two targets claim the same method and path shape."""


@dataclass(frozen=True, slots=True)
class MethodNotAllowed:
    allowed: list[str]


def _split(path: str) -> list[str]:
    return [seg for seg in path.split("/") if seg]


def _shape(segments: list[str]) -> tuple[str, ...]:
    return tuple(":" if seg.startswith(":") else seg for seg in segments)


class Router(Generic[T]):
    def __init__(self) -> None:
        self._static: dict[str, dict[str, T]] = {}
        # (segments, method → target), checked in order of specificity.
        self._patterns: list[tuple[list[str], dict[str, T]]] = []

    def add(self, method: str, path: str, target: T) -> None:
        method = method.upper()
        segments = _split(path)
        if not any(seg.startswith(":") for seg in segments):
            key = "/" + "/".join(segments)
            methods = self._static.setdefault(key, {})
        else:
            shape = _shape(segments)
            for existing, table in self._patterns:
                if _shape(existing) == shape:
                    methods = table
                    if method in methods:
                        raise RouteConflict(f"{method} {path} is already routed")
                    if existing != segments:
                        raise RouteConflict(f"{path} clashes with {'/'.join(existing)}")
                    break
            else:
                methods = {}
                self._patterns.append((segments, methods))
                # Fewer parameters first: static segments beat parameters.
                self._patterns.sort(key=lambda p: sum(s.startswith(":") for s in p[0]))
        if method in methods:
            raise RouteConflict(f"{method} {path} is already routed")
        methods[method] = target

    def remove_target(self, target: T) -> None:
        for table in [*self._static.values(), *(t for _, t in self._patterns)]:
            for method in [m for m, t in table.items() if t is target]:
                del table[method]

    def match(self, method: str, path: str) -> tuple[T, dict[str, str]] | MethodNotAllowed | None:
        """The target and its parameters; MethodNotAllowed; or None (404)."""
        segments = _split(path)
        table = self._static.get("/" + "/".join(segments))
        params: dict[str, str] = {}
        if not table:
            for pattern, candidate in self._patterns:
                if candidate and (found := _bind(pattern, segments)) is not None:
                    table, params = candidate, found
                    break
        if not table:
            return None
        target = table.get(method) or (table.get("GET") if method == "HEAD" else None)
        if target is None:
            return MethodNotAllowed(sorted(table))
        return target, params


def _bind(pattern: list[str], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith(":"):
            params[want[1:]] = unquote(got)
        elif want != got:
            return None
    return params


class Routes:
    """HTTP routes (with ``:name`` parameters) and WebSocket endpoints (exact paths)."""

    def __init__(self) -> None:
        self.http: Router[HttpHandler] = Router()
        self.websocket: dict[str, WebSocketEndpoint] = {}

    def add_http(self, method: str, path: str, handler: HttpHandler) -> None:
        self.http.add(method, path, handler)

    def add_websocket(self, path: str, endpoint: WebSocketEndpoint) -> None:
        if path in self.websocket:
            raise RouteConflict(f"WebSocket path {path} is already mounted")
        self.websocket[path] = endpoint
