"""FakeEngine: the engine side of the IPC, in process, for testing services and the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import orjson

from protocol.ipc import IpcConn, IpcProtocolError, Role
from protocol.ipc import messages as m

from .response import UNSET

__all__ = ["EnginePeer", "FakeEngine"]

T = TypeVar("T")

#: How long the helpers wait for the worker (wrap a call in asyncio.timeout for less).
WAIT = 5.0


class FakeEngine:
    """Listens on a Unix socket like the engine and welcomes (or rejects) workers.

    Args:
        path: the socket path.
        heartbeat: announced in welcome (the fake itself never pings on its own).
        reject: ``(code, message)`` to reject every hello instead.
        answer_pings: answer the worker's pings (False simulates a hung engine).
    """

    def __init__(
        self,
        path: str,
        *,
        heartbeat: float = 30.0,
        max_frame: int = 8 * 1024 * 1024,
        reject: tuple[str, str] | None = None,
        answer_pings: bool = True,
    ) -> None:
        self.path = path
        self.heartbeat = heartbeat
        self.max_frame = max_frame
        self.reject = reject
        self.answer_pings = answer_pings
        self.peers: list[EnginePeer] = []
        #: Hellos of rejected workers.
        self.rejected: list[m.Hello] = []
        self._server: asyncio.Server | None = None
        self._welcomed: asyncio.Queue[EnginePeer] = asyncio.Queue()
        self._ids = itertools.count(1)

    async def start(self) -> FakeEngine:
        self._server = await asyncio.start_unix_server(self._accept, self.path)
        return self

    async def close(self) -> None:
        """Stop listening and drop every worker connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for peer in self.peers:
            peer.abort()
        for peer in self.peers:
            await peer.wait_closed()

    async def __aenter__(self) -> FakeEngine:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def worker(self) -> EnginePeer:
        """The next worker that completes its handshake."""
        async with asyncio.timeout(WAIT):
            return await self._welcomed.get()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = EnginePeer(self, reader, writer, next(self._ids))
        self.peers.append(peer)
        await peer.serve()


class EnginePeer:
    """The engine's view of one worker connection: send requests, see what it sent."""

    def __init__(
        self,
        engine: FakeEngine,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        number: int,
    ) -> None:
        self.engine = engine
        self.reader = reader
        self.writer = writer
        self.number = number
        self.conn = IpcConn(Role.ENGINE, max_frame=engine.max_frame)
        self.hello: m.Hello | None = None
        #: Every message received after the hello, in order.
        self.received: list[Any] = []
        #: Rooms per connection, from the worker's join/leave commands.
        self.rooms: dict[int, set[str]] = {}
        #: The identity (``userId``, ``username``) of each ``connect``ed connection.
        self.users: dict[int, tuple[str, str | None]] = {}
        #: Users the ``online`` query reports online (``presence()`` keeps it current).
        self.online: set[str] = set()
        #: The protocol error that ended the connection, if any.
        self.error: IpcProtocolError | None = None
        self._replies: dict[int, asyncio.Future[m.Reply]] = {}
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def serve(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.conn.receive_data(data)
                while (msg := self.conn.next_message()) is not None:
                    self._on_message(msg)
        except IpcProtocolError as exc:
            self.error = exc
        except OSError:
            pass
        finally:
            self.conn.close()
            for future in self._replies.values():
                if not future.done():
                    future.set_exception(ConnectionError("worker disconnected"))
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self._closed.set()
            self._changed.set()

    def _on_message(self, msg: Any) -> None:
        if isinstance(msg, m.Hello):
            self.hello = msg
            if self.engine.reject is not None:
                code, text = self.engine.reject
                self.engine.rejected.append(msg)
                self.send(m.Reject(code=code, message=text))
                self.writer.close()
                return
            self.send(
                m.Welcome(
                    version=m.PROTOCOL_VERSION,
                    worker=self.number,
                    max_frame=self.engine.max_frame,
                    heartbeat=self.engine.heartbeat,
                )
            )
            self.engine._welcomed.put_nowait(self)
            return
        self.received.append(msg)
        self._changed.set()
        if isinstance(msg, m.Reply):
            future = self._replies.pop(msg.id, None)
            if future is not None and not future.done():
                future.set_result(msg)
        elif isinstance(msg, m.Join):
            self.rooms.setdefault(msg.conn, set()).add(msg.room)
        elif isinstance(msg, m.Leave):
            self.rooms.get(msg.conn, set()).discard(msg.room)
        elif isinstance(msg, m.Query):
            self.send(self._answer(msg))
        elif isinstance(msg, m.Ping) and self.engine.answer_pings:
            self.send(m.Pong(n=msg.n))

    def _answer(self, query: m.Query) -> m.Result:
        if query.what == "rooms" and query.conn is not None:
            value: Any = sorted(self.rooms.get(query.conn, ()))
        elif query.what == "members" and query.room is not None:
            value = sorted(c for c, rooms in self.rooms.items() if query.room in rooms)
        elif query.what == "presence" and query.room is not None:
            counts: dict[str, dict[str, Any]] = {}
            for c, rooms in self.rooms.items():
                if query.room in rooms and c in self.users:
                    user, name = self.users[c]
                    entry = counts.setdefault(
                        user, {"userId": user, "username": name, "connections": 0}
                    )
                    entry["connections"] += 1
            value = [counts[u] for u in sorted(counts)]
        elif query.what == "online" and query.user is not None:
            value = query.user in self.online
        else:
            info = m.ErrorInfo(code="BAD_REQUEST", message=f"bad query {query.what!r}")
            return m.Result(id=query.id, error=info)
        return m.Result(id=query.id, json=orjson.dumps(value))

    # ---------------------------------------------------------------- sending
    def send(self, msg: Any) -> None:
        self.writer.write(self.conn.send(msg))

    def abort(self) -> None:
        """Drop the connection without a word (an engine crash)."""
        self.writer.transport.abort()

    async def wait_closed(self) -> None:
        async with asyncio.timeout(WAIT):
            await self._closed.wait()

    def next_id(self) -> int:
        return next(self._ids)

    def start(self, make: Callable[[int], Any]) -> asyncio.Future[m.Reply]:
        """Send the request ``make(id)`` now; the future resolves to its reply."""
        request_id = self.next_id()
        future: asyncio.Future[m.Reply] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        self.send(make(request_id))
        return future

    async def request(self, make: Callable[[int], Any]) -> m.Reply:
        """Send a request and wait for its reply."""
        async with asyncio.timeout(WAIT):
            return await self.start(make)

    async def http(
        self,
        action: str,
        *,
        method: str = "GET",
        path: str = "/",
        params: dict[str, str] | None = None,
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        json: Any = UNSET,
        remote: str | None = None,
        auth: Any = None,
    ) -> m.Reply:
        """An HTTP request for ``action``; ``json=value`` sends it as an
        ``application/json`` body (``ctx.body`` is then the value)."""
        headers = list(headers or [])
        if json is not UNSET:
            body = orjson.dumps(json)
            headers.append(("content-type", "application/json"))
        return await self.request(
            lambda i: m.HttpRequest(
                id=i,
                action=action,
                method=method,
                path=path,
                params=params or {},
                query=query,
                headers=headers,
                body=body,
                remote=remote,
                auth=auth,
            )
        )

    def message_request(
        self, conn: int, type: str, data: Any = None, *, client_id: Any = "1", auth: Any = None
    ) -> Callable[[int], m.Message]:
        frame: dict[str, Any] = {"type": type, "data": data}
        if client_id is not None:
            frame["id"] = client_id
        text = orjson.dumps(frame)
        return lambda i: m.Message(id=i, conn=conn, type=type, json=text, auth=auth)

    async def message(
        self, conn: int, type: str, data: Any = None, *, client_id: Any = "1", auth: Any = None
    ) -> m.Reply:
        """A client's ``{"type", "data", "id"}`` frame on connection ``conn``."""
        return await self.request(
            self.message_request(conn, type, data, client_id=client_id, auth=auth)
        )

    async def connect(
        self,
        conn: int,
        *,
        path: str = "/ws",
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        remote: str | None = None,
        auth: Any = None,
    ) -> m.Reply:
        if isinstance(auth, dict) and isinstance(auth.get("userId"), str):
            self.users[conn] = (auth["userId"], auth.get("username"))
        return await self.request(
            lambda i: m.Connect(
                id=i,
                conn=conn,
                path=path,
                query=query,
                headers=headers or [],
                remote=remote,
                auth=auth,
            )
        )

    def presence(self, user: str, online: bool, username: str | None = None) -> None:
        """Tell the worker ``user`` came online or went offline (a notification)."""
        if online:
            self.online.add(user)
        else:
            self.online.discard(user)
        self.send(m.Presence(user=user, online=online, username=username))

    # --------------------------------------------------------------- waiting
    async def wait_for(self, predicate: Callable[[Any], bool]) -> Any:
        """The first received message (old or new) matching ``predicate``."""
        async with asyncio.timeout(WAIT):
            while True:
                for msg in self.received:
                    if predicate(msg):
                        return msg
                if self.closed:
                    raise ConnectionError("worker disconnected")
                self._changed.clear()
                await self._changed.wait()

    async def wait_type(self, kind: type[T]) -> T:
        msg = await self.wait_for(lambda x: isinstance(x, kind))
        assert isinstance(msg, kind)
        return msg
