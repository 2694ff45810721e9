"""WsConn, the sans-I/O WebSocket core: reassembly, limits, inflate budget, close handshake."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import pytest

from protocol import Limits
from protocol.ws import (
    BinaryMessage,
    ConnectionFailed,
    DeflateOptions,
    DeflateParams,
    Opcode,
    PeerClosed,
    PingReceived,
    PongReceived,
    TextMessage,
    WsConn,
    WsEvent,
    WsState,
    encode_frame,
    negotiate_deflate,
)
from tests.helpers.raw_ws import deflate_bomb, deflate_message, encode_client_frame

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def deflate_params(offer: str = "permessage-deflate", **options: object) -> DeflateParams:
    params = negotiate_deflate([offer], DeflateOptions(**options))  # type: ignore[arg-type]
    assert params is not None
    return params


def make_conn(deflate: DeflateParams | None = None, **limits: int) -> WsConn:
    return WsConn(dataclasses.replace(Limits(), **limits), deflate)


def feed(conn: WsConn, *chunks: bytes) -> list[WsEvent]:
    events: list[WsEvent] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        events.extend(conn.events())
    return events


def frame(opcode: int, payload: bytes = b"", **kwargs: bool) -> bytes:
    return encode_client_frame(opcode, payload, **kwargs)


def parse_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, payload) of every frame in ``data`` (server frames: never masked)."""
    out = []
    while data:
        b0, b1 = data[0], data[1]
        assert not b1 & 0x80
        n, pos = b1 & 0x7F, 2
        if n == 126:
            (n,) = struct.unpack("!H", data[2:4])
            pos = 4
        elif n == 127:
            (n,) = struct.unpack("!Q", data[2:10])
            pos = 10
        out.append((b0, data[pos : pos + n]))
        data = data[pos + n :]
    return out


def close_code_sent(conn: WsConn) -> int:
    frames = parse_server_frames(b"".join(conn.data_to_send()))
    assert frames, "no close frame queued"
    b0, payload = frames[-1]
    assert b0 == 0x88
    code: int = struct.unpack("!H", payload[:2])[0]
    return code


def state_of(conn: WsConn) -> WsState:
    """``conn.state`` read afresh (no type narrowing from an earlier assert)."""
    return conn.state


def failed_with(events: list[WsEvent], code: int) -> None:
    assert events, "no events"
    last = events[-1]
    assert isinstance(last, ConnectionFailed), events
    assert last.code == code, events


# -------------------------------------------------------------- reassembly
def test_single_frame_messages() -> None:
    conn = make_conn()
    events = feed(conn, frame(TEXT, "héllo".encode()) + frame(BINARY, b"\x00\xff"))
    assert events == [TextMessage("héllo"), BinaryMessage(b"\x00\xff")]
    assert conn.data_to_send() == []


def test_fragments_are_reassembled() -> None:
    conn = make_conn()
    events = feed(
        conn,
        frame(TEXT, b"hel", fin=False),
        frame(CONT, b"lo ", fin=False),
        frame(CONT, b""),  # an empty final fragment is legal
    )
    assert events == [TextMessage("hello ")]
    events = feed(conn, frame(BINARY, b"\x01", fin=False) + frame(CONT, b"\x02"))
    assert events == [BinaryMessage(b"\x01\x02")]


def test_byte_by_byte_delivery() -> None:
    conn = make_conn()
    data = frame(TEXT, b"ab", fin=False) + frame(PING, b"p") + frame(CONT, b"cd")
    events: list[WsEvent] = []
    for i in range(len(data)):
        events += feed(conn, data[i : i + 1])
    assert events == [PingReceived(b"p"), TextMessage("abcd")]


def test_an_idle_connection_sheds_its_parser_and_parses_on_after() -> None:
    """``shed`` drops the frame parser only between frames: a partial frame, a
    fragmented message or compressed context survive, and parsing goes on after."""
    conn = make_conn(deflate_params())
    assert not conn.shed()  # nothing received yet: there is no parser to drop
    assert feed(conn, frame(TEXT, b"one")) == [TextMessage("one")]
    assert conn.shed()
    whole = frame(TEXT, b"two")
    assert feed(conn, whole[:3]) == []
    assert not conn.shed()  # half a frame is buffered
    assert feed(conn, whole[3:]) == [TextMessage("two")]
    assert feed(conn, frame(TEXT, b"thr", fin=False)) == []
    assert not conn.shed()  # half a message
    assert feed(conn, frame(CONT, b"ee")) == [TextMessage("three")]
    assert conn.shed()
    # Compressed with context takeover: the second message refers back to the first
    # (the inflater is not the parser's, it stays).
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = (comp.compress(b"hello hello") + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]
    second = (comp.compress(b"hello hello") + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert len(second) < len(first)
    assert feed(conn, frame(TEXT, first, rsv1=True)) == [TextMessage("hello hello")]
    assert conn.shed()
    assert feed(conn, frame(TEXT, second, rsv1=True)) == [TextMessage("hello hello")]


def test_ping_interleaved_in_fragmented_message() -> None:
    conn = make_conn()
    events = feed(conn, frame(TEXT, b"part1-", fin=False) + frame(PING, b"hb"))
    assert events == [PingReceived(b"hb")]
    assert conn.data_to_send() == [encode_frame(Opcode.PONG, b"hb")]
    events = feed(conn, frame(PONG, b"x") + frame(CONT, b"part2"))
    assert events == [PongReceived(b"x"), TextMessage("part1-part2")]
    assert conn.data_to_send() == []


def test_ping_interleaved_in_fragmented_compressed_message() -> None:
    # RFC 6455 §5.4: control frames may be injected in the middle of a fragmented
    # message; RFC 7692 only compresses data frames, so the ping's payload is not
    # inflated and the message's compressed stream continues after it.
    conn = make_conn(deflate_params())
    text = "compressible text " * 50
    body = deflate_message(text.encode())
    half = len(body) // 2
    events = feed(
        conn,
        frame(TEXT, body[:half], fin=False, rsv1=True)
        + frame(PING, b"ping-payload")
        + frame(CONT, body[half:]),
    )
    assert events == [PingReceived(b"ping-payload"), TextMessage(text)]
    assert conn.data_to_send() == [encode_frame(Opcode.PONG, b"ping-payload")]


def test_trailing_data_is_parsed_at_construction() -> None:
    conn = WsConn(Limits(), None, trailing_data=frame(TEXT, b"early"))
    assert list(conn.events()) == [TextMessage("early")]


# ------------------------------------------------------------------ limits
def test_message_at_the_limit_is_accepted() -> None:
    conn = make_conn(max_message_bytes=1024)
    events = feed(conn, frame(BINARY, b"a" * 1000, fin=False) + frame(CONT, b"b" * 24))
    assert events == [BinaryMessage(b"a" * 1000 + b"b" * 24)]


def test_1009_detected_from_the_header_before_the_payload() -> None:
    conn = make_conn(max_message_bytes=1024)
    whole = frame(BINARY, b"x" * 2000)
    header = whole[: 2 + 2 + 4]  # 126-length header, 16-bit length, masking key
    events = feed(conn, header)  # not one payload byte yet
    failed_with(events, 1009)
    assert close_code_sent(conn) == 1009
    assert conn.state is WsState.CLOSED
    assert feed(conn, whole[len(header) :]) == []  # later bytes are ignored


def test_1009_across_fragments_from_headers() -> None:
    conn = make_conn(max_message_bytes=1024)
    assert feed(conn, frame(TEXT, b"a" * 600, fin=False)) == []
    second = frame(CONT, b"b" * 600)
    failed_with(feed(conn, second[:8]), 1009)
    assert close_code_sent(conn) == 1009


def test_compressed_message_under_the_limit() -> None:
    conn = make_conn(deflate_params(), max_message_bytes=64 * 1024)
    payload = bytes(64 * 1024)
    events = feed(conn, frame(BINARY, deflate_message(payload), rsv1=True))
    assert events == [BinaryMessage(payload)]


def test_compressed_bomb_is_refused_with_bounded_inflate() -> None:
    chunk = 16 * 1024
    conn = make_conn(deflate_params(), max_message_bytes=256 * 1024, inflate_chunk_bytes=chunk)
    bomb = deflate_bomb(16)  # 16 MiB of zeros in ~16 KiB
    events = feed(conn, frame(BINARY, bomb, rsv1=True))
    failed_with(events, 1009)
    assert close_code_sent(conn) == 1009
    assert 0 < conn.inflate_peak <= chunk + 1


def test_compressed_message_just_over_the_limit() -> None:
    conn = make_conn(deflate_params(), max_message_bytes=1000)
    failed_with(feed(conn, frame(TEXT, deflate_message(b"a" * 1001), rsv1=True)), 1009)


def test_compressed_fragments_counted_together() -> None:
    conn = make_conn(deflate_params(), max_message_bytes=1000)
    body = deflate_message(bytes(range(256)) * 4)  # 1024 bytes inflated
    events = feed(conn, frame(BINARY, body[:10], fin=False, rsv1=True) + frame(CONT, body[10:]))
    failed_with(events, 1009)


# ------------------------------------------------------------------- UTF-8
def test_1007_invalid_utf8() -> None:
    conn = make_conn()
    failed_with(feed(conn, frame(TEXT, b"ok\xff")), 1007)
    assert close_code_sent(conn) == 1007


def test_utf8_character_split_across_fragments_is_valid() -> None:
    conn = make_conn()
    e_acute = "é".encode()
    events = feed(conn, frame(TEXT, e_acute[:1], fin=False) + frame(CONT, e_acute[1:]))
    assert events == [TextMessage("é")]


def test_1007_invalid_utf8_split_across_fragments() -> None:
    conn = make_conn()
    events = feed(conn, frame(TEXT, b"a\xc3", fin=False), frame(CONT, b"("))
    failed_with(events, 1007)


def test_1007_truncated_utf8_at_end_of_message() -> None:
    conn = make_conn()
    failed_with(feed(conn, frame(TEXT, b"a\xc3", fin=False) + frame(CONT, b"")), 1007)


def test_1007_invalid_utf8_in_compressed_text() -> None:
    conn = make_conn(deflate_params())
    failed_with(feed(conn, frame(TEXT, deflate_message(b"\xff" * 200), rsv1=True)), 1007)


def test_corrupt_deflate_data_fails_the_connection() -> None:
    conn = make_conn(deflate_params())
    events = feed(conn, frame(BINARY, b"\xff\xff\xff\xff", rsv1=True))
    assert isinstance(events[-1], ConnectionFailed)
    assert events[-1].code in (1002, 1007)


# ---------------------------------------------------------- protocol errors
@pytest.mark.parametrize(
    ("data", "deflate"),
    [
        pytest.param(frame(TEXT, b"hi", mask=False), False, id="unmasked"),
        pytest.param(frame(TEXT, b"hi", rsv1=True), False, id="rsv1-without-deflate"),
        pytest.param(
            frame(TEXT, deflate_message(b"ab"), fin=False, rsv1=True)
            + frame(CONT, b"\x00", rsv1=True),
            True,
            id="rsv1-on-continuation",
        ),
        pytest.param(frame(PING, b"", rsv1=True), True, id="rsv1-on-control"),
        pytest.param(frame(0x3, b"x"), False, id="reserved-opcode-3"),
        pytest.param(frame(0xB, b"x"), False, id="reserved-control-opcode-b"),
        pytest.param(bytes([0xA1, 0x80]) + b"\x00" * 4, False, id="rsv2"),
        pytest.param(bytes([0x91, 0x80]) + b"\x00" * 4, False, id="rsv3"),
        pytest.param(frame(PING, b"x", fin=False), False, id="fragmented-control"),
        pytest.param(frame(PING, b"x" * 126), False, id="control-over-125"),
        pytest.param(frame(CONT, b"x"), False, id="continuation-without-start"),
        pytest.param(
            frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"), False, id="new-message-mid-fragment"
        ),
        pytest.param(frame(CLOSE, b"\x03"), False, id="close-one-byte"),
        pytest.param(frame(CLOSE, struct.pack("!H", 999)), False, id="close-code-999"),
        pytest.param(frame(CLOSE, struct.pack("!H", 1005)), False, id="close-code-1005"),
    ],
)
def test_1002_protocol_errors(data: bytes, deflate: bool) -> None:
    conn = make_conn(deflate_params() if deflate else None)
    failed_with(feed(conn, data), 1002)
    assert close_code_sent(conn) == 1002
    assert conn.state is WsState.CLOSED


def test_events_before_a_protocol_error_come_first() -> None:
    conn = make_conn()
    data = frame(TEXT, b"first") + frame(PING, b"p") + frame(TEXT, b"x", mask=False)
    conn.receive_data(data)
    gen = conn.events()
    assert next(gen) == TextMessage("first")
    assert conn.state is WsState.OPEN  # nothing failed yet: the handler may still answer
    assert next(gen) == PingReceived(b"p")
    last = next(gen)
    assert isinstance(last, ConnectionFailed) and last.code == 1002
    frames = parse_server_frames(b"".join(conn.data_to_send()))
    assert [b0 for b0, _ in frames] == [0x8A, 0x88]  # the pong, then the close
    assert frames[0][1] == b"p"


def test_failure_reason_does_not_leak_parser_details() -> None:
    conn = make_conn()
    feed(conn, frame(0x3, b"x"))
    frames = parse_server_frames(b"".join(conn.data_to_send()))
    assert frames[-1][1][2:] == b"protocol error"


# ----------------------------------------------------------- close handshake
def test_peer_close_is_echoed() -> None:
    conn = make_conn()
    events = feed(conn, frame(CLOSE, struct.pack("!H", 1000) + b"bye"))
    assert events == [PeerClosed(1000, "bye")]
    assert close_code_sent(conn) == 1000
    assert conn.state is WsState.CLOSED
    assert feed(conn, frame(TEXT, b"after")) == []


def test_peer_close_with_application_code_is_echoed() -> None:
    conn = make_conn()
    assert feed(conn, frame(CLOSE, struct.pack("!H", 4001))) == [PeerClosed(4001, "")]
    assert close_code_sent(conn) == 4001


def test_peer_close_without_code() -> None:
    conn = make_conn()
    events = feed(conn, frame(CLOSE, b""))
    assert events == [PeerClosed(1005, "")]
    frames = parse_server_frames(b"".join(conn.data_to_send()))
    assert frames == [(0x88, b"")]  # 1005 is never sent on the wire


def test_peer_close_mid_fragmented_message() -> None:
    conn = make_conn()
    events = feed(conn, frame(TEXT, b"half", fin=False) + frame(CLOSE, struct.pack("!H", 1001)))
    assert events == [PeerClosed(1001, "")]


def test_local_close_then_peer_answer() -> None:
    conn = make_conn()
    data = conn.close(1001, "going away")
    assert parse_server_frames(data) == [(0x88, struct.pack("!H", 1001) + b"going away")]
    assert conn.state is WsState.LOCAL_CLOSING
    assert conn.close(1000) == b""  # only once
    # Data after our close frame is discarded (§1.4); control frames still parse.
    events = feed(conn, frame(TEXT, b"late") + frame(CLOSE, struct.pack("!H", 1001)))
    assert events == [PeerClosed(1001, "")]
    assert conn.data_to_send() == []  # no second close frame
    assert state_of(conn) is WsState.CLOSED


def test_eof_without_close() -> None:
    conn = make_conn()
    conn.receive_data(None)
    assert list(conn.events()) == [PeerClosed(1006, "")]
    assert conn.data_to_send() == []
    assert conn.state is WsState.CLOSED


# -------------------------------------------------------------- deflate in
def test_compressed_messages_with_client_context_takeover() -> None:
    conn = make_conn(deflate_params())
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    texts = ["repeat me please " * 20, "repeat me please " * 20, "other"]
    for text in texts:
        body = comp.compress(text.encode()) + comp.flush(zlib.Z_SYNC_FLUSH)
        assert feed(conn, frame(TEXT, body[:-4], rsv1=True)) == [TextMessage(text)]
    assert feed(conn, frame(TEXT, b"plain too")) == [TextMessage("plain too")]


def test_compressed_message_split_in_many_fragments() -> None:
    conn = make_conn(deflate_params())
    payload = bytes(range(256)) * 100
    body = deflate_message(payload)
    data = frame(BINARY, body[:5], fin=False, rsv1=True)
    for i in range(5, len(body), 7):
        data += frame(CONT, body[i : i + 7], fin=i + 7 >= len(body))
    assert feed(conn, data) == [BinaryMessage(payload)]


# ---------------------------------------------------------------- outbound
def test_send_compresses_from_the_threshold() -> None:
    conn = make_conn(deflate_params(), compression_threshold=100)
    small = conn.send("x" * 99)
    assert small == encode_frame(Opcode.TEXT, b"x" * 99)
    big = conn.send("x" * 100)
    assert big[0] == 0xC1
    assert zlib.decompressobj(-15).decompress(big[2:] + b"\x00\x00\xff\xff") == b"x" * 100


def test_no_raw_send_after_close() -> None:
    conn = make_conn()
    conn.close()
    assert not conn.raw_allowed
    with pytest.raises(Exception, match="cannot send"):
        conn.send("late")


def test_no_raw_frame_while_a_fragmented_message_is_half_sent() -> None:
    from protocol import LocalProtocolError
    from protocol.ws import OutboundMessage

    conn = WsConn(Limits())
    first = conn.send_fragment("hel", fin=False)
    assert first[0] == 0x01  # TEXT, FIN clear
    # RFC 6455 §5.4: nothing may interleave with the fragments of a message.
    assert not conn.raw_allowed
    with pytest.raises(LocalProtocolError):
        conn.send("other")
    with pytest.raises(LocalProtocolError):
        conn.send_fragment(b"binary", fin=True)  # fragments share one type
    last = conn.send_fragment("lo", fin=True)
    assert last[0] == 0x80  # CONTINUATION, FIN set
    assert conn.raw_allowed
    assert conn.prepared(OutboundMessage(b"x"), None) == b"\x81\x01x"
