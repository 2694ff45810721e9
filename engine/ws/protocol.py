"""WsProtocol: the asyncio shell around one ``WsConn``; handlers see it as a ``WebSocket``
(engine/api/endpoint.py).

A thin pump: ``data_received`` feeds the core, events are dispatched to the endpoint,
bytes the core owes are queued. Everything outbound goes through ``_queue``, which
corks frames until the end of the loop iteration and applies the slow-consumer
policy: a connection whose unsent bytes pass ``max_outbound_bytes`` is sent 1013 and
given ``close_timeout`` to read it before TCP is dropped, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

import orjson

from engine.limits.ratelimit import TokenBucket
from engine.limits.slow import Policy
from protocol import CloseCode
from protocol.http import HttpRequest
from protocol.ws import (
    BinaryMessage,
    ConnectionFailed,
    OutboundMessage,
    PeerClosed,
    PingReceived,
    PongReceived,
    TextMessage,
    WsConn,
    WsState,
)

if TYPE_CHECKING:
    from engine.api.endpoint import WebSocketEndpoint
    from engine.auth import Identity
    from engine.brokers.history import RecoverRequest
    from engine.limits.ratelimit import ConnectionLimiter
    from engine.node import Node

__all__ = ["WsProtocol"]

log = logging.getLogger("linkd.ws")

# Why reading is paused; reading resumes when no reason is left.
_PAUSE_QUEUE = 1
_PAUSE_WRITE = 2
#: Over the message rate on a throttling endpoint, until the sweeper's wake-up.
_PAUSE_RATE = 4

#: ``linkd.rate_limited`` reports (messages refused without an answer of their own):
#: at most one per connection this often, in seconds.
REPORT_INTERVAL = 1.0


class WsProtocol(asyncio.Protocol):
    """One upgraded connection. Handlers receive it as a ``WebSocket``."""

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
        self.left_rooms: list[str] = _NO_ROOMS
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
        self._refusals: _Refusals | None = None
        #: The per-address slot this connection holds (released when it closes).
        self._address_slot: tuple[ConnectionLimiter, str | None] | None = None
        # Slow-consumer policy (engine/slow.py). Lossy connections hold messages in an
        # engine-side backlog while the transport is above its high-water mark.
        slow = state.slow
        #: The path's policy when some policy may drop (engine/slow.py); None: never.
        self._policy: Policy | None = slow.for_path(request.path) if slow.lossy else None
        self._backlog: _Backlog | None = None

    def authenticate(self, identity: Identity) -> None:
        """Attach a verified token (before ``connection_made``: the hub indexes users)."""
        self.auth = identity.auth
        self.user_id = identity.user_id
        if identity.expires is not None and self._state.config.close_on_token_expiry:
            # exp is wall-clock time; every timer here runs on the loop's monotonic clock.
            left = identity.expires - time.time()
            self._expires_at = self._state.loop.time() + max(0.0, left)

    # ------------------------------------------------------------ public API
    @property
    def path(self) -> str:
        return self.request.path

    @property
    def closed(self) -> bool:
        """True once no more messages can be sent (closing handshake started or done)."""
        return self._closed or self._conn.state is not WsState.OPEN

    def send(self, data: str | bytes) -> bool:
        """Queue one message; returns False (and drops it) when the connection is closing.

        Never blocks and never raises for a closed peer: a broadcast must not stop at
        one bad recipient. Use ``drain()`` to wait for the kernel to take the bytes.
        """
        if not self._conn.raw_allowed or self._closed:
            self._state.metrics.dropped_messages += 1
            return False
        frame = self._conn.send(data)
        if self._policy is not None:
            self._queue_message(frame, self._policy, None)
        else:
            self._queue(frame)
        self._state.metrics.ws_messages_out += 1
        return True

    def send_prepared(
        self, message: OutboundMessage, policy: Policy | None = None, key: str | None = None
    ) -> bool:
        """Queue a pre-built message (the fan-out path: encoded once for everyone).

        ``policy`` overrides the path's slow-consumer policy for this message (an
        event-type rule); ``key`` is its conflation key (target and event type).
        """
        if not self._conn.raw_allowed or self._closed:
            self._state.metrics.dropped_messages += 1
            return False
        frame = self._frame(message)
        if self._policy is not None:
            self._queue_message(frame, self._policy if policy is None else policy, key)
        else:
            self._queue(frame)
        self._state.metrics.ws_messages_out += 1
        return True

    def _frame(self, message: OutboundMessage) -> bytes:
        """The frame of a pre-built message this connection takes (engine/fanout.py)."""
        conn = self._conn
        deflate = conn.deflate
        if deflate is None:
            return message.plain  # the common case, without the method call
        shared = None
        if deflate.shared_key is not None:
            shared = self._state.shared_deflater(deflate.shared_key)
        return conn.prepared(message, shared)

    def send_now(
        self, message: OutboundMessage, policy: Policy | None = None, key: str | None = None
    ) -> bool:
        """``send_prepared`` then write at once, without corking (a lone publish on an
        idle engine: the first subscribers are served while the others are queued)."""
        transport = self._transport
        if (
            self._out is not None
            or self._policy is not None
            or self._closed
            or transport is None
            or not self._conn.raw_allowed
        ):
            sent = self.send_prepared(message, policy, key)
            self.flush()
            return sent
        state = self._state
        frame = self._frame(message)
        size = len(frame)
        if transport.get_write_buffer_size() + size > state.limits.max_outbound_bytes:
            state.metrics.dropped_messages += 1
            self._slow_consumer()
            return True  # it was sent to us; the connection is what failed
        transport.write(frame)
        metrics = state.metrics
        metrics.ws_messages_out += 1
        metrics.ws_bytes_out += size
        return True

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; TCP is dropped if the peer does not answer."""
        if self._closed:
            return
        if self._backlog is not None and code != CloseCode.TRY_AGAIN_LATER:
            self._release(force=True)  # held messages go before the close frame
        frame = self._conn.close(code, reason)
        if not frame:
            return
        self._close_code = code
        self._queue(frame)
        now = self._state.loop.time()
        if self._paused & _PAUSE_RATE:
            # Throttled: read again at the next tick, or the peer's close waits unread
            # behind its throttled messages (those are discarded now: we are closing).
            self._wake_at = now
        self._set_deadline(now + self._state.config.close_timeout)

    def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake."""
        if self._transport is not None and not self._closed:
            self._transport.abort()

    def rate_limit(self, key: str, rate: float, burst: float) -> float:
        """Take a token from this connection's bucket ``key`` (created on first use).

        Returns 0.0 when allowed, else the seconds until a token is available; a
        refusal counts toward the abuse limit and may close the connection (1008).
        Service endpoints use it for per-type limits; embedders may too.
        """
        buckets = self._buckets
        if buckets is None:
            buckets = self._buckets = {}
        now = self._state.loop.time()
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = TokenBucket(rate, burst, now)
        wait = bucket.take(now)
        if wait:
            self._count_rejected(now)
        return wait

    def note_dropped(self, retry_after: float) -> None:
        """A message that gets no answer of its own (no ``id``) was refused by a rate
        limit: count it in the client's next ``linkd.rate_limited`` event.

        The event, ``{"type": "linkd.rate_limited", "data": {"dropped": N,
        "retryAfter": seconds}}``, goes out at the end of the read that refused the
        first one, then at most once per ``REPORT_INTERVAL`` while refusals go on: every
        refused message is counted once, and a flood costs no answer per message.
        """
        refusals = self._refusals
        if refusals is None:
            refusals = self._refusals = _Refusals()
        refusals.dropped += 1
        # The refusing bucket's clock: the time of the read being handled.
        refusals.retry_at = self._last_rx + retry_after
        if refusals.dropped == 1:
            # The end of this read reports it (_pump); a refusal outside a read (a
            # queued message's type limit) is reported by the sweeper's next tick.
            when = max(refusals.report_after, self._last_rx)
            if when < self._wake_at:
                self._wake_at = when
                self._set_deadline(self._due)

    @property
    def max_rooms(self) -> int:
        """Rooms this connection may be in (0: no cap); the hub enforces it."""
        return self._state.config.max_rooms_per_connection

    @property
    def join_refusals(self) -> int:
        """Joins refused since the last successful one (0: not refusing)."""
        refusals = self._refusals
        return 0 if refusals is None else refusals.joins

    def join_refused(self, room: str, limit: int) -> None:
        """The hub did not add this connection to ``room``: it is in ``limit`` rooms.

        Counted; logged once per episode (until a join succeeds again); the client
        gets ``{"type": "linkd.join_refused", "data": {"room", "limit"}}``.
        """
        self._state.metrics.ws_joins_refused += 1
        refusals = self._refusals
        if refusals is None:
            refusals = self._refusals = _Refusals()
        if not refusals.joins:
            log.warning(
                "ws %d user %s on %s: join of room %r refused: already in %d rooms "
                "(--max-rooms-per-connection); more refusals are not logged",
                self.id,
                self.user_id or "-",
                self.request.path,
                room,
                limit,
            )
        refusals.joins += 1
        event = orjson.dumps({"type": "linkd.join_refused", "data": {"room": room, "limit": limit}})
        self._send_event(event)

    def end_join_refusals(self) -> None:
        """A join succeeded again: the refusal episode is over."""
        refusals = self._refusals
        if refusals is not None and refusals.joins:
            log.info("ws %d: joins accepted again after %d refused", self.id, refusals.joins)
            refusals.joins = 0

    def _send_event(self, payload: bytes) -> None:
        """An engine event (JSON text) to this client."""
        threshold = self._state.limits.compression_threshold
        self.send_prepared(OutboundMessage(payload, text=True, compression_threshold=threshold))

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark."""
        self.flush()  # corked frames count: hand them to the transport first
        if self._write_ready is None or self._closed:
            return
        await self._write_ready.wait()

    # ------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        limits = self._state.limits
        transport.set_write_buffer_limits(limits.write_high_water, limits.write_low_water)
        self._state.hub.add(self)
        metrics = self._state.metrics
        metrics.ws_open += 1
        by_path = metrics.ws_open_by_path
        by_path[self.request.path] = by_path.get(self.request.path, 0) + 1
        self._last_rx = self._state.loop.time()
        self._arm_heartbeat(self._last_rx)
        log.debug("ws %d open %s from %s", self.id, self.request.path, self.remote)
        result = self._endpoint.on_connect(self)
        if result is not None:
            self._run(result)

    def data_received(self, data: bytes) -> None:
        now = self._state.loop.time()
        self._state.metrics.ws_bytes_in += len(data)
        self._conn.receive_data(data)
        if self._paused & _PAUSE_RATE:
            # Throttled (bytes a transport had read before pause_reading): they wait
            # in the core for the wake-up.
            self._last_rx = now
            return
        self._pump(now)

    def eof_received(self) -> bool:
        self._conn.receive_data(None)
        if not self._paused & _PAUSE_RATE:
            self._pump(self._state.loop.time())
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.deadline = math.inf
        self._state.sweeper.cancel(self)
        self._out = None
        if self._backlog is not None:
            self._state.metrics.dropped_messages += len(self._backlog)
            self._backlog = None
        self._conn.release()
        self.left_rooms = self._state.hub.remove(self)
        self._state.metrics.ws_open -= 1
        self._state.metrics.ws_open_by_path[self.request.path] -= 1
        if self._address_slot is not None:
            limiter, key = self._address_slot
            self._address_slot = None
            limiter.closed(key)
        self._state.check_idle()
        code = self._received_close or self._close_code or CloseCode.ABNORMAL
        self._state.metrics.count_close(code)
        if self._write_ready is not None:
            self._write_ready.set()
        log.debug("ws %d closed code=%d", self.id, code)
        if self._busy:
            self._disconnect_code = code  # delivered after the queued messages
        else:
            self._notify_disconnect(code)

    def pause_writing(self) -> None:
        if self._write_ready is None:
            self._write_ready = asyncio.Event()
        self._write_ready.clear()
        self._pause(_PAUSE_WRITE)

    def resume_writing(self) -> None:
        if self._write_ready is not None:
            self._write_ready.set()
        self._resume(_PAUSE_WRITE)
        if self._backlog is not None:
            self._release()

    # ------------------------------------------------------------- inbound
    def _pump(self, now: float) -> bool:
        """Handle what was received, within the frame budget; True if throttled.

        The budget (frames that are not a whole message) is a token bucket kept as
        one number: the debt, paid back at ``ws_frame_rate`` since the last read. It
        is checked per read, and the core counts against it per frame.
        """
        config = self._state.config
        rate = config.ws_frame_rate
        conn = self._conn
        debt, grant = 0.0, 0
        if rate > 0.0:
            debt = self._frame_debt
            if debt:
                debt -= (now - self._last_rx) * rate
                if debt <= 0.0:
                    debt = 0.0
            grant = int(config.ws_frame_burst - debt)
            conn.frame_allowance = grant
        self._last_rx = now
        throttled = self._handle_events()
        if rate > 0.0:
            used = grant - conn.frame_allowance
            self._frame_debt = debt + used if used else debt
            conn.frame_allowance = conn.NO_FRAME_LIMIT  # shared: nothing held per connection
        refusals = self._refusals
        if refusals is not None and refusals.dropped:
            self._report(now)
        return throttled

    def _handle_events(self) -> bool:
        """Dispatch the core's events; True when a message over the rate stopped it
        (the rest stays in the core until the wake-up)."""
        conn = self._conn
        throttled = False
        for event in conn.events():
            if isinstance(event, TextMessage):
                if self._dispatch(event.data):
                    throttled = True
                    break
            elif isinstance(event, BinaryMessage):
                if not self._endpoint.accept_binary:
                    self.close(CloseCode.UNSUPPORTED_DATA, "binary messages are not accepted")
                    continue
                if self._dispatch(event.data):
                    throttled = True
                    break
            elif isinstance(event, PingReceived):
                # §5.5.3: the pong goes out before anything the rest of this read causes.
                for frame in conn.data_to_send():
                    self._queue(frame)
            elif isinstance(event, PongReceived):
                if event.payload == self._ping_payload:
                    self._ping_payload = None
                    self._pong_deadline = math.inf
            elif isinstance(event, PeerClosed):
                self._received_close = event.code
                self._finish(conn.data_to_send())
                return False
            elif isinstance(event, ConnectionFailed):
                self._close_code = event.code
                if event.code == CloseCode.POLICY_VIOLATION:
                    self._frame_flood()  # only the core's frame budget fails with 1008
                else:
                    log.info("ws %d failed: %d %s", self.id, event.code, event.reason)
                self._finish(conn.data_to_send())
                return False
        owed = conn.data_to_send()
        for frame in owed:
            self._queue(frame)
        return throttled

    def _frame_flood(self) -> None:
        self._state.metrics.ws_abuse_closes += 1
        config = self._state.config
        log.warning(
            "ws %d from %s user %s on %s: more than %g frames at once or %g/s sustained "
            "that are not messages (pings, pongs, fragments), closing with 1008",
            self.id,
            self.remote[0] if self.remote else "-",
            self.user_id or "-",
            self.request.path,
            config.ws_frame_burst,
            config.ws_frame_rate,
        )

    def _finish(self, frames: list[bytes]) -> None:
        """The handshake is over (or failed): send what is owed, then close TCP first."""
        for frame in frames:
            self._queue(frame)
        self.flush()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()  # flushes the buffer, then closes
        # If the buffer never drains, abort after close_timeout.
        self._set_deadline(self._state.loop.time() + self._state.config.close_timeout)

    def _dispatch(self, data: str | bytes) -> bool:
        """Hand a message over; True when it was over the rate of a throttling endpoint
        (it is handled, and reading stops until the rate has paid for it)."""
        metrics = self._state.metrics
        metrics.ws_messages_in += 1
        bucket = self._bucket
        endpoint = self._endpoint
        if bucket is None:
            config = self._state.config
            if config.ws_rate > 0:
                burst = config.ws_burst
                if endpoint.throttle:
                    # Woken by the sweeper, a throttled connection can use at most
                    # rate x resolution tokens per wake: a smaller burst would hold it
                    # below its rate.
                    burst = max(burst, config.ws_rate * config.timer_resolution)
                bucket = self._bucket = TokenBucket(config.ws_rate, burst, self._last_rx)
        # Before the inbox: a flooding client cannot fill it. _last_rx is this read's time.
        throttled = False
        if bucket is not None:
            now = self._last_rx
            wait = bucket.take(now)
            if wait:
                if endpoint.throttle:
                    # Already read, so handled; then nothing more is read until the
                    # bucket has paid for it: TCP backpressure, and nothing is lost.
                    self._throttle(now, bucket.force(now))
                    throttled = True
                else:
                    if self._count_rejected(now):
                        try:
                            endpoint.on_rate_limited(self, data, wait)
                        except Exception:
                            self._handler_failed()
                    return False
        if self._busy:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            inbox.append(data)
            if len(inbox) >= self._state.limits.max_inbound_queue:
                self._pause(_PAUSE_QUEUE)
            return throttled
        try:
            result = endpoint.on_message(self, data)
        except Exception:
            self._handler_failed()
            return throttled
        if result is not None:
            self._run(result)
        return throttled

    def _throttle(self, now: float, wait: float) -> None:
        """Stop reading until ``now + wait``; the sweeper wakes the connection up."""
        self._state.metrics.ws_throttled += 1
        self._pause(_PAUSE_RATE)
        when = now + wait
        if when < self._wake_at:
            self._wake_at = when
            self._set_deadline(self._due)

    def _wake(self, now: float) -> None:
        """The sweeper's wake-up: the end of a throttle, or a report that is due."""
        if self._paused & _PAUSE_RATE and not self._pump(now):
            self._resume(_PAUSE_RATE)  # caught up: read the socket again
        refusals = self._refusals
        if refusals is not None and refusals.dropped:
            self._report(now)

    def _report(self, now: float) -> None:
        """Send the ``linkd.rate_limited`` event owed for refused messages, or wake up
        when it may go (at most one per ``REPORT_INTERVAL``)."""
        refusals = self._refusals
        assert refusals is not None
        if self.closed:
            refusals.dropped = 0  # closing already (abuse, say): the close says it
            return
        if now < refusals.report_after:
            if refusals.report_after < self._wake_at:
                self._wake_at = refusals.report_after
                self._set_deadline(self._due)
            return
        dropped, refusals.dropped = refusals.dropped, 0
        refusals.report_after = now + REPORT_INTERVAL
        # Seconds, rounded up to the millisecond: waiting that long is enough.
        retry = math.ceil(max(0.0, refusals.retry_at - now) * 1000) / 1000
        data = {"dropped": dropped, "retryAfter": retry}
        self._send_event(orjson.dumps({"type": "linkd.rate_limited", "data": data}))

    def _run(self, first: Awaitable[None]) -> None:
        self._busy = True
        self._state.spawn(self._drain_inbox(first))

    async def _drain_inbox(self, first: Awaitable[None]) -> None:
        """Await a handler, then hand over queued messages one at a time, in order."""
        pending: Awaitable[None] | None = first
        low = self._state.limits.max_inbound_queue // 4
        try:
            while True:
                if pending is not None:
                    try:
                        await pending
                    except Exception:
                        self._handler_failed()
                inbox = self._inbox
                if not inbox:
                    break
                data = inbox.popleft()
                if len(inbox) <= low:
                    self._resume(_PAUSE_QUEUE)
                try:
                    pending = self._endpoint.on_message(self, data)
                except Exception:
                    self._handler_failed()
                    pending = None
        finally:
            self._busy = False
            if self._disconnect_code is not None:
                code, self._disconnect_code = self._disconnect_code, None
                self._notify_disconnect(code)

    def _count_rejected(self, now: float) -> bool:
        """A message was refused by a rate limit; False when the client gets no answer.

        Abuse: more than ``ws_abuse_limit`` refusals within one ``ws_abuse_window``
        (a fixed window that starts at the first refusal) closes the connection 1008.
        """
        if self._closed or self._conn.state is not WsState.OPEN:
            return False  # closing already: drop without counting
        self._state.metrics.ws_rate_limited += 1
        config = self._state.config
        refusals = self._refusals
        if refusals is None:
            refusals = self._refusals = _Refusals()
        if now >= refusals.rejected_until:
            refusals.rejected_until = now + config.ws_abuse_window
            refusals.rejected = 0
        refusals.rejected += 1
        if config.ws_abuse_limit and refusals.rejected > config.ws_abuse_limit:
            self._state.metrics.ws_abuse_closes += 1
            log.warning(
                "ws %d from %s user %s on %s: %d messages over the rate limit within %gs, "
                "closing with 1008",
                self.id,
                self.remote[0] if self.remote else "-",
                self.user_id or "-",
                self.request.path,
                refusals.rejected,
                config.ws_abuse_window,
            )
            self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
            return False
        return True

    def _handler_failed(self) -> None:
        # The handler's bug: log it here, tell the client only "internal error".
        log.exception("ws %d: handler for %s failed", self.id, self.request.path)
        self.close(CloseCode.INTERNAL_ERROR, "internal error")

    def _notify_disconnect(self, code: int) -> None:
        try:
            result = self._endpoint.on_disconnect(self, code)
        except Exception:
            log.exception("ws %d: on_disconnect failed", self.id)
            return
        if result is not None:

            async def wait() -> None:
                try:
                    await result
                except Exception:
                    log.exception("ws %d: on_disconnect failed", self.id)

            self._state.spawn(wait())

    # ------------------------------------------------------------ outbound
    def _queue(self, frame: bytes) -> None:
        if self._closed:
            return
        transport = self._transport
        assert transport is not None
        out = self._out
        size = len(frame)
        if out is None:
            # The transport's buffer cannot change before our flush: read it once per
            # iteration, then count down what is left under the cap.
            left = self._state.limits.max_outbound_bytes - transport.get_write_buffer_size()
        else:
            left = self._room
        left -= size
        if left < 0 and self._conn.state is WsState.OPEN:
            # The frame that tipped it over is dropped along with the corked ones.
            self._state.metrics.dropped_messages += 1
            self._slow_consumer()
            return
        self._room = left
        if out is None:
            # One frame is kept as is: a list per connection per message would be a
            # container for the garbage collector to promote and walk.
            self._out = frame
            self._out_bytes = size
            self._state.corker.add(self)
        else:
            if isinstance(out, bytes):
                self._out = [out, frame]
            else:
                out.append(frame)
            self._out_bytes += size

    def flush(self) -> None:
        """Write every corked frame in one system call (called by the Corker)."""
        out = self._out
        if out is None:
            return
        self._out = None
        size, self._out_bytes = self._out_bytes, 0
        transport = self._transport
        if transport is None or self._closed or transport.is_closing():
            return
        self._state.metrics.ws_bytes_out += size
        if isinstance(out, bytes):
            transport.write(out)
        else:
            transport.writelines(out)
        if self._backlog is not None:
            self._release()  # not paused by that write: the next chunk, next iteration

    def _slow_consumer(self) -> None:
        """Over the outbound cap: drop what is corked, say 1013, give it time to read."""
        metrics = self._state.metrics
        metrics.slow_consumers += 1
        metrics.count_slow_consumer(Policy.DISCONNECT)
        out = self._out
        if out is not None:
            metrics.dropped_messages += 1 if isinstance(out, bytes) else len(out)
            self._out = None  # still registered with the corker: flush() sees None
            self._out_bytes = 0
        if self._backlog is not None:
            metrics.dropped_messages += len(self._backlog)
            self._backlog = None
        log.warning(
            "ws %d: slow consumer on %s from %s, user %s: closing with 1013",
            self.id,
            self.request.path,
            self.remote[0] if self.remote else "-",
            self.user_id or "-",
        )
        # The close frame goes behind what the kernel already holds; the peer sees
        # it if it ever reads again, and TCP is dropped after close_timeout if not.
        self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer")

    # ------------------------------------------------- lossy slow consumers
    def _queue_message(self, frame: bytes, policy: Policy, key: str | None) -> None:
        """A data message on a connection whose policies may drop: hold it while the
        transport is above its high-water mark (engine/slow.py), else cork it."""
        transport = self._transport
        if transport is None:
            return
        if (
            self._backlog is None
            and transport.get_write_buffer_size() + self._out_bytes
            <= self._state.limits.write_high_water
        ):
            self._queue(frame)
            return
        self._hold(frame, policy, key)

    def _hold(self, frame: bytes, policy: Policy, key: str | None) -> None:
        backlog = self._backlog
        if backlog is None:
            backlog = self._backlog = _Backlog()
        if policy is Policy.CONFLATE and key is not None:
            keyed = backlog.keyed
            if keyed is None:
                keyed = backlog.keyed = {}
            held = keyed.get(key)
            if held is not None and self._paused & _PAUSE_WRITE:
                # Backed up (the transport is over its high-water mark): the newer value
                # takes the older one's place in line. Not merely busy: a burst to a
                # client that keeps up is delivered whole.
                backlog.size += len(frame) - len(held.frame)
                held.frame = frame
                self._state.metrics.count_shed(Policy.CONFLATE)
                self._fired(Policy.CONFLATE)
                return
            held = keyed[key] = _Held(frame, policy, key)
        else:
            held = _Held(frame, policy, None)
        backlog.append(held)
        backlog.size += len(frame)
        transport = self._transport
        assert transport is not None
        limit = self._state.limits.max_outbound_bytes
        while backlog.size + transport.get_write_buffer_size() > limit and backlog:
            oldest = backlog[0]
            if oldest.policy is Policy.DISCONNECT:
                # It may not be lost, and it cannot be delivered in time.
                self._slow_consumer()
                return
            backlog.popleft()
            self._forget(oldest)
            self._state.metrics.count_shed(oldest.policy)
            self._state.metrics.dropped_messages += 1
            self._fired(oldest.policy)
        if self._out is None:
            # Nothing corked, so no flush is coming to move the backlog along.
            self._release()

    def _forget(self, held: _Held) -> None:
        backlog = self._backlog
        assert backlog is not None
        backlog.size -= len(held.frame)
        keyed = backlog.keyed
        if held.key is not None and keyed is not None and keyed.get(held.key) is held:
            del keyed[held.key]

    def _release(self, force: bool = False) -> None:
        """Move held messages to the cork: at least one when the transport is not
        paused, then more while it stays under its high-water mark (``force``: all)."""
        backlog = self._backlog
        transport = self._transport
        if backlog is None or transport is None:
            return
        if not force and self._paused & _PAUSE_WRITE:
            return  # resume_writing calls again
        high = self._state.limits.write_high_water
        first = True
        while backlog and (
            force or first or transport.get_write_buffer_size() + self._out_bytes <= high
        ):
            first = False
            held = backlog.popleft()
            self._forget(held)
            self._queue(held.frame)
            if self._backlog is None:
                return  # _queue found the connection over its cap and closed it
        if not backlog:
            self._backlog = None
            if backlog.shed:
                log.info(
                    "ws %d user %s: caught up after %d messages dropped or conflated",
                    self.id,
                    self.user_id or "-",
                    backlog.shed,
                )

    def _fired(self, policy: Policy) -> None:
        """A lossy policy dropped or replaced a message: one event and log line per episode
        (an episode: from the backlog's first loss until it has drained)."""
        backlog = self._backlog
        assert backlog is not None
        if not backlog.shed:
            self._state.metrics.count_slow_consumer(policy)
            log.warning(
                "ws %d: slow consumer on %s from %s, user %s: %s (kept open)",
                self.id,
                self.request.path,
                self.remote[0] if self.remote else "-",
                self.user_id or "-",
                policy.label,
            )
        backlog.shed += 1

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

    # -------------------------------------------------- timers (one sweeper)
    def _arm_heartbeat(self, now: float) -> None:
        interval = self._state.config.heartbeat
        # The token's expiry is a deadline too, heartbeat or not (see _set_deadline).
        self._set_deadline(now + interval if interval > 0 else math.inf)

    def _set_deadline(self, when: float) -> None:
        self._due = when
        if self._conn.state is WsState.OPEN:
            when = min(when, self._expires_at)
        if self._wake_at < when:
            when = self._wake_at
        self.deadline = when
        self._state.sweeper.schedule(self)

    def on_deadline(self, now: float) -> None:
        """Called by the sweeper: wake-up, heartbeat, pong timeout, close timeout."""
        if self._closed:
            self.deadline = math.inf
            return
        if now >= self._wake_at:
            self._wake_at = math.inf
            self._wake(now)
            if self._closed:
                return
            due = self._due
            if self._conn.state is WsState.OPEN:
                due = min(due, self._expires_at)
            if now < due:  # woken early: the timer it stands for is still ahead
                self._set_deadline(self._due)
                return
        transport = self._transport
        assert transport is not None
        conn_state = self._conn.state
        if conn_state is not WsState.OPEN or transport.is_closing():
            # The close timeout passed without the peer's close or a drained buffer.
            log.debug("ws %d: close timeout, dropping TCP", self.id)
            _reset(transport)
            return
        config = self._state.config
        if now >= self._expires_at:
            log.info("ws %d: token of user %s expired", self.id, self.user_id)
            self.close(CloseCode.POLICY_VIOLATION, "token expired")
            return
        if self._ping_payload is not None:
            if self._paused:
                # We stopped reading ourselves (handler backlog or our own write side
                # is full): the pong may be sitting unread in the kernel. Not its fault.
                self._pong_deadline = now + config.heartbeat_timeout
                self._set_deadline(self._pong_deadline)
            elif now >= self._pong_deadline:
                log.info("ws %d: pong not received in %.1fs", self.id, config.heartbeat_timeout)
                self.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            else:
                self._set_deadline(self._pong_deadline)
            return
        if config.heartbeat <= 0:
            self._set_deadline(math.inf)
            return
        idle_until = self._last_rx + config.heartbeat
        if now < idle_until:
            self._set_deadline(idle_until)  # traffic arrived: not idle yet
            return
        self._ping_payload = self.id.to_bytes(8, "big") + int(now * 1000).to_bytes(8, "big")
        self._queue(self._conn.ping(self._ping_payload))
        self._pong_deadline = now + config.heartbeat_timeout
        self._set_deadline(self._pong_deadline)


#: The ``left_rooms`` of every open connection (never mutated: replaced at close).
_NO_ROOMS: list[str] = []


class _Refusals:
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


class _Backlog(deque["_Held"]):
    """Messages a lossy connection holds back, their size, what conflation keys them."""

    __slots__ = ("keyed", "shed", "size")

    def __init__(self) -> None:
        super().__init__()
        self.size = 0
        #: conflate: the held message of each key.
        self.keyed: dict[str, _Held] | None = None
        #: Messages dropped or replaced in this episode.
        self.shed = 0


class _Held:
    """A message waiting in a lossy connection's backlog."""

    __slots__ = ("frame", "key", "policy")

    def __init__(self, frame: bytes, policy: Policy, key: str | None) -> None:
        self.frame = frame
        self.policy = policy
        self.key = key


def _reset(transport: asyncio.Transport) -> None:
    """Abort with SO_LINGER 0: the kernel discards what the peer never read (RST)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
