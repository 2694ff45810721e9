"""Outbound: every frame a connection sends goes through ``_queue``, the cork.

Frames are corked until the end of the loop iteration (engine/core/corker.py calls
``flush``: one system call for everything a connection got in one iteration) and
counted against ``max_outbound_bytes``: a connection whose unsent bytes pass it is sent
1013 and given ``close_timeout`` to read it before TCP is dropped, so memory stays
bounded (the ``disconnect`` slow-consumer policy; the lossy ones are lossy.py).
``send_prepared`` is the fan-out path (engine/hub/fanout.py): a message encoded once
for every recipient; ``send_now`` writes a lone publish at once instead of corking it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from engine.hub.member import Member
from engine.limits.slow import Policy
from engine.ws.base import PAUSE_WRITE, WsBase
from protocol import CloseCode
from protocol.ws import OutboundMessage, WsState

__all__ = ["Outbound"]

log = logging.getLogger("linkd.ws")


class Outbound(WsBase):
    __slots__ = ()

    def send_prepared(
        self, message: OutboundMessage, policy: Policy | None = None, key: str | None = None
    ) -> bool:
        """Queue a pre-built message (the fan-out path: encoded once for everyone).

        ``policy`` overrides the path's slow-consumer policy for this message (an
        event-type rule); ``key`` is its conflation key (target and event type).
        """
        conn = self._conn
        if not conn.raw_allowed or self._closed:
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
        """The frame of a pre-built message this connection takes (engine/hub/fanout.py)."""
        conn = self._conn
        deflate = conn.deflate
        if deflate is None:
            return message.plain  # the common case, without the method call
        shared = None
        if deflate.shared_key is not None:
            shared = self._state.shared_deflater(deflate.shared_key)
        return conn.prepared(message, shared)

    @classmethod
    def fan_now(
        cls,
        message: OutboundMessage,
        targets: Iterable[Member],
        policy: Policy | None = None,
        key: str | None = None,
    ) -> tuple[int, int]:
        """``send_now`` to each of ``targets``, the loop inside: ``(taken, written)``,
        ``written`` being those of them written here and left for the caller to count
        (``ws_messages_out``, ``ws_bytes_out``: once per publish). engine/hub/fanout.py
        calls it on the class of its first recipient.

        The common recipient (open, nothing corked, no lossy policy, no deflate, not
        paused, the frame under the cap's headroom) costs a few slot reads and the
        write, without a call of its own: a thousand of them per publish to a room of
        a thousand was a third of the fan-out's instructions (bench/README.md).
        Everything else, and a recipient of another class, takes ``send_now``.
        """
        plain = message.plain
        taken = written = 0
        ws: Any  # a Member; read through its slots when it is one of ours
        ws = next(iter(targets), None)
        # Under the headroom of the recipients' engine (they share one hub, one node).
        fits = type(ws) is cls and len(plain) <= ws._state.frame_headroom
        for ws in targets:
            if fits and type(ws) is cls:
                transport = ws._transport
                conn = ws._conn
                if (
                    ws._out is None
                    and ws._policy is None
                    and not ws._closed
                    and not ws._paused  # any reason: the rare paths are send_now's
                    and transport is not None
                    and conn.raw_allowed
                    and conn.deflate is None
                ):
                    transport.write(plain)
                    written += 1
                    continue
            if ws.send_now(message, policy, key):  # counted there
                taken += 1
        return taken + written, written

    @classmethod
    def fan_corked(
        cls,
        message: OutboundMessage,
        targets: Iterable[Member],
        policy: Policy | None = None,
        key: str | None = None,
    ) -> tuple[int, int]:
        """``send_prepared`` to each of ``targets`` with the loop inside (the corked
        fan-out: frames leave at the end of the iteration, several publishes' in one
        write): ``(taken, corked)``, ``corked`` being those corked here and left for
        the caller to count in ``ws_messages_out``.

        The common recipient (open, no lossy policy, no deflate, not paused, room left
        under the cap's bound) is corked right here, as ``_queue`` would; anything
        else, and a recipient of another class, takes ``send_prepared``.
        """
        plain = message.plain
        size = len(plain)
        taken = corked = 0
        ws: Any = next(iter(targets), None)  # a Member; read through its slots when ours
        fast = type(ws) is cls
        if fast:
            headroom = ws._state.frame_headroom
            corker = ws._state.corker
        for ws in targets:
            if fast and type(ws) is cls:
                conn = ws._conn
                if (
                    ws._policy is None
                    and not ws._closed
                    and not ws._paused
                    and conn.raw_allowed
                    and conn.deflate is None
                ):
                    out = ws._out
                    if out is None:
                        left = headroom - size  # not paused: at most write_high_water buffered
                        if left >= 0:
                            ws._room = left
                            ws._out = plain
                            ws._out_bytes = size
                            corker.add(ws)
                            corked += 1
                            continue
                    else:
                        left = ws._room - size
                        if left >= 0:
                            ws._room = left
                            if isinstance(out, bytes):
                                ws._out = [out, plain]
                            else:
                                out.append(plain)
                            ws._out_bytes += size
                            corked += 1
                            continue
            if ws.send_prepared(message, policy, key):  # counted there
                taken += 1
        return taken + corked, corked

    def send_now(
        self, message: OutboundMessage, policy: Policy | None = None, key: str | None = None
    ) -> bool:
        """``send_prepared`` then write at once, without corking (a lone publish on an
        idle engine: the first subscribers are served while the others are queued).
        The fan-out's common recipient never gets here (``fan_now`` writes it)."""
        transport = self._transport
        if (
            self._out is not None
            or self._policy is not None
            or self._closed
            or transport is None
            or not self._conn.raw_allowed
        ):  # the rare cases: the corked path, then written
            sent = self.send_prepared(message, policy, key)
            self.flush()
            return sent
        frame = self._frame(message)
        size = len(frame)
        state = self._state
        # Not paused, the transport holds at most write_high_water: then a frame that
        # fits in the rest cannot pass the cap, and the C call per delivery is saved.
        if (
            self._paused & PAUSE_WRITE or size > state.frame_headroom
        ) and transport.get_write_buffer_size() + size > state.limits.max_outbound_bytes:
            state.metrics.dropped_messages += 1
            self._slow_consumer()
            return True  # it was sent to us; the connection is what failed
        transport.write(frame)
        metrics = state.metrics
        metrics.ws_messages_out += 1
        metrics.ws_bytes_out += size
        return True

    def _queue(self, frame: bytes) -> None:
        if self._closed:
            return
        transport = self._transport
        assert transport is not None
        out = self._out
        size = len(frame)
        if out is None:
            # The transport's buffer cannot change before our flush, and while it is
            # not paused it holds at most write_high_water: start from that bound (no C
            # call per connection per iteration), then count down what is left.
            if self._paused & PAUSE_WRITE:
                left = self._state.limits.max_outbound_bytes - transport.get_write_buffer_size()
            else:
                left = self._state.frame_headroom
        else:
            left = self._room
        left -= size
        if left < 0:
            # Past the bound: the exact room, from the transport's real buffer.
            corked = 0 if out is None else self._out_bytes
            left = (
                self._state.limits.max_outbound_bytes
                - transport.get_write_buffer_size()
                - corked
                - size
            )
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
