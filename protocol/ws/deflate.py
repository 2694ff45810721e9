"""permessage-deflate (RFC 7692): negotiation, bounded inflate, shared and per-connection deflate.

wsproto's own ``PerMessageDeflate`` inflates each chunk without ``max_length``, so one
small compressed frame can expand a thousandfold before anyone sees its size. Our
extension inflates against a budget: the rest of ``max_message_bytes`` plus one chunk,
and refuses the message with 1009 the moment the budget is spent.

The extension is always enabled on our connections, even when deflate was not
negotiated: it is also where the per-message size limit of uncompressed messages is
checked, from frame headers, before any payload is buffered.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

__all__ = [
    "NO_FRAME_LIMIT",
    "DeflateOptions",
    "DeflateParams",
    "InboundGuard",
    "SharedDeflater",
    "negotiate_deflate",
]

EXTENSION_NAME = "permessage-deflate"
#: ``InboundGuard.frame_allowance`` when the caller sets none (one shared int: an
#: idle connection holds no number of its own).
NO_FRAME_LIMIT = 1 << 62
# RFC 7692 §7.2.1: the sender removes these four octets; §7.2.2: the receiver appends them.
_TAIL = b"\x00\x00\xff\xff"
_NO_RSV = RsvBits(False, False, False)
_RSV1 = RsvBits(True, False, False)


@dataclass(frozen=True, slots=True)
class DeflateOptions:
    """What the server is willing to negotiate.

    Attributes:
        enabled: offer-accepting at all; False ignores every permessage-deflate offer.
        server_no_context_takeover: insist on it even when the client did not ask.
            This is what lets fan-out share one compressed frame among many
            connections, and it saves the ~256 KiB a persistent compressor costs.
        client_no_context_takeover: ask the client to reset its context per message,
            so our inflater can be dropped between messages (memory per idle connection).
        server_max_window_bits: upper bound of our compression window (9-15).
        client_max_window_bits: upper bound we ask of the client's window, when it
            offered the parameter (9-15).
        level: zlib compression level; 6 is zlib's default, 1 trades ratio for CPU.
        mem_level: zlib memLevel; 8 is zlib's default, lower saves memory per compressor.
    """

    enabled: bool = True
    server_no_context_takeover: bool = True
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    level: int = 6
    mem_level: int = 8

    def __post_init__(self) -> None:
        for name in ("server_max_window_bits", "client_max_window_bits"):
            if not 9 <= getattr(self, name) <= 15:
                raise ValueError(f"{name} must be between 9 and 15")
        if not 0 <= self.level <= 9 or not 1 <= self.mem_level <= 9:
            raise ValueError("level must be 0-9 and mem_level 1-9")


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """The parameters one connection agreed on; ``response`` goes back in the 101."""

    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int
    client_max_window_bits: int
    response: str

    @property
    def shared_key(self) -> int | None:
        """Connections with equal keys can receive the same pre-compressed frame.

        Only a server without context takeover compresses every message on its own,
        so only then is one compressed frame valid for everybody with a window at
        least as large as the one it was made with. None: not shareable.
        """
        return self.server_max_window_bits if self.server_no_context_takeover else None


class _BadOffer(Exception):
    pass


def _parse_bits(value: str | None, *, required: bool) -> int | None:
    if value is None:
        if required:
            raise _BadOffer("window bits need a value")
        return None
    value = value.strip().strip('"')
    # RFC 7692 §7.1.2: "1*DIGIT" without leading zeros, in 8..15.
    # isdigit() alone accepts "¹" (a Latin-1 header byte), which int() then rejects.
    if not (value.isascii() and value.isdigit()) or value.startswith("0"):
        raise _BadOffer(f"invalid window bits {value!r}")
    if not 8 <= int(value) <= 15:
        raise _BadOffer(f"invalid window bits {value!r}")
    return int(value)


def _accept_offer(params: list[str], options: DeflateOptions) -> DeflateParams:
    """Accept one offer or raise _BadOffer (RFC 7692 §7.1: decline invalid offers)."""
    seen: dict[str, str | None] = {}
    for param in params:
        key, eq, value = param.partition("=")
        name = key.strip().lower()
        if not name:
            continue
        if name in seen:
            raise _BadOffer(f"duplicate parameter {name}")
        seen[name] = value if eq else None

    server_nct = options.server_no_context_takeover
    client_nct = options.client_no_context_takeover
    server_bits = options.server_max_window_bits
    client_bits = options.client_max_window_bits
    response = [EXTENSION_NAME]

    for name, given in seen.items():
        if name == "server_no_context_takeover":
            if given is not None:
                raise _BadOffer("server_no_context_takeover takes no value")
            server_nct = True
        elif name == "client_no_context_takeover":
            if given is not None:
                raise _BadOffer("client_no_context_takeover takes no value")
            client_nct = True
        elif name == "server_max_window_bits":
            asked = _parse_bits(given, required=True)
            assert asked is not None
            server_bits = min(server_bits, asked)
            # zlib cannot produce a raw deflate stream with an 8-bit window.
            if server_bits < 9:
                raise _BadOffer("server_max_window_bits=8 is not supported")
        elif name == "client_max_window_bits":
            asked = _parse_bits(given, required=False)
            if asked is not None:
                client_bits = min(client_bits, asked)
        else:
            raise _BadOffer(f"unknown parameter {name}")

    if server_nct:
        response.append("server_no_context_takeover")
    if client_nct:
        response.append("client_no_context_takeover")
    if "server_max_window_bits" in seen or server_bits < 15:
        response.append(f"server_max_window_bits={server_bits}")
    # §7.1.2.2: only answer client_max_window_bits when the client offered it.
    if "client_max_window_bits" in seen:
        # §7.1.2.2: never answer more than offered. 8 is a legal answer; we inflate
        # with at least 9 (zlib's minimum), which reads any smaller window too.
        response.append(f"client_max_window_bits={client_bits}")
    else:
        client_bits = 15
    return DeflateParams(
        server_no_context_takeover=server_nct,
        client_no_context_takeover=client_nct,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
        response="; ".join(response),
    )


def negotiate_deflate(offers: list[str], options: DeflateOptions) -> DeflateParams | None:
    """Pick the first acceptable permessage-deflate offer, or None to go uncompressed.

    Args:
        offers: the comma-separated elements of every ``Sec-WebSocket-Extensions``
            header, in order (``"permessage-deflate; client_max_window_bits"``...).
        options: what this server allows.
    """
    if not options.enabled:
        return None
    for offer in offers:
        name, *params = offer.split(";")
        if name.strip().lower() != EXTENSION_NAME:
            continue
        try:
            return _accept_offer(params, options)
        except _BadOffer:
            continue
    return None


class SharedDeflater:
    """Compresses whole messages without context, so the output suits any receiver.

    ``Z_FULL_FLUSH`` resets the compressor's dictionary, so no message refers back to
    an earlier one: this one compressor serves every message and every connection that
    negotiated ``server_no_context_takeover`` with a window ≥ ``window_bits``, instead
    of allocating a fresh compressor (about 256 KiB at memLevel 8) per message.
    """

    __slots__ = ("_compressor",)

    def __init__(self, window_bits: int = 15, level: int = 6, mem_level: int = 8) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -window_bits, mem_level)

    def compress(self, payload: bytes) -> bytes:
        data = self._compressor.compress(payload) + self._compressor.flush(zlib.Z_FULL_FLUSH)
        if data.endswith(_TAIL):
            return data[:-4]
        return data  # pragma: no cover - zlib always ends a flush with the empty block


class InboundGuard(Extension):
    """Enforces the message limits and, when negotiated, inflates with a budget.

    Plugged into ``wsproto.frame_protocol.FrameProtocol`` as its only extension, so it
    sees every frame header before the payload is buffered. Refusals are returned as
    ``CloseReason`` values, which wsproto turns into a ``ParseFailed`` with that code
    (1009 too big or too many fragments, 1007 bad deflate data, 1002 RSV1 where it is
    not allowed, 1008 frame allowance spent).
    """

    name = EXTENSION_NAME
    # One per connection: slots, not an instance dict.
    __slots__ = (
        "_compressed",
        "_control",
        "_in_message",
        "_inflater",
        "frame_allowance",
        "inflate_chunk_bytes",
        "max_fragments",
        "max_message_bytes",
        "message_bytes",
        "message_frames",
        "params",
        "peak_inflate",
    )

    def __init__(
        self,
        max_message_bytes: int,
        params: DeflateParams | None = None,
        inflate_chunk_bytes: int = 64 * 1024,
        max_fragments: int = 0,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.params = params
        self.inflate_chunk_bytes = inflate_chunk_bytes
        #: Frames one message may have (0: any number).
        self.max_fragments = max_fragments
        #: Bytes of the current message so far (inflated size when compressed).
        self.message_bytes = 0
        #: Frames of the current message so far.
        self.message_frames = 0
        #: Frames that are not a whole message (control frames, and every fragment of
        #: a message but its last) still allowed; past it → 1008. Whole messages are
        #: left to the caller's message rate. The caller refills it (per socket read).
        self.frame_allowance = NO_FRAME_LIMIT
        #: The largest number of bytes inflated by one zlib call, for tests and fuzzing.
        self.peak_inflate = 0
        self._in_message = False
        self._compressed = False
        # wsproto also runs control frames through the payload hooks: they must pass
        # untouched, even in the middle of a compressed fragmented message.
        self._control = False
        self._inflater: zlib._Decompress | None = None

    # Always on: it carries the size limit for uncompressed messages too.
    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:  # pragma: no cover - server side only
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        self._control = opcode.iscontrol()
        if self._control:
            return CloseReason.PROTOCOL_ERROR if rsv.rsv1 else _NO_RSV
        if opcode is Opcode.CONTINUATION:
            # RFC 7692 §6.1: RSV1 only on the first frame of a message.
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self.message_frames += 1
            # Empty fragments add nothing to message_bytes: their number is the bound.
            if self.max_fragments and self.message_frames > self.max_fragments:
                return CloseReason.MESSAGE_TOO_BIG
        else:
            if rsv.rsv1 and self.params is None:
                return CloseReason.PROTOCOL_ERROR
            if not self._in_message:
                # wsproto reports CONTINUATION without a start itself; a new data
                # frame in the middle of a message is also its to reject (1002).
                self._in_message = True
                self._compressed = rsv.rsv1
                self.message_bytes = 0
                self.message_frames = 1
        # Wire bytes are bounded too: a compressed message whose compressed form
        # exceeds the limit would inflate past it in any realistic case.
        if self.message_bytes + payload_length > self.max_message_bytes and (
            not self._compressed or payload_length > self.max_message_bytes
        ):
            return CloseReason.MESSAGE_TOO_BIG
        if not self._compressed:
            self.message_bytes += payload_length
        return _RSV1 if self.params is not None else _NO_RSV

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        if self._inflater is None:
            assert self.params is not None
            self._inflater = zlib.decompressobj(-max(9, self.params.client_max_window_bits))
        budget = self.max_message_bytes - self.message_bytes
        # Ask for one byte more than the budget: getting it proves the message is too big.
        limit = min(budget + 1, self.inflate_chunk_bytes)
        out = bytearray()
        try:
            while True:
                chunk = self._inflater.decompress(data, limit)
                self.peak_inflate = max(self.peak_inflate, len(chunk))
                out += chunk
                self.message_bytes += len(chunk)
                if self.message_bytes > self.max_message_bytes:
                    # Drop the inflater now: it still holds the rest of the bomb's input.
                    self._inflater = None
                    return CloseReason.MESSAGE_TOO_BIG
                # At the end of the stream (a BFINAL block) zlib returns b"" forever and
                # keeps the rest in unconsumed_tail: stop, or this loop never ends.
                data = self._inflater.unconsumed_tail
                if not data or self._inflater.eof:
                    break
                limit = min(
                    self.max_message_bytes - self.message_bytes + 1, self.inflate_chunk_bytes
                )
        except zlib.error:
            self._inflater = None
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if self._inflater.eof:
            # A BFINAL block ends the stream; anything after it cannot be inflated.
            if self._inflater.unused_data or self._inflater.unconsumed_tail:
                self._inflater = None
                return CloseReason.INVALID_FRAME_PAYLOAD_DATA
            self._inflater = None
        return bytes(out)

    def release(self) -> None:
        """Free the inflater (the connection is gone; its timer entry may linger)."""
        self._inflater = None

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if self._control or not self._compressed or not self._in_message:
            return data
        return self._inflate(data)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if self._control or not fin:
            # Charged once the frame is whole: only then is FIN known (the header
            # hook does not get it). A control frame's payload is at most 125 bytes.
            if self.frame_allowance <= 0:
                return CloseReason.POLICY_VIOLATION
            self.frame_allowance -= 1
            return None
        if not self._in_message:
            return None
        self._in_message = False
        if not self._compressed:
            return None
        self._compressed = False
        result = self._inflate(_TAIL)
        if self.params is not None and self.params.client_no_context_takeover:
            self._inflater = None
        return result

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        # Data frames never go through wsproto (see protocol.ws.conn); control frames
        # are never compressed.
        return (rsv, data)


class ConnectionDeflater:
    """Compresses one connection's messages, keeping context when allowed (better ratio)."""

    __slots__ = ("_compressor", "_keep", "_level", "_mem_level", "_wbits")

    def __init__(self, params: DeflateParams, level: int = 6, mem_level: int = 8) -> None:
        self._wbits = params.server_max_window_bits
        self._keep = not params.server_no_context_takeover
        self._level = level
        self._mem_level = mem_level
        self._compressor: zlib._Compress | None = None

    def compress(self, payload: bytes) -> bytes:
        comp = self._compressor
        if comp is None:
            comp = zlib.compressobj(self._level, zlib.DEFLATED, -self._wbits, self._mem_level)
            if self._keep:
                self._compressor = comp
        data = comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4] if data.endswith(_TAIL) else data
