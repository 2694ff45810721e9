"""IPC codec and framing properties: round trips, clean rejection, byte-at-a-time framing."""

from __future__ import annotations

import dataclasses
import struct
import types
import typing
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import LocalProtocolError
from protocol.ipc import (
    ENGINE_RECEIVES,
    WORKER_RECEIVES,
    FrameDecoder,
    IpcConn,
    IpcError,
    IpcProtocolError,
    Role,
    decode,
    encode,
    encode_frame,
)
from protocol.ipc import messages as m

ALL_TYPES = {**ENGINE_RECEIVES, **WORKER_RECEIVES}

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63) + 1, 2**63 - 1)
    | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


def strategy_for(hint: Any) -> st.SearchStrategy[Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return json_like
    if hint is int:
        return st.integers(0, 2**63 - 1)
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if hint is str:
        return st.text(max_size=12)
    if hint is bytes:
        return st.binary(max_size=24)
    if hint is bool:
        return st.booleans()
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=3)
    if origin is tuple:
        return st.tuples(*(strategy_for(a) for a in args))
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=3)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]
        return st.none() | strategy_for(inner)
    if dataclasses.is_dataclass(hint):
        return message_strategy(typing.cast(type, hint))
    raise TypeError(hint)


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


any_message = st.one_of(*(message_strategy(cls) for cls in ALL_TYPES.values()))


@settings(max_examples=400, deadline=None)
@given(any_message)
def test_every_valid_message_round_trips(msg: Any) -> None:
    receives = ENGINE_RECEIVES if type(msg) in ENGINE_RECEIVES.values() else WORKER_RECEIVES
    assert decode(encode(msg), receives) == msg


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_decoded_or_rejected_cleanly(data: bytes) -> None:
    for receives in (ENGINE_RECEIVES, WORKER_RECEIVES):
        try:
            msg = decode(data, receives)
        except IpcProtocolError as exc:
            assert isinstance(exc.reason, IpcError)
        else:
            assert type(msg) in receives.values()


@settings(max_examples=300, deadline=None)
@given(st.lists(any_message, min_size=1, max_size=5), st.integers(1, 7))
def test_framing_whole_and_in_small_chunks(msgs: list[Any], step: int) -> None:
    stream = b"".join(encode_frame(encode(msg)) for msg in msgs)
    for chunk in (len(stream), step, 1):
        decoder = FrameDecoder(max_frame=1 << 20)
        bodies = []
        for i in range(0, len(stream), chunk):
            decoder.feed(stream[i : i + chunk])
            while (body := decoder.next_frame()) is not None:
                bodies.append(body)
        assert bodies == [encode(msg) for msg in msgs]
        assert len(decoder) == 0


def test_oversize_length_is_refused_before_the_body() -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.feed(struct.pack("!I", 1025))
    with pytest.raises(IpcProtocolError) as info:
        decoder.next_frame()
    assert info.value.reason is IpcError.FRAME_TOO_LARGE


def test_empty_frame_is_refused() -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(IpcProtocolError) as info:
        decoder.next_frame()
    assert info.value.reason is IpcError.EMPTY_FRAME


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff", IpcError.BAD_CBOR),
        (cbor2.dumps({"t": "join", "conn": 1, "room": "r"}) + b"\x00", IpcError.BAD_CBOR),
        (b"\xc1\x01", IpcError.UNSUPPORTED_CBOR),  # tag 1 (epoch date)
        (b"\xbf\x61t\x64ping\xff", IpcError.UNSUPPORTED_CBOR),  # indefinite map
        (b"\xa2\x61t\x64ping\x61t\x64ping", IpcError.UNSUPPORTED_CBOR),  # duplicate key
        (cbor2.dumps([1, 2]), IpcError.NOT_A_MESSAGE),
        (cbor2.dumps({"t": 5}), IpcError.NOT_A_MESSAGE),
        (cbor2.dumps({"t": "welcome"}), IpcError.UNKNOWN_TYPE),  # engine never receives it
        (cbor2.dumps({"t": "join", "conn": 1}), IpcError.MISSING_FIELD),
        (cbor2.dumps({"t": "join", "conn": True, "room": "r"}), IpcError.BAD_FIELD),
        (cbor2.dumps({"t": "join", "conn": 1, "room": "r", "x": 0}), IpcError.BAD_FIELD),
        (cbor2.dumps({"t": "reply", "id": 1, "error": {"code": "X"}}), IpcError.MISSING_FIELD),
    ],
)
def test_documented_rejections(body: bytes, reason: IpcError) -> None:
    with pytest.raises(IpcProtocolError) as info:
        decode(body, ENGINE_RECEIVES)
    assert info.value.reason is reason


def _pair() -> tuple[IpcConn, IpcConn]:
    engine, worker = IpcConn(Role.ENGINE), IpcConn(Role.WORKER)
    hello = m.Hello(versions=[m.PROTOCOL_VERSION], service=m.Registration("s"))
    engine.receive_data(worker.send(hello))
    assert isinstance(engine.next_message(), m.Hello)
    worker.receive_data(engine.send(m.Welcome(m.PROTOCOL_VERSION, 1, engine.max_frame, 5.0)))
    assert isinstance(worker.next_message(), m.Welcome)
    return engine, worker


def test_nothing_but_hello_before_the_handshake() -> None:
    engine = IpcConn(Role.ENGINE)
    engine.receive_data(encode_frame(encode(m.Ping(1))))
    with pytest.raises(IpcProtocolError) as info:
        engine.next_message()
    assert info.value.reason is IpcError.UNEXPECTED
    with pytest.raises(LocalProtocolError):
        IpcConn(Role.WORKER).send(m.Ping(1))


def test_reply_must_answer_a_pending_request() -> None:
    engine, worker = _pair()
    worker.receive_data(engine.send(m.Message(id=7, conn=1, type="x", json=b"{}")))
    assert isinstance(worker.next_message(), m.Message)
    engine.receive_data(worker.send(m.Reply(id=7)))
    assert engine.next_message() == m.Reply(id=7)
    with pytest.raises(LocalProtocolError):
        worker.send(m.Reply(id=7))  # already answered
    engine.receive_data(encode_frame(encode(m.Reply(id=7))))
    with pytest.raises(IpcProtocolError) as info:
        engine.next_message()
    assert info.value.reason is IpcError.UNEXPECTED


def test_late_reply_to_an_expired_request_is_accepted_once() -> None:
    engine, worker = _pair()
    worker.receive_data(engine.send(m.Message(id=1, conn=1, type="x", json=b"{}")))
    worker.next_message()
    engine.expire(1)
    engine.receive_data(worker.send(m.Reply(id=1, json=b"1")))
    assert engine.next_message() == m.Reply(id=1, json=b"1")
    assert engine.pending_out == set()


def test_oversize_reply_keeps_the_request_answerable() -> None:
    engine, worker = _pair()
    worker.peer_max_frame = 1024
    worker.receive_data(engine.send(m.Message(id=1, conn=1, type="x", json=b"{}")))
    worker.next_message()
    with pytest.raises(LocalProtocolError):
        worker.send(m.Reply(id=1, json=b"0" * 2048))
    engine.receive_data(worker.send(m.Reply(id=1, error=m.ErrorInfo("INTERNAL", "too large"))))
    assert engine.next_message().error.code == "INTERNAL"


def test_no_requests_after_drain() -> None:
    engine, worker = _pair()
    engine.receive_data(worker.send(m.Drain()))
    assert isinstance(engine.next_message(), m.Drain)
    with pytest.raises(LocalProtocolError):
        engine.send(m.Message(id=1, conn=1, type="x", json=b"{}"))
