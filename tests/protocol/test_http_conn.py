"""HttpConn, sans-I/O, in the style of h11's test_connection.py: bytes in, events out.

Covers what the gateway adds around h11: pipelining one request at a time (nothing
parsed ahead of the answer), framing that could smuggle a request (Content-Length with
Transfer-Encoding, duplicate lengths), and responses h11 refuses to serialize.
"""

from __future__ import annotations

import pytest

from protocol import Limits, MessageTooBig, RemoteProtocolError
from protocol.http import (
    NEED_DATA,
    PAUSED,
    HttpConn,
    HttpRequest,
    HttpState,
    PeerEOF,
    UnsendableResponse,
)


def conn(**limits: int) -> HttpConn:
    return HttpConn(Limits(**limits))


def get(path: str = "/", *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: example.com", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def request_of(c: HttpConn) -> HttpRequest:
    event = c.next_event()
    assert isinstance(event, HttpRequest), event
    return event


def refused(c: HttpConn, data: bytes) -> RemoteProtocolError:
    c.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        c.next_event()
    assert c.state is HttpState.CLOSING
    return info.value


def response_status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


# ---------------------------------------------------------------- pipelining
def test_pipelined_requests_come_out_one_at_a_time_nothing_parsed_ahead() -> None:
    c = conn()
    c.receive_data(b"".join(get(f"/{i}") for i in range(50)))
    for i in range(50):
        assert request_of(c).path == f"/{i}"
        assert c.state is HttpState.RESPONDING
        # Until it is answered, the next request stays raw bytes: PAUSED, every time.
        assert c.next_event() is PAUSED
        assert c.next_event() is PAUSED
        out = c.respond(200, [], b"ok")
        assert out.startswith(b"HTTP/1.1 200 ")
        assert c.state is (HttpState.READING if i < 49 else HttpState.IDLE)
    assert c.next_event() is NEED_DATA


def test_pipelined_bytes_after_answer_are_the_next_request_head() -> None:
    c = conn()
    c.receive_data(get("/a") + b"GET /b HTTP/1.1\r\nHo")
    assert request_of(c).path == "/a"
    c.respond(204)
    assert c.state is HttpState.READING  # its header timeout runs from now
    assert c.next_event() is NEED_DATA
    c.receive_data(b"st: x\r\n\r\n")
    assert request_of(c).path == "/b"


def test_eof_after_pipelined_requests_comes_after_them() -> None:
    c = conn()
    c.receive_data(get("/a") + get("/b"))
    c.receive_data(b"")
    assert request_of(c).path == "/a"
    c.respond(200)
    assert request_of(c).path == "/b"
    c.respond(200)
    assert isinstance(c.next_event(), PeerEOF)
    assert c.state is HttpState.CLOSING


def test_body_over_limit_is_too_big_before_it_is_buffered() -> None:
    c = conn(max_body_bytes=10)
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(MessageTooBig):
        c.next_event()
    assert c.state is HttpState.CLOSING


# ------------------------------------------------ framing (RFC 9112 §6.1, §6.3)
@pytest.mark.parametrize(
    "headers",
    [
        ["Content-Length: 5", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked", "Content-Length: 5"],
        ["content-length: 0", "TRANSFER-ENCODING: Chunked"],
    ],
)
def test_content_length_with_transfer_encoding_is_400(headers: list[str]) -> None:
    c = conn()
    head = "\r\n".join(["POST / HTTP/1.1", "Host: x", *headers]).encode()
    error = refused(c, head + b"\r\n\r\n0\r\n\r\n")
    assert error.status_hint == 400
    # Nothing more comes out of a connection that must close.
    assert c.next_event() is PAUSED


@pytest.mark.parametrize(
    "headers",
    [
        ["Content-Length: 5", "Content-Length: 5"],
        ["Content-Length: 5, 5"],
        ["Content-Length: 5", "content-length: 5"],
        ["Content-Length: 5", "Content-Length: 6"],  # h11 refuses conflicting ones itself
    ],
)
def test_duplicate_or_conflicting_content_length_is_400(headers: list[str]) -> None:
    c = conn()
    head = "\r\n".join(["POST / HTTP/1.1", "Host: x", *headers]).encode()
    assert refused(c, head + b"\r\n\r\nhello").status_hint == 400


def test_duplicate_content_length_with_bare_lf_line_ends_is_400() -> None:
    c = conn()
    data = b"POST / HTTP/1.1\nHost: x\nContent-Length: 2\nContent-Length: 2\n\nhi"
    assert refused(c, data).status_hint == 400


def test_duplicate_content_length_split_across_reads_is_400() -> None:
    c = conn()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n")
    assert c.next_event() is NEED_DATA
    assert refused(c, b"Content-Length: 2\r\n\r\nhi").status_hint == 400


def test_transfer_encoding_in_http10_is_400() -> None:
    c = conn()
    data = b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert refused(c, data).status_hint == 400


def test_pipelined_smuggling_attempt_is_refused_on_its_own_request() -> None:
    c = conn()
    smuggled = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
    c.receive_data(get("/ok") + smuggled + b"\r\n0\r\n\r\n")
    assert request_of(c).path == "/ok"
    c.respond(200)
    with pytest.raises(RemoteProtocolError):
        c.next_event()
    assert c.state is HttpState.CLOSING


def test_single_content_length_and_header_named_like_it_are_fine() -> None:
    c = conn()
    c.receive_data(
        b"POST / HTTP/1.1\r\nHost: x\r\nX-Content-Length: 9\r\nX-Note: content-length\r\n"
        b"Content-Length: 2\r\n\r\nhi"
    )
    assert request_of(c).body == b"hi"


def test_chunked_alone_is_fine() -> None:
    c = conn()
    c.receive_data(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    assert request_of(c).body == b"hi"


# ------------------------------------------------- responses h11 refuses
BAD_RESPONSES = [
    pytest.param(200, [("x-bad", "a\r\nSet-Cookie: evil=1")], b"", id="crlf-in-value"),
    pytest.param(200, [("x-bad", "a\nb")], b"", id="lf-in-value"),
    pytest.param(200, [("x-bad", "a\x00b")], b"", id="nul-in-value"),
    pytest.param(200, [("x bad", "v")], b"", id="space-in-name"),
    pytest.param(200, [("x-bad\r\nevil", "v")], b"", id="crlf-in-name"),
    pytest.param(200, [("x-bad", "caf\u00e9\u2603")], b"", id="not-latin-1"),
    pytest.param(100, [], b"", id="status-100"),
    pytest.param(101, [], b"", id="status-101"),
    pytest.param(199, [], b"", id="status-199"),
    pytest.param(1000, [], b"", id="status-1000"),
    pytest.param(200, [("content-length", "10")], b"short", id="body-shorter"),
    pytest.param(200, [("content-length", "1")], b"longer", id="body-longer"),
    pytest.param(200, [("content-length", "x")], b"", id="bad-length"),
    pytest.param(200, [("transfer-encoding", "gzip")], b"", id="bad-coding"),
]


@pytest.mark.parametrize(("status", "headers", "body"), BAD_RESPONSES)
def test_unsendable_response_raises_and_leaves_a_502_possible(
    status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    c = conn()
    c.receive_data(get("/x") + get("/next"))
    request_of(c)
    with pytest.raises(UnsendableResponse):
        c.respond(status, headers, body)
    assert c.state is HttpState.CLOSING
    assert c.next_event() is PAUSED  # the pipelined request is never served
    out = c.reject(502, [("content-type", "application/json")], b"{}")
    assert response_status(out) == 502
    assert b"connection: close" in out.lower()
    assert b"evil" not in out and b"\xe9" not in out


@pytest.mark.parametrize("value", ["  padded  ", "\tpadded"])
def test_whitespace_around_a_header_value_is_not_part_of_it(value: str) -> None:
    # RFC 9110 §5.5: OWS around a field value is not part of it; h11 refuses it.
    c = conn()
    c.receive_data(get())
    request_of(c)
    out = c.respond(200, [("x-padded", value)], b"")
    assert b"x-padded: padded\r\n" in out


def test_good_response_is_sent_and_keeps_the_connection() -> None:
    c = conn()
    c.receive_data(get())
    request_of(c)
    out = c.respond(201, [("x-ok", "a b\tc"), ("location", "/y")], b"body")
    assert response_status(out) == 201 and out.endswith(b"body")
    assert c.state is HttpState.IDLE


def test_chunked_body_of_tiny_chunks_is_held_in_one_buffer() -> None:
    # 20 000 one-byte chunks: a list of chunks would hold 20 000 objects.
    c = conn()
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    c.receive_data(b"1\r\nx\r\n" * 20_000)
    assert c.next_event() is NEED_DATA
    assert isinstance(c._body, bytearray) and len(c._body) == 20_000
    c.receive_data(b"0\r\n\r\n")
    assert request_of(c).body == b"x" * 20_000


@pytest.mark.parametrize("size", [b"ffffffffffffffff1", b"100001", b"FFFFFFFF"])
def test_chunk_declared_larger_than_the_body_limit_is_413_at_once(size: bytes) -> None:
    c = conn(max_body_bytes=1024 * 1024)
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert c.next_event() is NEED_DATA
    c.receive_data(size + b"\r\n" + b"a" * 64)  # the rest would never come
    with pytest.raises(MessageTooBig):
        c.next_event()
    assert c.state is HttpState.CLOSING


def test_chunks_adding_up_past_the_limit_are_413_at_the_one_that_passes() -> None:
    c = conn(max_body_bytes=100)
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    c.receive_data(b"32\r\n" + b"a" * 50 + b"\r\n")  # 50: fine
    assert c.next_event() is NEED_DATA
    c.receive_data(b"33\r\n")  # 51 more: 101
    with pytest.raises(MessageTooBig):
        c.next_event()


def test_chunk_exactly_filling_the_limit_is_accepted() -> None:
    c = conn(max_body_bytes=100)
    c.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n")
    assert c.next_event() is NEED_DATA
    c.receive_data(b"a" * 100 + b"\r\n0\r\n\r\n")
    assert request_of(c).body == b"a" * 100
