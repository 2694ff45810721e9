"""The admin page's WebSocket (``GET /admin/ws``, docs/admin.md): snapshots out, a
few requests in.

After the 101 (engine/http/admin_web.py checks the session and the Origin first) the
socket is this protocol's, over wsproto's sans-I/O ``Connection`` (RFC 6455, no
extensions). Once a second the page's timer hands every socket the same snapshot.
The page may ask for a room (``{"type": "room", "room": ...}``: its members here and
its presence) or disconnect a connection (``{"type": "disconnect", "connection": id}``),
both through the server API's own methods.

Everything is bounded: a message over ``MAX_MESSAGE`` closes with 1009, binary with
1003, anything that is not a JSON object or that comes faster than ``MESSAGE_RATE``
with 1008; a page that stops reading (``MAX_OUTBOUND`` buffered) is dropped, as is
one that answers no ping within ``IDLE_TIMEOUT``; one request at a time.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
from wsproto.connection import SERVER, Connection, ConnectionState
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from engine.limits.ratelimit import TokenBucket

__all__ = ["MAX_MESSAGE", "MAX_OUTBOUND", "AdminSocket", "Requests"]

log = logging.getLogger("linkd.admin")

#: Characters of one message from the page: a room name and an id fit many times.
MAX_MESSAGE = 4096
#: Bytes buffered for the page at most (about a minute of snapshots): past it the
#: page is not reading, and it is dropped rather than held in memory.
MAX_OUTBOUND = 256 * 1024
#: Messages a second from the page (a burst of ``MESSAGE_BURST``): it sends one per
#: click.
MESSAGE_RATE = 5.0
MESSAGE_BURST = 20.0
#: Seconds between pings, and of silence (no pong, no message) before the drop.
PING_INTERVAL = 15.0
IDLE_TIMEOUT = 45.0
#: Seconds the peer has to answer our close frame.
CLOSE_TIMEOUT = 5.0

#: What a socket asks of the page: answer one request (``room``, ``disconnect``).
Requests = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class AdminSocket(asyncio.Protocol):
    """One admin page's WebSocket, from the 101 to the close.

    Args:
        token: the session it was opened with (closed once that session ends).
        handle: answers the page's requests.
        spawn: runs a coroutine as an engine task.
        closed: called once the connection is gone.
        now: the loop's clock.
    """

    def __init__(
        self,
        token: str,
        handle: Requests,
        spawn: Callable[[Any], None],
        closed: Callable[[AdminSocket], None],
        now: Callable[[], float],
    ) -> None:
        self.token = token
        self._handle = handle
        self._spawn = spawn
        self._closed = closed
        self._now = now
        self._conn = Connection(SERVER)
        self._transport: asyncio.Transport | None = None
        self._partial: list[str] = []
        self._partial_size = 0
        self._bucket = TokenBucket(MESSAGE_RATE, MESSAGE_BURST, now())
        self._busy = False
        self._last_rx = now()
        self._next_ping = self._last_rx + PING_INTERVAL
        #: When our close frame went out (inf: not yet).
        self._closing_since = math.inf

    # ------------------------------------------------------ asyncio.Protocol
    def start(self, transport: asyncio.BaseTransport) -> None:
        """Take the socket over after the 101 (then feed what was read past the
        request to ``data_received``)."""
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._transport is None or self._conn.state is ConnectionState.CLOSED:
            return
        self._last_rx = self._now()
        self._conn.receive_data(data)
        for event in self._conn.events():
            if self._closing_since == math.inf or isinstance(event, CloseConnection):
                self._on_event(event)  # closing: only the peer's close frame matters

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._transport = None
        self._closed(self)

    # --------------------------------------------------------------- events
    def _on_event(self, event: Event) -> None:
        if isinstance(event, TextMessage):
            self._partial_size += len(event.data)
            if self._partial_size > MAX_MESSAGE:
                self.close(1009, "message too big")
                return
            self._partial.append(event.data)
            if event.message_finished:
                text = "".join(self._partial)
                self._partial, self._partial_size = [], 0
                self._on_message(text)
        elif isinstance(event, BytesMessage):
            self.close(1003, "text messages only")
        elif isinstance(event, Ping):
            if self._bucket.take(self._now()):  # a ping flood is a message flood
                self.close(1008, "too many messages")
                return
            self._write(self._conn.send(event.response()))
        elif isinstance(event, Pong):
            pass  # _last_rx is all a pong is for
        elif isinstance(event, CloseConnection):
            if self._conn.state is ConnectionState.REMOTE_CLOSING:
                self._write(self._conn.send(event.response()))
                self._finish()
            elif self._conn.state is ConnectionState.CLOSED:
                self._finish()  # the answer to our close
            else:  # wsproto failed the frame (its code says why): fail the connection
                self.close(event.code, "protocol error")

    def _on_message(self, text: str) -> None:
        if self._bucket.take(self._now()):
            self.close(1008, "too many messages")
            return
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            request = None
        if not isinstance(request, dict) or not isinstance(request.get("type"), str):
            self.close(1008, "expected a JSON object with a type")
            return
        if self._busy:
            self.send({"type": "error", "message": "one request at a time"})
            return
        self._busy = True
        self._spawn(self._answer(request))

    async def _answer(self, request: dict[str, Any]) -> None:
        try:
            reply = await self._handle(request)
        except Exception:
            log.exception("admin page request %r failed", request.get("type"))
            reply = {"type": "error", "message": "internal error"}
        finally:
            self._busy = False
        self.send(reply)

    # -------------------------------------------------------------- sending
    def send(self, message: dict[str, Any]) -> None:
        """Queue one JSON message to the page (dropped once closing)."""
        self.send_text(orjson.dumps(message).decode())

    def send_text(self, text: str) -> None:
        if self._transport is None or self._conn.state is not ConnectionState.OPEN:
            return
        self._write(self._conn.send(TextMessage(data=text)))

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        if transport.get_write_buffer_size() + len(data) > MAX_OUTBOUND:
            log.warning("admin page dropped: it stopped reading (%d bytes queued)", MAX_OUTBOUND)
            self.abort()
            return
        transport.write(data)

    def tick(self, now: float, session_alive: bool) -> None:
        """Once a second: the session, the heartbeat and the close handshake."""
        if self._transport is None:
            return
        if now - self._closing_since > CLOSE_TIMEOUT:
            self.abort()
        elif not session_alive:
            self.close(1008, "session ended")
        elif now - self._last_rx > IDLE_TIMEOUT:
            self.abort()
        elif now >= self._next_ping:
            self._next_ping = now + PING_INTERVAL
            if self._conn.state is ConnectionState.OPEN:
                self._write(self._conn.send(Ping(b"")))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake (the peer has ``CLOSE_TIMEOUT`` to answer)."""
        if self._transport is None or self._closing_since != math.inf:
            return
        self._closing_since = self._now()
        try:
            self._write(self._conn.send(CloseConnection(code=code, reason=reason)))
        except LocalProtocolError:
            self.abort()
            return
        if self._conn.state is ConnectionState.CLOSED:
            self._finish()

    def _finish(self) -> None:
        """Both close frames went: the server closes TCP first (RFC 6455 §7.1.1)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
