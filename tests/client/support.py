"""A fake engine and a TCP proxy for the client tests.

``FakeEngine`` is a ``websockets`` server that speaks the engine's client contract as
docs/architecture.md, docs/chat.md and docs/recovery.md describe it: acks and error
acks, numbered room and user events, the ``recover`` query parameter (400 when
malformed), replays followed by a ``linkd.recovered`` verdict, and closes with any
code. It records every handshake and message so tests can assert what the client sent.

``Proxy`` sits between a client and a real engine so a test can cut the TCP
connections (no close frame, like a network failure).

Messages the fake answers (``{"type", "data", "id"}``):

| type | does |
|---|---|
| ``echo`` | acks with ``data`` |
| ``fail`` | error ack ``{code, message, details}`` from ``data`` |
| ``ignore`` | no ack |
| ``join`` ``{room}`` | joins, replays what the position asks for, then acks |
| ``emit`` ``{room, event, data}`` | emits to the room, then acks |
| ``close`` ``{code}`` | closes the connection with ``code`` |
| ``drop`` ``{emit: [[room, event, data], ...]}`` | cuts the TCP connection, then emits |
| ``repeat`` ``{room}`` | sends the room's last event to this connection again, then acks |
| ``reset`` ``{room}`` | starts a new epoch for the room (its history is lost), then acks |
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import http
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from linkd_client import Backoff, Client, State

Event = dict[str, Any]

#: Reconnection within milliseconds, so tests wait on events rather than on timers.
FAST = Backoff(initial=0.01, max=0.02, factor=2.0, reset_after=60.0)
#: No keepalive pings, no proxy lookup, short timeouts.
OPTIONS: dict[str, Any] = {"ping_interval": None, "proxy": None, "open_timeout": 5}


def new_client(url: str, **kwargs: Any) -> Client:
    """A ``Client`` with the test backoff and options (``kwargs`` override them)."""
    kwargs.setdefault("backoff", FAST)
    kwargs.setdefault("connect_options", {**OPTIONS, "close_timeout": 1})
    return Client(url, **kwargs)


async def until_state(client: Client, *states: State, timeout: float = 5.0) -> None:  # noqa: ASYNC109
    """Wait until ``client.state`` is one of ``states``."""
    reached = asyncio.Event()
    remove = client.on_state(lambda state: reached.set() if state in states else None)
    try:
        if client.state not in states:
            async with asyncio.timeout(timeout):
                await reached.wait()
    finally:
        remove()


def decode_recover(value: str) -> dict[str, Any]:
    """The JSON object of a ``recover`` parameter (ValueError when malformed)."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        body = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from exc
    if "=" in value or not isinstance(body, dict):
        raise ValueError("not base64url without padding of a JSON object")
    return body


@dataclass
class History:
    """One stream's numbered events, the last ``size`` of them kept."""

    size: int
    epoch: str = field(default_factory=lambda: secrets.token_urlsafe(4))
    seq: int = 0
    kept: list[Event] = field(default_factory=list)

    def add(self, event: Event) -> None:
        self.seq = event["seq"]
        self.kept.append(event)
        del self.kept[: -self.size]

    def replay(self, position: Any) -> tuple[list[Event], bool]:
        """The events after ``position`` still kept, and whether they are all of them."""
        epoch, seq = position
        if epoch != self.epoch:
            return [], False
        events = [e for e in self.kept if e["seq"] > seq]
        complete = seq >= self.seq or (bool(events) and events[0]["seq"] == seq + 1)
        return events, complete


@dataclass
class Handshake:
    path: str
    headers: Headers
    at: float = field(default_factory=time.monotonic)

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    @property
    def recover(self) -> dict[str, Any] | None:
        values = self.query.get("recover")
        return decode_recover(values[0]) if values else None


class FakeConn:
    def __init__(self, engine: FakeEngine, ws: ServerConnection) -> None:
        self.engine = engine
        self.ws = ws
        self.rooms: set[str] = set()
        assert ws.request is not None
        self.handshake = Handshake(ws.request.path, ws.request.headers)
        self.recover = self.handshake.recover or {}
        auth = ws.request.headers.get("authorization", "")
        self.user = auth.removeprefix("Bearer ") or None

    async def send(self, frame: Event) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def join(self, room: str) -> None:
        self.rooms.add(room)
        position = self.recover.get("rooms", {}).get(room)
        if position is not None:
            await self.replay(self.engine.history(room), position, {"room": room})

    async def replay(self, history: History, position: Any, stream: dict[str, str]) -> None:
        events, complete = history.replay(position)
        for event in events:
            await self.send(event)
        verdict = {"recovered": complete, "epoch": history.epoch, "seq": history.seq}
        data = {**stream, **verdict, "missed": len(events)}
        await self.send({"type": "linkd.recovered", "data": data})

    async def handle(self, msg: Event) -> None:
        kind, msg_id, reply = msg.get("type"), msg.get("id"), msg.get("data")
        data: Any = reply or {}
        if kind == "ignore":
            return
        if kind == "fail":
            await self.send({"id": msg_id, "type": kind, "error": data})
            return
        if kind == "join":
            await self.join(data["room"])
        elif kind == "emit":
            await self.engine.emit(data["room"], data["event"], data.get("data"))
        elif kind == "repeat":
            await self.send(self.engine.history(data["room"]).kept[-1])
        elif kind == "reset":
            self.engine._rooms[data["room"]] = History(self.engine.history_size)
        elif kind == "close":
            await self.ws.close(data["code"], "bye")
            return
        elif kind == "drop":
            assert self.ws.transport is not None
            self.ws.transport.abort()
            for room, event, payload in data.get("emit", []):
                await self.engine.emit(room, event, payload)
            return
        if msg_id is not None:
            await self.send({"id": msg_id, "type": kind, "data": reply})


class FakeEngine:
    """The engine's client contract on a ``websockets`` server (see the module doc)."""

    def __init__(self, *, history_size: int = 100, join: tuple[str, ...] = ()) -> None:
        self.history_size = history_size
        #: Rooms every connection joins as it opens (a service's on_connect).
        self.auto_join = join
        #: HTTP statuses to refuse the next upgrades with, first first.
        self.refuse: list[int] = []
        #: Close codes to close the next connections with as soon as they open.
        self.close_new: list[int] = []
        self.handshakes: list[Handshake] = []
        self.received: list[Event] = []
        self.conns: list[FakeConn] = []
        self.connected = asyncio.Event()
        self._rooms: dict[str, History] = {}
        self._users: dict[str, History] = {}
        self._server: Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def live(self) -> list[FakeConn]:
        return [c for c in self.conns if c.ws.state.name == "OPEN"]

    def history(self, room: str) -> History:
        return self._rooms.setdefault(room, History(self.history_size))

    def user_history(self, user: str) -> History:
        return self._users.setdefault(user, History(self.history_size))

    async def emit(self, room: str, type: str, data: Any = None) -> Event:
        """A numbered event to every connection in ``room`` (and into its history)."""
        history = self.history(room)
        event = {"type": type, "data": data, "room": room, "seq": history.seq + 1}
        event["epoch"] = history.epoch
        history.add(event)
        for conn in self.live:
            if room in conn.rooms:
                with contextlib.suppress(Exception):
                    await conn.send(event)
        return event

    async def emit_user(self, user: str, type: str, data: Any = None) -> Event:
        history = self.user_history(user)
        event = {"type": type, "data": data, "user": user, "seq": history.seq + 1}
        event["epoch"] = history.epoch
        history.add(event)
        for conn in self.live:
            if conn.user == user:
                await conn.send(event)
        return event

    async def wait_connections(self, count: int, timeout: float = 5.0) -> FakeConn:  # noqa: ASYNC109
        """Wait until ``count`` connections have been accepted; returns the last."""
        async with asyncio.timeout(timeout):
            while len(self.conns) < count:
                self.connected.clear()
                await self.connected.wait()
        return self.conns[count - 1]

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        self.handshakes.append(Handshake(request.path, request.headers))
        if self.refuse:
            status = http.HTTPStatus(self.refuse.pop(0))
            return ws.respond(status, f"{status.phrase}\n")
        try:
            Handshake(request.path, request.headers).recover  # noqa: B018
        except ValueError:
            return ws.respond(http.HTTPStatus.BAD_REQUEST, "malformed recover\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        conn = FakeConn(self, ws)
        self.conns.append(conn)
        if self.close_new:
            await ws.close(self.close_new.pop(0), "go away")
            return
        if conn.user is not None and "user" in conn.recover:
            history = self.user_history(conn.user)
            await conn.replay(history, conn.recover["user"], {"user": conn.user})
        for room in self.auto_join:
            await conn.join(room)
        self.connected.set()
        with contextlib.suppress(Exception):
            async for raw in ws:
                msg = orjson.loads(raw)
                self.received.append(msg)
                await conn.handle(msg)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeEngine]:
        async with serve(
            self._handler, "127.0.0.1", 0, process_request=self._process_request
        ) as server:
            self._server = server
            yield self


class Proxy:
    """A TCP proxy to ``port`` whose connections ``cut()`` aborts (no close frame)."""

    def __init__(self, port: int) -> None:
        self.target = port
        #: While True, new connections are cut as soon as they arrive (the server is
        #: unreachable): the client keeps retrying.
        self.blocked = False
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> None:
        """Abort every proxied connection, both sides."""
        for client, upstream in self._pairs:
            for writer in (client, upstream):
                writer.transport.abort()
        self._pairs.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Proxy]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield self
        finally:
            self.cut()
            self._server.close()
            await self._server.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
