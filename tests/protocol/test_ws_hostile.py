"""WsConn against hostile framing: fragments per message, memory per fragment, frame budget."""

from __future__ import annotations

import dataclasses
import tracemalloc

import pytest

from protocol import Limits
from protocol.ws import (
    BinaryMessage,
    ConnectionFailed,
    PingReceived,
    TextMessage,
    WsConn,
    WsEvent,
)
from tests.helpers.raw_ws import encode_client_frame
from tests.protocol.test_ws_conn import close_code_sent, parse_server_frames

TEXT, BINARY, CONT, PING = 0x1, 0x2, 0x0, 0x9


def make_conn(**limits: int) -> WsConn:
    return WsConn(dataclasses.replace(Limits(), **limits))


def feed(conn: WsConn, data: bytes) -> list[WsEvent]:
    conn.receive_data(data)
    return list(conn.events())


def fragmented(opcode: int, parts: list[bytes]) -> bytes:
    """One message in ``len(parts)`` frames."""
    out = []
    for i, part in enumerate(parts):
        fin = i == len(parts) - 1
        out.append(encode_client_frame(opcode if i == 0 else CONT, part, fin=fin))
    return b"".join(out)


# ------------------------------------------------------------- fragments
def test_message_at_the_fragment_limit_is_accepted() -> None:
    conn = make_conn(max_message_fragments=8)
    parts = [b"a", b"", b"b", b"", b"", b"c", b"", b"d"]
    assert feed(conn, fragmented(TEXT, parts)) == [TextMessage("abcd")]
    # The count starts again with each message.
    assert feed(conn, fragmented(BINARY, parts)) == [BinaryMessage(b"abcd")]


def test_one_fragment_over_the_limit_is_1009() -> None:
    conn = make_conn(max_message_fragments=8)
    events = feed(conn, fragmented(TEXT, [b"x"] * 9))
    assert [type(e) for e in events] == [ConnectionFailed]
    assert events[0].code == 1009  # type: ignore[union-attr]
    assert close_code_sent(conn) == 1009


def test_flood_of_empty_continuations_fails_at_the_limit_not_at_the_end() -> None:
    conn = make_conn()  # the default limit
    flood = (
        encode_client_frame(TEXT, b"", fin=False)
        + encode_client_frame(CONT, b"", fin=False) * 100_000
    )
    conn.receive_data(flood)
    events = list(conn.events())
    assert [type(e) for e in events] == [ConnectionFailed]
    assert events[0].code == 1009  # type: ignore[union-attr]
    payload = parse_server_frames(b"".join(conn.data_to_send()))[-1][1]
    assert payload[2:] == b"message too big"  # the table's phrase, not parser internals


def test_control_frames_do_not_count_as_fragments() -> None:
    conn = make_conn(max_message_fragments=2)
    data = (
        encode_client_frame(TEXT, b"a", fin=False)
        + encode_client_frame(PING, b"1") * 5
        + encode_client_frame(CONT, b"b")
    )
    events = feed(conn, data)
    assert events[-1] == TextMessage("ab")
    assert sum(isinstance(e, PingReceived) for e in events) == 5


def test_zero_means_no_fragment_limit() -> None:
    conn = make_conn(max_message_fragments=0)
    assert feed(conn, fragmented(BINARY, [b""] * 5000 + [b"end"])) == [BinaryMessage(b"end")]


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_memory_of_a_fragmented_message_is_its_bytes_not_its_fragment_count(
    opcode: int,
) -> None:
    """20 000 one-byte fragments: the core holds about 20 kB, not 20 000 objects."""
    conn = make_conn(max_message_fragments=0)
    n = 20_000
    flood = encode_client_frame(opcode, b"x", fin=False) + b"".join(
        encode_client_frame(CONT, b"y", fin=False) for _ in range(n)
    )
    # Fed in 64 KiB reads (as the socket would), not one huge buffer.
    chunks = [flood[i : i + 65536] for i in range(0, len(flood), 65536)]
    del flood
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for chunk in chunks:
            assert feed(conn, chunk) == []
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    # The bytes themselves (n + 1) plus a bounded overhead; a list of per-fragment
    # objects would be 8 (a list slot) to 50 bytes per fragment.
    assert held < n + 64 * 1024, held
    events = feed(conn, encode_client_frame(CONT, b"z"))
    expected = "x" + "y" * n + "z"
    assert events == [TextMessage(expected) if opcode == TEXT else BinaryMessage(expected.encode())]


def test_text_split_inside_a_character_across_many_fragments() -> None:
    text = "é€😀" * 50
    raw = text.encode()
    conn = make_conn(max_message_fragments=0)
    parts = [raw[i : i + 1] for i in range(len(raw))]  # one byte per fragment
    assert feed(conn, fragmented(TEXT, parts)) == [TextMessage(text)]


# ----------------------------------------------------------- frame budget
def test_frame_allowance_fails_with_1008_once_spent() -> None:
    conn = make_conn()
    conn.frame_allowance = 5
    events = feed(conn, encode_client_frame(PING, b"p") * 8)
    assert [type(e) for e in events] == [PingReceived] * 5 + [ConnectionFailed]
    assert events[-1].code == 1008  # type: ignore[union-attr]
    frames = parse_server_frames(b"".join(conn.data_to_send()))
    assert [b0 for b0, _ in frames] == [0x8A] * 5 + [0x88]  # five pongs, then the close
    assert frames[-1][1][:2] == (1008).to_bytes(2, "big")


def test_whole_messages_and_last_fragments_are_not_charged() -> None:
    """Whole messages have their own limit (the message rate); the budget is for the
    frames that are not a message: control frames and fragments but the last."""
    conn = make_conn()
    conn.frame_allowance = 3
    data = encode_client_frame(TEXT, b"m") * 50 + fragmented(BINARY, [b"a", b"b", b"c", b"d"])
    events = feed(conn, data)
    assert len(events) == 51 and events[-1] == BinaryMessage(b"abcd")
    assert conn.frame_allowance == 0
    assert isinstance(feed(conn, encode_client_frame(PING, b""))[0], ConnectionFailed)


def test_frame_allowance_can_be_refilled_between_reads() -> None:
    conn = make_conn()
    for _ in range(10):
        conn.frame_allowance = 2
        assert len(feed(conn, encode_client_frame(PING, b"") * 2)) == 2


# ------------------------------------------------- frames per call (turns)
def test_a_limit_parses_that_many_frames_and_resumes_where_it_stopped() -> None:
    conn = make_conn()
    pings = b"".join(encode_client_frame(PING, b"%d" % i) for i in range(10))
    conn.receive_data(pings + encode_client_frame(TEXT, b"after"))
    first = list(conn.events(4))
    assert [e.payload for e in first if isinstance(e, PingReceived)] == [b"0", b"1", b"2", b"3"]
    assert conn.stalled
    rest = list(conn.events(4))
    assert [e.payload for e in rest if isinstance(e, PingReceived)] == [b"4", b"5", b"6", b"7"]
    last = list(conn.events(4))
    assert [type(e) for e in last] == [PingReceived, PingReceived, TextMessage]
    assert last[-1].data == "after"
    assert not conn.stalled
    assert len(parse_server_frames(b"".join(conn.data_to_send()))) == 10  # every pong


def test_a_fragmented_message_spans_calls_and_the_eof_waits_for_its_frames() -> None:
    conn = make_conn()
    conn.receive_data(fragmented(TEXT, [b"a", b"b", b"c", b"d", b"e"]))
    conn.receive_data(None)  # EOF right behind them
    seen: list[WsEvent] = []
    calls = 0
    while True:
        calls += 1
        seen += conn.events(2)
        if not conn.stalled:
            break
    assert calls == 3
    assert isinstance(seen[0], TextMessage) and seen[0].data == "abcde"
    assert [type(e).__name__ for e in seen] == ["TextMessage", "PeerClosed"]


def test_no_limit_parses_everything() -> None:
    conn = make_conn()
    conn.receive_data(b"".join(encode_client_frame(PING, b"") for _ in range(1000)))
    assert len(list(conn.events())) == 1000 and not conn.stalled
