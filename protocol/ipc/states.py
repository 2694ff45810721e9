"""The IPC state machine as one table, to be read against docs/ipc.md §5 rule by rule.

Every row of ``ROWS`` names the rule it implements. ``IpcConn`` (conn.py) looks each
message up in the compiled table (one dict lookup) and carries out the row's effect;
the rules of docs/ipc.md §5, as implemented here:

R1  Handshake, worker side (§4.1): the worker's first message is ``hello``, sent once;
    it sends nothing else before it receives ``welcome``. The engine refuses anything
    but a hello first, a second hello, and anything after the hello before its answer.
R2  Handshake, engine side (§4.1): the engine sends nothing before it received the
    hello, then one answer, ``welcome`` or ``reject``. The worker refuses anything
    before its hello, and anything but welcome or reject after it.
R3  Handshake values: ``hello.max_frame`` is at least 1024 (``BAD_FIELD``), and
    ``welcome.version`` is the version the worker speaks (``VERSION``). A hello without
    a common version is no state error: the engine answers it with a reject.
R4  ``welcome`` moves both sides to READY, ``reject`` both to CLOSED.
R5  The handshake happens once: ``hello``, ``welcome``, ``reject`` after it are refused.
R6  After the handshake, requests, answers, commands, notifications, pings and pongs
    flow, each only in the direction §4 gives it. A receiver never decodes a type
    from the wrong direction (``UNKNOWN_TYPE``, codec.py), so the receive table holds
    only the types a side receives; ``send`` refuses a type the table has no row for.
R7  A request (engine: ``http``, ``connect``, ``message``, ``event``; worker: ``query``,
    ``publish``) puts its id in flight; an id may not be reused while in flight.
R8  An answer (``reply`` to an engine request, ``result`` to a worker's) must answer an
    id in flight, and takes it out: a second answer, or one to an id never sent, is
    refused.
R9  Except an expired id (the requester gave up, timeout §7): its late answer is
    accepted once, for the caller to drop. The last ``MAX_EXPIRED`` are remembered.
R10 ``drain`` (either side, after the handshake, any number of times) moves to
    DRAINING. After a side sent drain, the other sends it no new ``http``, ``connect``,
    ``message`` or ``event``. The worker's requests are exempt: the engine answers
    queries and publishes after its own drain, and a worker may query (or publish to)
    a draining engine. Everything else goes on, and drain does not limit what its
    sender sends.
R11 CLOSED: nothing is sent, nothing more is received (bytes after a reject are
    ignored): ``send`` refuses, ``next_message`` returns None.
R12 Commands are applied in the order received (§4.3): the engine's dispatcher keeps
    it, not this table.

Request-id bookkeeping (the ``REQUEST`` and ``ANSWER`` effects, R7-R9), on each
``IpcConn``:

- ``pending_out``: ids of requests we sent and the peer has not answered. Sending a
  request adds its id (``LocalProtocolError`` if present); receiving an answer removes
  it, or else removes it from ``expired`` (R9), or else is ``UNEXPECTED``.
- ``pending_in``: ids of requests the peer sent that we have not answered. Receiving a
  request adds its id (``UNEXPECTED`` if present); sending an answer removes it
  (``LocalProtocolError`` if absent).
- ``expired``: ids ``expire()`` moved out of ``pending_out``; oldest dropped first.

Each role sends one kind of request and receives the other, so one ``pending_in`` and
one ``pending_out`` per connection never mix replies and results.

The public ``IpcState`` is coarser than the ``Phase`` the table is keyed by: the
handshake is split at the hello, and DRAINING by who sent drain (``PHASE_STATE``).
A peer's refused message raises ``IpcProtocolError(UNEXPECTED)``; our own refused
send raises ``LocalProtocolError``. The table is checked when it is compiled, at
import: every (role, direction, phase, message type) has exactly one rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from . import messages as m
from .codec import ENGINE_RECEIVES, WORKER_RECEIVES

__all__ = [
    "MAX_EXPIRED",
    "OTHERS",
    "PHASE_STATE",
    "ROWS",
    "TABLE",
    "TRAVELS",
    "Direction",
    "Effect",
    "IpcState",
    "Phase",
    "Role",
    "Row",
    "Rule",
]

#: How many expired ids are remembered (R9); older late answers are refused.
MAX_EXPIRED = 10_000


class Role(Enum):
    ENGINE = "engine"
    WORKER = "worker"


class Direction(Enum):
    SEND = "send"
    RECEIVE = "receive"


class IpcState(Enum):
    """The public state (docs/ipc.md §5): HANDSHAKE → READY → DRAINING → CLOSED."""

    HANDSHAKE = "handshake"
    READY = "ready"
    #: One side announced it takes no new requests; in-flight ones complete.
    DRAINING = "draining"
    CLOSED = "closed"


class Phase(Enum):
    """The state the table is keyed by: ``IpcState`` plus who did what."""

    #: No hello yet: the worker must send it, the engine waits for it.
    BEFORE_HELLO = "before hello"
    #: The hello went (worker: sent, engine: received); the welcome or reject is due.
    AFTER_HELLO = "after hello"
    READY = "ready"
    #: This side sent drain; the peer has not.
    WE_DRAINED = "we drained"
    #: The peer sent drain; this side has not.
    PEER_DRAINED = "peer drained"
    BOTH_DRAINED = "both drained"
    CLOSED = "closed"


PHASE_STATE: dict[Phase, IpcState] = {
    Phase.BEFORE_HELLO: IpcState.HANDSHAKE,
    Phase.AFTER_HELLO: IpcState.HANDSHAKE,
    Phase.READY: IpcState.READY,
    Phase.WE_DRAINED: IpcState.DRAINING,
    Phase.PEER_DRAINED: IpcState.DRAINING,
    Phase.BOTH_DRAINED: IpcState.DRAINING,
    Phase.CLOSED: IpcState.CLOSED,
}


class Effect(Enum):
    """What ``IpcConn`` does with an allowed message besides changing phase."""

    #: Nothing.
    NONE = "none"
    #: Refused: the rule's ``why`` is the error.
    REFUSE = "refuse"
    #: Received hello: check ``max_frame`` (R3), adopt it as the peer's.
    HELLO = "hello"
    #: Received welcome: check ``version`` (R3), adopt its ``max_frame``.
    WELCOME = "welcome"
    #: A request: its id goes in flight (R7).
    REQUEST = "request"
    #: An answer: its id leaves the flight (R8, R9).
    ANSWER = "answer"


@dataclass(frozen=True, slots=True)
class Rule:
    """What one message type does in one phase, for one role and direction."""

    #: The rules of docs/ipc.md §5 this implements ("R7", "R8 R9").
    cites: str
    effect: Effect
    #: The phase after the message; None: unchanged.
    next: Phase | None
    #: Refusals: the error text, ``{t}`` standing for the message type.
    why: str


class _Others:
    def __repr__(self) -> str:
        return "OTHERS"


#: In a row: every message type of that direction no other row of the phase names.
OTHERS = _Others()


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: these roles, in these phases, on these messages."""

    #: The rules of docs/ipc.md §5 the row implements, space-separated.
    cites: str
    roles: tuple[Role, ...]
    direction: Direction
    phases: tuple[Phase, ...]
    messages: tuple[type, ...] | _Others
    effect: Effect = Effect.NONE
    #: The phase after the message; None: unchanged.
    to: Phase | None = None
    why: str = ""


# ------------------------------------------------------------------ the table
ENGINE, WORKER, BOTH = (Role.ENGINE,), (Role.WORKER,), (Role.ENGINE, Role.WORKER)
SEND, RECEIVE = Direction.SEND, Direction.RECEIVE
REFUSE, HELLO, WELCOME = Effect.REFUSE, Effect.HELLO, Effect.WELCOME
REQUEST, ANSWER = Effect.REQUEST, Effect.ANSWER

BEFORE_HELLO, AFTER_HELLO = (Phase.BEFORE_HELLO,), (Phase.AFTER_HELLO,)
HANDSHAKE = (Phase.BEFORE_HELLO, Phase.AFTER_HELLO)
READY, WE_DRAINED = (Phase.READY,), (Phase.WE_DRAINED,)
PEER_DRAINED, BOTH_DRAINED = (Phase.PEER_DRAINED,), (Phase.BOTH_DRAINED,)
#: After the handshake, before CLOSED.
LIVE = (Phase.READY, Phase.WE_DRAINED, Phase.PEER_DRAINED, Phase.BOTH_DRAINED)
#: Live, split by whether we sent drain / whether the peer did (R10).
WE_HAVE_NOT_DRAINED = (Phase.READY, Phase.PEER_DRAINED)
WE_HAVE_DRAINED = (Phase.WE_DRAINED, Phase.BOTH_DRAINED)
PEER_HAS_NOT_DRAINED = (Phase.READY, Phase.WE_DRAINED)
PEER_HAS_DRAINED = (Phase.PEER_DRAINED, Phase.BOTH_DRAINED)
CLOSED = (Phase.CLOSED,)

ENGINE_REQUESTS = (m.HttpRequest, m.Connect, m.Message, m.Event)
#: The worker's requests, answered by ``result`` (R7), allowed after a drain (R10).
WORKER_REQUESTS = (m.Query, m.Publish)
COMMANDS = (m.Join, m.Leave, m.Emit, m.Close)
NOTIFICATIONS = (m.Disconnect, m.Presence)
HEARTBEAT = (m.Ping, m.Pong)

# fmt: off
ROWS: tuple[Row, ...] = (
    # ---------------------------------------------------- worker sends (→ engine)
    Row("R1",  WORKER, SEND, BEFORE_HELLO, (m.Hello,), to=Phase.AFTER_HELLO),
    Row("R1",  WORKER, SEND, AFTER_HELLO, (m.Hello,), REFUSE, why="hello already sent"),
    Row("R1",  WORKER, SEND, HANDSHAKE, OTHERS, REFUSE, why="{t} before the welcome"),
    Row("R5",  WORKER, SEND, LIVE, (m.Hello,), REFUSE, why="hello already sent"),
    Row("R6",  WORKER, SEND, LIVE, COMMANDS),
    Row("R7",  WORKER, SEND, PEER_HAS_NOT_DRAINED, WORKER_REQUESTS, REQUEST),
    Row("R10", WORKER, SEND, PEER_HAS_DRAINED, WORKER_REQUESTS, REQUEST),
    Row("R8",  WORKER, SEND, LIVE, (m.Reply,), ANSWER),
    # ---------------------------------------------------- engine sends (→ worker)
    Row("R2",  ENGINE, SEND, BEFORE_HELLO, (m.Welcome, m.Reject), REFUSE,
        why="{t} before the hello"),
    Row("R2",  ENGINE, SEND, HANDSHAKE, OTHERS, REFUSE, why="{t} before the welcome"),
    Row("R4",  ENGINE, SEND, AFTER_HELLO, (m.Welcome,), to=Phase.READY),
    Row("R4",  ENGINE, SEND, AFTER_HELLO, (m.Reject,), to=Phase.CLOSED),
    Row("R5",  ENGINE, SEND, LIVE, (m.Welcome, m.Reject), REFUSE,
        why="{t} after the handshake"),
    Row("R6",  ENGINE, SEND, LIVE, NOTIFICATIONS),
    Row("R7",  ENGINE, SEND, PEER_HAS_NOT_DRAINED, ENGINE_REQUESTS, REQUEST),
    Row("R10", ENGINE, SEND, PEER_HAS_DRAINED, ENGINE_REQUESTS, REFUSE,
        why="{t} to a draining worker"),
    Row("R8",  ENGINE, SEND, LIVE, (m.Result,), ANSWER),
    # ---------------------------------------------------- both send
    Row("R6",  BOTH, SEND, LIVE, HEARTBEAT),
    Row("R10", BOTH, SEND, READY, (m.Drain,), to=Phase.WE_DRAINED),
    Row("R10", BOTH, SEND, PEER_DRAINED, (m.Drain,), to=Phase.BOTH_DRAINED),
    Row("R10", BOTH, SEND, WE_HAVE_DRAINED, (m.Drain,)),
    Row("R11", BOTH, SEND, CLOSED, OTHERS, REFUSE, why="connection closed"),
    # ---------------------------------------------------- engine receives (worker →)
    Row("R1 R3", ENGINE, RECEIVE, BEFORE_HELLO, (m.Hello,), HELLO, to=Phase.AFTER_HELLO),
    Row("R1",  ENGINE, RECEIVE, BEFORE_HELLO, OTHERS, REFUSE, why="expected hello, got {t}"),
    Row("R1",  ENGINE, RECEIVE, AFTER_HELLO, (m.Hello,), REFUSE, why="second hello"),
    Row("R1",  ENGINE, RECEIVE, AFTER_HELLO, OTHERS, REFUSE, why="{t} before our welcome"),
    Row("R5",  ENGINE, RECEIVE, LIVE, (m.Hello,), REFUSE, why="hello after the handshake"),
    Row("R6",  ENGINE, RECEIVE, LIVE, COMMANDS),
    Row("R7",  ENGINE, RECEIVE, WE_HAVE_NOT_DRAINED, WORKER_REQUESTS, REQUEST),
    Row("R10", ENGINE, RECEIVE, WE_HAVE_DRAINED, WORKER_REQUESTS, REQUEST),
    Row("R8 R9", ENGINE, RECEIVE, LIVE, (m.Reply,), ANSWER),
    # ---------------------------------------------------- worker receives (engine →)
    Row("R2",  WORKER, RECEIVE, BEFORE_HELLO, OTHERS, REFUSE, why="{t} before our hello"),
    Row("R3 R4", WORKER, RECEIVE, AFTER_HELLO, (m.Welcome,), WELCOME, to=Phase.READY),
    Row("R4",  WORKER, RECEIVE, AFTER_HELLO, (m.Reject,), to=Phase.CLOSED),
    Row("R2",  WORKER, RECEIVE, AFTER_HELLO, OTHERS, REFUSE, why="expected welcome, got {t}"),
    Row("R5",  WORKER, RECEIVE, LIVE, (m.Welcome, m.Reject), REFUSE,
        why="{t} after the handshake"),
    Row("R6",  WORKER, RECEIVE, LIVE, NOTIFICATIONS),
    Row("R7",  WORKER, RECEIVE, WE_HAVE_NOT_DRAINED, ENGINE_REQUESTS, REQUEST),
    Row("R10", WORKER, RECEIVE, WE_HAVE_DRAINED, ENGINE_REQUESTS, REFUSE,
        why="{t} after our drain"),
    Row("R8 R9", WORKER, RECEIVE, LIVE, (m.Result,), ANSWER),
    # ---------------------------------------------------- both receive
    Row("R6",  BOTH, RECEIVE, LIVE, HEARTBEAT),
    Row("R10", BOTH, RECEIVE, READY, (m.Drain,), to=Phase.PEER_DRAINED),
    Row("R10", BOTH, RECEIVE, WE_DRAINED, (m.Drain,), to=Phase.BOTH_DRAINED),
    Row("R10", BOTH, RECEIVE, PEER_HAS_DRAINED, (m.Drain,)),
    # No receive rows for CLOSED: next_message returns None before decoding (R11).
)
# fmt: on

#: The message types that travel in each (role, direction) (R6), from the codec.
TRAVELS: dict[tuple[Role, Direction], tuple[type, ...]] = {
    (Role.ENGINE, Direction.SEND): tuple(WORKER_RECEIVES.values()),
    (Role.ENGINE, Direction.RECEIVE): tuple(ENGINE_RECEIVES.values()),
    (Role.WORKER, Direction.SEND): tuple(ENGINE_RECEIVES.values()),
    (Role.WORKER, Direction.RECEIVE): tuple(WORKER_RECEIVES.values()),
}


def _phases(direction: Direction) -> tuple[Phase, ...]:
    return tuple(p for p in Phase if direction is Direction.SEND or p is not Phase.CLOSED)


def _compile(rows: tuple[Row, ...]) -> dict[tuple[Role, Direction], dict[Phase, dict[type, Rule]]]:
    """The rows as ``{(role, direction): {phase: {message type: Rule}}}``; raises
    ValueError unless every cell is defined by exactly one row."""
    table: dict[tuple[Role, Direction], dict[Phase, dict[type, Rule]]] = {
        key: {p: {} for p in _phases(key[1])} for key in TRAVELS
    }
    # Rows naming their messages first: OTHERS rows fill what they left.
    ordered = sorted(rows, key=lambda row: row.messages is OTHERS)
    for row in ordered:
        for role in row.roles:
            key = (role, row.direction)
            travels = TRAVELS[key]
            for phase in row.phases:
                cell: dict[type, Rule] = table[key][phase]
                if isinstance(row.messages, _Others):
                    messages = tuple(t for t in travels if t not in cell)
                    if not messages:
                        raise ValueError(f"{row}: OTHERS matches nothing in {phase}")
                else:
                    messages = row.messages
                for msg_type in messages:
                    if msg_type not in travels:
                        raise ValueError(f"{row}: {msg_type.__name__} does not travel so")
                    if msg_type in cell:
                        raise ValueError(f"{row}: {msg_type.__name__} in {phase} twice")
                    nxt = None if row.to is phase else row.to
                    cell[msg_type] = Rule(row.cites, row.effect, nxt, row.why)
    for key, by_phase in table.items():
        for phase, cell in by_phase.items():
            missing = [t.__name__ for t in TRAVELS[key] if t not in cell]
            if missing:
                raise ValueError(f"no rule for {key} in {phase}: {missing}")
    return table


#: ``TABLE[role, direction][phase][type(msg)]`` → the Rule; IpcConn keeps the
#: innermost dict of its current phase at hand, so a message costs one lookup.
TABLE = _compile(ROWS)
