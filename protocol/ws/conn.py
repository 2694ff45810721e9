"""WsConn: one server-side WebSocket connection (RFC 6455) on top of wsproto's frame machine.

wsproto parses frames and runs the close handshake; this core adds what it leaves to
the embedder: message reassembly under a size limit, bounded inflate (see
``deflate.InboundGuard``), automatic pongs and close replies, and a fast send path that
encodes data frames itself so fan-out can share pre-built frames. Sans-I/O: bytes in,
events and bytes out; no clock, no sockets.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong
from wsproto.events import TextMessage as WsprotoText
from wsproto.utilities import LocalProtocolError as WsprotoLocalError

from ..codes import CloseCode
from ..errors import LocalProtocolError
from ..limits import Limits
from .deflate import ConnectionDeflater, DeflateOptions, DeflateParams, InboundGuard, SharedDeflater
from .events import (
    BinaryMessage,
    ConnectionFailed,
    PeerClosed,
    PingReceived,
    PongReceived,
    TextMessage,
    WsEvent,
)
from .frames import Opcode, OutboundMessage, encode_close, encode_frame

__all__ = ["WsConn", "WsState"]


class WsState(Enum):
    """Where the closing handshake stands (RFC 6455 §7)."""

    OPEN = "open"
    #: We sent a close frame and wait for the peer's.
    LOCAL_CLOSING = "local_closing"
    #: The handshake is over, or the connection failed; only the TCP close remains.
    CLOSED = "closed"


class WsConn:
    """Server side of one WebSocket connection after a successful upgrade.

    Args:
        limits: message size, inflate chunk and compression threshold.
        deflate: parameters negotiated at the upgrade, or None without compression.
        deflate_options: compression level and memLevel for our own deflater.
        trailing_data: bytes h11 read past the upgrade request (``h11.Connection.trailing_data``).
    """

    __slots__ = (
        "_deflater",
        "_fragmenting",
        "_guard",
        "_limits",
        "_outgoing",
        "_parts",
        "_state",
        "_text",
        "_ws",
        "deflate",
    )

    def __init__(
        self,
        limits: Limits,
        deflate: DeflateParams | None = None,
        deflate_options: DeflateOptions | None = None,
        trailing_data: bytes = b"",
    ) -> None:
        self._limits = limits
        self.deflate = deflate
        self._guard = InboundGuard(limits.max_message_bytes, deflate, limits.inflate_chunk_bytes)
        self._deflater: ConnectionDeflater | None = None
        if deflate is not None:
            opts = deflate_options or DeflateOptions()
            self._deflater = ConnectionDeflater(deflate, opts.level, opts.mem_level)
        self._ws = Connection(ConnectionType.SERVER, [self._guard])
        self._state = WsState.OPEN
        self._outgoing: list[bytes] = []
        self._parts: list[str | bytes] = []
        self._text = False
        self._fragmenting = False
        if trailing_data:
            self.receive_data(trailing_data)

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> WsState:
        return self._state

    @property
    def raw_allowed(self) -> bool:
        """Whether a pre-built data frame may be written now.

        Raw frames bypass wsproto, so they are only safe while OPEN and while no
        fragmented message of ours is half sent (its continuation frames would be
        interleaved with the raw one, which RFC 6455 §5.4 forbids).
        """
        return self._state is WsState.OPEN and not self._fragmenting

    @property
    def inflate_peak(self) -> int:
        """The largest number of bytes one inflate step produced (for bomb tests)."""
        return self._guard.peak_inflate

    def release(self) -> None:
        """Drop buffers and the inflater once the connection is gone."""
        self._guard.release()
        self._parts = []
        self._outgoing = []
        self._state = WsState.CLOSED

    # ---------------------------------------------------------------- inbound
    def receive_data(self, data: bytes | None) -> None:
        """Feed bytes from the socket; ``None`` means the peer closed TCP (EOF)."""
        if self._state is WsState.CLOSED:
            return  # §7.1.1: after the handshake, bytes are discarded.
        self._ws.receive_data(data)

    def events(self) -> Iterator[WsEvent]:
        """Parse what was received into events; replies owed are in ``data_to_send()``.

        A generator on purpose: a message that precedes a protocol error must be
        handled (and answered) before the failure changes the connection's state,
        so events are produced one at a time as the caller consumes them.
        """
        if self._state is WsState.CLOSED:
            return
        for event in self._ws.events():
            if isinstance(event, WsprotoText | BytesMessage):
                if self._state is not WsState.OPEN:
                    continue  # §1.4: data after our close frame is discarded.
                self._parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
                if event.message_finished:
                    parts, self._parts = self._parts, []
                    if isinstance(event, WsprotoText):
                        yield TextMessage("".join(parts))  # type: ignore[arg-type]
                    else:
                        yield BinaryMessage(b"".join(parts))  # type: ignore[arg-type]
            elif isinstance(event, Ping):
                if self._state is WsState.OPEN:
                    # §5.5.3: answer with a pong carrying the same application data.
                    self._outgoing.append(encode_frame(Opcode.PONG, bytes(event.payload)))
                yield PingReceived(bytes(event.payload))
            elif isinstance(event, Pong):
                yield PongReceived(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                yield self._on_close(event)
                return

    def _on_close(self, event: CloseConnection) -> WsEvent:
        ws_state = self._ws.state
        self._parts = []
        if ws_state is ConnectionState.REMOTE_CLOSING:
            # A genuine close frame while open: echo its code (§5.5.1), then done.
            self._outgoing.append(self._ws.send(CloseConnection(event.code)))
            self._state = WsState.CLOSED
            return PeerClosed(event.code, event.reason or "")
        if ws_state is ConnectionState.CLOSED and event.code != CloseCode.ABNORMAL:
            # The peer's answer to our close frame.
            self._state = WsState.CLOSED
            return PeerClosed(event.code, event.reason or "")
        if event.code == CloseCode.ABNORMAL:
            self._state = WsState.CLOSED
            return PeerClosed(event.code, "")
        # wsproto turned a parse failure into this event: fail the connection (§7.1.7).
        if self._state is WsState.OPEN:
            self._outgoing.append(encode_close(event.code, _public_reason(event.code)))
        self._state = WsState.CLOSED
        return ConnectionFailed(event.code, event.reason or "")

    def data_to_send(self) -> list[bytes]:
        """Bytes owed to the peer because of received frames (pongs, close replies)."""
        out, self._outgoing = self._outgoing, []
        return out

    # --------------------------------------------------------------- outbound
    def send(self, data: str | bytes) -> bytes:
        """Encode a whole message for this connection, compressed when worthwhile."""
        self._require_raw()
        if isinstance(data, str):
            payload, opcode = data.encode("utf-8"), Opcode.TEXT
        else:
            payload, opcode = bytes(data), Opcode.BINARY
        if self._deflater is not None and len(payload) >= self._limits.compression_threshold:
            return encode_frame(opcode, self._deflater.compress(payload), rsv1=True)
        return encode_frame(opcode, payload)

    def prepared(self, message: OutboundMessage, shared: SharedDeflater | None) -> bytes:
        """Pick the pre-built frame this connection can take.

        A shared compressed frame when this connection negotiated no server context
        takeover and ``shared`` was built for its window; otherwise compress for this
        connection alone (context takeover) or fall back to the plain frame.
        """
        if self.deflate is None or not message.compress_worthwhile:
            return message.plain
        key = self.deflate.shared_key
        if key is not None and shared is not None:
            return message.compressed(shared, key)
        assert self._deflater is not None
        return encode_frame(message.opcode, self._deflater.compress(message.payload), rsv1=True)

    def send_fragment(self, data: str | bytes, *, fin: bool) -> bytes:
        """Send one fragment of a message (never compressed); ``fin`` ends the message."""
        if self._state is not WsState.OPEN:
            raise LocalProtocolError("connection is not open")
        if self._fragmenting:
            opcode = Opcode.CONTINUATION
            if isinstance(data, str) != self._text:
                raise LocalProtocolError("fragments of one message must share a type")
        else:
            opcode = Opcode.TEXT if isinstance(data, str) else Opcode.BINARY
            self._text = isinstance(data, str)
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        self._fragmenting = not fin
        return encode_frame(opcode, payload, fin=fin)

    def ping(self, payload: bytes = b"") -> bytes:
        if self._state is not WsState.OPEN:
            raise LocalProtocolError("connection is not open")
        return encode_frame(Opcode.PING, payload)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Start the closing handshake; returns b"" when it was already started."""
        if self._state is not WsState.OPEN:
            return b""
        try:
            self._ws.send(CloseConnection(code))
        except WsprotoLocalError:  # pragma: no cover - guarded by our own state
            return b""
        self._state = WsState.LOCAL_CLOSING
        self._fragmenting = False
        return encode_close(code, reason)

    def _require_raw(self) -> None:
        if not self.raw_allowed:
            raise LocalProtocolError(f"cannot send a message in state {self._state.value}")


# The reason sent with a failure close: the code's meaning, never parser internals.
_REASONS = {
    CloseCode.PROTOCOL_ERROR: "protocol error",
    CloseCode.INVALID_PAYLOAD: "invalid payload data",
    CloseCode.MESSAGE_TOO_BIG: "message too big",
    CloseCode.POLICY_VIOLATION: "policy violation",
}


def _public_reason(code: int) -> str:
    try:
        return _REASONS.get(CloseCode(code), "")
    except ValueError:
        return ""
