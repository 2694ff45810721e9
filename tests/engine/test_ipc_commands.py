"""Worker commands: join, leave, emit (room, conn, everyone, exclude), close, query;
the disconnect notification; ordering of side effects, acks and emits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from engine import Engine
from protocol.ipc import messages as m
from tests.helpers.fake_worker import FakeWorker, reply_json, short_socket_path
from tests.helpers.http_client import RawHttp
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import running_engine

pytestmark = pytest.mark.asyncio

ROOMS = m.Registration(
    "rooms",
    http=[m.HttpRoute("ping", "GET", "/rooms/ping")],
    ws=m.WsRoute("/ws/rooms", catch_all=True, on_connect=True, on_disconnect=True),
)
OTHER = m.Registration("other", http=[m.HttpRoute("ping", "GET", "/other/ping")])


@pytest.fixture
def ipc_path(tmp_path: Path) -> str:
    return short_socket_path(tmp_path)


def event(event_type: str, data: Any) -> bytes:
    return orjson.dumps({"type": event_type, "data": data})


async def rooms_message(worker: FakeWorker, request: m.Message) -> m.Reply:
    """whoami → the connection id; join/leave <room>; say {room, text} → emit to room."""
    data = orjson.loads(request.json).get("data")
    if request.type == "join":
        worker.send(m.Join(request.conn, data))
    elif request.type == "leave":
        worker.send(m.Leave(request.conn, data))
    elif request.type == "say":
        worker.send(m.Emit(event("said", data["text"]), room=data["room"]))
    return reply_json(request, request.conn)


class Client:
    """A WebSocket client of /ws/rooms that knows its engine connection id."""

    def __init__(self, ws: ClientConnection, conn: int) -> None:
        self.ws = ws
        self.conn = conn
        self._next_id = 100
        #: ``(room or "@user", seq, epoch)`` of each numbered event received, in order.
        self.positions: list[tuple[str, int, str]] = []
        #: ``linkd.skip`` frames received (events this connection was excluded from).
        self.skipped = 0

    async def request(self, message_type: str, data: Any = None) -> Any:
        """Send with an id; return the ack (the next frame must be it)."""
        self._next_id += 1
        frame = {"type": message_type, "data": data, "id": self._next_id}
        await self.ws.send(orjson.dumps(frame).decode())
        ack = await self.recv()
        assert ack.get("id") == self._next_id, ack
        return ack

    async def recv(self, timeout: float = 2.0) -> Any:  # noqa: ASYNC109
        """The next frame, with a room event's position moved to ``self.positions``."""
        while True:
            frame = orjson.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if "seq" in frame:
                stream = frame.pop("room", None) or "@" + frame.pop("user")
                self.positions.append((stream, frame.pop("seq"), frame.pop("epoch")))
            if frame.get("type") != "linkd.skip":
                return frame
            self.skipped += 1  # excluded from that event: only its number came


@asynccontextmanager
async def setup(
    ipc_path: str, **overrides: Any
) -> AsyncIterator[tuple[Engine, FakeWorker, AsyncExitStack]]:
    async with (
        running_engine(ipc_path=ipc_path, **overrides) as engine,
        FakeWorker(ipc_path, ROOMS) as worker,
        AsyncExitStack() as stack,
    ):
        worker.on("message", rooms_message)
        await worker.start()
        yield engine, worker, stack


async def open_client(engine: Engine, stack: AsyncExitStack, path: str = "/ws/rooms") -> Client:
    ws = await stack.enter_async_context(connect(f"ws://127.0.0.1:{engine.port}{path}"))
    client = Client(ws, 0)
    client.conn = (await client.request("whoami"))["data"]
    return client


async def barrier(worker: FakeWorker) -> None:
    """Commands are applied in order: once a later query is answered, they all are."""
    await worker.query("members", room="-")


async def assert_next_is_marker(client: Client, worker: FakeWorker) -> None:
    """Nothing reached ``client`` before a marker sent to it now."""
    worker.send(m.Emit(event("marker", client.conn), conn=client.conn))
    assert await client.recv() == {"type": "marker", "data": client.conn}


async def test_connect_handler_joins_and_emits_to_the_room(ipc_path: str) -> None:
    async def on_connect(worker: FakeWorker, request: m.Connect) -> m.Reply:
        worker.send(m.Join(request.conn, "lobby"))
        worker.send(m.Emit(event("joined", request.conn), room="lobby", exclude=[request.conn]))
        return m.Reply(request.id)

    async with setup(ipc_path) as (engine, worker, stack):
        worker.on("connect", on_connect)
        alice = await open_client(engine, stack)
        bob = await open_client(engine, stack)
        connects = [r for r in worker.requests if isinstance(r, m.Connect)]
        assert [c.conn for c in connects] == [alice.conn, bob.conn]
        assert connects[0].path == "/ws/rooms"
        assert alice.conn != bob.conn
        assert await alice.recv() == {"type": "joined", "data": bob.conn}
        members = await worker.query("members", room="lobby")
        assert orjson.loads(members.json or b"") == sorted([alice.conn, bob.conn])
        await assert_next_is_marker(bob, worker)


async def test_join_takes_effect_before_the_ack(ipc_path: str) -> None:
    async with setup(ipc_path) as (engine, worker, stack):
        alice = await open_client(engine, stack)
        bob = await open_client(engine, stack)
        # The worker sends join, then the reply: once alice has the ack, she is in.
        assert (await alice.request("join", "r1"))["data"] == alice.conn
        await bob.request("say", {"room": "r1", "text": "hello alice"})
        assert await alice.recv() == {"type": "said", "data": "hello alice"}
        await assert_next_is_marker(bob, worker)  # bob is not in r1


async def test_emit_with_exclude(ipc_path: str) -> None:
    async with setup(ipc_path) as (engine, worker, stack):
        clients = [await open_client(engine, stack) for _ in range(3)]
        for c in clients:
            await c.request("join", "room")
        a, b, c = clients
        worker.send(m.Emit(event("news", 1), room="room", exclude=[b.conn, 999_999]))
        assert await a.recv() == {"type": "news", "data": 1}
        assert await c.recv() == {"type": "news", "data": 1}
        await assert_next_is_marker(b, worker)
        # b was told the number it was excluded from: its stream has no hole.
        assert b.skipped == 1 and b.positions[-1][:2] == ("room", a.positions[-1][1])


async def test_emit_to_one_connection(ipc_path: str) -> None:
    async with setup(ipc_path) as (engine, worker, stack):
        a, b = await open_client(engine, stack), await open_client(engine, stack)
        worker.send(m.Emit(event("direct", "for b"), conn=b.conn))
        worker.send(m.Emit(event("direct", "nobody"), conn=123_456))  # gone: a no-op
        assert await b.recv() == {"type": "direct", "data": "for b"}
        await assert_next_is_marker(a, worker)
        await assert_next_is_marker(b, worker)


async def test_emit_to_everyone(ipc_path: str) -> None:
    async with setup(ipc_path) as (engine, worker, stack):
        a, b = await open_client(engine, stack), await open_client(engine, stack)
        # A connection of another endpoint (the engine's echo) is part of everyone.
        echo = await stack.enter_async_context(connect(f"ws://127.0.0.1:{engine.port}/echo"))
        await barrier(worker)
        worker.send(m.Emit(event("all", True), everyone=True, exclude=[a.conn]))
        assert await b.recv() == {"type": "all", "data": True}
        assert orjson.loads(await asyncio.wait_for(echo.recv(), 2)) == {
            "type": "all",
            "data": True,
        }
        await assert_next_is_marker(a, worker)


async def test_leave(ipc_path: str) -> None:
    async with setup(ipc_path) as (engine, worker, stack):
        a, b = await open_client(engine, stack), await open_client(engine, stack)
        await a.request("join", "room")
        await b.request("join", "room")
        await a.request("leave", "room")
        await a.request("leave", "never-joined")  # a no-op
        worker.send(m.Emit(event("after-leave", 1), room="room"))
        assert await b.recv() == {"type": "after-leave", "data": 1}
        await assert_next_is_marker(a, worker)
        # Commands for connections that do not exist are no-ops too.
        worker.send(m.Join(987_654, "room"))
        worker.send(m.Leave(987_654, "room"))
        members = await worker.query("members", room="room")
        assert orjson.loads(members.json or b"") == [b.conn]


async def test_close_with_application_code(ipc_path: str) -> None:
    async with setup(ipc_path) as (engine, worker, stack):
        a, b = await open_client(engine, stack), await open_client(engine, stack)
        worker.send(m.Close(a.conn, 4001, "kicked"))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(a.ws.recv(), 2)
        assert a.ws.close_code == 4001
        assert a.ws.close_reason == "kicked"
        # The worker hears about it, with the code.
        note = await worker.next_notification()
        assert note == m.Disconnect(conn=a.conn, code=4001, rooms=[])
        assert (await b.request("whoami"))["data"] == b.conn


async def test_query_rooms_and_members(ipc_path: str) -> None:
    async with setup(ipc_path) as (engine, worker, stack):
        a, b = await open_client(engine, stack), await open_client(engine, stack)
        for room in ("zeta", "alpha", "mid"):
            await a.request("join", room)
        await b.request("join", "alpha")
        result = await worker.query("rooms", conn=a.conn)
        assert result.error is None
        assert orjson.loads(result.json or b"") == ["alpha", "mid", "zeta"]
        result = await worker.query("rooms", conn=b.conn)
        assert orjson.loads(result.json or b"") == ["alpha"]
        result = await worker.query("members", room="alpha")
        assert orjson.loads(result.json or b"") == sorted([a.conn, b.conn])
        result = await worker.query("rooms", conn=555_555)
        assert orjson.loads(result.json or b"") == []
        result = await worker.query("nonsense")
        assert result.json is None
        assert result.error is not None and result.error.code == "BAD_REQUEST"


async def test_disconnect_notification_carries_rooms_and_code(ipc_path: str) -> None:
    async with setup(ipc_path) as (engine, worker, stack):
        a = await open_client(engine, stack)
        await a.request("join", "r2")
        await a.request("join", "r1")
        await a.ws.close(4000, "bye")
        note = await worker.next_notification()
        assert note == m.Disconnect(conn=a.conn, code=4000, rooms=["r1", "r2"])
        members = await worker.query("members", room="r1")
        assert orjson.loads(members.json or b"") == []


async def test_emit_with_non_utf8_payload_disconnects_the_worker(
    ipc_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="linkd.ipc")
    async with (
        setup(ipc_path) as (engine, worker, stack),
        FakeWorker(ipc_path, OTHER) as other,
    ):
        await other.start()
        a = await open_client(engine, stack)
        await a.request("join", "room")
        worker.send(m.Emit(b'{"type":"x","data":"\xff\xfe"}', room="room"))
        await worker.wait_closed(2.0)
        assert any("BAD_FIELD" in r.getMessage() for r in caplog.records if r.name == "linkd.ipc")
        # Nothing was delivered; the client and the other service are fine.
        async with RawHttp(engine.port) as http:
            assert (await http.request("GET", "/other/ping")).status == 200
        await a.ws.send('{"type":"whoami","id":1}')
        ack = await a.recv()
        assert ack["error"]["code"] == "SERVICE_UNAVAILABLE"


async def test_thousand_messages_in_order(ipc_path: str) -> None:
    n = 1000

    async def relay(worker: FakeWorker, request: m.Message) -> m.Reply:
        data = orjson.loads(request.json)["data"]
        worker.send(m.Emit(event("relay", data), room="watchers"))
        return reply_json(request, data)

    async with setup(ipc_path) as (engine, worker, stack):
        worker.on("message:relay", relay)
        sender = await open_client(engine, stack)
        watcher = await open_client(engine, stack)
        await watcher.request("join", "watchers")

        async def read(client: Client) -> list[Any]:
            return [await client.recv(5.0) for _ in range(n)]

        acks_task = asyncio.create_task(read(sender))
        events_task = asyncio.create_task(read(watcher))
        for i in range(n):
            await sender.ws.send(orjson.dumps({"type": "relay", "data": i, "id": i}).decode())
        acks, events = await asyncio.gather(acks_task, events_task)
        assert acks == [{"id": i, "type": "relay", "data": i} for i in range(n)]
        assert events == [{"type": "relay", "data": i} for i in range(n)]
        assert [seq for _, seq, _ in watcher.positions] == list(range(1, n + 1))
        relayed = [r for r in worker.requests if isinstance(r, m.Message) and r.type == "relay"]
        assert [orjson.loads(r.json)["data"] for r in relayed] == list(range(n))


@pytest.mark.parametrize(("code", "close_code"), [("FORBIDDEN", 1008), ("INTERNAL", 1011)])
async def test_connect_error_reply_closes_the_connection(
    ipc_path: str, code: str, close_code: int
) -> None:
    async def refuse(worker: FakeWorker, request: m.Connect) -> m.Reply:
        return m.Reply(request.id, error=m.ErrorInfo(code, "go away"))

    async with setup(ipc_path) as (engine, worker, _):
        worker.on("connect", refuse)
        async with connect(f"ws://127.0.0.1:{engine.port}/ws/rooms") as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 2)
            assert ws.close_code == close_code
        assert [type(r) for r in worker.requests] == [m.Connect]


async def test_no_message_before_the_connect_reply(ipc_path: str) -> None:
    release = asyncio.Event()

    async def slow_connect(worker: FakeWorker, request: m.Connect) -> m.Reply:
        await release.wait()
        worker.send(m.Join(request.conn, "welcomed"))
        return m.Reply(request.id)

    async with setup(ipc_path) as (engine, worker, _):
        worker.on("connect", slow_connect)
        async with connect(f"ws://127.0.0.1:{engine.port}/ws/rooms") as ws:
            await ws.send('{"type":"whoami","id":1}')
            await worker.wait_requests(1)
            await asyncio.sleep(0.1)
            assert [type(r) for r in worker.requests] == [m.Connect]
            release.set()
            ack = orjson.loads(await asyncio.wait_for(ws.recv(), 2))
            (connect_request,) = [r for r in worker.requests if isinstance(r, m.Connect)]
            assert ack == {"id": 1, "type": "whoami", "data": connect_request.conn}
            # What the connect handler did came first.
            rooms = await worker.query("rooms", conn=ack["data"])
            assert orjson.loads(rooms.json or b"") == ["welcomed"]


async def test_disconnect_comes_after_the_replies_of_that_connection(ipc_path: str) -> None:
    release = asyncio.Event()

    async def slow(worker: FakeWorker, request: m.Message) -> m.Reply:
        await release.wait()
        return m.Reply(request.id)

    async with setup(ipc_path) as (engine, worker, stack):
        worker.on("message:slow", slow)
        a = await open_client(engine, stack)
        await a.request("join", "r")
        await a.ws.send('{"type":"slow","id":1}')
        await worker.wait_requests(3)
        await a.ws.close(1000)
        await asyncio.sleep(0.1)
        assert worker.notifications.empty()  # the reply to "slow" is still owed
        release.set()
        note = await worker.next_notification()
        assert note == m.Disconnect(conn=a.conn, code=1000, rooms=["r"])


async def test_emit_event_type_selects_its_slow_consumer_policy(ipc_path: str) -> None:
    # The SDK sends the event type with each emit; a `price.*=conflate` rule applies to
    # those emits only, keyed by target + type.
    async with setup(
        ipc_path,
        slow_consumer_events=(("price.*", "conflate"),),
        limits={"write_high_water": 16 * 1024, "max_outbound_bytes": 256 * 1024},
    ) as (engine, worker, stack):
        raw = await stack.enter_async_context(RawWs(engine.port, "/ws/rooms", rcvbuf=4096))
        raw.send_text('{"type": "join", "data": "AAPL", "id": 1}')
        assert orjson.loads((await raw.recv_frame()).payload)["id"] == 1
        (proto,) = engine.state.ws_connections
        raw.pause_reading()
        pad = "x" * 2000
        n = 0
        while engine.metrics.shed_messages.get("conflate", 0) < 50 and n < 20_000:
            for _ in range(100):
                payload = event("price.tick", {"seq": n, "pad": pad})
                worker.send(m.Emit(payload, room="AAPL", event="price.tick"))
                n += 1
            await barrier(worker)
        assert engine.metrics.shed_messages["conflate"] >= 50
        assert not proto.closed and engine.metrics.slow_consumers == 0
        raw.resume_reading()
        seqs = []
        while not seqs or seqs[-1] != n - 1:
            seqs.append(orjson.loads((await raw.recv_frame()).payload)["data"]["seq"])
        assert seqs == sorted(set(seqs))  # one key: strictly in order
        assert len(seqs) + engine.metrics.shed_messages["conflate"] == n
