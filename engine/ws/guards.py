"""Guards: a connection's message rate limits, its abuse limit, and the reports of
what they refused.

The connection's own rate (``ws_rate``) is charged in inbound.py ``_dispatch``: over
it, a throttling endpoint stops reading (``_throttle``, woken by the sweeper:
``_wake``) and any other refuses the message (``_count_rejected``). Named limits
(``rate_limit``) serve the service endpoints' per-type rates. Refusals within one
``ws_abuse_window`` past ``ws_abuse_limit`` close the connection 1008; refused messages
that get no answer of their own are reported in ``linkd.rate_limited`` events, at
most one per ``REPORT_INTERVAL`` (``note_dropped``, ``_report``). The bookkeeping is
``Refusals`` (base.py), allocated at the first refusal.
"""

from __future__ import annotations

import logging
import math

import orjson

from engine.limits.ratelimit import TokenBucket
from engine.ws.base import PAUSE_RATE, Refusals, WsBase
from protocol import CloseCode
from protocol.ws import WsState

__all__ = ["REPORT_INTERVAL", "Guards"]

log = logging.getLogger("linkd.ws")

#: ``linkd.rate_limited`` reports (messages refused without an answer of their own):
#: at most one per connection this often, in seconds.
REPORT_INTERVAL = 1.0


class Guards(WsBase):
    __slots__ = ()

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
            refusals = self._refusals = Refusals()
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
            refusals = self._refusals = Refusals()
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

    def _throttle(self, now: float, wait: float) -> None:
        """Stop reading until ``now + wait``; the sweeper wakes the connection up."""
        self._state.metrics.ws_throttled += 1
        self._pause(PAUSE_RATE)
        when = now + wait
        if when < self._wake_at:
            self._wake_at = when
            self._set_deadline(self._due)

    def _wake(self, now: float) -> None:
        """The sweeper's wake-up: the end of a throttle, or a report that is due."""
        if self._paused & PAUSE_RATE and not self._pump(now):
            self._resume(PAUSE_RATE)  # caught up: read the socket again
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
