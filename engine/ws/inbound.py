"""Inbound: from the core's events to the endpoint, one connection's messages in order.

``_pump`` runs once per read (protocol.py ``data_received``) within the frame budget
(frames that are not whole messages: pings, pongs, fragments); ``_handle_events``
answers pings and the closing handshake and hands each message to ``_dispatch``, which
charges the message rate (guards.py), takes a ``linkd.refresh`` for itself (refresh.py)
and calls ``on_message``. A plain handler runs inline; a coroutine runs as a task, and
messages that arrive meanwhile wait in the inbox (up to ``max_inbound_queue``, then
reading pauses) and are handed over one at a time: the connection's order is kept
here, by its one task, and nowhere else.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable

from engine.api.completion import Completion
from engine.limits.ratelimit import TokenBucket
from engine.ws.base import FRAMES_PER_TURN, PAUSE_QUEUE, PAUSE_RATE, PAUSE_TURN, WsBase
from engine.ws.refresh import REFRESH_TYPE
from protocol import CloseCode
from protocol.ws import (
    BinaryMessage,
    ConnectionFailed,
    PeerClosed,
    PingReceived,
    PongReceived,
    TextMessage,
)

__all__ = ["Inbound"]

log = logging.getLogger("linkd.ws")


class Inbound(WsBase):
    __slots__ = ()

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
        for event in conn.events(FRAMES_PER_TURN):
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
        if conn.stalled and not throttled:
            self._yield_turn()
        return throttled

    def _yield_turn(self) -> None:
        """A turn's frames are parsed: stop reading, and parse the rest at the next
        loop iteration, after every other connection that is ready had its turn."""
        if not self._paused & PAUSE_TURN:
            self._pause(PAUSE_TURN)
            self._state.loop.call_soon(self._next_turn)

    def _next_turn(self) -> None:
        if self._closed or not self._paused & PAUSE_TURN:
            return
        if self._paused & PAUSE_RATE:
            self._resume(PAUSE_TURN)  # throttled meanwhile: its wake-up parses the rest
            return
        self._paused &= ~PAUSE_TURN  # the transport stays paused while we parse
        self._pump(self._state.loop.time())
        if not self._paused and self._transport is not None and not self._closed:
            self._transport.resume_reading()  # caught up (a new stall re-paused it)

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
        if (
            endpoint.auth_policy != "none"
            and type(data) is str
            and REFRESH_TYPE in data  # a scan, not a parse, for every other message
            and self._refresh(data)
        ):
            return throttled  # the engine's own: before the inbox, never a handler's
        if self._busy:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            inbox.append(data)
            if len(inbox) >= self._state.limits.max_inbound_queue:
                self._pause(PAUSE_QUEUE)
            return throttled
        try:
            result = endpoint.on_message(self, data)
        except Exception:
            self._handler_failed()
            return throttled
        if result is not None:
            self._busy = True
            self._wait_for(result)
        return throttled

    def _wait_for(self, pending: Awaitable[None]) -> None:
        """Busy until ``pending`` is done, then on to the inbox: by callback for a
        ``Completion`` (no task), by a task for a coroutine."""
        if type(pending) is Completion:
            pending.then(self._next_message)
        else:
            self._state.spawn(self._drain_inbox(pending))

    def _next_message(self) -> None:
        """A ``Completion`` finished: hand over queued messages until one is pending."""
        endpoint = self._endpoint
        low = self._state.limits.max_inbound_queue // 4
        inbox = self._inbox
        while inbox:
            data = inbox.popleft()
            if len(inbox) <= low:
                self._resume(PAUSE_QUEUE)
            try:
                pending = endpoint.on_message(self, data)
            except Exception:
                self._handler_failed()
                continue
            if pending is not None:
                self._wait_for(pending)
                return
        self._idle()

    def _idle(self) -> None:
        self._busy = False
        if self._disconnect_code is not None:
            code, self._disconnect_code = self._disconnect_code, None
            self._notify_disconnect(code)

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
                    self._resume(PAUSE_QUEUE)
                try:
                    pending = self._endpoint.on_message(self, data)
                except Exception:
                    self._handler_failed()
                    pending = None
                if type(pending) is Completion:
                    pending.then(self._next_message)  # busy until it calls back
                    return
        except BaseException:
            self._idle()
            raise
        self._idle()

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
