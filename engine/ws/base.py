"""What one WebSocket connection holds, and what its jobs offer each other.

``WsProtocol`` (protocol.py) is ONE object per connection, assembled from one mixin per
job: facade.py (what handlers and the hub call), outbound.py (the cork, the outbound
cap), lossy.py (the backlog of the lossy slow-consumer policies), inbound.py (events
to handlers, in order), guards.py (rate limits, abuse, refusal reports), refresh.py
(a new token for an open connection) and timers.py (the one deadline: heartbeat,
token expiry, close timeout). Every slot is declared
here, once, and set in ``__init__``; the mixins declare ``__slots__ = ()``, so the
object is a single allocation whose size is this list (8 bytes a slot, times every
idle connection). The parts most connections never allocate (``Refusals``,
``Backlog``, ``Held``) and the reasons reading is paused are here too.

Under ``TYPE_CHECKING``, ``WsBase`` declares the methods one job calls on another
and the handler API (engine/api/endpoint.py ``WebSocket``), so each mixin type-checks
on its own and is a ``WebSocket`` where it hands itself to a handler; mypy checks
each declaration against its implementation. At run time they do not exist: a call
finds the implementation in ``WsProtocol``'s MRO, as it found it in one class before.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import TYPE_CHECKING, Any

from engine.limits.slow import Policy
from protocol import CloseCode

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from engine.api.endpoint import WebSocketEndpoint
    from engine.brokers.history import RecoverRequest
    from engine.limits.ratelimit import ConnectionLimiter, TokenBucket
    from engine.node import Node
    from protocol.http import HttpRequest
    from protocol.ws import OutboundMessage, WsConn

__all__ = [
    "FRAMES_PER_TURN",
    "NO_ROOMS",
    "PAUSE_QUEUE",
    "PAUSE_RATE",
    "PAUSE_TURN",
    "PAUSE_WRITE",
    "Backlog",
    "Held",
    "Refusals",
    "WsBase",
]

# Why reading is paused; reading resumes when no reason is left.
#: The inbox of a busy handler is full (inbound.py).
PAUSE_QUEUE = 1
#: The transport is over its high-water mark (``pause_writing``).
PAUSE_WRITE = 2
#: Over the message rate on a throttling endpoint, until the sweeper's wake-up.
PAUSE_RATE = 4
#: Parsed a turn's worth of frames: the rest waits for the next loop iteration.
PAUSE_TURN = 8
#: Frames parsed per turn: a read of 256 KiB can hold 40 000 tiny frames, and one
#: connection must not hold the loop for all of them while the others wait.
FRAMES_PER_TURN = 256

#: The ``left_rooms`` of every open connection (never mutated: replaced at close).
NO_ROOMS: list[str] = []


class WsBase(asyncio.Protocol):
    """The slots of one upgraded connection (``WsProtocol`` is the class to use)."""

    __slots__ = (
        "_address_slot",
        "_backlog",
        "_bucket",
        "_buckets",
        "_busy",
        "_close_code",
        "_closed",
        "_conn",
        "_disconnect_code",
        "_due",
        "_endpoint",
        "_expires_at",
        "_frame_debt",
        "_inbox",
        "_last_rx",
        "_out",
        "_out_bytes",
        "_paused",
        "_ping_payload",
        "_policy",
        "_pong_deadline",
        "_received_close",
        "_refusals",
        "_room",
        "_state",
        "_transport",
        "_wake_at",
        "_write_ready",
        "auth",
        "deadline",
        "id",
        "left_rooms",
        "recover",
        "remote",
        "request",
        "rooms",
        "subprotocol",
        "user_id",
    )

    def __init__(
        self,
        state: Node,
        endpoint: WebSocketEndpoint,
        conn: WsConn,
        request: HttpRequest,
        remote: tuple[str, int] | None,
        subprotocol: str | None,
    ) -> None:
        self._state = state
        self._endpoint = endpoint
        self._conn = conn
        self._transport: asyncio.Transport | None = None
        #: Engine-unique connection id.
        self.id = state.next_id()
        #: The upgrade request (path, query string, headers).
        self.request = request
        self.remote = remote
        self.subprotocol = subprotocol
        #: The verified identity (``userId``, ``username``, ``roles``, ``claims``) or None.
        self.auth: dict[str, Any] | None = None
        self.user_id: str | None = None
        #: Stream positions to recover (``?recover=``), consumed as the rooms are joined.
        self.recover: RecoverRequest | None = None
        #: Rooms this connection is in (owned by the Hub; None until the first join).
        self.rooms: list[str] | set[str] | None = None
        #: The rooms it was in when it closed (for on_disconnect); shared until then.
        self.left_rooms: list[str] = NO_ROOMS
        # Loop time at which the connection's token expires (inf: no token or no check).
        self._expires_at = math.inf
        self.deadline = math.inf
        # The heartbeat/close timer the deadline stands for; _wake_at: an earlier
        # moment of interest (the end of a throttle, a rate-limit report).
        self._due = math.inf
        self._wake_at = math.inf
        # Frames charged to the frame rate (not whole messages) not yet paid back at
        # ws_frame_rate; the budget of a read is ws_frame_burst minus this.
        self._frame_debt = 0.0
        #: Frames corked this iteration: one ``bytes``, or a list of them.
        self._out: bytes | list[bytes] | None = None
        self._room = 0  # bytes left under max_outbound_bytes this iteration
        self._out_bytes = 0
        # Created on first use: an empty deque costs ~760 bytes, and most connections
        # never queue a message (inline handlers, idle clients).
        self._inbox: deque[str | bytes] | None = None
        self._busy = False
        self._paused = 0
        self._last_rx = 0.0
        self._ping_payload: bytes | None = None
        self._pong_deadline = math.inf
        self._close_code: int | None = None  # the code we sent
        self._received_close: int | None = None  # the code the peer sent
        self._closed = False
        self._disconnect_code: int | None = None
        self._write_ready: asyncio.Event | None = None
        # Inbound message rate (token bucket on the loop clock), created full at the
        # first message: an idle connection does not pay for one. None: not yet.
        self._bucket: TokenBucket | None = None
        self._buckets: dict[str, TokenBucket] | None = None  # named limits, on first use
        # Refusal bookkeeping (abuse window, reports, refused joins), on first refusal.
        self._refusals: Refusals | None = None
        #: The per-address slot this connection holds (released when it closes).
        self._address_slot: tuple[ConnectionLimiter, str | None] | None = None
        # Slow-consumer policy (engine/limits/slow.py). Lossy connections hold messages
        # in an engine-side backlog while the transport is above its high-water mark.
        slow = state.slow
        #: The path's policy when some policy may drop (engine/limits/slow.py); None: never.
        self._policy: Policy | None = slow.for_path(request.path) if slow.lossy else None
        self._backlog: Backlog | None = None

    # -------------------------------------------------------- flow control
    def _pause(self, reason: int) -> None:
        if not self._paused and self._transport is not None:
            self._transport.pause_reading()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if not self._paused and self._transport is not None and not self._closed:
            self._transport.resume_reading()

    if TYPE_CHECKING:
        # ---- the handler API (facade.py, outbound.py, guards.py)
        @property
        def path(self) -> str: ...
        @property
        def closed(self) -> bool: ...
        def send(self, data: str | bytes) -> bool: ...
        def send_prepared(
            self, message: OutboundMessage, policy: Policy | None = None, key: str | None = None
        ) -> bool: ...
        def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...
        def abort(self) -> None: ...
        async def drain(self) -> None: ...
        def rate_limit(self, key: str, rate: float, burst: float) -> float: ...
        def note_dropped(self, retry_after: float) -> None: ...

        # ---- what the jobs call on each other
        def _send_event(self, payload: bytes) -> None: ...  # facade.py
        def _queue(self, frame: bytes) -> None: ...  # outbound.py
        def flush(self) -> None: ...  # outbound.py
        def _slow_consumer(self) -> None: ...  # outbound.py
        def _queue_message(self, frame: bytes, policy: Policy, key: str | None) -> None: ...
        def _release(self, force: bool = False) -> None: ...  # lossy.py
        def _pump(self, now: float) -> bool: ...  # inbound.py
        def _wait_for(self, pending: Awaitable[None]) -> None: ...  # inbound.py
        def _notify_disconnect(self, code: int) -> None: ...  # inbound.py
        def _count_rejected(self, now: float) -> bool: ...  # guards.py
        def _throttle(self, now: float, wait: float) -> None: ...  # guards.py
        def _wake(self, now: float) -> None: ...  # guards.py
        def _report(self, now: float) -> None: ...  # guards.py
        def _arm_heartbeat(self, now: float) -> None: ...  # timers.py
        def _set_deadline(self, when: float) -> None: ...  # timers.py
        def _refresh(self, text: str) -> bool: ...  # refresh.py


class Refusals:
    """What a connection that was refused something keeps (most never are)."""

    __slots__ = ("dropped", "joins", "rejected", "rejected_until", "report_after", "retry_at")

    def __init__(self) -> None:
        #: Refused messages in the current abuse window, and the loop time it ends.
        self.rejected = 0
        self.rejected_until = 0.0
        #: Refused messages without an answer not reported yet; the loop time a
        #: message would pass again; no report before ``report_after``.
        self.dropped = 0
        self.retry_at = 0.0
        self.report_after = 0.0
        #: Joins refused since the last successful one.
        self.joins = 0


class Backlog(deque["Held"]):
    """Messages a lossy connection holds back, their size, what conflation keys them."""

    __slots__ = ("keyed", "shed", "size")

    def __init__(self) -> None:
        super().__init__()
        self.size = 0
        #: conflate: the held message of each key.
        self.keyed: dict[str, Held] | None = None
        #: Messages dropped or replaced in this episode.
        self.shed = 0


class Held:
    """A message waiting in a lossy connection's backlog."""

    __slots__ = ("frame", "key", "policy")

    def __init__(self, frame: bytes, policy: Policy, key: str | None) -> None:
        self.frame = frame
        self.policy = policy
        self.key = key
