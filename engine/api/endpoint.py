"""WebSocketEndpoint and WebSocket: what in-process WebSocket handlers (embedders and
the service routes) program against.

``WebSocket`` is a protocol of what a handler may use of its connection; the one
implementation is ``engine/ws/protocol.py``'s ``WsProtocol``. The handler API thus
sits below the connection machinery and imports none of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, runtime_checkable

from engine.api.request import Request, Response
from engine.limits.slow import Policy
from protocol import CloseCode
from protocol.http import HttpRequest
from protocol.ws import OutboundMessage

__all__ = ["WebSocket", "WebSocketEndpoint"]


@runtime_checkable
class WebSocket(Protocol):
    """What a WebSocket handler sees of its connection (engine/ws/protocol.py is the one
    implementation). A protocol, so this layer and the handlers written against it never
    import the connection machinery; ``engine.WebSocket`` is this name."""

    #: Engine-unique connection id.
    id: int
    #: The upgrade request (path, query string, headers).
    request: HttpRequest
    remote: tuple[str, int] | None
    subprotocol: str | None
    #: The verified identity (``userId``, ``username``, ``roles``, ``claims``) or None.
    auth: dict[str, Any] | None
    user_id: str | None
    #: The rooms it was in when it closed (for ``on_disconnect``).
    left_rooms: list[str]

    @property
    def path(self) -> str: ...

    @property
    def closed(self) -> bool:
        """True once no more messages can be sent."""

    def send(self, data: str | bytes) -> bool:
        """Queue one message; False (dropped) when the connection is closing."""

    def send_prepared(
        self, message: OutboundMessage, policy: Policy | None = None, key: str | None = None
    ) -> bool:
        """Queue a message built once for many connections."""

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake."""

    def abort(self) -> None:
        """Drop the TCP connection now."""

    async def drain(self) -> None:
        """Wait until the write buffer is below its low-water mark."""

    def rate_limit(self, key: str, rate: float, burst: float) -> float:
        """Take a token from bucket ``key``: 0.0 when allowed, else seconds to wait."""

    def note_dropped(self, retry_after: float) -> None:
        """Count a refused message in the next ``linkd.rate_limited`` event."""


class WebSocketEndpoint:
    """Base class for an in-process WebSocket endpoint; override what you need.

    Each method may be a plain function or a coroutine. A coroutine ``on_message``
    is awaited before the connection's next message is handed over, so messages of
    one connection are handled in order; while it runs, further messages queue up
    to ``Limits.max_inbound_queue`` and then the engine stops reading the socket.
    A plain ``on_message`` runs inline, with no task per message (the fast path).
    """

    #: Accept binary messages (``on_message`` gets ``bytes``); if False they are
    #: refused with close 1003 (service endpoints: unless the service has ``on_binary``).
    accept_binary: bool = True
    #: Over the connection's message rate (``ws_rate``): True stops reading the socket
    #: until the rate allows the next message (TCP backpressure: nothing is lost, the
    #: sender slows down); False refuses each message over it and calls
    #: ``on_rate_limited`` (what service endpoints do: they answer RATE_LIMITED).
    throttle: bool = True
    #: Token policy at the upgrade: "none", "optional" (verified when present) or
    #: "required" (401 before the upgrade without a valid one). With a policy, the
    #: engine takes ``linkd.refresh`` messages itself (a new token of the same user,
    #: docs/clients.md): ``on_message`` never sees them, and ``ws.auth`` changes.
    auth_policy: str = "none"
    #: Origins a browser page may connect from to this endpoint (exact origins and
    #: ``https://*.example.com``); others get 403 before the upgrade. None: the
    #: engine's ``--allowed-origins`` applies (docs/security.md, "Origins").
    allowed_origins: tuple[str, ...] | None = None

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
