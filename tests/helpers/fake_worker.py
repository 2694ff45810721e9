"""A hand-written service worker on the engine's real IPC socket, for engine tests.

It speaks the protocol through ``IpcConn(Role.WORKER)`` (so what it sends is checked
like a real worker's), but can also write anything at all (``send_unchecked``,
``send_raw``) and drop the socket without a goodbye (``abort``), so tests can assert
how the engine treats a misbehaving worker.

    async with FakeWorker(path, Registration("chat", http=[...])) as worker:
        worker.on("http", handler)          # async (worker, request) -> Reply | None
        await worker.start()                # connect, hello, welcome, read loop
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeAlias

import orjson

from protocol.ipc import PROTOCOL_VERSION, IpcConn, IpcProtocolError, Role, encode, encode_frame
from protocol.ipc import messages as m

__all__ = ["FakeWorker", "Handler", "Request", "reply_json", "short_socket_path"]

Request: TypeAlias = m.HttpRequest | m.Connect | m.Message
#: ``async def handler(worker, request) -> Reply | None``; None: no reply is sent
#: (the handler replied itself, or stalls on purpose).
Handler: TypeAlias = Callable[["FakeWorker", Any], Awaitable[m.Reply | None]]

# Unix socket paths are limited to 107 bytes (sun_path).
_MAX_SOCKET_PATH = 100


def short_socket_path(tmp_path: Path, name: str = "l.sock") -> str:
    """``tmp_path / name``, or a fresh directory under /tmp when that is too long."""
    path = str(tmp_path / name)
    if len(path.encode()) <= _MAX_SOCKET_PATH:
        return path
    return str(Path(tempfile.mkdtemp(prefix="ipc", dir="/tmp")) / name)


def reply_json(request: Request, value: Any) -> m.Reply:
    """A reply whose result is ``value`` as JSON text."""
    return m.Reply(request.id, json=orjson.dumps(value))


async def _default_handler(worker: FakeWorker, request: Request) -> m.Reply:
    return m.Reply(request.id)


class FakeWorker:
    """One worker connection.

    Args:
        path: the engine's IPC socket.
        registration: what the hello announces.
        versions: protocol versions announced (default ``[1]``).
        answer_pings: answer the engine's heartbeat pings with pongs.
        pid: the pid announced in the hello.
        max_frame: the ``max_frame`` announced in the hello.
        close_on_drain: close the socket when the engine sends ``drain`` (as a real
            worker does once its requests in flight are answered).
    """

    def __init__(
        self,
        path: str,
        registration: m.Registration,
        *,
        versions: list[int] | None = None,
        answer_pings: bool = True,
        pid: int = 4242,
        max_frame: int = 8 * 1024 * 1024,
        close_on_drain: bool = False,
    ) -> None:
        self.path = path
        self.registration = registration
        self.versions = [PROTOCOL_VERSION] if versions is None else versions
        self.answer_pings = answer_pings
        self.close_on_drain = close_on_drain
        self.pid = pid
        self.conn = IpcConn(Role.WORKER, max_frame)
        #: Handlers by request type (``"http"``, ``"connect"``, ``"message"``) or, for
        #: messages, by ``"message:<client type>"`` (checked first).
        self.handlers: dict[str, Handler] = {}
        #: Every request received, in arrival order.
        self.requests: list[Request] = []
        #: Every message received that is neither a request nor a ping/result.
        self.notifications: asyncio.Queue[Any] = asyncio.Queue()
        #: The engine's answer to our hello.
        self.welcome: m.Welcome | None = None
        self.reject: m.Reject | None = None
        #: Set once the engine closed (or reset) the socket, or we did.
        self.closed = asyncio.Event()
        #: What the engine sent that our IpcConn refused, if anything.
        self.protocol_error: IpcProtocolError | None = None
        #: Exceptions raised by handlers (re-raised by ``close``).
        self.handler_errors: list[BaseException] = []
        self.pings = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._answered: asyncio.Future[m.Welcome | m.Reject | None] | None = None
        self._read_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._queries: dict[int, asyncio.Future[m.Result]] = {}
        self._next_query = 0
        self._arrived = asyncio.Event()

    # ------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> FakeWorker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(raise_handler_errors=exc == (None, None, None))

    async def connect(self) -> None:
        """Open the socket and start reading; sends nothing."""
        self.reader, self.writer = await asyncio.open_unix_connection(self.path)
        self._answered = asyncio.get_running_loop().create_future()
        self._read_task = asyncio.create_task(self._read_loop())

    async def hello(self, timeout: float = 2.0) -> m.Welcome | m.Reject | None:  # noqa: ASYNC109
        """Send the hello; the engine's answer, or None if it closed without one."""
        hello = m.Hello(
            versions=self.versions,
            service=self.registration,
            pid=self.pid,
            max_frame=self.conn.max_frame,
        )
        self.send(hello)
        assert self._answered is not None
        return await asyncio.wait_for(asyncio.shield(self._answered), timeout)

    async def start(self, timeout: float = 2.0) -> m.Welcome:  # noqa: ASYNC109
        """Connect and register; fails the test unless the engine welcomes us."""
        await self.connect()
        answer = await self.hello(timeout)
        if not isinstance(answer, m.Welcome):
            raise AssertionError(f"expected a welcome, got {answer!r}")
        return answer

    def on(self, kind: str, handler: Handler) -> None:
        """Handle requests of ``kind``: ``http``, ``connect``, ``message`` or
        ``message:<client type>``."""
        self.handlers[kind] = handler

    def abort(self) -> None:
        """Drop the socket at once (a crashed worker)."""
        if self.writer is not None:
            self.writer.transport.abort()

    async def close(self, *, raise_handler_errors: bool = True) -> None:
        """Close the socket, stop the read loop and handlers."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
        if self._read_task is not None:
            self._read_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._read_task
        self.closed.set()
        if raise_handler_errors and self.handler_errors:
            raise self.handler_errors[0]

    async def wait_closed(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Wait until the engine closes the socket."""
        await asyncio.wait_for(self.closed.wait(), timeout)

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    # -------------------------------------------------------------- sending
    def send(self, msg: Any) -> None:
        """Send one message through the worker's state machine."""
        self.send_raw(self.conn.send(msg))

    def send_unchecked(self, msg: Any) -> None:
        """Encode and frame ``msg`` without asking the state machine (rule breaking)."""
        self.send_raw(encode_frame(encode(msg)))

    def send_raw(self, data: bytes) -> None:
        assert self.writer is not None, "not connected"
        self.writer.write(data)

    async def query(
        self,
        what: str,
        *,
        conn: int | None = None,
        room: str | None = None,
        timeout: float = 2.0,  # noqa: ASYNC109
    ) -> m.Result:
        """Ask the engine; returns its ``result``."""
        self._next_query += 1
        query_id = self._next_query
        future: asyncio.Future[m.Result] = asyncio.get_running_loop().create_future()
        self._queries[query_id] = future
        self.send(m.Query(query_id, what, conn=conn, room=room))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._queries.pop(query_id, None)

    # -------------------------------------------------------------- waiting
    async def wait_requests(self, n: int, timeout: float = 2.0) -> list[Request]:  # noqa: ASYNC109
        """Wait until ``n`` requests in all have arrived; returns them all."""
        async with asyncio.timeout(timeout):
            while len(self.requests) < n:
                self._arrived.clear()
                await self._arrived.wait()
        return self.requests

    async def next_notification(self, timeout: float = 2.0) -> Any:  # noqa: ASYNC109
        return await asyncio.wait_for(self.notifications.get(), timeout)

    # -------------------------------------------------------------- reading
    async def _read_loop(self) -> None:
        assert self.reader is not None
        try:
            while True:
                try:
                    data = await self.reader.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    return
                self.conn.receive_data(data)
                while True:
                    try:
                        msg = self.conn.next_message()
                    except IpcProtocolError as exc:
                        self.protocol_error = exc
                        return
                    if msg is None:
                        break
                    self._dispatch(msg)
        finally:
            self.closed.set()
            self._arrived.set()
            if self._answered is not None and not self._answered.done():
                self._answered.set_result(None)

    def _dispatch(self, msg: Any) -> None:
        if isinstance(msg, m.Welcome | m.Reject):
            if isinstance(msg, m.Welcome):
                self.welcome = msg
            else:
                self.reject = msg
            assert self._answered is not None
            if not self._answered.done():
                self._answered.set_result(msg)
        elif isinstance(msg, m.Ping):
            self.pings += 1
            if self.answer_pings and not self.is_closed:
                self.send(m.Pong(msg.n))
        elif isinstance(msg, m.Result):
            future = self._queries.get(msg.id)
            if future is not None and not future.done():
                future.set_result(msg)
        elif isinstance(msg, m.HttpRequest | m.Connect | m.Message):
            self.requests.append(msg)
            self._arrived.set()
            handler = None
            if isinstance(msg, m.Message):
                handler = self.handlers.get(f"message:{msg.type}")
            handler = handler or self.handlers.get(msg.TYPE, _default_handler)
            task = asyncio.create_task(self._handle(handler, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.notifications.put_nowait(msg)
            if isinstance(msg, m.Drain) and self.close_on_drain:
                task = asyncio.create_task(self._close_when_idle())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _close_when_idle(self) -> None:
        current = asyncio.current_task()
        handlers = [t for t in self._tasks if t is not current]
        await asyncio.gather(*handlers, return_exceptions=True)
        assert self.writer is not None
        self.writer.close()

    async def _handle(self, handler: Handler, request: Request) -> None:
        try:
            reply = await handler(self, request)
            if reply is not None and not self.is_closed:
                self.send(reply)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.handler_errors.append(exc)
