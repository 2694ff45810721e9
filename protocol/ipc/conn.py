"""IpcConn: the IPC state machine both sides run (docs/ipc.md §5).

HANDSHAKE → READY → DRAINING → CLOSED. The core frames and decodes bytes, looks each
message up in the transition table of ``states.py`` (which cites the rule of §5 each
row implements) and keeps the request ids in flight in both directions, so a reply
to an id that is not pending is a protocol error rather than a silent mix-up.
"""

from __future__ import annotations

from typing import Any

from ..errors import LocalProtocolError
from . import messages as m
from .codec import ENGINE_RECEIVES, WORKER_RECEIVES, decode, encode
from .errors import IpcError, IpcProtocolError
from .framing import FrameDecoder, encode_frame
from .states import MAX_EXPIRED, PHASE_STATE, TABLE, Direction, Effect, IpcState, Phase, Role, Rule

__all__ = ["IpcConn", "IpcState", "PeerFrameTooLarge", "Role"]


class PeerFrameTooLarge(LocalProtocolError):
    """The message encodes to more than the peer's ``max_frame``; nothing was sent."""


# Module globals: the per-message path compares against them without attribute lookups.
_NONE, _REFUSE, _REQUEST, _ANSWER = Effect.NONE, Effect.REFUSE, Effect.REQUEST, Effect.ANSWER
_CLOSED = Phase.CLOSED


class IpcConn:
    """One end of an engine ⇄ worker connection.

    Args:
        role: which end this is.
        max_frame: the largest frame body we accept (announced in hello/welcome).
    """

    __slots__ = (
        "_decoder",
        "_expired",
        "_phase",
        "_receive_table",
        "_receiving",
        "_send_table",
        "_sending",
        "_types_received",
        "peer_max_frame",
        "pending_in",
        "pending_out",
        "role",
        "version",
    )

    def __init__(self, role: Role, max_frame: int = 8 * 1024 * 1024) -> None:
        self.role = role
        self._decoder = FrameDecoder(max_frame)
        self._types_received = ENGINE_RECEIVES if role is Role.ENGINE else WORKER_RECEIVES
        self._send_table = TABLE[role, Direction.SEND]
        self._receive_table = TABLE[role, Direction.RECEIVE]
        #: Ids of requests we sent and the peer has not answered yet.
        self.pending_out: set[int] = set()
        #: Ids of requests the peer sent that we have not answered yet.
        self.pending_in: set[int] = set()
        # Ids we gave up on (timeouts): a late answer is dropped, not a protocol error.
        self._expired: dict[int, None] = {}
        self.peer_max_frame = max_frame
        self.version = m.PROTOCOL_VERSION
        self._phase = Phase.BEFORE_HELLO
        # The rules of the current phase, by message type: one lookup per message.
        self._sending: dict[type, Rule] = self._send_table[self._phase]
        self._receiving: dict[type, Rule] = self._receive_table[self._phase]

    def _enter(self, phase: Phase) -> None:
        self._phase = phase
        self._sending = self._send_table[phase]
        # CLOSED has no receive rules: next_message stops before the lookup (R11).
        self._receiving = self._receive_table.get(phase, self._receiving)

    @property
    def state(self) -> IpcState:
        return PHASE_STATE[self._phase]

    @property
    def phase(self) -> Phase:
        """The finer state the transition table is keyed by (states.py)."""
        return self._phase

    @property
    def max_frame(self) -> int:
        return self._decoder.max_frame

    @property
    def accepting_requests(self) -> bool:
        """Whether new requests may be sent to the peer."""
        return self._phase is Phase.READY

    # ---------------------------------------------------------------- inbound
    def receive_data(self, data: bytes) -> None:
        self._decoder.feed(data)

    def next_message(self) -> Any | None:
        """The next message, or None until more bytes arrive.

        Raises:
            IpcProtocolError: the peer broke a rule; close the connection.
        """
        if self._phase is _CLOSED:
            return None
        try:
            body = self._decoder.next_frame()
            if body is None:
                return None
            msg = decode(body, self._types_received)
            # Total over the types decode() yields, for every phase but CLOSED.
            rule = self._receiving[type(msg)]
            effect = rule.effect
            if effect is _ANSWER:  # R8, R9
                msg_id = msg.id
                if msg_id in self.pending_out:
                    self.pending_out.discard(msg_id)
                elif msg_id in self._expired:
                    del self._expired[msg_id]  # a late answer to a timed-out request
                else:
                    raise IpcProtocolError(
                        IpcError.UNEXPECTED, f"{msg.TYPE} to unknown id {msg_id}"
                    )
            elif effect is _REQUEST:  # R7
                if msg.id in self.pending_in:
                    raise IpcProtocolError(IpcError.UNEXPECTED, f"request id {msg.id} reused")
                self.pending_in.add(msg.id)
            elif effect is not _NONE:
                self._receive_rare(rule, msg)
            if rule.next is not None:
                self._enter(rule.next)
        except IpcProtocolError:
            self._enter(_CLOSED)
            raise
        return msg

    def _receive_rare(self, rule: Rule, msg: Any) -> None:
        """Refusals and the handshake's checks: off the per-message path."""
        effect = rule.effect
        if effect is _REFUSE:
            raise IpcProtocolError(IpcError.UNEXPECTED, rule.why.format(t=msg.TYPE))
        if effect is Effect.HELLO:  # R3
            # A version mismatch is the engine's to answer with reject {code: VERSION}
            # (docs/ipc.md §1), so it is not a protocol error here.
            if msg.max_frame < 1024:
                raise IpcProtocolError(IpcError.BAD_FIELD, "hello.max_frame below 1024")
            self.peer_max_frame = msg.max_frame
        elif effect is Effect.WELCOME:  # R3
            if msg.version != m.PROTOCOL_VERSION:
                raise IpcProtocolError(IpcError.VERSION, f"engine chose version {msg.version}")
            self.peer_max_frame = msg.max_frame

    # --------------------------------------------------------------- outbound
    def send(self, msg: Any) -> bytes:
        """Frame one message; raises LocalProtocolError when it may not be sent now.

        The table is asked first, so a refused message is not even encoded; the size
        is checked before any bookkeeping, so an oversize reply leaves its request
        pending and the caller can still answer it with an error.
        """
        rule = self._sending.get(type(msg))
        if rule is None:  # R6: not a message of this direction
            if self._phase is _CLOSED:
                raise LocalProtocolError("connection closed")
            raise LocalProtocolError(f"the {self.role.value} does not send {type(msg).__name__}")
        effect = rule.effect
        if effect is _REFUSE:
            raise LocalProtocolError(rule.why.format(t=msg.TYPE))
        body = encode(msg)
        if len(body) > self.peer_max_frame:
            raise PeerFrameTooLarge(f"{msg.TYPE} of {len(body)} bytes exceeds the peer's max_frame")
        if effect is _ANSWER:  # R8
            if msg.id not in self.pending_in:
                raise LocalProtocolError(f"no pending request {msg.id}")
            self.pending_in.discard(msg.id)
        elif effect is _REQUEST:  # R7
            if msg.id in self.pending_out:
                raise LocalProtocolError(f"request id {msg.id} in use")
            self.pending_out.add(msg.id)
        if rule.next is not None:
            self._enter(rule.next)
        return encode_frame(body)

    def expire(self, request_id: int) -> None:
        """Stop waiting for ``request_id`` (timed out); its late answer will be accepted
        by ``next_message`` and should be dropped by the caller (R9)."""
        if request_id in self.pending_out:
            self.pending_out.discard(request_id)
            self._expired[request_id] = None
            if len(self._expired) > MAX_EXPIRED:
                del self._expired[next(iter(self._expired))]

    def close(self) -> set[int]:
        """Mark closed; returns the ids we were still waiting on (to fail them)."""
        self._enter(_CLOSED)
        pending, self.pending_out = self.pending_out, set()
        self.pending_in = set()
        return pending
