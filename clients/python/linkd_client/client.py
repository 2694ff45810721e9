"""The connection loop of the Python client: connect, read, dispatch, reconnect.

Built on the ``websockets`` asyncio client; it never imports the engine or the SDK.
See docs/clients.md.

    async with Client("ws://localhost:3000/ws/chat", token=fetch_token) as client:
        client.on("chat.message", show)
        await client.request("chat.join", {"room": room_id})
        async for event in client.events():
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .backoff import Backoff
from .errors import ClientError, ConnectionLostError
from .events import (
    ClientStats,
    Event,
    EventStream,
    Handler,
    RecoveredCallback,
    State,
    StateCallback,
)
from .positions import Positions
from .tokens import refresh_delay, token_expiry

__all__ = ["Client", "RefreshSource", "TokenSource"]

logger = logging.getLogger("linkd.client")

TokenSource: TypeAlias = str | Callable[[], str | Awaitable[str]] | None
RefreshSource: TypeAlias = Callable[[], str | Awaitable[str]] | None

#: HTTP statuses of a refused upgrade that another attempt will not change.
_FATAL_STATUS = frozenset({400, 404, 405, 426})
_POLICY_STATUS = frozenset({401, 403})


class Client:
    """A connection to a Linkd WebSocket endpoint that stays up until ``close()``.

    Args:
        url: ``ws://`` or ``wss://`` URL of the endpoint (a query string is kept).
        token: a JWT, or a function (sync or async) returning one, called before every
            connection attempt; sent as ``Authorization: Bearer``.
        refresh_token: a function (sync or async) returning a new JWT of the same user:
            called ``refresh_before`` seconds before the current token's ``exp`` (read
            from the token, not verified), and the new token is sent as
            ``linkd.refresh`` on the open connection (rooms and positions stay). A
            refused refresh is retried until the token expires; a reconnection after a
            refresh uses the refreshed token when ``token`` is a string.
        refresh_before: seconds before ``exp`` to refresh (halfway for a token that
            lives shorter than twice that).
        recover: ask for the events missed while disconnected (docs/recovery.md).
        backoff: delays between reconnection attempts.
        request_timeout: default seconds ``request`` waits for its ack.
        max_queue: events buffered per ``events()`` iterator; when one is full the
            client stops reading the socket until it is read (None: unbounded).
        reconnect_on_policy_close: reconnect after a 1008 or 4000-4999 close or a
            401/403 refusal too (a token source may have a better token by then).
        connect_options: extra keyword arguments for ``websockets.asyncio.client.connect``
            (``ssl``, ``compression``, ``ping_interval``, ``proxy``, ``open_timeout``...).
    """

    def __init__(
        self,
        url: str,
        *,
        token: TokenSource = None,
        refresh_token: RefreshSource = None,
        refresh_before: float = 30.0,
        recover: bool = True,
        backoff: Backoff | None = None,
        request_timeout: float = 10.0,
        max_queue: int | None = 1024,
        reconnect_on_policy_close: bool = False,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.recover = recover
        self.backoff = backoff or Backoff()
        self.request_timeout = request_timeout
        self.reconnect_on_policy_close = reconnect_on_policy_close
        self.stats = ClientStats()
        #: Close code of the last connection (None: it ended without a close frame).
        self.close_code: int | None = None
        #: Why the client stopped reconnecting, when it gave up on an error.
        self.last_error: BaseException | None = None
        self._token = token
        self.refresh_token = refresh_token
        self.refresh_before = refresh_before
        #: The token the open connection is authenticated with (None: anonymous).
        self.current_token: str | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._max_queue = max_queue or 0
        self._connect_options = dict(connect_options or {})
        self._state: State = "closed"
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._ids = itertools.count(1)
        # Ids unique to this client, not only to its connection: the engine answers a
        # repeated id of the same user from memory (docs/clients.md, "Retrying a
        # request"), and two clients of one user both counting from 1 would collide.
        self._id_prefix = f"c{secrets.token_hex(4)}."
        self._pending: dict[str, asyncio.Future[Event]] = {}
        self._handlers: dict[str, list[Handler]] = {}
        self._binary_handlers: list[Callable[[bytes], Awaitable[None] | None]] = []
        self._state_callbacks: list[StateCallback] = []
        self._recovered_callbacks: list[RecoveredCallback] = []
        self._streams: set[EventStream] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        #: Where this client is in each recoverable stream (what a reconnection asks for).
        self._positions = Positions()
        self._open_event = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    @property
    def state(self) -> State:
        return self._state

    async def connect(self) -> None:
        """Open the connection; it is then kept open (reconnecting) until ``close()``.

        Raises:
            OSError, TimeoutError, websockets.exceptions.InvalidHandshake: the first
                attempt failed (no retry: a wrong URL or token should surface at once).
        """
        if self._task is not None and not self._task.done():
            raise RuntimeError("the client is already connected")
        self._closing = False
        self.last_error = None
        self._set_state("connecting")
        try:
            ws = await self._open()
        except BaseException:
            self._set_state("closed")
            raise
        self._task = asyncio.create_task(self._run(ws))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good: no reconnection; waiting requests raise ConnectionLostError."""
        self._closing = True
        if self._ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._ws.close(code, reason)
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for pending in list(self._tasks):
            if pending is not asyncio.current_task():
                pending.cancel()
        self._finish()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_open(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the connection is open (TimeoutError after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            await self._open_event.wait()

    # ------------------------------------------------------------------ messages
    async def request(
        self,
        type: str,
        data: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        id: str | None = None,
    ) -> Any:
        """Send ``{"type", "data", "id"}`` and return the data of its ack.

        ``id``: the message id (default: a new one). Sending a request again with the
        same id after a ``ConnectionLostError`` is a retry: the engine answers it from
        memory if the first one was handled (docs/clients.md, "Retrying a request").

        Raises:
            ClientError: the ack carries an error.
            TimeoutError: no ack within ``timeout`` (default ``request_timeout``) seconds.
            ConnectionLostError: not connected, or the connection closed before the ack;
                the request is not resent after a reconnection.
            ValueError: a request with this ``id`` is still waiting for its ack.
        """
        ws = self._connection()
        msg_id = id if id is not None else f"{self._id_prefix}{next(self._ids)}"
        if msg_id in self._pending:
            raise ValueError(f"a request with id {msg_id!r} is already waiting for its ack")
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        try:
            await ws.send(orjson.dumps({"type": type, "data": data, "id": msg_id}).decode())
            async with asyncio.timeout(self.request_timeout if timeout is None else timeout):
                ack = await future
        except ConnectionClosed as exc:
            raise ConnectionLostError(f"the connection closed before the ack of {type}") from exc
        finally:
            self._pending.pop(msg_id, None)
        error = ack.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ClientError("INTERNAL", str(error))
            code, message = str(error.get("code")), str(error.get("message", ""))
            raise ClientError(code, message, error.get("details"), error)
        return ack.get("data")

    async def refresh(self, token: str | None = None) -> float | None:
        """Replace the open connection's token (``linkd.refresh``, docs/clients.md):
        ``token``, or a new one from ``refresh_token``. Returns the new expiry (UNIX
        seconds, None for a token without one).

        Raises:
            ClientError: refused (``UNAUTHORIZED``, ``FORBIDDEN``: another user,
                ``RATE_LIMITED``); the connection keeps its old token.
            ConnectionLostError, TimeoutError: as ``request``.
        """
        if token is None:
            if self.refresh_token is None:
                raise ValueError("no token given and no refresh_token callback")
            fresh = self.refresh_token()
            token = await fresh if inspect.isawaitable(fresh) else fresh
        data = await self.request("linkd.refresh", {"token": token})
        self.current_token = token
        if isinstance(self._token, str):
            self._token = token  # a reconnection presents the newest token
        expires = data.get("expiresAt") if isinstance(data, dict) else None
        return float(expires) if isinstance(expires, int | float) else None

    async def send(self, type: str, data: Any = None) -> None:
        """Send ``{"type", "data"}`` without asking for an ack.

        Raises:
            ConnectionLostError: not connected.
        """
        try:
            await self._connection().send(orjson.dumps({"type": type, "data": data}).decode())
        except ConnectionClosed as exc:
            raise ConnectionLostError("the connection closed") from exc

    async def send_binary(self, data: bytes) -> None:
        """Send one binary frame (to a service with an ``on_binary`` handler; no ack).

        Raises:
            ConnectionLostError: not connected.
        """
        try:
            await self._connection().send(bytes(data))
        except ConnectionClosed as exc:
            raise ConnectionLostError("the connection closed") from exc

    def on_binary(self, handler: Callable[[bytes], Awaitable[None] | None]) -> Callable[[], None]:
        """Call ``handler(data)`` for each binary frame received (a service's emit of
        bytes: not an event, not numbered). Returns a remover."""
        self._binary_handlers.append(handler)
        return lambda: _discard(self._binary_handlers, handler)

    def on(self, type: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(event)`` for each event of ``type`` (``"*"``: every event).

        A sync handler runs in the reader, in arrival order; an async one runs as a task
        started in arrival order. Returns a function that removes the handler.
        """
        handlers = self._handlers.setdefault(type, [])
        handlers.append(handler)
        return lambda: _discard(handlers, handler)

    def on_state(self, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(state)`` at each state change; returns a remover."""
        self._state_callbacks.append(callback)
        return lambda: _discard(self._state_callbacks, callback)

    def on_recovered(self, callback: RecoveredCallback) -> Callable[[], None]:
        """Call ``callback(stream, recovered)`` for each ``linkd.recovered`` verdict.

        ``recovered`` False: events may be missing; fetch the stream's history from the
        service. Returns a remover.
        """
        self._recovered_callbacks.append(callback)
        return lambda: _discard(self._recovered_callbacks, callback)

    def events(self) -> EventStream:
        """Every event from now on, across reconnections, until the client closes.

        Use ``async for event in client.events()``; ``aclose()`` it (or use it as
        ``async with``) when you stop reading before the client closes.
        """
        stream = EventStream(self._streams, self._max_queue)
        self._streams.add(stream)
        return stream

    # ------------------------------------------------------------------ positions
    def positions(self) -> dict[str, Any]:
        """What the next reconnection asks to recover: ``{"rooms": {room: [epoch, seq]},
        "user": [epoch, seq]}`` (``user`` only once a user event arrived)."""
        return self._positions.as_dict()

    def forget(self, room: str) -> None:
        """Drop the position of ``room`` (after leaving it: nothing to recover there)."""
        self._positions.forget(room)

    def recover_param(self) -> str | None:
        """The ``recover`` query value for ``positions()``; None when there is none."""
        return self._positions.recover_param()

    def _connect_url(self) -> str:
        param = self.recover_param() if self.recover else None
        if param is None:
            return self.url
        parts = urlsplit(self.url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        query = [(k, v) for k, v in query if k != "recover"] + [("recover", param)]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def _track(self, event: Event) -> bool:
        """Advance the position of the event's stream; False for a duplicate."""
        seen = self._positions.track(event)
        if seen is None:
            return True
        if seen[0] == "gap":
            self.stats.gaps += 1
            logger.warning("events missing before %s seq %s", seen[1], event.get("seq"))
        elif seen[0] == "duplicate":
            self.stats.duplicates += 1
        return seen[0] != "duplicate"

    def _verdict(self, data: Any) -> None:
        """Apply a ``linkd.recovered`` verdict and tell the callbacks."""
        verdict = self._positions.verdict(data)
        if verdict is None:
            return
        stream, recovered = verdict
        if recovered:
            self.stats.recovered += 1
        else:
            self.stats.not_recovered += 1
        for callback in list(self._recovered_callbacks):
            self._call(callback, stream, recovered)

    # ------------------------------------------------------------------ internals
    def _connection(self) -> ClientConnection:
        if self._ws is None or self._state != "open":
            raise ConnectionLostError(f"not connected (state: {self._state})")
        return self._ws

    async def _open(self) -> ClientConnection:
        token = self._token() if callable(self._token) else self._token
        if inspect.isawaitable(token):
            token = await token
        headers = {"Authorization": f"Bearer {token}"} if token else None
        ws = await connect(self._connect_url(), additional_headers=headers, **self._connect_options)
        self._ws = ws
        self.current_token = token or None
        self._set_state("open")
        if self.refresh_token is not None and token:
            self._stop_refresher()
            self._refresher = asyncio.create_task(self._refresh_loop(ws))
        return ws

    async def _refresh_loop(self, ws: ClientConnection) -> None:
        """Refresh the token of ``ws`` ahead of each expiry, while it is open."""
        while self._ws is ws and self.current_token:
            expires = token_expiry(self.current_token)
            if expires is None:
                return  # no exp: nothing will close the connection for it
            await asyncio.sleep(refresh_delay(expires, time.time(), self.refresh_before))
            if self._ws is not ws:
                return
            try:
                await self.refresh()
            except ConnectionLostError:
                return
            except Exception as exc:  # refused, timed out, or the callback failed
                left = expires - time.time()
                if left <= 0:
                    logger.warning("token refresh failed, the token expired: %s", exc)
                    return
                logger.warning("token refresh failed, retrying: %s", exc)
                await asyncio.sleep(max(1.0, min(5.0, left / 4)))

    def _stop_refresher(self) -> None:
        task, self._refresher = self._refresher, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _run(self, ws: ClientConnection) -> None:
        """Read until the connection drops, then reconnect, until told to stop."""
        loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                opened_at = loop.time()
                self.close_code = await self._read(ws)
                self._ws = None
                self._stop_refresher()
                self._fail_pending()
                if self._closing or not self._should_reconnect(self.close_code):
                    return
                if loop.time() - opened_at >= self.backoff.reset_after:
                    failures = 0
                while True:
                    self._set_state("reconnecting")
                    await asyncio.sleep(self.backoff.delay(failures))
                    failures += 1
                    try:
                        ws = await self._open()
                        break
                    except (OSError, TimeoutError, InvalidHandshake) as exc:
                        if not self._retryable(exc):
                            self.last_error = exc
                            logger.warning("not reconnecting to %s: %s", self.url, exc)
                            return
                        logger.info("reconnecting to %s failed: %s", self.url, exc)
                self.stats.reconnects += 1
        finally:
            self._finish()

    async def _read(self, ws: ClientConnection) -> int | None:
        """Handle frames until the connection closes; returns the close code received."""
        with contextlib.suppress(ConnectionClosed):
            async for raw in ws:
                await self._receive(raw)
        received = ws.protocol.close_rcvd
        return received.code if received is not None else None

    async def _receive(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):  # a binary frame: no envelope, no position
            for binary_handler in list(self._binary_handlers):
                self._call(binary_handler, raw)
            return
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.warning("dropped a frame that is not JSON")
            return
        if not isinstance(frame, dict):
            return
        msg_id = frame.get("id")
        if msg_id is not None:
            future = self._pending.get(msg_id) if isinstance(msg_id, str) else None
            if future is not None and not future.done():
                future.set_result(frame)
            return  # otherwise an ack that came after its request gave up
        if not self._track(frame):
            return
        if frame.get("type") == "linkd.recovered":
            self._verdict(frame.get("data"))
        self.stats.events += 1
        handlers = self._handlers.get(str(frame.get("type")), [])
        for handler in [*handlers, *self._handlers.get("*", [])]:
            self._call(handler, frame)
        for stream in list(self._streams):
            await stream.queue.put(frame)

    def _call(self, callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
        """Run a sync callback now, an async one as a task; log what they raise."""
        try:
            result = callback(*args)
        except Exception:
            logger.exception("client callback %r failed", callback)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("client callback failed", exc_info=task.exception())

    def _should_reconnect(self, code: int | None) -> bool:
        if code is None:  # no close frame: the network or the server went away
            return True
        if code == 1000:  # a normal closure is the server's decision to end the session
            return False
        if code == 1008 or 4000 <= code <= 4999:
            return self.reconnect_on_policy_close
        return True  # 1001 going away, 1011, 1012 restart, 1013 try again later...

    def _retryable(self, exc: BaseException) -> bool:
        if not isinstance(exc, InvalidStatus):
            return True
        status = exc.response.status_code
        if status in _POLICY_STATUS:
            return self.reconnect_on_policy_close
        return status not in _FATAL_STATUS

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLostError("the connection closed"))
        self._pending.clear()

    def _finish(self) -> None:
        self._ws = None
        self._stop_refresher()
        self._fail_pending()
        self._set_state("closed")
        # The iterators end once they have read what they hold.
        for stream in self._streams:
            stream.ended = True
            with contextlib.suppress(asyncio.QueueFull):
                stream.queue.put_nowait(None)
        self._streams.clear()

    def _set_state(self, state: State) -> None:
        if state == self._state:
            return
        self._state = state
        if state == "open":
            self._open_event.set()
        else:
            self._open_event.clear()
        for callback in list(self._state_callbacks):
            self._call(callback, state)


def _discard(items: list[Any], item: Any) -> None:
    with contextlib.suppress(ValueError):
        items.remove(item)
