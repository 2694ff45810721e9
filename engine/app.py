"""The in-process handler API: HTTP routes and WebSocket endpoints mounted on an Engine.

This is what embedding code (and the built-in echo endpoint) programs against; the
service IPC layer plugs in through the same two shapes. Handlers never see a
transport: HTTP handlers return a ``Response``; WebSocket endpoints get a
``WebSocket`` whose ``send`` queues bytes and returns at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from protocol import ErrorCode
from protocol.http import HttpRequest

from .router import RouteConflict, Router

if TYPE_CHECKING:
    from .ws_protocol import WebSocket

__all__ = [
    "HttpHandler",
    "Request",
    "Response",
    "Routes",
    "WebSocketEndpoint",
    "error_body",
]


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


class WebSocketEndpoint:
    """Base class for an in-process WebSocket endpoint; override what you need.

    Each method may be a plain function or a coroutine. A coroutine ``on_message``
    is awaited before the connection's next message is handed over, so messages of
    one connection are handled in order; while it runs, further messages queue up
    to ``Limits.max_inbound_queue`` and then the engine stops reading the socket.
    A plain ``on_message`` runs inline, with no task per message (the fast path).
    """

    #: Accept binary messages; if False they are refused with close 1003.
    accept_binary: bool = True
    #: Over the connection's message rate (``ws_rate``): True stops reading the socket
    #: until the rate allows the next message (TCP backpressure: nothing is lost, the
    #: sender slows down); False refuses each message over it and calls
    #: ``on_rate_limited`` (what service endpoints do: they answer RATE_LIMITED).
    throttle: bool = True
    #: Token policy at the upgrade: "none", "optional" (verified when present) or
    #: "required" (401 before the upgrade without a valid one).
    auth_policy: str = "none"

    def reject_upgrade(self, request: Request) -> Response | None:
        """Refuse the upgrade with this response (401, 429...), or None to accept."""
        return None

    def select_subprotocol(self, offered: Sequence[str]) -> str | None:
        """Pick one of the client's subprotocols, or None (the default)."""
        return None

    def on_connect(self, ws: WebSocket) -> Awaitable[None] | None:
        return None

    def on_message(self, ws: WebSocket, data: str | bytes) -> Awaitable[None] | None:
        return None

    def on_disconnect(self, ws: WebSocket, code: int) -> Awaitable[None] | None:
        return None

    def on_rate_limited(self, ws: WebSocket, data: str | bytes, retry_after: float) -> None:
        """``data`` arrived over the connection's message rate and is not handled.

        Only called when ``throttle`` is False. ``retry_after``: seconds until the
        next message would pass. Called inline (keep it cheap: a flooding client
        calls it per message). Tell the client: answer it, or ``ws.note_dropped``
        to have it counted in the next ``linkd.rate_limited`` event, which is what
        the default does. Sustained abuse closes the connection (1008) without
        calling this.
        """
        ws.note_dropped(retry_after)


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
