"""What IPC version 2 added (docs/ipc.md §8): ``publish``, ``event``,
``Registration.events`` and the history query's fields, through the codec and the
state machine."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import LocalProtocolError
from protocol.ipc import (
    ENGINE_RECEIVES,
    PROTOCOL_VERSION,
    WORKER_RECEIVES,
    IpcConn,
    IpcError,
    IpcProtocolError,
    Role,
    decode,
    encode,
)
from protocol.ipc import messages as m
from protocol.ipc.states import Phase
from tests.protocol.test_ipc_states import conn_in, receive

PUBLISH = m.Publish(id=3, name="room.created", json=b'{"room":"general"}')
EVENT = m.Event(
    id=4, name="room.created", json=b'{"room":"general"}', attempt=2, source="chat", time=1.5e12
)
HISTORY = m.Query(id=5, what="history", room="general", since=17, epoch="k3Jd9a", limit=50)


def test_the_version_is_2() -> None:
    assert PROTOCOL_VERSION == 2


@pytest.mark.parametrize(
    ("msg", "receives"),
    [
        (PUBLISH, ENGINE_RECEIVES),
        (HISTORY, ENGINE_RECEIVES),
        (EVENT, WORKER_RECEIVES),
        (
            m.Hello(
                versions=[2],
                service=m.Registration("billing", events=["room.created", "user.deleted"]),
            ),
            ENGINE_RECEIVES,
        ),
    ],
    ids=["publish", "history-query", "event", "hello-with-events"],
)
def test_new_messages_round_trip(msg: object, receives: dict[str, type]) -> None:
    assert decode(encode(msg), receives) == msg


def test_defaults_are_omitted_on_the_wire() -> None:
    import cbor2

    event = cbor2.loads(encode(m.Event(id=1, name="x", json=b"1")))
    assert event == {"t": "event", "id": 1, "name": "x", "json": b"1"}
    hello = cbor2.loads(encode(m.Hello(versions=[2], service=m.Registration("s"))))
    assert "events" not in hello["service"]


def test_a_publish_goes_only_worker_to_engine_and_an_event_only_engine_to_worker() -> None:
    with pytest.raises(IpcProtocolError) as info:
        decode(encode(PUBLISH), WORKER_RECEIVES)
    assert info.value.reason is IpcError.UNKNOWN_TYPE
    with pytest.raises(IpcProtocolError) as info:
        decode(encode(EVENT), ENGINE_RECEIVES)
    assert info.value.reason is IpcError.UNKNOWN_TYPE


def test_bad_field_types_are_refused() -> None:
    bad = dataclasses.replace(EVENT, attempt="2")  # type: ignore[arg-type]
    with pytest.raises(IpcProtocolError) as info:
        decode(encode(bad), WORKER_RECEIVES)
    assert info.value.reason is IpcError.BAD_FIELD


def test_r7_r8_a_publish_is_answered_by_a_result_once() -> None:
    worker, engine = conn_in(Role.WORKER, Phase.READY), conn_in(Role.ENGINE, Phase.READY)
    engine.receive_data(worker.send(PUBLISH))
    assert engine.next_message() == PUBLISH
    assert worker.pending_out == engine.pending_in == {3}
    with pytest.raises(LocalProtocolError):
        worker.send(dataclasses.replace(HISTORY, id=3))  # the id is in flight
    worker.receive_data(engine.send(m.Result(3, json=b'{"services":[]}')))
    assert isinstance(worker.next_message(), m.Result)
    assert worker.pending_out == engine.pending_in == set()


def test_r7_r8_an_event_is_acked_by_a_reply() -> None:
    engine, worker = conn_in(Role.ENGINE, Phase.READY), conn_in(Role.WORKER, Phase.READY)
    worker.receive_data(engine.send(EVENT))
    assert worker.next_message() == EVENT
    engine.receive_data(worker.send(m.Reply(id=4)))
    assert engine.next_message() == m.Reply(id=4)
    assert engine.pending_out == worker.pending_in == set()


@pytest.mark.parametrize("phase", [Phase.PEER_DRAINED, Phase.BOTH_DRAINED])
def test_r10_no_event_to_a_drained_worker_but_it_may_still_publish(phase: Phase) -> None:
    engine = conn_in(Role.ENGINE, phase)
    with pytest.raises(LocalProtocolError, match="draining"):
        engine.send(EVENT)
    worker_phase = Phase.WE_DRAINED if phase is Phase.PEER_DRAINED else phase
    worker = conn_in(Role.WORKER, worker_phase)
    assert receive(engine, PUBLISH) == PUBLISH  # the engine takes publishes after a drain
    worker.send(dataclasses.replace(PUBLISH, id=9))


def test_a_version_1_welcome_is_refused_by_a_version_2_worker() -> None:
    worker = conn_in(Role.WORKER, Phase.AFTER_HELLO)
    welcome = m.Welcome(version=1, worker=1, max_frame=1 << 20, heartbeat=5.0)
    with pytest.raises(IpcProtocolError) as info:
        receive(worker, welcome)
    assert info.value.reason is IpcError.VERSION
    assert IpcConn(Role.WORKER).version == 2
