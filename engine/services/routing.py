"""Service routes: HTTP actions and WebSocket endpoints that forward to workers over IPC.

The client contract (docs/ipc.md §4.2) lives here: a client frame ``{type, data, id}`` is
parsed once, routed by type (exact, group prefix, catch-all), forwarded as the
client's own text, and the worker's reply becomes the ack ``{id, type, data}`` or
``{id, type, error}``, built by concatenating JSON texts (nothing re-encoded). A message
whose id was seen lately from the same user (or connection) is answered from the
node's ``ReplayCache`` (engine/services/replay.py) instead of running again. A binary
frame (``WsRoute.binary``) has no envelope: it goes as it is, typed ``linkd.binary``,
to the service's binary handler, without an ack (an error comes back as an event).

Over 400 lines: the client contract of both route kinds (HTTP actions and WebSocket
types) with their shared envelope, error and replay rules; one table to read against
docs/clients.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from engine.api.completion import Completion
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from engine.api.request import Request, Response
from engine.auth import authenticate
from protocol import CloseCode, ErrorCode
from protocol.errors import UnauthorizedError
from protocol.ipc import messages as m
from protocol.ws import OutboundMessage

if TYPE_CHECKING:
    from engine.services.host import Host
    from engine.services.registry import ServiceEntry

from engine.services.workers import Outcome, ServiceError

__all__ = ["mount_service"]

log = logging.getLogger("linkd.services")

_KNOWN_CODES = {code.value: code for code in ErrorCode}

#: Errors after which the handler may not have run (the worker went away, the call
#: was never handed over or not answered in time): a retry must run, not be told so.
_NOT_REMEMBERED = frozenset(
    {ErrorCode.TIMEOUT, ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.OVERLOADED}
)


def _error_from_reply(error: m.ErrorInfo) -> ServiceError:
    code = _KNOWN_CODES.get(error.code, ErrorCode.INTERNAL)
    if code is ErrorCode.INTERNAL:
        return ServiceError(code, "internal error")  # nothing of an internal error leaks
    return ServiceError(code, error.message, error.details)


async def _call(entry: ServiceEntry, make: Callable[[int], Any]) -> m.Reply:
    """A successful reply, or ServiceError (engine-side failures and worker errors alike)."""
    try:
        reply = await entry.call(make)
    except ServiceError:
        entry.registry.state.metrics.count_ipc_error(entry.name)
        raise
    if reply.error is not None:
        entry.registry.state.metrics.count_ipc_error(entry.name)
        raise _error_from_reply(reply.error)
    return reply


def _error_json(err: ServiceError, retry_after: float | None = None) -> bytes:
    body = b'{"code":' + orjson.dumps(err.code.value) + b',"message":' + orjson.dumps(err.message)
    if err.details is not None:
        body += b',"details":' + err.details
    if retry_after is not None:
        # Seconds, rounded up to the millisecond: waiting that long is enough.
        body += b',"retryAfter":' + orjson.dumps(math.ceil(retry_after * 1000) / 1000)
    return body + b"}"


def _auth_header(request: Request) -> str | None:
    value = request.header("authorization")
    return value if value and value.lower().startswith("bearer ") else None


class ServiceHttpAction:
    """``METHOD /path`` of a service → ``http`` request → ``reply`` → HTTP response."""

    def __init__(self, state: Host, entry: ServiceEntry, route: m.HttpRoute) -> None:
        self.state = state
        self.entry = entry
        self.route = route

    async def __call__(self, request: Request) -> Response:
        http = request.http
        identity = None
        if self.route.auth != "none":
            try:
                identity = authenticate(self.state.authenticator, http, self.route.auth)
            except UnauthorizedError as exc:
                return Response.error(exc.code, exc.message)
        auth = identity.auth if identity is not None else None
        remote = f"{request.remote[0]}:{request.remote[1]}" if request.remote else None

        def make(request_id: int) -> m.HttpRequest:
            return m.HttpRequest(
                id=request_id,
                action=self.route.action,
                method=http.method,
                path=http.path,
                params=request.params,
                query=http.query,
                headers=list(http.headers),
                body=http.body,
                remote=remote,
                auth=auth,
            )

        try:
            reply = await _call(self.entry, make)
        except ServiceError as err:
            return Response(
                err.code.status,
                [("content-type", "application/json")],
                b'{"error":' + _error_json(err) + b"}",
            )
        headers = list(reply.headers)
        if reply.json is not None:
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers.append(("content-type", "application/json"))
            body = reply.json
        else:
            body = reply.body or b""
        return Response(reply.status or 200, headers, body)


class ServiceWsEndpoint(WebSocketEndpoint):
    """The service's WebSocket path: connect, messages and disconnect go to its workers."""

    def __init__(self, state: Host, entry: ServiceEntry, route: m.WsRoute) -> None:
        self.state = state
        self.entry = entry
        self.route = route
        self.types = frozenset(route.types)
        self.prefixes = tuple(route.prefixes)
        self.concurrent = frozenset(route.concurrent)
        #: Types whose repeats run the handler again (``idempotent: False``).
        self.not_idempotent = frozenset(route.not_idempotent)
        self.replay = entry.registry.replay
        # Binary frames go to the service only if it asked for them; else close 1003.
        self.accept_binary = route.binary
        # Over the rate, a message is refused (RATE_LIMITED), not waited for: the
        # client may have other work in flight that should not stall behind it.
        self.throttle = False
        self.auth_policy = route.auth
        if route.origins is not None:
            self.allowed_origins = tuple(route.origins)
        self._concurrent: dict[int, int] = {}
        #: Per-connection limits of some message types: type → (rate, burst).
        self.type_limits = {t: (rate, burst) for t, rate, burst in state.config.ws_type_limits}

    def handles(self, message_type: str) -> bool:
        return (
            message_type in self.types
            or (bool(self.prefixes) and message_type.startswith(self.prefixes))
            or self.route.catch_all
        )

    # -------------------------------------------------------------- connect
    def on_connect(self, ws: WebSocket) -> Awaitable[None] | None:
        if not self.route.on_connect:
            return None
        return self._connect(ws)

    async def _connect(self, ws: WebSocket) -> None:
        request = ws.request
        remote = f"{ws.remote[0]}:{ws.remote[1]}" if ws.remote else None

        def make(request_id: int) -> m.Connect:
            return m.Connect(
                id=request_id,
                conn=ws.id,
                path=request.path,
                query=request.query,
                headers=list(request.headers),
                remote=remote,
                auth=ws.auth,
            )

        try:
            await _call(self.entry, make)
        except ServiceError as err:
            refused = err.code in (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN)
            code = CloseCode.POLICY_VIOLATION if refused else CloseCode.INTERNAL_ERROR
            ws.close(code, err.message if refused else "service unavailable")

    # -------------------------------------------------------------- message
    def on_message(self, ws: WebSocket, data: str | bytes) -> Awaitable[None] | None:
        if not isinstance(data, str):  # accepted only when the route is binary
            return self._binary(ws, data)
        try:
            envelope = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._error_event(ws, None, None, ErrorCode.BAD_REQUEST, "invalid JSON")
            return None
        if type(envelope) is not dict or type(envelope.get("type")) is not str:
            self._error_event(
                ws, None, None, ErrorCode.BAD_REQUEST, "a message needs a string 'type'"
            )
            return None
        message_type: str = envelope["type"]
        msg_id = envelope.get("id")
        if msg_id is not None and type(msg_id) not in (str, int):
            self._error_event(
                ws, None, message_type, ErrorCode.BAD_REQUEST, "'id' must be a string or a number"
            )
            return None
        if message_type not in self.types and not self.handles(message_type):
            self._error_event(
                ws,
                msg_id,
                message_type,
                ErrorCode.UNKNOWN_MESSAGE_TYPE,
                f"unknown message type {message_type!r}",
            )
            return None
        if self.type_limits:
            type_limit = self.type_limits.get(message_type)
            if type_limit is not None:
                wait = ws.rate_limit(message_type, *type_limit)
                if wait:
                    if ws.closed:
                        pass  # closed for abuse: the close says it
                    elif msg_id is None:
                        ws.note_dropped(wait)
                    else:
                        self._rate_limited_event(ws, msg_id, message_type, wait)
                    return None
        return self._forward_now(ws, data.encode(), message_type, msg_id)

    def _binary(self, ws: WebSocket, data: bytes) -> Awaitable[None] | None:
        """A binary frame: no envelope, no id, so no ack and no replay; forwarded in
        order with the connection's other messages."""
        message_type = m.BINARY_TYPE
        type_limit = self.type_limits.get(message_type) if self.type_limits else None
        if type_limit is not None:
            wait = ws.rate_limit(message_type, *type_limit)
            if wait:
                if not ws.closed:
                    ws.note_dropped(wait)
                return None
        return self._forward_now(ws, data, message_type, None, binary=True)

    def _forward_now(
        self, ws: WebSocket, raw: bytes, message_type: str, msg_id: Any, binary: bool = False
    ) -> Awaitable[None] | None:
        """Forward a message; in the connection's order, by callback (the common case):
        the request goes out now and the worker's reply, in the IPC read that brings
        it, becomes the ack and hands the connection its next message. No task, no
        future, no loop turn between the reply and the ack."""
        if message_type in self.concurrent or self.route.per_connection > 1:
            coro = self._forward(ws, raw, message_type, msg_id, binary)
            return self._schedule(ws, coro, message_type)
        replay = self.replay
        key: tuple[str, str | int, Any] | None = None
        digest = 0
        if msg_id is not None and message_type not in self.not_idempotent:
            key, digest = self._replay_key(ws, raw, msg_id)
            found = replay.claim(key, digest)
            if isinstance(found, bytes):
                self.state.metrics.ws_replayed_acks += 1
                self._send_text(ws, found)
                return None
            if found is not None:  # the same request is running (another connection)
                return self._forward(ws, raw, message_type, msg_id)  # waits for its answer
        forwarded = _Forwarded(self, ws, raw, message_type, msg_id, binary, key, digest)
        try:
            self.entry.start(forwarded.make, forwarded.done)
        except ServiceError as err:
            forwarded.done(err)
            return None
        return forwarded.completion

    def _request(
        self, ws: WebSocket, raw: bytes, message_type: str, binary: bool
    ) -> Callable[[int], m.Message]:
        return functools.partial(
            _message, ws=ws, auth=ws.auth, raw=raw, type=message_type, binary=binary
        )

    def _ack(self, msg_id: Any, message_type: str, outcome: Outcome) -> tuple[bytes | None, bool]:
        """The frame a call's outcome sends (None: nothing, a message without an id that
        succeeded) and whether a repeat may be told the same."""
        if isinstance(outcome, ServiceError):
            err = outcome
        elif outcome.error is not None:
            err = _error_from_reply(outcome.error)
        else:
            if msg_id is None:
                return None, False
            frame = (
                b'{"id":'
                + orjson.dumps(msg_id)
                + b',"type":'
                + orjson.dumps(message_type)
                + b',"data":'
                + (outcome.json if outcome.json is not None else b"null")
                + b"}"
            )
            return frame, True
        self.state.metrics.count_ipc_error(self.entry.name)  # the admin page's errors
        frame = self._error_frame(msg_id, message_type, err.code, err.message, err.details)
        return frame, err.code not in _NOT_REMEMBERED

    def _schedule(
        self, ws: WebSocket, coro: Coroutine[Any, Any, None], message_type: str
    ) -> Awaitable[None] | None:
        """Run a forward in the connection's order, or beside it (``concurrent`` types,
        ``per_connection`` > 1)."""
        if message_type in self.concurrent:
            self.state.spawn(coro)  # the handler opted out of per-connection ordering
            return None
        limit = self.route.per_connection
        if limit <= 1:
            return coro  # awaited before the connection's next message: arrival order
        running = self._concurrent.get(ws.id, 0)
        self._concurrent[ws.id] = running + 1
        if running + 1 < limit:
            self.state.spawn(coro)
            return None
        return coro  # at the limit: the next message waits for this one

    async def _forward(
        self, ws: WebSocket, raw: bytes, message_type: str, msg_id: Any, binary: bool = False
    ) -> None:
        try:
            if msg_id is None or message_type in self.not_idempotent:
                frame, _ = await self._answer(ws, raw, message_type, msg_id, binary)
            else:
                frame = await self._answer_once(ws, raw, message_type, msg_id)
            if frame is not None:
                self._send_text(ws, frame)
        finally:
            if self.route.per_connection > 1:
                left = self._concurrent.get(ws.id, 1) - 1
                if left:
                    self._concurrent[ws.id] = left
                else:
                    self._concurrent.pop(ws.id, None)

    def _replay_key(
        self, ws: WebSocket, raw: bytes, msg_id: Any
    ) -> tuple[tuple[str, str | int, Any], int]:
        """A message's key in the replay cache and its digest. Anonymous: the connection
        (a reconnection is a new one); else the user, on any of their connections to
        this node."""
        who: str | int = ws.user_id if ws.user_id is not None else ws.id
        return (self.route.path, who, msg_id), hash(raw)

    async def _answer_once(
        self, ws: WebSocket, raw: bytes, message_type: str, msg_id: Any
    ) -> bytes | None:
        """The ack of a message with an id, from the replay cache when it is a repeat.

        Claimed before the first await: of two copies arriving together (two
        connections of one user), exactly one runs.
        """
        replay = self.replay
        key, digest = self._replay_key(ws, raw, msg_id)
        while True:
            found = replay.claim(key, digest)
            if found is None:
                break
            answer = found if isinstance(found, bytes) else await asyncio.shield(found)
            if answer is not None:
                self.state.metrics.ws_replayed_acks += 1
                return answer
            # The first gave up without an answer (cancelled): claim again.
        frame: bytes | None = None
        remember = False
        try:
            frame, remember = await self._answer(ws, raw, message_type, msg_id)
        finally:
            replay.finish(key, digest, frame, remember)
        return frame

    async def _answer(
        self, ws: WebSocket, raw: bytes, message_type: str, msg_id: Any, binary: bool = False
    ) -> tuple[bytes | None, bool]:
        """Forward to a worker and wait: the frame to send and whether a repeat may be
        told the same (see ``_ack``)."""
        outcome: Outcome
        try:
            outcome = await self.entry.call(self._request(ws, raw, message_type, binary))
        except ServiceError as err:
            outcome = err
        return self._ack(msg_id, message_type, outcome)

    # ---------------------------------------------------------- rate limits
    def on_rate_limited(self, ws: WebSocket, data: str | bytes, retry_after: float) -> None:
        """Over the connection's message rate: a RATE_LIMITED error with its id and type;
        without a readable id, counted in the next ``linkd.rate_limited`` report (one
        per episode, not an answer per message: a flood would double itself)."""
        try:
            envelope = orjson.loads(data)
        except orjson.JSONDecodeError:
            envelope = None
        if type(envelope) is dict and type(envelope.get("id")) in (str, int):
            message_type = envelope.get("type")
            if type(message_type) is not str:
                message_type = None
            self._rate_limited_event(ws, envelope["id"], message_type, retry_after)
        else:
            ws.note_dropped(retry_after)

    def _rate_limited_event(
        self, ws: WebSocket, msg_id: Any, message_type: str | None, retry_after: float
    ) -> None:
        self._error_event(
            ws,
            msg_id,
            message_type,
            ErrorCode.RATE_LIMITED,
            "too many messages",
            retry_after=retry_after,
        )

    def _error_event(
        self,
        ws: WebSocket,
        msg_id: Any,
        message_type: str | None,
        code: ErrorCode,
        message: str,
        details: bytes | None = None,
        retry_after: float | None = None,
    ) -> None:
        self._send_text(
            ws, self._error_frame(msg_id, message_type, code, message, details, retry_after)
        )

    @staticmethod
    def _error_frame(
        msg_id: Any,
        message_type: str | None,
        code: ErrorCode,
        message: str,
        details: bytes | None = None,
        retry_after: float | None = None,
    ) -> bytes:
        frame = b"{"
        if msg_id is not None:
            frame += b'"id":' + orjson.dumps(msg_id) + b","
        frame += b'"type":' + orjson.dumps(message_type if message_type is not None else "error")
        error = _error_json(ServiceError(code, message, details), retry_after)
        return frame + b',"error":' + error + b"}"

    def _send_text(self, ws: WebSocket, payload: bytes) -> None:
        threshold = self.state.limits.compression_threshold
        ws.send_prepared(OutboundMessage(payload, text=True, compression_threshold=threshold))

    # ----------------------------------------------------------- disconnect
    def on_disconnect(self, ws: WebSocket, code: int) -> None:
        self._concurrent.pop(ws.id, None)
        if self.route.on_disconnect:
            self.entry.notify(
                m.Disconnect(conn=ws.id, code=code, rooms=ws.left_rooms, auth=ws.auth)
            )


def mount_service(state: Host, entry: ServiceEntry) -> list[Callable[[], None]]:
    """Mount a service's routes on the engine; returns the functions that unmount them.

    Raises:
        RouteConflict: a route or the WebSocket path is taken (nothing is mounted).
    """
    routes = state.routes
    reg = entry.registration
    undo: list[Callable[[], None]] = []
    try:
        for route in reg.http:
            action = ServiceHttpAction(state, entry, route)
            routes.http.add(route.method, route.path, action)
            undo.append(lambda a=action: routes.http.remove_target(a))  # type: ignore[misc]
        if reg.ws is not None:
            routes.add_websocket(reg.ws.path, ServiceWsEndpoint(state, entry, reg.ws))
            path = reg.ws.path

            def unmount_ws() -> None:
                routes.websocket.pop(path, None)

            undo.append(unmount_ws)
    except ValueError:
        for fn in undo:
            fn()
        raise
    return undo


def _message(
    request_id: int, ws: WebSocket, auth: Any, raw: bytes, type: str, binary: bool
) -> m.Message:
    """The IPC ``Message`` of a WebSocket message (``auth``: as it was when it came)."""
    remote = ws.remote
    return m.Message(
        id=request_id,
        conn=ws.id,
        type=type,
        json=b"" if binary else raw,
        auth=auth,
        remote=f"{remote[0]}:{remote[1]}" if remote else None,
        binary=raw if binary else None,
    )


class _Forwarded:
    """One message forwarded by callback (``ServiceWsEndpoint._forward_now``): what its
    request is made of and what its answer does, in one object.

    Two closures did this before, at a cell per name they captured: about fifteen
    objects the garbage collector tracks per message in flight, which under a deep
    queue (the chat bench at saturation, acks at 0.7 s) all lived long enough to reach
    the old generation and set off a full collection every second or two. Here: this
    object, its two bound methods and its ``Completion``.
    """

    __slots__ = (
        "auth",
        "binary",
        "completion",
        "digest",
        "endpoint",
        "key",
        "message_type",
        "msg_id",
        "raw",
        "ws",
    )

    def __init__(
        self,
        endpoint: ServiceWsEndpoint,
        ws: WebSocket,
        raw: bytes,
        message_type: str,
        msg_id: Any,
        binary: bool,
        key: tuple[str, str | int, Any] | None,
        digest: int,
    ) -> None:
        self.endpoint = endpoint
        self.ws = ws
        self.raw = raw
        self.message_type = message_type
        self.msg_id = msg_id
        self.binary = binary
        self.key = key
        self.digest = digest
        self.auth = ws.auth  # as it was when the message came (a refresh may follow)
        self.completion = Completion()

    def make(self, request_id: int) -> m.Message:
        return _message(request_id, self.ws, self.auth, self.raw, self.message_type, self.binary)

    def done(self, outcome: Outcome) -> None:
        endpoint = self.endpoint
        ws = self.ws
        try:
            frame, remember = endpoint._ack(self.msg_id, self.message_type, outcome)
            if self.key is not None:
                endpoint.replay.finish(self.key, self.digest, frame, remember)
            if frame is not None:
                endpoint._send_text(ws, frame)
        except Exception:  # our bug: this connection pays, not the worker's link
            log.exception("ws %d: answering %s failed", ws.id, self.message_type)
            ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self.completion.finish()
