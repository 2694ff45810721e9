"""Request and Response: HTTP as in-process handlers see it.

This is what embedding code programs against (with engine/api/endpoint.py for
WebSocket endpoints); the service IPC layer plugs in through the same shapes. Handlers
never see a transport: HTTP handlers return a ``Response``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from protocol import ErrorCode
from protocol.http import HttpRequest

__all__ = ["HttpHandler", "Request", "Response", "error_body"]


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request as handlers see it."""

    http: HttpRequest
    #: ``(host, port)`` of the peer, or None when unknown.
    remote: tuple[str, int] | None
    #: Values of ``:name`` segments of the matched route.
    params: dict[str, str] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.http.method

    @property
    def path(self) -> str:
        return self.http.path

    @property
    def query(self) -> str:
        return self.http.query

    @property
    def body(self) -> bytes:
        return self.http.body

    def header(self, name: str) -> str | None:
        return self.http.header(name.lower())

    def json(self) -> Any:
        """The body parsed as JSON (raises ``orjson.JSONDecodeError``)."""
        return orjson.loads(self.http.body)


@dataclass(frozen=True, slots=True)
class Response:
    """A complete HTTP response. ``content-length`` is added for you."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def json(
        cls, data: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()
    ) -> Response:
        return cls(status, [("content-type", "application/json"), *headers], orjson.dumps(data))

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, [("content-type", "text/plain; charset=utf-8")], text.encode())

    @classmethod
    def error(cls, code: ErrorCode, message: str, status: int | None = None) -> Response:
        """An error in the shared shape ``{"error": {"code", "message"}}``."""
        return cls(
            status or code.status,
            [("content-type", "application/json")],
            error_body(code, message),
        )


def error_body(code: ErrorCode, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code.value, "message": message}})


HttpHandler = Callable[[Request], Awaitable[Response]]
