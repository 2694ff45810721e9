"""Handler contexts: what a handler sees of its request and the commands it can issue."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, parse_qsl

import orjson

from protocol.ipc import messages as m

from .encoding import describe_unencodable, event_text
from .errors import BadRequestError, InternalError
from .history import DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, RoomHistory
from .link import Link
from .watchers import MAX_WATCHED_ROOMS, MAX_WATCHERS, WatcherEmitter, find_watchers


class Service(Protocol):
    """What a context reads of its service (sdk/service.py's ``Service`` is the one).

    Stated here so that context.py never imports service.py, which builds contexts:
    no import circle, not even for the type checker."""

    name: str
    logger: logging.Logger
    db: Any


__all__ = [
    "AuthUser",
    "Context",
    "Emitter",
    "EventContext",
    "Form",
    "Headers",
    "HttpContext",
    "Link",
    "PresenceContext",
    "Published",
    "Socket",
    "WsContext",
    "WsMessage",
    "parse_body",
]


@dataclass(frozen=True, slots=True)
class AuthUser:
    """The verified identity of a request (docs/ipc.md §4.7)."""

    id: str
    username: str | None = None
    roles: list[str] = field(default_factory=list)
    #: The whole verified token payload.
    claims: Any = None

    @classmethod
    def from_auth(cls, auth: Any) -> AuthUser | None:
        if not isinstance(auth, dict) or not isinstance(auth.get("userId"), str):
            return None
        roles = auth.get("roles")
        return cls(
            id=auth["userId"],
            username=auth.get("username"),
            roles=list(roles) if isinstance(roles, list) else [],
            claims=auth.get("claims"),
        )


class Headers(Mapping[str, str]):
    """Request headers in order, looked up case-insensitively; ``get`` returns the first."""

    __slots__ = ("_first", "raw")

    def __init__(self, raw: list[tuple[str, str]]) -> None:
        #: The ``(name, value)`` pairs as the engine sent them (lower-case names).
        self.raw = raw
        self._first: dict[str, str] = {}
        for name, value in raw:
            self._first.setdefault(name.lower(), value)

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def getall(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        key = name.lower()
        return [v for k, v in self.raw if k.lower() == key]

    def __repr__(self) -> str:
        return f"Headers({self.raw!r})"


class Emitter:
    """One emit target (a room, a user, a connection or everyone), plus exclusions.

    ``await ctx.to("room").except_(ctx.socket.id).emit("chat.message", data)``;
    ``except_`` takes socket ids (``str``) or connection ids (``int``) and accumulates.
    """

    __slots__ = ("_conn", "_everyone", "_exclude", "_link", "_room", "_user")

    def __init__(
        self,
        link: Link,
        *,
        room: str | None = None,
        user: str | None = None,
        conn: int | None = None,
        everyone: bool = False,
    ) -> None:
        self._link = link
        self._room = room
        self._user = user
        self._conn = conn
        self._everyone = everyone
        self._exclude: list[int] = []

    def except_(self, *ids: str | int | Socket) -> Emitter:
        for item in ids:
            if isinstance(item, Socket):
                self._exclude.append(item.conn)
            else:
                self._exclude.append(int(item))
        return self

    async def emit(self, event: str | bytes, data: Any = None) -> None:
        """Send ``{"type": event, "data": data}`` to the target (written immediately).

        ``emit(b"...")``: bytes instead of an event name go out as one binary frame,
        as they are (no envelope; not numbered, so not recovered after a reconnection).
        """
        name: str | None = None
        if isinstance(event, str):
            name = event
            payload = event_text(event, data)
        elif data is not None:
            raise TypeError("a binary emit is the bytes alone: emit(b'...')")
        else:
            payload = bytes(event)
        self._link.command(
            m.Emit(
                payload=payload,
                room=self._room,
                user=self._user,
                conn=self._conn,
                everyone=self._everyone,
                exclude=list(self._exclude),
                event=name,
                binary=name is None,
            )
        )
        await self._link.flush()


@dataclass(frozen=True, slots=True)
class Published:
    """What ``publish_event`` resolved with: the services the event was queued for."""

    services: tuple[str, ...]

    @property
    def subscribers(self) -> int:
        """How many services will get it (0: nobody subscribed; it is not kept)."""
        return len(self.services)


def _event_data(name: str, data: Any) -> bytes:
    if not isinstance(name, str) or not name:
        raise ValueError(f"an event name must be a non-empty string, not {name!r}")
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError as exc:
        what = describe_unencodable(data, exc)
        raise InternalError(f"publish_event {name!r}: data JSON cannot encode: {what}") from None


class Context:
    """What every handler gets: identity, the service's logger and db, emits."""

    __slots__ = ("_link", "_user", "auth", "service")

    def __init__(self, service: Service, link: Link, auth: Any) -> None:
        self.service = service
        self._link = link
        #: The verified identity as the engine sent it (``userId``, ``username``,
        #: ``roles``, ``claims``), or None.
        self.auth: dict[str, Any] | None = auth if isinstance(auth, dict) else None
        self._user: AuthUser | None = AuthUser.from_auth(auth)

    @property
    def user(self) -> AuthUser | None:
        """``auth`` as an ``AuthUser`` (``.id``, ``.username``, ``.roles``, ``.claims``)."""
        return self._user

    @property
    def logger(self) -> logging.Logger:
        return self.service.logger

    @property
    def db(self) -> Any:
        """Whatever the service set as ``service.db``."""
        return self.service.db

    def to(self, room: str) -> Emitter:
        """Emit to every connection in ``room`` (rooms are global to the engine)."""
        return Emitter(self._link, room=room)

    def to_user(self, user_id: str) -> Emitter:
        """Emit to every connection authenticated as ``user_id``."""
        return Emitter(self._link, user=user_id)

    def to_socket(self, socket_id: str | int) -> Emitter:
        """Emit to one connection, by socket id."""
        return Emitter(self._link, conn=int(socket_id))

    def everyone(self) -> Emitter:
        """Emit to every client connection of the engine."""
        return Emitter(self._link, everyone=True)

    async def broadcast(self, event: str, data: Any = None) -> None:
        """Emit to every client connection of the engine."""
        await self.everyone().emit(event, data)

    async def members(self, room: str) -> list[str]:
        """The socket ids of the connections in ``room``."""
        result = await self._link.query("members", room=room)
        return [str(c) for c in result or []]

    async def presence(self, room: str) -> list[dict[str, Any]]:
        """The users with a connection in ``room``: ``{userId, username, connections}``.

        Anonymous connections are not listed (``members`` has every connection).
        """
        result = await self._link.query("presence", room=room)
        return list(result or [])

    async def history(
        self,
        room: str,
        since: int | None = None,
        limit: int = DEFAULT_HISTORY_LIMIT,
        *,
        epoch: str | None = None,
    ) -> RoomHistory:
        """The events the engine kept for ``room`` (the ones recovery replays), oldest
        first: with ``since=None`` the newest ``limit``; with ``since=seq`` the first
        ``limit`` after it (of ``epoch`` when given). See ``RoomHistory`` for
        ``complete``/``more``/``next``; docs/sdk.md, "Room history".

        Raises:
            ValueError / TypeError: a bad argument (``limit`` is 1..1000).
            BadRequestError: the engine refused it.
        """
        if not isinstance(room, str) or not room:
            raise TypeError(f"room must be a non-empty string, not {room!r}")
        if type(limit) is not int or not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise ValueError(f"limit must be an int from 1 to {MAX_HISTORY_LIMIT}, not {limit!r}")
        if since is not None and (type(since) is not int or since < 0):
            raise ValueError(f"since must be None or a seq (an int >= 0), not {since!r}")
        if epoch is not None and not isinstance(epoch, str):
            raise TypeError(f"epoch must be None or a string, not {epoch!r}")
        result = await self._link.query("history", room=room, since=since, epoch=epoch, limit=limit)
        return RoomHistory.from_result(result)

    async def publish_event(self, name: str, data: Any = None) -> Published:
        """Publish the service event ``name`` (docs/sdk.md, "Events between services"):
        one worker of every service with an ``on_event(name)`` handler gets it, at
        least once. Resolves once the engine queued it for all of them (in its memory;
        with ``--redis``, in Redis).

        Raises:
            OverloadedError: a subscriber has too many events waiting (queued for none).
            BadRequestError / PayloadTooLarge (as ``LinkdError``): a bad name, data
            over 64 KiB.
        """
        published = await self._link.publish(name, _event_data(name, data))
        services = published.get("services", []) if isinstance(published, dict) else []
        return Published(tuple(str(s) for s in services))

    async def is_online(self, user_id: str) -> bool:
        """Whether ``user_id`` has a connection (or is within the presence grace period)."""
        return bool(await self._link.query("online", user=user_id))

    def _watched(self) -> str | None:
        # Whose watchers to_watchers finds when not told: the caller.
        return self._user.id if self._user is not None else None

    async def watchers(
        self,
        rooms: Iterable[str],
        *,
        of: str | None = None,
        max_rooms: int = MAX_WATCHED_ROOMS,
        max_watchers: int = MAX_WATCHERS,
    ) -> dict[str, list[str]]:
        """The users present in ``rooms`` other than ``of``, each → the rooms it is in.

        ``of`` defaults to the presence context's user (``ctx.user_id``), elsewhere to
        the caller. One presence query per room (repeats dropped), at most
        ``max_rooms`` rooms and ``max_watchers`` users, each cut logged.
        """
        subject = of if of is not None else self._watched()
        return await find_watchers(
            self._link,
            self.logger,
            rooms,
            subject,
            max_rooms=max_rooms,
            max_watchers=max_watchers,
        )

    def to_watchers(
        self,
        rooms: Iterable[str],
        *,
        of: str | None = None,
        max_rooms: int = MAX_WATCHED_ROOMS,
        max_watchers: int = MAX_WATCHERS,
    ) -> WatcherEmitter:
        """Emit once to each user in ``watchers(rooms, of=...)`` (through ``to_user``),
        with the rooms it shares in ``roomIds``: a presence change announced once per
        watcher, not once per shared room."""
        subject = of if of is not None else self._watched()
        return WatcherEmitter(
            self._link,
            self.logger,
            rooms,
            subject,
            max_rooms=max_rooms,
            max_watchers=max_watchers,
        )


@dataclass(frozen=True, slots=True)
class Socket:
    """The client connection a WebSocket handler runs for."""

    #: The engine's connection id as a string (what ``except_`` takes).
    id: str
    conn: int
    #: The client's address; known on connect only (messages do not carry it).
    remote_address: str | None = None


@dataclass(frozen=True, slots=True)
class WsMessage:
    """The client's whole frame ``{"type", "data", "id"}``: ``ctx.envelope``."""

    type: str
    data: Any = None
    #: The client's ``id`` (a string or number), or None when it wants no ack.
    id: Any = None


class WsContext(Context):
    """Context of a WebSocket connect, message or disconnect."""

    __slots__ = (
        "envelope",
        "headers",
        "message",
        "path",
        "query",
        "query_string",
        "result",
        "socket",
    )

    def __init__(
        self,
        service: Service,
        link: Link,
        auth: Any,
        socket: Socket,
        envelope: WsMessage | None = None,
        *,
        path: str = "",
        query_string: str = "",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(service, link, auth)
        self.socket = socket
        #: The client's whole frame (``type``, ``data``, ``id``); None for connect
        #: and disconnect.
        self.envelope = envelope
        #: What the client sent as ``data`` (the WebSocket twin of an HTTP ``ctx.body``);
        #: a binary frame's ``bytes`` (``on_binary``); None for connect and disconnect.
        #: Middleware may replace it.
        self.message: Any = envelope.data if envelope is not None else None
        #: Connect only: the WebSocket path, its query and the upgrade request's headers.
        self.path = path
        self.query_string = query_string
        # Only connect has a query and headers: a message's context skips the parsing.
        self.query: dict[str, list[str]] = (
            parse_qs(query_string, keep_blank_values=True) if query_string else {}
        )
        self.headers = Headers(headers) if headers else Headers([])
        #: The ack's data: the handler's return value, once ``next()`` returned.
        #: Middleware may replace it.
        self.result: Any = None

    @property
    def type(self) -> str:
        """The message's ``type`` (``""`` for connect and disconnect)."""
        return self.envelope.type if self.envelope else ""

    @property
    def message_type(self) -> str:
        """Alias of ``type`` (the TypeScript SDK's ``ctx.messageType``)."""
        return self.type

    @property
    def data(self) -> Any:
        """Alias of ``message`` (its name before the seed's table was followed)."""
        return self.message

    @data.setter
    def data(self, value: Any) -> None:
        self.message = value

    async def join(self, room: str) -> None:
        """Add this connection to ``room``."""
        self._link.command(m.Join(conn=self.socket.conn, room=room))
        await self._link.flush()

    async def leave(self, room: str) -> None:
        """Remove this connection from ``room``."""
        self._link.command(m.Leave(conn=self.socket.conn, room=room))
        await self._link.flush()

    async def rooms(self) -> list[str]:
        """The rooms this connection is in (asks the engine)."""
        result = await self._link.query("rooms", conn=self.socket.conn)
        return [str(r) for r in result or []]

    async def send(self, event: str | bytes, data: Any = None) -> None:
        """Emit ``{"type": event, "data": data}`` to this connection only (bytes: one
        binary frame, as ``Emitter.emit``)."""
        await Emitter(self._link, conn=self.socket.conn).emit(event, data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close this client connection."""
        self._link.command(m.Close(conn=self.socket.conn, code=code, reason=reason))
        await self._link.flush()


class PresenceContext(Context):
    """Context of ``on_presence``: one user came online or went offline."""

    __slots__ = ("online", "user_id", "username")

    def __init__(self, service: Service, link: Link, note: m.Presence) -> None:
        super().__init__(service, link, None)
        self.user_id = note.user
        self.username = note.username
        #: True: the user's first connection opened. False: the last one closed and
        #: the grace period passed without a new one.
        self.online = note.online

    def _watched(self) -> str | None:
        return self.user_id


class EventContext(Context):
    """Context of an ``on_event`` handler: one service event to handle.

    ``ctx.event`` is its name, ``ctx.data`` what the publisher gave; ``ctx.attempt`` is
    1 on the first delivery and higher when it is delivered again (a worker died
    while handling it, or did not finish within the request timeout): handlers must
    be idempotent (delivery is at least once).
    """

    __slots__ = ("attempt", "data", "event", "published_at", "source")

    def __init__(self, service: Service, link: Link, note: m.Event, data: Any) -> None:
        super().__init__(service, link, None)
        self.event = note.name
        self.data = data
        self.attempt = note.attempt
        #: The publishing service's name.
        self.source = note.source
        #: When it was published, in seconds since the Unix epoch.
        self.published_at = note.time / 1000.0 if note.time is not None else None

    @property
    def name(self) -> str:
        """Alias of ``event``."""
        return self.event


#: ``ctx.body`` of a form: each name to its value, or to the list of its values when
#: it is repeated (``a=1&a=2&b=`` → ``{"a": ["1", "2"], "b": ""}``), as Node's
#: ``querystring`` and Express's ``urlencoded()`` give it.
Form = dict[str, str | list[str]]

_FORM = "application/x-www-form-urlencoded"


def _is_json(mime: str) -> bool:
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def parse_body(content_type: str | None, raw: bytes) -> Any:
    """``ctx.body``: the request body parsed by its content type.

    JSON (``application/json``, ``application/*+json``) → the decoded value, None when
    empty; a form (``application/x-www-form-urlencoded``) → a ``Form``; anything else →
    the raw bytes. Malformed JSON or a form that is not UTF-8 → BadRequestError.
    """
    mime = (content_type or "").partition(";")[0].strip().lower()
    if _is_json(mime):
        if not raw:
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequestError("the body is not valid JSON") from None
    if mime == _FORM:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError("the form body is not UTF-8") from None
        form: Form = {}
        for name, value in parse_qsl(text, keep_blank_values=True):
            seen = form.get(name)
            if seen is None:
                form[name] = value
            elif isinstance(seen, list):
                seen.append(value)
            else:
                form[name] = [seen, value]
        return form
    return raw


class HttpContext(Context):
    """Context of an HTTP action."""

    __slots__ = (
        "_json",
        "action",
        "body",
        "headers",
        "method",
        "params",
        "path",
        "query",
        "query_string",
        "raw_body",
        "remote_address",
        "result",
    )

    def __init__(self, service: Service, link: Link, req: m.HttpRequest) -> None:
        super().__init__(service, link, req.auth)
        self.action = req.action
        self.method = req.method
        self.path = req.path
        #: Values of the route's ``:name`` segments.
        self.params: dict[str, str] = dict(req.params)
        #: The raw query string, without ``?``.
        self.query_string = req.query
        #: The parsed query: every value of every name, blanks kept.
        self.query: dict[str, list[str]] = parse_qs(req.query, keep_blank_values=True)
        self.headers = Headers(req.headers)
        #: The body exactly as received.
        self.raw_body: bytes = req.body
        #: The body parsed by its content type (``parse_body``): JSON → the value,
        #: a form → a ``Form`` dict, anything else → the raw bytes. Parsed before any
        #: middleware runs: malformed JSON is answered 400 without reaching the action.
        self.body: Any = parse_body(self.headers.get("content-type"), req.body)
        self.remote_address = req.remote
        #: The reply's value: the action's return value, once ``next()`` returned.
        #: Middleware may replace it.
        self.result: Any = None
        self._json: Any = _NOT_PARSED

    def json(self) -> Any:
        """The raw body parsed as JSON whatever its content type (once);
        BadRequestError when it is not JSON. ``ctx.body`` is the usual way."""
        if self._json is _NOT_PARSED:
            try:
                self._json = orjson.loads(self.raw_body)
            except orjson.JSONDecodeError:
                raise BadRequestError("the body is not valid JSON") from None
        return self._json


_NOT_PARSED: Any = object()
