"""What one HTTP connection holds, and what its jobs offer each other.

``HttpProtocol`` (protocol.py) is ONE object per client connection, assembled from one
mixin per job: admission.py (connection caps and the request rate: 429/503), upgrade.py
(the WebSocket upgrade and the hand-off of the socket) and timers.py (header, body,
keep-alive, send and close timeouts). Every slot is declared here, once, and set in
``__init__``; the mixins declare ``__slots__ = ()``. The reasons reading is held are
here too.

Under ``TYPE_CHECKING``, ``HttpBase`` declares the methods one job calls on another,
so each mixin type-checks on its own; mypy checks each declaration against its
implementation. At run time they do not exist: a call finds the implementation in
``HttpProtocol``'s MRO.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from protocol.http import HttpConn, HttpRequest, HttpState

if TYPE_CHECKING:
    from engine.api.request import Response
    from engine.node import Node

__all__ = ["HOLD_REQUEST", "HOLD_WRITE", "JSON", "HttpBase"]

JSON = [("content-type", "application/json")]

# Why reading is held (bit flags: it resumes when none is left).
#: A request is being answered, or the next one may be in h11's buffer already.
HOLD_REQUEST = 1
#: The transport's buffer is above its high-water mark (``pause_writing``).
HOLD_WRITE = 2


class HttpBase(asyncio.Protocol):
    """The slots of one client connection (``HttpProtocol`` is the class to use)."""

    __slots__ = (
        "_address",
        "_conn",
        "_eof",
        "_hold",
        "_last_state",
        "_over_cap",
        "_peer",
        "_proxy_buffer",
        "_request",
        "_scheduled",
        "_slot",
        "_state",
        "_transport",
        "_unsent",
        "deadline",
        "remote",
    )

    def __init__(self, state: Node) -> None:
        self._state = state
        self._conn = HttpConn(state.limits)
        self._transport: asyncio.Transport | None = None
        #: ``HOLD_*`` flags; reading is paused while any is set.
        self._hold = 0
        #: A ``_process`` is scheduled with ``call_soon``.
        self._scheduled = False
        self._eof = False
        #: Holds a ``max_connections`` slot; or came over the cap (answered 503).
        self._slot = False
        self._over_cap = False
        #: Unsent bytes when the send timeout was last armed (progress detection).
        self._unsent = 0
        self._request: HttpRequest | None = None
        self._last_state = HttpState.IDLE
        self.remote: tuple[str, int] | None = None
        self._address: str | None = None
        #: The connection's client: the socket's peer, or the PROXY header's source;
        #: ``remote`` is this or, per request, the one trusted proxies forwarded for.
        self._peer: tuple[str, int] | None = None
        #: ``--proxy-protocol``: what arrived of the header; None once it is parsed.
        self._proxy_buffer: bytearray | None = None
        self.deadline = math.inf

    @property
    def writing_paused(self) -> bool:
        """The transport's buffer is above its high-water mark."""
        return bool(self._hold & HOLD_WRITE)

    # -------------------------------------------------------- flow control
    def _hold_reading(self, reason: int) -> None:
        if not self._hold and self._transport is not None:
            self._transport.pause_reading()
        self._hold |= reason

    def _release_reading(self, reason: int) -> None:
        if not self._hold & reason:
            return
        self._hold &= ~reason
        transport = self._transport
        if (
            not self._hold
            and transport is not None
            and not self._eof
            and not transport.is_closing()
        ):
            transport.resume_reading()

    def _release_slot(self) -> None:
        if self._slot:
            self._slot = False
            self._state.http_slots -= 1

    if TYPE_CHECKING:
        # ---- what the jobs call on each other
        def _respond(self, request: HttpRequest, response: Response) -> None: ...
        def _fail(self, status: int, request: HttpRequest | None = None) -> None: ...
        def _close(self) -> None: ...  # protocol.py
        def _log_access(self, request: HttpRequest, status: int) -> None: ...
        def _set_deadline(self, delay: float) -> None: ...  # timers.py
        def on_deadline(self, now: float) -> None: ...  # timers.py
        def _proxy_refused(self, reason: str) -> None: ...  # proxied.py
