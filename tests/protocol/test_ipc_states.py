"""The IPC transition table (protocol/ipc/states.py) against docs/ipc.md §5, rule by rule.

One test per rule R1-R11, written from the text of the rule (not read back from the
table), for both roles; then every cell of the table driven through a real IpcConn;
then the checks that keep spec, table and message schema in step.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from protocol import LocalProtocolError
from protocol.ipc import (
    ENGINE_RECEIVES,
    WORKER_RECEIVES,
    IpcConn,
    IpcError,
    IpcProtocolError,
    IpcState,
    Role,
    encode,
    encode_frame,
)
from protocol.ipc import messages as m
from protocol.ipc.states import (
    MAX_EXPIRED,
    PHASE_STATE,
    ROWS,
    TABLE,
    Direction,
    Effect,
    Phase,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "ipc.md"

#: Every message type of messages.py (the part types carry no ``TYPE``).
MESSAGE_TYPES = [
    obj
    for obj in vars(m).values()
    if isinstance(obj, type) and dataclasses.is_dataclass(obj) and hasattr(obj, "TYPE")
]

SAMPLE: dict[type, Any] = {
    m.Hello: m.Hello(versions=[m.PROTOCOL_VERSION], service=m.Registration("s")),
    m.Welcome: m.Welcome(version=m.PROTOCOL_VERSION, worker=1, max_frame=1 << 20, heartbeat=5.0),
    m.Reject: m.Reject(code="VERSION", message="no common version"),
    m.HttpRequest: m.HttpRequest(id=1, action="a", method="GET", path="/a"),
    m.Connect: m.Connect(id=1, conn=7, path="/ws"),
    m.Message: m.Message(id=1, conn=7, type="chat.send", json=b"{}"),
    m.Event: m.Event(id=1, name="room.created", json=b"{}"),
    m.Publish: m.Publish(id=1, name="room.created", json=b"{}"),
    m.Disconnect: m.Disconnect(conn=7, code=1000),
    m.Presence: m.Presence(user="u", online=True),
    m.Result: m.Result(id=1, json=b"[]"),
    m.Reply: m.Reply(id=1, json=b"1"),
    m.Join: m.Join(conn=7, room="r"),
    m.Leave: m.Leave(conn=7, room="r"),
    m.Emit: m.Emit(payload=b"{}", room="r"),
    m.Close: m.Close(conn=7),
    m.Query: m.Query(id=1, what="rooms", conn=7),
    m.Ping: m.Ping(1),
    m.Pong: m.Pong(1),
    m.Drain: m.Drain(),
}

WORKER_SENDS = list(ENGINE_RECEIVES.values())
ENGINE_SENDS = list(WORKER_RECEIVES.values())
SENDS = {Role.ENGINE: ENGINE_SENDS, Role.WORKER: WORKER_SENDS}
RECEIVES = {Role.ENGINE: WORKER_SENDS, Role.WORKER: ENGINE_SENDS}
HANDSHAKE_TYPES = (m.Hello, m.Welcome, m.Reject)
LIVE = (Phase.READY, Phase.WE_DRAINED, Phase.PEER_DRAINED, Phase.BOTH_DRAINED)
REQUESTS = {
    Role.ENGINE: (m.HttpRequest, m.Connect, m.Message, m.Event),
    Role.WORKER: (m.Query, m.Publish),
}
ANSWERS = {Role.ENGINE: m.Result, Role.WORKER: m.Reply}  # what each role sends back
BOTH = pytest.mark.parametrize("role", [Role.ENGINE, Role.WORKER], ids=["engine", "worker"])


def frame(msg: Any) -> bytes:
    return encode_frame(encode(msg))


def receive(conn: IpcConn, msg: Any) -> Any:
    conn.receive_data(frame(msg))
    return conn.next_message()


def refused_on_receive(conn: IpcConn, msg: Any, reason: IpcError = IpcError.UNEXPECTED) -> str:
    with pytest.raises(IpcProtocolError) as info:
        receive(conn, msg)
    assert info.value.reason is reason
    assert conn.state is IpcState.CLOSED
    return info.value.detail


def refused_on_send(conn: IpcConn, msg: Any) -> str:
    before = (conn.phase, set(conn.pending_in), set(conn.pending_out))
    with pytest.raises(LocalProtocolError) as info:
        conn.send(msg)
    assert (conn.phase, conn.pending_in, conn.pending_out) == before  # nothing changed
    return str(info.value)


def other(role: Role) -> Role:
    return Role.WORKER if role is Role.ENGINE else Role.ENGINE


def conn_in(role: Role, phase: Phase) -> IpcConn:
    """A connection brought to ``phase`` by real messages."""
    conn = IpcConn(role)
    hello, welcome = SAMPLE[m.Hello], SAMPLE[m.Welcome]
    if phase is Phase.BEFORE_HELLO:
        return conn
    if role is Role.ENGINE:
        receive(conn, hello)
    else:
        conn.send(hello)
    if phase is Phase.AFTER_HELLO:
        return conn
    if phase is Phase.CLOSED:
        if role is Role.ENGINE:
            conn.send(SAMPLE[m.Reject])
        else:
            receive(conn, SAMPLE[m.Reject])
        return conn
    if role is Role.ENGINE:
        conn.send(welcome)
    else:
        receive(conn, welcome)
    if phase in (Phase.WE_DRAINED, Phase.BOTH_DRAINED):
        conn.send(m.Drain())
    if phase in (Phase.PEER_DRAINED, Phase.BOTH_DRAINED):
        receive(conn, m.Drain())
    assert conn.phase is phase
    return conn


# ------------------------------------------------------------------- R1, R2
def test_r1_worker_sends_hello_first_and_once() -> None:
    for msg_type in WORKER_SENDS:
        if msg_type is not m.Hello:
            assert "before the welcome" in refused_on_send(IpcConn(Role.WORKER), SAMPLE[msg_type])
    worker = IpcConn(Role.WORKER)
    worker.send(SAMPLE[m.Hello])
    assert (worker.phase, worker.state) == (Phase.AFTER_HELLO, IpcState.HANDSHAKE)
    assert refused_on_send(worker, SAMPLE[m.Hello]) == "hello already sent"
    for msg_type in WORKER_SENDS:
        if msg_type is not m.Hello:
            assert "before the welcome" in refused_on_send(worker, SAMPLE[msg_type])


def test_r1_engine_accepts_only_one_hello_and_nothing_before_its_answer() -> None:
    for msg_type in WORKER_SENDS:
        if msg_type is not m.Hello:
            refused_on_receive(IpcConn(Role.ENGINE), SAMPLE[msg_type])
    engine = IpcConn(Role.ENGINE)
    assert receive(engine, SAMPLE[m.Hello]) == SAMPLE[m.Hello]
    assert (engine.phase, engine.state) == (Phase.AFTER_HELLO, IpcState.HANDSHAKE)
    refused_on_receive(engine, SAMPLE[m.Hello])
    for msg_type in WORKER_SENDS:
        refused_on_receive(conn_in(Role.ENGINE, Phase.AFTER_HELLO), SAMPLE[msg_type])


def test_r2_engine_sends_nothing_before_the_hello_then_one_answer() -> None:
    for msg_type in ENGINE_SENDS:
        refused_on_send(IpcConn(Role.ENGINE), SAMPLE[msg_type])
    engine = conn_in(Role.ENGINE, Phase.AFTER_HELLO)
    for msg_type in ENGINE_SENDS:
        if msg_type not in (m.Welcome, m.Reject):
            assert "before the welcome" in refused_on_send(engine, SAMPLE[msg_type])
    engine.send(SAMPLE[m.Welcome])
    assert engine.state is IpcState.READY


def test_r2_worker_accepts_nothing_before_its_hello_then_only_the_answer() -> None:
    for msg_type in ENGINE_SENDS:
        assert "before our hello" in refused_on_receive(IpcConn(Role.WORKER), SAMPLE[msg_type])
    for msg_type in ENGINE_SENDS:
        if msg_type not in (m.Welcome, m.Reject):
            worker = conn_in(Role.WORKER, Phase.AFTER_HELLO)
            assert "expected welcome" in refused_on_receive(worker, SAMPLE[msg_type])


# ----------------------------------------------------------------------- R3
def test_r3_hello_max_frame_is_at_least_1024_and_becomes_the_peers() -> None:
    small = dataclasses.replace(SAMPLE[m.Hello], max_frame=1023)
    refused_on_receive(IpcConn(Role.ENGINE), small, IpcError.BAD_FIELD)
    engine = IpcConn(Role.ENGINE)
    receive(engine, dataclasses.replace(SAMPLE[m.Hello], max_frame=1024))
    assert engine.peer_max_frame == 1024


def test_r3_no_common_version_is_the_engines_to_reject_not_a_state_error() -> None:
    engine = IpcConn(Role.ENGINE)
    receive(engine, dataclasses.replace(SAMPLE[m.Hello], versions=[99]))
    engine.send(m.Reject(code="VERSION", message="speaks 1"))
    assert engine.state is IpcState.CLOSED


def test_r3_welcome_version_must_be_the_workers() -> None:
    worker = conn_in(Role.WORKER, Phase.AFTER_HELLO)
    other_version = dataclasses.replace(SAMPLE[m.Welcome], version=m.PROTOCOL_VERSION + 1)
    refused_on_receive(worker, other_version, IpcError.VERSION)
    worker = conn_in(Role.WORKER, Phase.AFTER_HELLO)
    receive(worker, dataclasses.replace(SAMPLE[m.Welcome], max_frame=4096))
    assert worker.peer_max_frame == 4096


# ----------------------------------------------------------------------- R4
def test_r4_welcome_makes_both_sides_ready() -> None:
    engine, worker = IpcConn(Role.ENGINE), IpcConn(Role.WORKER)
    engine.receive_data(worker.send(SAMPLE[m.Hello]))
    engine.next_message()
    worker.receive_data(engine.send(SAMPLE[m.Welcome]))
    assert worker.next_message() == SAMPLE[m.Welcome]
    assert engine.state is worker.state is IpcState.READY
    assert engine.accepting_requests and worker.accepting_requests


def test_r4_reject_closes_both_sides() -> None:
    engine, worker = IpcConn(Role.ENGINE), IpcConn(Role.WORKER)
    engine.receive_data(worker.send(SAMPLE[m.Hello]))
    engine.next_message()
    worker.receive_data(engine.send(SAMPLE[m.Reject]))
    assert worker.next_message() == SAMPLE[m.Reject]  # the reject itself is delivered
    assert engine.state is worker.state is IpcState.CLOSED


# ----------------------------------------------------------------------- R5
@pytest.mark.parametrize("phase", LIVE)
def test_r5_the_handshake_happens_once(phase: Phase) -> None:
    assert refused_on_send(conn_in(Role.WORKER, phase), SAMPLE[m.Hello]) == "hello already sent"
    refused_on_receive(conn_in(Role.ENGINE, phase), SAMPLE[m.Hello])
    for msg_type in (m.Welcome, m.Reject):
        assert "after the handshake" in refused_on_send(
            conn_in(Role.ENGINE, phase), SAMPLE[msg_type]
        )
        refused_on_receive(conn_in(Role.WORKER, phase), SAMPLE[msg_type])


# ----------------------------------------------------------------------- R6
@BOTH
def test_r6_everything_else_flows_in_its_direction_when_ready(role: Role) -> None:
    for msg_type in SENDS[role]:
        if msg_type not in HANDSHAKE_TYPES:
            conn = conn_in(role, Phase.READY)
            conn.pending_in.add(1)  # something for an answer to answer
            conn.send(SAMPLE[msg_type])
    for msg_type in RECEIVES[role]:
        if msg_type not in HANDSHAKE_TYPES:
            conn = conn_in(role, Phase.READY)
            conn.pending_out.add(1)
            assert receive(conn, SAMPLE[msg_type]) == SAMPLE[msg_type]


@BOTH
def test_r6_a_message_of_the_other_direction_is_refused(role: Role) -> None:
    for msg_type in MESSAGE_TYPES:
        if msg_type not in SENDS[role]:
            text = refused_on_send(conn_in(role, Phase.READY), SAMPLE[msg_type])
            assert f"the {role.value} does not send" in text
            # The peer's codec would not decode it either.
            refused_on_receive(
                conn_in(other(role), Phase.READY), SAMPLE[msg_type], IpcError.UNKNOWN_TYPE
            )


# ----------------------------------------------------------------------- R7
@BOTH
def test_r7_a_request_id_is_in_flight_until_answered_and_not_reused(role: Role) -> None:
    for msg_type in REQUESTS[role]:
        sender, receiver = conn_in(role, Phase.READY), conn_in(other(role), Phase.READY)
        request = SAMPLE[msg_type]
        receiver.receive_data(sender.send(request))
        assert receiver.next_message() == request
        assert sender.pending_out == receiver.pending_in == {1}
        assert "in use" in refused_on_send(sender, request)
        assert "reused" in refused_on_receive(receiver, request)


# ----------------------------------------------------------------------- R8
@BOTH
def test_r8_an_answer_answers_an_id_in_flight_once_in_any_order(role: Role) -> None:
    requester, answerer = conn_in(role, Phase.READY), conn_in(other(role), Phase.READY)
    (request_type, *_) = REQUESTS[role]
    answer_type = ANSWERS[other(role)]
    for i in (1, 2, 3):
        answerer.receive_data(requester.send(dataclasses.replace(SAMPLE[request_type], id=i)))
        answerer.next_message()
    for i in (3, 1, 2):
        requester.receive_data(answerer.send(dataclasses.replace(SAMPLE[answer_type], id=i)))
        answer = requester.next_message()
        assert answer is not None and answer.id == i
    assert requester.pending_out == answerer.pending_in == set()
    again = dataclasses.replace(SAMPLE[answer_type], id=3)
    assert "no pending request 3" in refused_on_send(answerer, again)
    assert "unknown id 3" in refused_on_receive(requester, again)


@BOTH
def test_r8_an_answer_to_an_id_never_sent_is_refused(role: Role) -> None:
    never = dataclasses.replace(SAMPLE[ANSWERS[other(role)]], id=42)
    refused_on_send(conn_in(other(role), Phase.READY), never)
    refused_on_receive(conn_in(role, Phase.READY), never)


# ----------------------------------------------------------------------- R9
@BOTH
def test_r9_a_late_answer_to_an_expired_id_is_accepted_once(role: Role) -> None:
    requester, answerer = conn_in(role, Phase.READY), conn_in(other(role), Phase.READY)
    answerer.receive_data(requester.send(SAMPLE[REQUESTS[role][0]]))
    answerer.next_message()
    requester.expire(1)
    assert requester.pending_out == set()
    late = answerer.send(SAMPLE[ANSWERS[other(role)]])
    requester.receive_data(late)
    assert requester.next_message() == SAMPLE[ANSWERS[other(role)]]
    requester.receive_data(late)
    with pytest.raises(IpcProtocolError):
        requester.next_message()


def test_r9_expiring_an_id_not_in_flight_does_nothing() -> None:
    engine = conn_in(Role.ENGINE, Phase.READY)
    engine.expire(5)
    refused_on_receive(engine, m.Reply(id=5))


def test_r9_only_the_last_max_expired_ids_are_remembered() -> None:
    engine = conn_in(Role.ENGINE, Phase.READY)
    for i in range(MAX_EXPIRED + 1):
        engine.send(m.Message(id=i, conn=7, type="x", json=b"{}"))
        engine.expire(i)
    assert receive(engine, m.Reply(id=MAX_EXPIRED)) == m.Reply(id=MAX_EXPIRED)
    assert receive(engine, m.Reply(id=1)) == m.Reply(id=1)
    refused_on_receive(engine, m.Reply(id=0))  # the oldest was forgotten


# ---------------------------------------------------------------------- R10
@BOTH
def test_r10_drain_moves_both_sides_to_draining(role: Role) -> None:
    drainer, peer = conn_in(role, Phase.READY), conn_in(other(role), Phase.READY)
    peer.receive_data(drainer.send(m.Drain()))
    assert peer.next_message() == m.Drain()
    assert (drainer.phase, peer.phase) == (Phase.WE_DRAINED, Phase.PEER_DRAINED)
    assert drainer.state is peer.state is IpcState.DRAINING
    assert not drainer.accepting_requests and not peer.accepting_requests
    # Any number of times, from either side.
    peer.receive_data(drainer.send(m.Drain()))
    peer.next_message()
    drainer.receive_data(peer.send(m.Drain()))
    drainer.next_message()
    assert drainer.phase is peer.phase is Phase.BOTH_DRAINED
    peer.receive_data(drainer.send(m.Drain()))
    peer.next_message()
    assert drainer.phase is peer.phase is Phase.BOTH_DRAINED


@pytest.mark.parametrize("peer_phase", [Phase.PEER_DRAINED, Phase.BOTH_DRAINED])
def test_r10_no_new_requests_to_a_worker_that_drained(peer_phase: Phase) -> None:
    for msg_type in REQUESTS[Role.ENGINE]:
        engine = conn_in(Role.ENGINE, peer_phase)
        assert "draining" in refused_on_send(engine, SAMPLE[msg_type])
        worker_phase = Phase.WE_DRAINED if peer_phase is Phase.PEER_DRAINED else peer_phase
        worker = conn_in(Role.WORKER, worker_phase)
        assert "after our drain" in refused_on_receive(worker, SAMPLE[msg_type])


@pytest.mark.parametrize("phase", [Phase.WE_DRAINED, Phase.BOTH_DRAINED])
def test_r10_queries_are_exempt_the_engine_answers_them_after_its_drain(phase: Phase) -> None:
    worker_phase = Phase.PEER_DRAINED if phase is Phase.WE_DRAINED else phase
    worker, engine = conn_in(Role.WORKER, worker_phase), conn_in(Role.ENGINE, phase)
    engine.receive_data(worker.send(SAMPLE[m.Query]))
    assert engine.next_message() == SAMPLE[m.Query]
    worker.receive_data(engine.send(SAMPLE[m.Result]))
    assert worker.next_message() == SAMPLE[m.Result]


@BOTH
def test_r10_after_a_drain_answers_commands_notifications_and_pings_go_on(role: Role) -> None:
    for drained in (Phase.WE_DRAINED, Phase.PEER_DRAINED, Phase.BOTH_DRAINED):
        for msg_type in SENDS[role]:
            if msg_type not in (*HANDSHAKE_TYPES, *REQUESTS[role], m.Drain):
                conn = conn_in(role, drained)
                conn.pending_in.add(1)
                conn.send(SAMPLE[msg_type])
                assert conn.phase is drained


def test_r10_drain_does_not_limit_what_its_sender_sends() -> None:
    engine, worker = conn_in(Role.ENGINE, Phase.READY), conn_in(Role.WORKER, Phase.READY)
    worker.receive_data(engine.send(m.Drain()))
    worker.next_message()
    worker.receive_data(engine.send(SAMPLE[m.Message]))
    assert worker.next_message() == SAMPLE[m.Message]
    worker.send(m.Drain())
    worker.send(SAMPLE[m.Query])  # a worker finishing its work may still ask


# ---------------------------------------------------------------------- R11
@BOTH
def test_r11_nothing_is_sent_or_read_once_closed(role: Role) -> None:
    for way in ("reject", "close", "protocol error"):
        conn = conn_in(role, Phase.READY if way != "reject" else Phase.CLOSED)
        if way == "close":
            conn.close()
        elif way == "protocol error":
            conn.receive_data(b"\x00\x00\x00\x00")
            with pytest.raises(IpcProtocolError):
                conn.next_message()
        assert (conn.phase, conn.state) == (Phase.CLOSED, IpcState.CLOSED)
        for msg_type in MESSAGE_TYPES:
            assert refused_on_send(conn, SAMPLE[msg_type]) == "connection closed"
        conn.receive_data(frame(m.Ping(1)))
        assert conn.next_message() is None


def test_r11_bytes_after_a_reject_are_not_read() -> None:
    worker = conn_in(Role.WORKER, Phase.AFTER_HELLO)
    worker.receive_data(frame(SAMPLE[m.Reject]) + frame(m.Ping(1)))
    assert worker.next_message() == SAMPLE[m.Reject]
    assert worker.next_message() is None


def test_r11_close_returns_the_ids_still_awaited() -> None:
    engine = conn_in(Role.ENGINE, Phase.READY)
    engine.send(SAMPLE[m.Message])
    receive(engine, SAMPLE[m.Query])
    assert engine.close() == {1}
    assert engine.pending_in == engine.pending_out == set()


# ------------------------------------------------- every cell, through IpcConn
CELLS = [
    (role, direction, phase, msg_type)
    for (role, direction), by_phase in TABLE.items()
    for phase, rules in by_phase.items()
    for msg_type in rules
]


@pytest.mark.parametrize(
    ("role", "direction", "phase", "msg_type"),
    CELLS,
    ids=[f"{r.value}-{d.value}-{p.name}-{t.__name__}" for r, d, p, t in CELLS],
)
def test_every_cell_of_the_table_is_what_ipcconn_does(
    role: Role, direction: Direction, phase: Phase, msg_type: type
) -> None:
    rule = TABLE[role, direction][phase][msg_type]
    conn, msg = conn_in(role, phase), SAMPLE[msg_type]
    conn.pending_in.add(1)  # answers have something to answer
    conn.pending_out.add(1)
    if rule.effect is Effect.REQUEST:  # and requests an id that is free
        msg = dataclasses.replace(msg, id=2)
    if rule.effect is Effect.REFUSE:
        text = rule.why.format(t=msg.TYPE)
        if direction is Direction.SEND:
            assert refused_on_send(conn, msg) == text
        else:
            assert refused_on_receive(conn, msg) == text
        return
    if direction is Direction.SEND:
        conn.send(msg)
    else:
        assert receive(conn, msg) == msg
    assert conn.phase is (rule.next or phase)


# --------------------------------------------- the table, the schema, the spec
def test_every_message_type_has_a_rule_wherever_it_travels() -> None:
    """A new message type in messages.py must get rows, or this fails."""
    assert set(SAMPLE) == set(MESSAGE_TYPES)
    named = {
        (role, row.direction, t)
        for row in ROWS
        if isinstance(row.messages, tuple) and row.effect is not Effect.REFUSE
        for role in row.roles
        for t in row.messages
    }
    for msg_type in MESSAGE_TYPES:
        to_engine, to_worker = msg_type in WORKER_SENDS, msg_type in ENGINE_SENDS
        assert to_engine or to_worker, f"{msg_type.__name__} travels nowhere (codec.py)"
        travels = {
            (Role.WORKER, Direction.SEND): to_engine,
            (Role.ENGINE, Direction.RECEIVE): to_engine,
            (Role.ENGINE, Direction.SEND): to_worker,
            (Role.WORKER, Direction.RECEIVE): to_worker,
        }
        for (role, direction), goes in travels.items():
            for phase, rules in TABLE[role, direction].items():
                assert (msg_type in rules) is goes, (msg_type, role, direction, phase)
            # Named by a row that lets it through somewhere, not only refused by OTHERS.
            assert ((role, direction, msg_type) in named) is goes, (msg_type, role, direction)


def test_phases_map_onto_the_documented_states() -> None:
    assert set(PHASE_STATE) == set(Phase)
    assert [s for s in IpcState] == [
        IpcState.HANDSHAKE,
        IpcState.READY,
        IpcState.DRAINING,
        IpcState.CLOSED,
    ]
    assert set(PHASE_STATE.values()) == set(IpcState)


def _doc_rules() -> dict[str, str]:
    text = DOC.read_text()
    section = text[text.index("## 5. States and ordering rules") : text.index("## 6. Errors")]
    bullets = re.findall(r"^- \*\*(R\d+)\*\* (.*?)(?=^- |\Z)", section, re.M | re.S)
    return {rule: " ".join(body.split()) for rule, body in bullets}


def test_the_table_and_docs_ipc_md_section_5_cite_the_same_rules() -> None:
    rules = _doc_rules()
    assert list(rules) == [f"R{i}" for i in range(1, len(rules) + 1)]  # numbered in order
    cited = {rule for row in ROWS for rule in row.cites.split()}
    assert cited <= set(rules), cited - set(rules)
    # Every rule has rows, except R12, which the doc gives to the engine's dispatcher.
    assert set(rules) - cited == {"R12"}
    assert "not the table" in rules["R12"]
