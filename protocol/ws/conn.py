"""WsConn: one server-side WebSocket connection (RFC 6455) on top of wsproto's frame machine.

wsproto's ``FrameProtocol`` parses and validates frames (masking, opcodes, UTF-8, close
payloads); this core adds what it leaves to the embedder: the closing handshake's state,
message reassembly under a size limit, bounded inflate (see ``deflate.InboundGuard``),
automatic pongs and close replies, and a fast send path that encodes data frames itself
so fan-out can share pre-built frames. Sans-I/O: bytes in,
events and bytes out; no clock, no sockets.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import cast

from wsproto.frame_protocol import Frame, FrameProtocol, ParseFailed
from wsproto.frame_protocol import Opcode as WsOpcode

from ..codes import CloseCode
from ..errors import LocalProtocolError
from ..limits import Limits
from .deflate import (
    NO_FRAME_LIMIT,
    ConnectionDeflater,
    DeflateOptions,
    DeflateParams,
    InboundGuard,
    SharedDeflater,
)
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

#: What a released connection parses with: never fed (CLOSED discards bytes).
_RELEASED = FrameProtocol(False, [])


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
        "_eof",
        "_fragmenting",
        "_guard",
        "_limits",
        "_outgoing",
        "_parts",
        "_proto",
        "_state",
        "_text",
        "deflate",
        "raw_allowed",
        "stalled",
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
        #: The last ``events(limit)`` stopped at its limit: frames may wait unparsed.
        self.stalled = False
        self._guard = InboundGuard(
            limits.max_message_bytes,
            deflate,
            limits.inflate_chunk_bytes,
            limits.max_message_fragments,
        )
        self._deflater: ConnectionDeflater | None = None
        if deflate is not None:
            opts = deflate_options or DeflateOptions()
            self._deflater = ConnectionDeflater(deflate, opts.level, opts.mem_level)
        # wsproto's frame parser without its Connection wrapper: we keep the close
        # state ourselves, and the wrapper's event deque cost ~900 bytes per connection.
        # Made at the first byte received, and dropped again by ``shed`` while idle:
        # its five objects and a generator are ~700 bytes a connection that is only
        # listening need not hold.
        self._proto: FrameProtocol | None = None
        self._eof = False
        self._state = WsState.OPEN
        # Created on first use: most idle connections never owe a frame or receive a
        # fragmented message, and an empty list costs 56 bytes.
        self._outgoing: list[bytes] | None = None
        # The fragments of the message being received, joined as they come: its bytes
        # plus a constant, however many fragments there are (not an object each).
        self._parts: bytearray | None = None
        self._text = False
        self._fragmenting = False
        #: Whether a pre-built data frame may be written now: raw frames bypass
        #: wsproto, so only while OPEN and while no fragmented message of ours is half
        #: sent (its continuation frames would be interleaved with the raw one, which
        #: RFC 6455 §5.4 forbids). A plain attribute, kept by every change of state or
        #: of ``_fragmenting``: the fan-out reads it once per recipient.
        self.raw_allowed = True
        if trailing_data:
            self.receive_data(trailing_data)

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> WsState:
        return self._state

    #: ``frame_allowance`` meaning "no limit" (also the initial value).
    NO_FRAME_LIMIT = NO_FRAME_LIMIT

    @property
    def frame_allowance(self) -> int:
        """Frames that are not a whole message (control frames, fragments but the
        last) still allowed before the connection fails with 1008.

        Whole messages are not charged: they have the shell's message rate. The shell
        sets it before each read from its own frame rate (a token bucket on its
        clock) and reads what is left after it; ``NO_FRAME_LIMIT``: no limit.
        """
        return self._guard.frame_allowance

    @frame_allowance.setter
    def frame_allowance(self, value: int) -> None:
        self._guard.frame_allowance = value

    @property
    def inflate_peak(self) -> int:
        """The largest number of bytes one inflate step produced (for bomb tests)."""
        return self._guard.peak_inflate

    def release(self) -> None:
        """Drop buffers and the inflater once the connection is gone."""
        self._guard.release()
        # wsproto's buffer may hold a partial frame (up to a message): a closed
        # connection may live on briefly (a timer, a task), its bytes must not.
        self._proto = _RELEASED
        self._parts = None
        self._outgoing = None
        self._state = WsState.CLOSED
        self.raw_allowed = False

    # ---------------------------------------------------------------- inbound
    def receive_data(self, data: bytes | None) -> bool:
        """Feed bytes from the socket; ``None`` means the peer closed TCP (EOF).

        True when these bytes made a new frame parser (the first since the
        connection opened or since ``shed``): the shell's cue to shed it again once
        the connection is quiet.
        """
        if self._state is WsState.CLOSED:
            return False  # §7.1.1: after the handshake, bytes are discarded.
        if data is None:
            self._eof = True
        elif data:
            proto = self._proto
            if proto is None:
                proto = self._proto = FrameProtocol(False, [self._guard])
                proto.receive_bytes(data)
                return True
            proto.receive_bytes(data)
        return False

    def shed(self) -> bool:
        """Drop the frame parser if it sits between two frames (nothing buffered,
        no message half-received): an idle connection's memory. The next byte makes
        a new one. True if it was dropped."""
        proto = self._proto
        if proto is None or proto is _RELEASED or self._parts is not None:
            return False
        frames = proto._frame_decoder
        if frames.header is not None or len(frames.buffer) or proto._message_decoder.opcode:
            return False
        self._proto = None
        return True

    def events(self, limit: int = 0) -> Iterator[WsEvent]:
        """Parse what was received into events; replies owed are in ``data_to_send()``.

        A generator on purpose: a message that precedes a protocol error must be
        handled (and answered) before the failure changes the connection's state,
        so events are produced one at a time as the caller consumes them.

        ``limit``: parse at most that many frames (0: all there are); when it is
        reached ``stalled`` is True and the rest stays buffered for the next call.
        One read can carry tens of thousands of tiny frames: a caller that serves
        many connections takes them a turn at a time instead of in one long stall.
        """
        if self._state is WsState.CLOSED:
            return
        self.stalled = False
        proto = self._proto
        if proto is None:
            frames: Iterator[Frame] = iter(())  # nothing received since the last shed
        else:
            frames = proto.received_frames() if limit <= 0 else self._frames(proto, limit)
        try:
            for frame in frames:
                opcode = frame.opcode
                if opcode is WsOpcode.TEXT or opcode is WsOpcode.BINARY:
                    if self._state is not WsState.OPEN:
                        continue  # §1.4: data after our close frame is discarded.
                    # wsproto types payload as every kind it can be; a data frame's is
                    # one of these (no typing.cast: a function call per message).
                    data: str | bytes | bytearray = frame.payload  # type: ignore[assignment]
                    parts = self._parts
                    if not frame.message_finished:
                        if data:  # an empty fragment leaves nothing behind
                            chunk = data.encode() if isinstance(data, str) else data
                            if parts is None:
                                self._parts = bytearray(chunk)
                            else:
                                parts += chunk
                        continue
                    if parts is not None:
                        # Text is kept as UTF-8 (wsproto has validated it): one byte per
                        # ASCII character, where a str buffer may take four.
                        self._parts = None
                        parts += data.encode() if isinstance(data, str) else data
                        data = parts.decode() if opcode is WsOpcode.TEXT else parts
                    if opcode is WsOpcode.TEXT:
                        yield TextMessage(data)  # type: ignore[arg-type]
                    else:
                        yield BinaryMessage(bytes(data))  # type: ignore[arg-type]
                elif opcode is WsOpcode.PING:
                    payload = bytes(frame.payload)  # type: ignore[arg-type]
                    if self._state is WsState.OPEN:
                        # §5.5.3: answer with a pong carrying the same application data.
                        self._owe(encode_frame(Opcode.PONG, payload))
                    yield PingReceived(payload)
                elif opcode is WsOpcode.PONG:
                    yield PongReceived(bytes(frame.payload))  # type: ignore[arg-type]
                elif opcode is WsOpcode.CLOSE:
                    # FrameProtocol validated the close frame into (code, reason).
                    close = cast(tuple[int, str], frame.payload)
                    yield self._on_close(int(close[0]), close[1])
                    return
        except ParseFailed as exc:
            yield self._fail(int(exc.code), str(exc))
            return
        if self.stalled:
            return  # frames may be left: the EOF comes after them
        if self._eof:
            # "If _The WebSocket Connection is Closed_ and no Close control frame was
            # received ... _The WebSocket Connection Close Code_ is considered to be
            # 1006" (§7.1.5).
            self._parts = None
            self._state = WsState.CLOSED
            self.raw_allowed = False
            yield PeerClosed(CloseCode.ABNORMAL, "")

    def _frames(self, proto: FrameProtocol, limit: int) -> Iterator[Frame]:
        for count, frame in enumerate(proto.received_frames(), 1):
            yield frame
            if count >= limit:
                self.stalled = True  # wsproto keeps its place: the next call resumes
                return

    def _owe(self, frame: bytes) -> None:
        if self._outgoing is None:
            self._outgoing = [frame]
        else:
            self._outgoing.append(frame)

    def _on_close(self, code: int, reason: str) -> WsEvent:
        self._parts = None
        if self._state is WsState.OPEN:
            # A close frame while open: echo its code (§5.5.1); 1005 means "no code",
            # answered with an empty close frame.
            self._owe(encode_close(None if code == CloseCode.NO_STATUS else code))
        self._state = WsState.CLOSED
        self.raw_allowed = False
        return PeerClosed(code, reason)

    def _fail(self, code: int, reason: str) -> WsEvent:
        """§7.1.7 Fail the WebSocket Connection: our close frame, then drop TCP."""
        self._parts = None
        if self._state is WsState.OPEN:
            self._owe(encode_close(code, _public_reason(code)))
        self._state = WsState.CLOSED
        self.raw_allowed = False
        return ConnectionFailed(code, reason)

    def data_to_send(self) -> list[bytes]:
        """Bytes owed to the peer because of received frames (pongs, close replies)."""
        out, self._outgoing = self._outgoing, None
        return out if out is not None else []

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
        self.raw_allowed = fin  # OPEN, checked above
        return encode_frame(opcode, payload, fin=fin)

    def ping(self, payload: bytes = b"") -> bytes:
        if self._state is not WsState.OPEN:
            raise LocalProtocolError("connection is not open")
        return encode_frame(Opcode.PING, payload)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Start the closing handshake; returns b"" when it was already started."""
        if self._state is not WsState.OPEN:
            return b""
        self._state = WsState.LOCAL_CLOSING
        self._fragmenting = False
        self.raw_allowed = False
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
