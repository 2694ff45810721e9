"""Lossy: the backlog of a connection whose slow-consumer policy may drop
(``drop_oldest``, ``conflate``: engine/limits/slow.py).

While the transport is above its high-water mark, data messages wait here instead of
in the cork; past ``max_outbound_bytes`` the oldest is dropped (or, under
``conflate``, a newer value of the same key takes the older one's place in line). A
``disconnect`` message that reaches the front of a full backlog cannot be delivered
in time and may not be lost: the connection is closed 1013 (outbound.py). Held
messages move to the cork as the transport drains (``resume_writing``, ``flush``).
"""

from __future__ import annotations

import logging

from engine.limits.slow import Policy
from engine.ws.base import PAUSE_WRITE, Backlog, Held, WsBase

__all__ = ["Lossy"]

log = logging.getLogger("linkd.ws")


class Lossy(WsBase):
    __slots__ = ()

    def _queue_message(self, frame: bytes, policy: Policy, key: str | None) -> None:
        """A data message on a connection whose policies may drop: hold it while the
        transport is above its high-water mark (engine/limits/slow.py), else cork it."""
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
            backlog = self._backlog = Backlog()
        if policy is Policy.CONFLATE and key is not None:
            keyed = backlog.keyed
            if keyed is None:
                keyed = backlog.keyed = {}
            held = keyed.get(key)
            if held is not None and self._paused & PAUSE_WRITE:
                # Backed up (the transport is over its high-water mark): the newer value
                # takes the older one's place in line. Not merely busy: a burst to a
                # client that keeps up is delivered whole.
                backlog.size += len(frame) - len(held.frame)
                held.frame = frame
                self._state.metrics.count_shed(Policy.CONFLATE)
                self._fired(Policy.CONFLATE)
                return
            held = keyed[key] = Held(frame, policy, key)
        else:
            held = Held(frame, policy, None)
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

    def _forget(self, held: Held) -> None:
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
        if not force and self._paused & PAUSE_WRITE:
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
