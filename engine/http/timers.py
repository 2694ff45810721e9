"""Timers: one deadline per HTTP connection, on the sweeper's wheel
(engine/core/sweeper.py), following the core's state.

The PROXY header (``--proxy-protocol``): ``header_timeout``, then closed unanswered.
Reading a head: ``header_timeout`` (408); a body: ``body_timeout`` (408); idle between
requests: ``keep_alive_timeout`` (a silent close); closing: ``close_timeout`` (then
the transport is aborted). While the write side is paused, the send timeout runs
instead: a peer that takes no byte of its responses for ``send_timeout`` is dropped,
one that takes some is a slow reader and gets another window.
"""

from __future__ import annotations

import logging
import math

from engine.http.base import HOLD_WRITE, HttpBase
from protocol.http import HttpState

__all__ = ["Timers"]

log = logging.getLogger("linkd.http")


class Timers(HttpBase):
    __slots__ = ()

    def _track_state(self) -> None:
        state = self._conn.state
        if state is self._last_state:
            return
        self._last_state = state
        if not self._hold & HOLD_WRITE:  # the send timeout runs until it drains
            self._state_deadline()

    def _state_deadline(self) -> None:
        state = self._conn.state
        config = self._state.config
        if state is HttpState.CLOSING or (self._transport and self._transport.is_closing()):
            self._set_deadline(config.close_timeout)
        elif state is HttpState.READING:
            self._set_deadline(config.header_timeout)
        elif state is HttpState.READING_BODY:
            self._set_deadline(config.body_timeout)
        elif state is HttpState.IDLE:
            self._set_deadline(config.keep_alive_timeout)
        else:
            self.deadline = math.inf

    def _send_window(self) -> float:
        """How long a write-paused peer may take no byte: ``send_timeout``, or
        ``close_timeout`` once we are closing (0: never)."""
        config = self._state.config
        closing = self._transport is not None and self._transport.is_closing()
        return config.close_timeout if closing else config.send_timeout

    def _arm_send_timeout(self) -> None:
        window = self._send_window()
        if window or (self._transport is not None and self._transport.is_closing()):
            self._set_deadline(window)
        else:
            self.deadline = math.inf

    def _set_deadline(self, delay: float) -> None:
        self.deadline = self._state.loop.time() + delay
        self._state.sweeper.schedule(self)

    def on_deadline(self, now: float) -> None:
        """The sweeper: no progress writing → drop; header/body timeout → 408;
        keep-alive idle → silent close; a close that never drained → drop."""
        transport = self._transport
        if transport is None:
            return
        if self._over_cap:
            transport.abort()  # refused at accept and still not gone
        elif self._proxy_buffer is not None:
            self._proxy_refused("no PROXY header within --header-timeout")
        elif self._hold & HOLD_WRITE:
            unsent = transport.get_write_buffer_size()
            if unsent != self._unsent:  # the peer took some: a slow reader, not a dead one
                self._unsent = unsent
                self._arm_send_timeout()
                return
            log.info(
                "%s read none of its responses for %.1fs: dropped",
                self.remote[0] if self.remote else "-",
                self._send_window(),
            )
            transport.abort()
        elif self._conn.state is HttpState.CLOSING or transport.is_closing():
            transport.abort()  # we closed, and what was left to write never drained
        elif self._conn.state in (HttpState.READING, HttpState.READING_BODY):
            log.info("request from %s timed out", self.remote)
            self._fail(408)
        else:
            self._close()
