"""IpcProtocol: one connected worker; pumps an ``IpcConn`` and applies its commands.

Messages are handled in the order they arrive, synchronously, so a worker's join /
emit / close take effect before the reply that follows them is even looked at
(docs/ipc.md §4.3). A protocol violation disconnects this worker only, with the
reason logged; its calls in flight fail with SERVICE_UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from typing import TYPE_CHECKING, Any, cast

import orjson
from redis.exceptions import RedisError

from engine.brokers.events import EVENT_NAME
from engine.brokers.history import DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT
from engine.brokers.local import LocalBroker
from engine.brokers.publish import Publish
from engine.services.events import PublishRefused
from engine.services.peer import peer_refusal
from protocol import LocalProtocolError
from protocol.ipc import IpcConn, IpcError, IpcProtocolError, Role
from protocol.ipc import messages as m

if TYPE_CHECKING:
    from engine.services.host import Host
    from engine.services.registry import Registry
    from engine.services.workers import Worker

__all__ = ["IpcProtocol"]

log = logging.getLogger("linkd.ipc")

# Close codes a worker may ask for (RFC 6455 §7.4: 1000-1003, 1007-1014, 3000-4999).
_SENDABLE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}


def _require_utf8(data: bytes | None, field: str) -> None:
    if data is None:
        return
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise IpcProtocolError(IpcError.BAD_FIELD, f"{field} is not UTF-8") from None


class IpcProtocol(asyncio.Protocol):
    __slots__ = (
        "_conn",
        "_held",
        "_out",
        "_ping_n",
        "_pong_due",
        "_registry",
        "_state",
        "_transport",
        "deadline",
        "worker",
    )

    def __init__(self, state: Host, registry: Registry, max_frame: int) -> None:
        self._state = state
        self._registry = registry
        self._conn = IpcConn(Role.ENGINE, max_frame)
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] | None = None
        self.worker: Worker = registry.new_worker(self)
        self.deadline = math.inf
        self._ping_n = 0
        #: Replies waiting for the broker to apply earlier commands (Redis), in order.
        self._held: list[tuple[m.Reply, asyncio.Future[None] | None]] = []
        self._pong_due = math.inf

    @property
    def max_frame(self) -> int:
        return self._conn.max_frame

    # ------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream = cast(asyncio.Transport, transport)
        # Before a byte is read: only workers of a trusted user may register.
        refusal = peer_refusal(stream.get_extra_info("socket"), self._state.config.ipc_allowed_uids)
        if refusal is not None:
            log.warning("refused a worker connection: %s", refusal)
            self._registry.remove(self.worker, "refused")
            self._transport = None  # connection_lost has nothing left to do
            stream.abort()
            return
        # The hello must come quickly; the same budget as an HTTP request head.
        self._set_deadline(self._state.loop.time() + self._state.config.header_timeout)

    def data_received(self, data: bytes) -> None:
        conn = self._conn
        conn.receive_data(data)
        batch: list[Any] = []
        failure: IpcProtocolError | None = None
        try:
            while (msg := conn.next_message()) is not None:
                batch.append(msg)
        except IpcProtocolError as exc:
            failure = exc  # what came before it is still applied, in order
        # A lone emit in this read may be written at once (``Publish.write_now``);
        # several are corked together: one system call per subscriber for all of them.
        lone = sum(1 for msg in batch if isinstance(msg, m.Emit)) == 1
        for msg in batch:
            if self._transport is None:
                return
            try:
                self._dispatch(msg, lone)
            except IpcProtocolError as exc:
                failure = exc
                break
        if failure is not None and self._transport is not None:
            self._drop(f"protocol error {failure.reason.value}: {failure.detail}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return
        self._transport = None
        self.deadline = math.inf
        self._conn.close()
        self._registry.remove(self.worker, "disconnected")

    # -------------------------------------------------------------- sending
    def send(self, msg: Any) -> None:
        """Frame and queue one message; raises LocalProtocolError if it may not go.

        Frames queued during one loop iteration leave in one ``writelines`` (the same
        cork as client connections): N requests to a worker cost one system call and
        one wake-up of the worker, not N.
        """
        if self._transport is None:
            raise LocalProtocolError("worker disconnected")
        frame = self._conn.send(msg)
        if self._out is None:
            self._out = [frame]
            self._state.corker.add(self)
        else:
            self._out.append(frame)

    def flush(self) -> None:
        out, self._out = self._out, None
        if out and self._transport is not None:
            if len(out) == 1:
                self._transport.write(out[0])
            else:
                self._transport.writelines(out)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def expire(self, request_id: int) -> None:
        self._conn.expire(request_id)

    def _drop(self, reason: str) -> None:
        log.warning(
            "worker %d (pid %d): disconnecting: %s", self.worker.id, self.worker.pid, reason
        )
        transport = self._transport
        self._registry.remove(self.worker, reason)
        if transport is not None:
            transport.abort()

    # ------------------------------------------------------------- replies
    def _reply(self, reply: m.Reply) -> None:
        """Answer now, or once the broker applied the commands sent before it (Redis:
        a join's subscription, an emit's round trip): the ack never overtakes them."""
        held = self._held
        if held:
            held.append((reply, self._state.broker.fence()))
            return
        fence = self._state.broker.fence()
        if fence is None:
            self.worker.on_reply(reply)
            return
        self._held = [(reply, fence)]
        fence.add_done_callback(self._release)

    def _release(self, _: object = None) -> None:
        held = self._held
        while held:
            reply, fence = held[0]
            if fence is not None and not fence.done():
                fence.add_done_callback(self._release)
                return
            held.pop(0)
            self.worker.on_reply(reply)

    # ------------------------------------------------------------- dispatch
    def _dispatch(self, msg: Any, lone_emit: bool = False) -> None:
        """Apply one message; ``lone_emit``: it is the only emit of its read."""
        hub = self._state.hub
        if isinstance(msg, m.Reply):
            # These bytes are pasted into client text frames: they must be UTF-8.
            if msg.json is not None:
                _require_utf8(msg.json, "reply.json")
            if msg.error is not None:
                _require_utf8(msg.error.details, "reply.error.details")
            self._reply(msg)
        elif isinstance(msg, m.Emit):
            if not msg.binary:  # a binary emit is any bytes, in a binary frame
                _require_utf8(msg.payload, "emit.payload")
            targets = (msg.room, msg.user, msg.conn)
            if sum(t is not None for t in targets) + msg.everyone != 1:
                raise IpcProtocolError(IpcError.BAD_FIELD, "emit needs exactly one target")
            # The only emit of its read and nothing corked yet this iteration: the
            # engine is not busy, so its frames are written as they are queued
            # (subscribers are served from the first write on) instead of all at the
            # end of the iteration.
            hub.publish(
                Publish.to(
                    msg.payload,
                    room=msg.room,
                    user=msg.user,
                    conn=msg.conn,
                    everyone=msg.everyone,
                    exclude=msg.exclude,
                    event=msg.event,
                    write_now=lone_emit and self._state.corker.idle,
                    binary=msg.binary,
                )
            )
        elif isinstance(msg, m.Join):
            ws = hub.by_id.get(msg.conn)
            if ws is not None:
                hub.join(ws, msg.room)
        elif isinstance(msg, m.Leave):
            ws = hub.by_id.get(msg.conn)
            if ws is not None:
                hub.leave(ws, msg.room)
        elif isinstance(msg, m.Close):
            ws = hub.by_id.get(msg.conn)
            code = msg.code
            if not (code in _SENDABLE or 3000 <= code <= 4999):
                raise IpcProtocolError(IpcError.BAD_FIELD, f"close code {code} cannot be sent")
            if ws is not None:
                ws.close(code, msg.reason)
        elif isinstance(msg, m.Query):
            if msg.what == "history":
                self._history(msg)
            elif msg.what in ("presence", "online") and self._state.config.redis_url:
                self._state.spawn(self._answer_cluster(msg))  # asks Redis
            else:
                self.send(self._answer(msg))
        elif isinstance(msg, m.Publish):
            _require_utf8(msg.json, "publish.json")
            self._state.spawn(self._publish(msg))
        elif isinstance(msg, m.Ping):
            self.send(m.Pong(msg.n))
        elif isinstance(msg, m.Pong):
            if msg.n == self._ping_n:
                self._pong_due = math.inf
        elif isinstance(msg, m.Drain):
            self._registry.drain(self.worker)
        elif isinstance(msg, m.Hello):
            answer = self._registry.register(self.worker, msg)
            self.send(answer)
            if isinstance(answer, m.Reject):
                log.warning("worker rejected: %s %s", answer.code, answer.message)
                if self._transport is not None:
                    self.flush()  # the reject goes out before the close
                    self._transport.close()
                return
            if self.worker.entry is not None:
                self.worker.entry.pump()  # queued calls may go to this worker now
            if self._registry.heartbeat > 0:
                self._set_deadline(self._state.loop.time() + self._registry.heartbeat)
            else:
                self.deadline = math.inf  # heartbeat 0: no pings (docs/ipc.md §4.6)

    # ----------------------------------------------------- history, events
    def _history(self, query: m.Query) -> None:
        """``what: "history"``: a page of the room's kept events (docs/ipc.md §4.3)."""
        limit = DEFAULT_HISTORY_LIMIT if query.limit is None else query.limit
        problem = None
        if query.room is None:
            problem = "history needs a room"
        elif not 1 <= limit <= MAX_HISTORY_LIMIT:
            problem = f"history limit must be between 1 and {MAX_HISTORY_LIMIT}, not {limit}"
        elif query.since is not None and query.since < 0:
            problem = f"history since must not be negative, not {query.since}"
        if problem is not None or query.room is None:
            self.send(m.Result(query.id, error=m.ErrorInfo("BAD_REQUEST", problem or "")))
            return
        room = query.room
        broker = self._state.broker
        if isinstance(broker, LocalBroker):  # in memory: answered at once, in order
            page = broker.history_of(room, query.since, query.epoch, limit)
            self.send(m.Result(query.id, json=page.to_json(room)))
            return
        self._state.spawn(self._history_remote(query, room, limit))

    async def _history_remote(self, query: m.Query, room: str, limit: int) -> None:
        try:
            page = await self._state.broker.read_history(room, query.since, query.epoch, limit)
            result = m.Result(query.id, json=page.to_json(room))
        except (OSError, RedisError):
            result = m.Result(
                query.id, error=m.ErrorInfo("SERVICE_UNAVAILABLE", "history is unavailable")
            )
        with contextlib.suppress(LocalProtocolError):
            self.send(result)

    async def _publish(self, msg: m.Publish) -> None:
        """Queue a service event for its subscribers; answered once it is (in memory,
        or in Redis), or with the reason it is not."""
        source = getattr(self.worker.entry, "name", None)  # the publishing service
        events = self._registry.events
        if not EVENT_NAME.match(msg.name):
            result = m.Result(
                msg.id, error=m.ErrorInfo("BAD_REQUEST", f"bad event name {msg.name!r}")
            )
        else:
            try:
                services = await events.publish(source, msg.name, msg.json)
                result = m.Result(msg.id, json=orjson.dumps({"services": services}))
            except PublishRefused as exc:
                result = m.Result(msg.id, error=m.ErrorInfo(exc.code.value, exc.message))
            except (OSError, RedisError):
                result = m.Result(
                    msg.id, error=m.ErrorInfo("SERVICE_UNAVAILABLE", "events are unavailable")
                )
        with contextlib.suppress(LocalProtocolError):
            self.send(result)

    async def _answer_cluster(self, query: m.Query) -> None:
        """Presence questions answered from Redis: the same answer on every node."""
        from engine.brokers.redis_presence import RedisPresence

        presence = self._state.presence
        assert isinstance(presence, RedisPresence)
        try:
            if query.what == "presence" and query.room is not None:
                value: Any = await presence.room_users(query.room)
            elif query.what == "online" and query.user is not None:
                value = await presence.online(query.user)
            else:
                self.send(self._answer(query))
                return
            result = m.Result(query.id, json=orjson.dumps(value))
        except (OSError, RedisError):
            result = m.Result(
                query.id, error=m.ErrorInfo("SERVICE_UNAVAILABLE", "presence is unavailable")
            )
        with contextlib.suppress(LocalProtocolError):
            self.send(result)

    def _answer(self, query: m.Query) -> m.Result:
        hub = self._state.hub
        if query.what == "rooms" and query.conn is not None:
            ws = hub.by_id.get(query.conn)
            rooms = hub.rooms_of(ws) if ws is not None else []
            return m.Result(query.id, json=orjson.dumps(rooms))
        if query.what == "members" and query.room is not None:
            return m.Result(query.id, json=orjson.dumps(hub.members(query.room)))
        if query.what == "presence" and query.room is not None:
            return m.Result(query.id, json=orjson.dumps(hub.room_presence(query.room)))
        if query.what == "online" and query.user is not None:
            online = self._state.presence.is_online(query.user)
            return m.Result(query.id, json=b"true" if online else b"false")
        return m.Result(
            query.id,
            error=m.ErrorInfo("BAD_REQUEST", f"cannot answer query {query.what!r}"),
        )

    # ------------------------------------------------------------ heartbeat
    def _set_deadline(self, when: float) -> None:
        self.deadline = when
        self._state.sweeper.schedule(self)

    def on_deadline(self, now: float) -> None:
        if self._transport is None:
            return
        if self.worker.entry is None:
            self._drop("no hello in time")
            return
        if now >= self._pong_due:
            self._drop("missed heartbeat")
            return
        self._ping_n += 1
        self._pong_due = now + self._registry.heartbeat
        try:
            self.send(m.Ping(self._ping_n))
        except LocalProtocolError:
            return
        self._set_deadline(now + self._registry.heartbeat)
