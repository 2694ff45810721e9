"""IpcConn: the IPC state machine both sides run (docs/ipc.md §5).

HANDSHAKE → READY → DRAINING → CLOSED. The core frames and decodes bytes, checks
that each message is allowed in the current state and for this side, and keeps the
tables of request ids in flight in both directions, so a reply to an id that is not
pending is a protocol error rather than a silent mix-up.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from ..errors import LocalProtocolError
from . import messages as m
from .codec import ENGINE_RECEIVES, WORKER_RECEIVES, decode, encode
from .errors import IpcError, IpcProtocolError
from .framing import FrameDecoder, encode_frame

__all__ = ["IpcConn", "IpcState", "PeerFrameTooLarge", "Role"]


class PeerFrameTooLarge(LocalProtocolError):
    """The message encodes to more than the peer's ``max_frame``; nothing was sent."""


# How many timed-out ids are remembered; older late answers become protocol errors.
_MAX_EXPIRED = 10_000


class Role(Enum):
    ENGINE = "engine"
    WORKER = "worker"


class IpcState(Enum):
    HANDSHAKE = "handshake"
    READY = "ready"
    #: One side announced it takes no new requests; in-flight ones complete.
    DRAINING = "draining"
    CLOSED = "closed"


# Requests carry an id that the other side answers (Reply for these three, Result
# for Query); everything else is a one-way message.
_ENGINE_REQUESTS = (m.HttpRequest, m.Connect, m.Message)
_REQUESTS = (*_ENGINE_REQUESTS, m.Query)


class IpcConn:
    """One end of an engine ⇄ worker connection.

    Args:
        role: which end this is.
        max_frame: the largest frame body we accept (announced in hello/welcome).
    """

    __slots__ = (
        "_decoder",
        "_drain_received",
        "_drain_sent",
        "_expired",
        "_hello_sent",
        "_receives",
        "peer_max_frame",
        "pending_in",
        "pending_out",
        "role",
        "state",
        "version",
    )

    def __init__(self, role: Role, max_frame: int = 8 * 1024 * 1024) -> None:
        self.role = role
        self.state = IpcState.HANDSHAKE
        self._decoder = FrameDecoder(max_frame)
        self._receives = ENGINE_RECEIVES if role is Role.ENGINE else WORKER_RECEIVES
        #: Ids of requests we sent and the peer has not answered yet.
        self.pending_out: set[int] = set()
        #: Ids of requests the peer sent that we have not answered yet.
        self.pending_in: set[int] = set()
        # Ids we gave up on (timeouts): a late answer is dropped, not a protocol error.
        self._expired: dict[int, None] = {}
        self.peer_max_frame = max_frame
        self.version = m.PROTOCOL_VERSION
        self._hello_sent = False
        self._drain_sent = False
        self._drain_received = False

    @property
    def max_frame(self) -> int:
        return self._decoder.max_frame

    @property
    def accepting_requests(self) -> bool:
        """Whether new requests may be sent to the peer."""
        return self.state is IpcState.READY

    # ---------------------------------------------------------------- inbound
    def receive_data(self, data: bytes) -> None:
        self._decoder.feed(data)

    def next_message(self) -> Any | None:
        """The next message, or None until more bytes arrive.

        Raises:
            IpcProtocolError: the peer broke a rule; close the connection.
        """
        if self.state is IpcState.CLOSED:
            return None
        try:
            body = self._decoder.next_frame()
            if body is None:
                return None
            msg = decode(body, self._receives)
            self._on_receive(msg)
        except IpcProtocolError:
            self.state = IpcState.CLOSED
            raise
        return msg

    def _on_receive(self, msg: Any) -> None:
        state = self.state
        if state is IpcState.HANDSHAKE:
            self._receive_handshake(msg)
            return
        if isinstance(msg, m.Hello | m.Welcome | m.Reject):
            raise IpcProtocolError(IpcError.UNEXPECTED, f"{msg.TYPE} after the handshake")
        if isinstance(msg, m.Reply | m.Result):
            if msg.id in self.pending_out:
                self.pending_out.discard(msg.id)
            elif msg.id in self._expired:
                del self._expired[msg.id]  # a late answer to a timed-out request
            else:
                raise IpcProtocolError(IpcError.UNEXPECTED, f"{msg.TYPE} to unknown id {msg.id}")
        elif isinstance(msg, _REQUESTS):
            if msg.id in self.pending_in:
                raise IpcProtocolError(IpcError.UNEXPECTED, f"request id {msg.id} reused")
            if self._drain_sent and not isinstance(msg, m.Query):
                raise IpcProtocolError(IpcError.UNEXPECTED, "request after our drain")
            self.pending_in.add(msg.id)
        elif isinstance(msg, m.Drain):
            self._drain_received = True
            self.state = IpcState.DRAINING

    def _receive_handshake(self, msg: Any) -> None:
        if self.role is Role.ENGINE:
            if not isinstance(msg, m.Hello) or self._hello_sent:
                raise IpcProtocolError(IpcError.UNEXPECTED, f"expected hello, got {msg.TYPE}")
            self._hello_sent = True  # engine side: "hello received"
            # A version mismatch is the engine's to answer with reject {code: VERSION}
            # (docs/ipc.md §1), so it is not a protocol error here.
            if msg.max_frame < 1024:
                raise IpcProtocolError(IpcError.BAD_FIELD, "hello.max_frame below 1024")
            self.peer_max_frame = msg.max_frame
            return
        if not self._hello_sent:
            raise IpcProtocolError(IpcError.UNEXPECTED, f"{msg.TYPE} before our hello")
        if isinstance(msg, m.Welcome):
            if msg.version != m.PROTOCOL_VERSION:
                raise IpcProtocolError(IpcError.VERSION, f"engine chose version {msg.version}")
            self.peer_max_frame = msg.max_frame
            self.state = IpcState.READY
        elif isinstance(msg, m.Reject):
            self.state = IpcState.CLOSED
        else:
            raise IpcProtocolError(IpcError.UNEXPECTED, f"expected welcome, got {msg.TYPE}")

    # --------------------------------------------------------------- outbound
    def send(self, msg: Any) -> bytes:
        """Frame one message; raises LocalProtocolError when it may not be sent now.

        The size is checked before any bookkeeping, so an oversize reply leaves its
        request pending and the caller can still answer it with an error.
        """
        if self.state is IpcState.CLOSED:
            raise LocalProtocolError("connection closed")
        body = encode(msg)
        if len(body) > self.peer_max_frame:
            raise PeerFrameTooLarge(f"{msg.TYPE} of {len(body)} bytes exceeds the peer's max_frame")
        self._on_send(msg)
        return encode_frame(body)

    def _on_send(self, msg: Any) -> None:
        state = self.state
        if state is IpcState.CLOSED:
            raise LocalProtocolError("connection closed")
        if self.role is Role.WORKER:
            if isinstance(msg, m.Hello):
                if self._hello_sent:
                    raise LocalProtocolError("hello already sent")
                self._hello_sent = True
                return
            if state is IpcState.HANDSHAKE:
                raise LocalProtocolError(f"{msg.TYPE} before the welcome")
        else:
            if isinstance(msg, m.Welcome | m.Reject):
                if state is not IpcState.HANDSHAKE or not self._hello_sent:
                    raise LocalProtocolError(f"{msg.TYPE} outside the handshake")
                self.state = IpcState.READY if isinstance(msg, m.Welcome) else IpcState.CLOSED
                return
            if state is IpcState.HANDSHAKE:
                raise LocalProtocolError(f"{msg.TYPE} before the welcome")
        if isinstance(msg, m.Reply | m.Result):
            if msg.id not in self.pending_in:
                raise LocalProtocolError(f"no pending request {msg.id}")
            self.pending_in.discard(msg.id)
        elif isinstance(msg, _REQUESTS):
            if self._drain_received and not isinstance(msg, m.Query):
                raise LocalProtocolError("the peer is draining")
            if msg.id in self.pending_out:
                raise LocalProtocolError(f"request id {msg.id} in use")
            self.pending_out.add(msg.id)
        elif isinstance(msg, m.Drain):
            self._drain_sent = True
            self.state = IpcState.DRAINING

    def expire(self, request_id: int) -> None:
        """Stop waiting for ``request_id`` (timed out); its late answer will be accepted
        by ``next_message`` and should be dropped by the caller."""
        if request_id in self.pending_out:
            self.pending_out.discard(request_id)
            self._expired[request_id] = None
            if len(self._expired) > _MAX_EXPIRED:
                del self._expired[next(iter(self._expired))]

    def close(self) -> set[int]:
        """Mark closed; returns the ids we were still waiting on (to fail them)."""
        self.state = IpcState.CLOSED
        pending, self.pending_out = self.pending_out, set()
        self.pending_in = set()
        return pending
