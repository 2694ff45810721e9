"""IPC messages (docs/ipc.md §4): one frozen dataclass per type.

The CBOR map of a message is ``{"t": TYPE, <field>: <value>...}`` with the dataclass
field names as keys; ``codec.py`` derives validation from the annotations here, so
this file is the schema. Fields with a default may be omitted on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "BINARY_TYPE",
    "PROTOCOL_VERSION",
    "Close",
    "Connect",
    "Disconnect",
    "Drain",
    "Emit",
    "ErrorInfo",
    "Event",
    "Hello",
    "HttpRequest",
    "HttpRoute",
    "Join",
    "Leave",
    "Message",
    "Ping",
    "Pong",
    "Presence",
    "Publish",
    "Query",
    "Registration",
    "Reject",
    "Reply",
    "Result",
    "Welcome",
    "WsRoute",
]

#: The version this implementation speaks (docs/ipc.md §1). Version 2 added events
#: between services (``publish``, ``event``, ``Registration.events``), room history
#: (``query`` ``what: "history"``) and ``WsRoute.not_idempotent``; see docs/ipc.md §8.
PROTOCOL_VERSION = 2
#: The ``type`` of a ``message`` carrying a binary frame (it has no envelope of its own).
BINARY_TYPE = "linkd.binary"

Headers = list[tuple[str, str]]


# --------------------------------------------------------------- registration
@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One HTTP action: ``GET /chat/rooms/:id`` → action ``get-room``."""

    action: str
    method: str
    path: str
    #: "required", "optional" or "none".
    auth: str = "none"
    #: Optional documentation (v2) as JSON text: ``{"summary", "description",
    #: "request", "response"}``, the last two JSON schemas. For the engine's OpenAPI
    #: document only: not part of the route (workers of a service may differ in it).
    docs: bytes | None = None


@dataclass(frozen=True, slots=True)
class WsRoute:
    """The service's WebSocket endpoint and the message types it handles."""

    path: str
    #: Exact message types (``chat.send``).
    types: list[str] = field(default_factory=list)
    #: Type prefixes handled by a group (``chat.`` covers ``chat.anything``).
    prefixes: list[str] = field(default_factory=list)
    #: A catch-all handler takes every other type.
    catch_all: bool = False
    #: "required", "optional" or "none".
    auth: str = "none"
    #: Whether the service wants connect / disconnect events.
    on_connect: bool = False
    on_disconnect: bool = False
    #: Whether binary messages are accepted (v2: forwarded as ``Message.binary``); else
    #: a connection that sends one is closed with 1003.
    binary: bool = False
    #: Messages of one connection handled concurrently (1 = strictly in order).
    per_connection: int = 1
    #: Types whose handlers opted out of ordering: they run alongside the connection's
    #: other messages instead of waiting their turn (e.g. typing indicators).
    concurrent: list[str] = field(default_factory=list)
    #: Whether the service wants ``presence`` notifications (users online/offline).
    presence: bool = False
    #: Types whose handlers opted out of idempotent requests (v2): a message repeating
    #: a recent id runs the handler again instead of getting the remembered ack.
    not_idempotent: list[str] = field(default_factory=list)
    #: Origins a browser page may connect from, for this path only (v2); None: the
    #: engine's ``--allowed-origins`` applies.
    origins: list[str] | None = None
    #: Optional documentation (v2) as JSON text: ``{"types": {type: {"summary",
    #: "description", "schema", "result"}}, "emits": {event: {"summary",
    #: "description", "schema"}}}``, for the engine's AsyncAPI document only.
    docs: bytes | None = None


@dataclass(frozen=True, slots=True)
class Registration:
    name: str
    version: str = "0.0.0"
    http: list[HttpRoute] = field(default_factory=list)
    ws: WsRoute | None = None
    #: Requests this worker accepts at once; the engine queues beyond it.
    concurrency: int = 64
    #: Names of the service events it consumes (``@service.on_event``): each event
    #: published under one of them goes to one worker of this service (v2).
    events: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error in the shared shape; ``code`` is a ``protocol.ErrorCode`` value."""

    code: str
    message: str
    #: JSON text with extra detail (e.g. the fields of a validation error).
    details: bytes | None = None


# -------------------------------------------------------------- handshake
@dataclass(frozen=True, slots=True)
class Hello:
    """Worker → engine, first message: versions spoken and what the service offers."""

    TYPE: ClassVar[str] = "hello"
    versions: list[int]
    service: Registration
    pid: int = 0
    max_frame: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Welcome:
    """Engine → worker: registration accepted."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    worker: int
    max_frame: int
    #: The engine pings every ``heartbeat`` seconds; answer within the same time.
    heartbeat: float


@dataclass(frozen=True, slots=True)
class Reject:
    """Engine → worker: registration refused; the engine closes the socket."""

    TYPE: ClassVar[str] = "reject"
    code: str
    message: str


# ------------------------------------------------------- engine → worker
@dataclass(frozen=True, slots=True)
class HttpRequest:
    TYPE: ClassVar[str] = "http"
    id: int
    action: str
    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    #: The raw query string, without ``?``.
    query: str = ""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    remote: str | None = None
    #: The verified identity (``userId``, ``username``, ``roles``, ``claims``), or None.
    auth: Any = None


@dataclass(frozen=True, slots=True)
class Connect:
    """A WebSocket client connected to the service's path."""

    TYPE: ClassVar[str] = "connect"
    id: int
    conn: int
    path: str
    query: str = ""
    headers: Headers = field(default_factory=list)
    remote: str | None = None
    auth: Any = None


@dataclass(frozen=True, slots=True)
class Message:
    """A client message ``{type, data, id}``; ``json`` is the client's text, untouched.

    A binary frame (v2, ``WsRoute.binary``) has no envelope: ``type`` is
    ``BINARY_TYPE``, ``json`` is empty and ``binary`` holds the frame's bytes.
    """

    TYPE: ClassVar[str] = "message"
    id: int
    conn: int
    type: str
    json: bytes
    auth: Any = None
    remote: str | None = None
    #: v2: the payload of a binary frame (then ``json`` is ``b""``).
    binary: bytes | None = None


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A connection closed (notification: no reply)."""

    TYPE: ClassVar[str] = "disconnect"
    conn: int
    code: int
    rooms: list[str] = field(default_factory=list)
    auth: Any = None


@dataclass(frozen=True, slots=True)
class Presence:
    """A user came online (first connection) or went offline (last one closed and the
    grace period passed). Notification: no reply."""

    TYPE: ClassVar[str] = "presence"
    user: str
    online: bool
    username: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """Engine → worker (v2): one service event to handle; answered by a ``Reply`` once
    the handler returned (the ack). Unanswered (the worker died, the request timed
    out), it is delivered again, with ``attempt`` one higher."""

    TYPE: ClassVar[str] = "event"
    id: int
    name: str
    #: The event's data as JSON text, as the publisher gave it.
    json: bytes
    #: 1 for the first delivery, 2 for the first redelivery...
    attempt: int = 1
    #: The publishing service's name.
    source: str | None = None
    #: When it was published: milliseconds since the Unix epoch (engine clock).
    time: float | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """Engine → worker: the answer to a ``Query`` (``data`` is JSON text)."""

    TYPE: ClassVar[str] = "result"
    id: int
    json: bytes | None = None
    error: ErrorInfo | None = None


# ------------------------------------------------------- worker → engine
@dataclass(frozen=True, slots=True)
class Reply:
    """Worker → engine: the answer to request ``id``.

    For a WebSocket message: ``json`` (the handler's return value as JSON text) or
    ``error``. For HTTP: ``status`` plus ``json`` or ``body``, and ``headers``.
    """

    TYPE: ClassVar[str] = "reply"
    id: int
    json: bytes | None = None
    error: ErrorInfo | None = None
    status: int | None = None
    headers: Headers = field(default_factory=list)
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Join:
    TYPE: ClassVar[str] = "join"
    conn: int
    room: str


@dataclass(frozen=True, slots=True)
class Leave:
    TYPE: ClassVar[str] = "leave"
    conn: int
    room: str


@dataclass(frozen=True, slots=True)
class Emit:
    """Send ``payload`` (a complete JSON event, UTF-8) to exactly one kind of target;
    with ``binary`` (v2), ``payload`` is any bytes, sent as one binary frame."""

    TYPE: ClassVar[str] = "emit"
    payload: bytes
    room: str | None = None
    user: str | None = None
    conn: int | None = None
    everyone: bool = False
    exclude: list[int] = field(default_factory=list)
    #: The event's type (``chat.message``): selects its slow-consumer policy and, with
    #: the target, its conflation key.
    event: str | None = None
    #: v2: ``payload`` goes out as a binary frame, unnumbered (not kept for recovery).
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Close:
    TYPE: ClassVar[str] = "close"
    conn: int
    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Query:
    """Worker → engine: ask for state; answered by a ``Result`` with the same id.

    ``what``: ``"rooms"`` (of ``conn``), ``"members"`` (connection ids in ``room``),
    ``"presence"`` (the users in ``room``), ``"online"`` (whether ``user`` is online)
    or ``"history"`` (v2: the kept events of ``room``, after ``since`` of ``epoch``, at
    most ``limit``).
    """

    TYPE: ClassVar[str] = "query"
    id: int
    what: str
    conn: int | None = None
    room: str | None = None
    user: str | None = None
    #: history: events after this seq (None: the newest ``limit``).
    since: int | None = None
    #: history: the epoch ``since`` belongs to (None: the stream's current one).
    epoch: str | None = None
    #: history: at most this many events (default 100, at most 1000).
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class Publish:
    """Worker → engine (v2): publish a service event; answered by a ``Result`` once it
    is queued for every subscribing service (``json``: ``{"services": [...]}``), or
    with an error (``OVERLOADED`` past a subscriber's bound, ``BAD_REQUEST``...)."""

    TYPE: ClassVar[str] = "publish"
    id: int
    name: str
    #: The event's data as JSON text (UTF-8).
    json: bytes


# ----------------------------------------------------------- both ways
@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[str] = "ping"
    n: int = 0


@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[str] = "pong"
    n: int = 0


@dataclass(frozen=True, slots=True)
class Drain:
    """Either side: no new requests from now on; finish what is in flight."""

    TYPE: ClassVar[str] = "drain"
