"""Worker: the asyncio IPC client that keeps one service registered with the engine.

Connect to the Unix socket, hello/welcome, then pump ``protocol.ipc.IpcConn``: requests
run as tasks (at most ``service.concurrency`` at once), commands and replies are
written the moment they are issued, so the engine sees them in the order the handlers
issued them. Reconnects with backoff forever; ``stop()`` drains.

Before saying a word the worker checks who listens on the socket (``SO_PEERCRED``):
only an engine of its own user, or of a user in ``engine_uids`` /
``LINKD_ENGINE_UIDS``, gets the hello. While the engine is down anyone who can write
the socket's directory may bind its path; such an impostor gets nothing and could
not forge the identities handlers trust.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import struct
from collections.abc import Callable, Collection, Coroutine, Mapping
from typing import Any

import orjson

from protocol.errors import LocalProtocolError
from protocol.ipc import IpcConn, IpcProtocolError, IpcState, PeerFrameTooLarge, Role
from protocol.ipc import messages as m

from .dispatch import (
    handle_connect,
    handle_disconnect,
    handle_event,
    handle_http,
    handle_message,
    handle_presence,
)
from .errors import (
    InternalError,
    ServiceTimeoutError,
    ServiceUnavailableError,
    error_for_code,
)
from .service import Service
from .slots import Slots

__all__ = ["DEFAULT_IPC", "Worker", "engine_uids_from_env"]

log = logging.getLogger("linkd.sdk")

DEFAULT_IPC = "/tmp/linkd.sock"
DEFAULT_MAX_FRAME = 8 * 1024 * 1024
READ_SIZE = 256 * 1024
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def engine_uids_from_env(env: Mapping[str, str] | None = None) -> tuple[int, ...]:
    """``LINKD_ENGINE_UIDS`` (comma-separated uids; unset or empty: none).

    Raises:
        ValueError: not a list of non-negative integers.
    """
    raw = (os.environ if env is None else env).get("LINKD_ENGINE_UIDS", "")
    try:
        uids = tuple(int(v) for v in raw.replace(" ", "").split(",") if v)
    except ValueError:
        raise ValueError(f"LINKD_ENGINE_UIDS={raw!r} is not a list of uids") from None
    if any(u < 0 for u in uids):
        raise ValueError(f"LINKD_ENGINE_UIDS={raw!r} is not a list of uids")
    return uids


def _engine_refusal(sock: Any, allowed: Collection[int]) -> str | None:
    """Why the process listening at the other end is not our engine (None: it is).

    Where SO_PEERCRED does not exist the check is skipped (the directory's
    permissions are then the only protection); unreadable credentials are refused.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        pid, uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _CRED.size))
    except (OSError, AttributeError, struct.error) as exc:
        return f"cannot read its credentials ({exc})"
    own = os.geteuid()
    if uid == own or uid in allowed:
        return None
    listed = ",".join(str(u) for u in sorted(allowed)) or "none"
    return (
        f"it (pid {pid}) runs as uid {uid}, neither ours ({own}) nor listed in "
        f"LINKD_ENGINE_UIDS ({listed})"
    )


class Worker:
    """Runs one service against the engine at ``ipc`` until ``stop()``.

    Args:
        service: the service to register.
        ipc: the engine's Unix socket path.
        grace: seconds ``stop()`` waits for requests in flight before cancelling them.
        max_frame: the largest frame we accept (announced in hello).
        handshake_timeout: seconds to wait for the welcome.
        query_timeout: seconds to wait for the engine's answer to a query.
        backoff: first and largest reconnect delay, in seconds (doubling, ±20 % jitter).
        engine_uids: users besides our own whose engine we accept (SO_PEERCRED);
            default ``LINKD_ENGINE_UIDS``.
    """

    def __init__(
        self,
        service: Service,
        ipc: str = DEFAULT_IPC,
        *,
        grace: float = 10.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        handshake_timeout: float = 10.0,
        query_timeout: float = 30.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        engine_uids: Collection[int] | None = None,
    ) -> None:
        self.service = service
        self.engine_uids = frozenset(engine_uids_from_env() if engine_uids is None else engine_uids)
        self.ipc = ipc
        self.grace = grace
        self.max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self.query_timeout = query_timeout
        self.backoff = backoff
        #: The current engine connection, once welcomed.
        self.session: Session | None = None
        #: Set while a session is welcomed (for tests and embedding).
        self.connected = asyncio.Event()
        #: How many times the worker was welcomed.
        self.sessions = 0
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots = Slots(service.concurrency)
        self._after_start: asyncio.Task[None] | None = None
        self._registration: m.Registration | None = None
        #: What went wrong with the last attempt to reach the engine (None: it worked):
        #: a new kind of trouble is logged at its level, a repeat only at debug.
        self._trouble: str | None = None

    # ----------------------------------------------------------------- control
    def stop(self) -> None:
        """Ask for a graceful stop: drain, finish in-flight requests, close."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self) -> None:
        """before_start hooks, then serve and reconnect until ``stop()``; then after_stop."""
        # Build the registration first: a mistake in the decorators fails at once.
        self._registration = self.service.registration()
        await self.service.run_before_start()
        try:
            await self._connect_loop()
        finally:
            await self._finish_tasks()
            if self._after_start is not None and not self._after_start.done():
                self._after_start.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._after_start
            await self.service.run_after_stop()

    def trouble(self, kind: str, level: int, message: str, *args: Any) -> None:
        """Log a failed attempt: at ``level`` when it starts an episode (the first
        failure, or another kind of failure than the last one), else at debug, so a
        worker retrying for hours says it once, not every few seconds."""
        if kind == self._trouble:
            level = logging.DEBUG
        self._trouble = kind
        log.log(level, message, *args)

    async def _connect_loop(self) -> None:
        first, largest = self.backoff
        delay = first
        while not self.stopping:
            try:
                reader, writer = await asyncio.open_unix_connection(self.ipc, limit=READ_SIZE)
            except OSError as exc:
                # Engine not up yet, or restarting: say so once, then quietly retry.
                self.trouble(
                    f"connect {exc.errno}",
                    logging.WARNING,
                    "%s: cannot connect to %s (%s); retrying",
                    self,
                    self.ipc,
                    exc,
                )
            else:
                refusal = _engine_refusal(writer.get_extra_info("socket"), self.engine_uids)
                if refusal is not None:
                    # Not a word to it: no hello, no registration, no replies.
                    self.trouble(
                        "peer",
                        logging.WARNING,
                        "%s: refusing the engine at %s: %s; retrying",
                        self,
                        self.ipc,
                        refusal,
                    )
                    writer.transport.abort()
                else:
                    session = Session(self, reader, writer)
                    if await session.run():
                        delay = first
            if self.stopping:
                break
            await self._sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, largest)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def __str__(self) -> str:
        return f"worker {self.service.name}[{os.getpid()}]"

    # ------------------------------------------------------------------- tasks
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_tasks(self) -> None:
        """Wait up to ``grace`` s for requests in flight, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.grace)
        if pending:
            log.warning("%s: cancelling %d requests after the grace period", self, len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    def on_welcome(self, session: Session) -> None:
        self._trouble = None
        self.session = session
        self.sessions += 1
        self.connected.set()
        if self._after_start is None:
            self._after_start = asyncio.get_running_loop().create_task(
                self.service.run_after_start()
            )

    def on_session_closed(self, session: Session) -> None:
        if self.session is session:
            self.session = None
            self.connected.clear()


class Session:
    """One engine connection, from hello to close; the ``Link`` handlers issue commands on."""

    def __init__(
        self, worker: Worker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.worker = worker
        self.service = worker.service
        self.conn = IpcConn(Role.WORKER, max_frame=worker.max_frame)
        self.reader = reader
        self.writer = writer
        # Asked twice per request: the transport's own (C) method, not the stream's.
        self._transport = writer.transport
        self.closed = False
        self.heartbeat = 0.0
        self._queries: dict[int, asyncio.Future[m.Result]] = {}
        self._query_ids = 0
        self._awaiting_pong: int | None = None
        self._drain_sent = False
        self._closer: asyncio.Task[None] | None = None
        # Frames written during one loop iteration, sent together (see _write).
        self._out: list[bytes] | None = None

    # --------------------------------------------------------------- lifecycle
    async def run(self) -> bool:
        """Handshake, then serve until the socket closes or the worker stops.

        Returns:
            Whether the engine welcomed us.
        """
        try:
            welcome = await self._race_stop(self._handshake())
            if welcome is None:
                return False
            self.heartbeat = welcome.heartbeat
            log.info(
                "%s: registered with the engine at %s as worker %d",
                self.worker,
                self.worker.ipc,
                welcome.worker,
            )
            self.worker.on_welcome(self)
            await self._serve()
            return True
        finally:
            await self._close()

    async def _race_stop(self, coro: Coroutine[Any, Any, m.Welcome | None]) -> m.Welcome | None:
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self.worker._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()

    async def _handshake(self) -> m.Welcome | None:
        hello = m.Hello(
            versions=[m.PROTOCOL_VERSION],
            service=self.worker._registration or self.service.registration(),
            pid=os.getpid(),
            max_frame=self.worker.max_frame,
        )
        try:
            self.writer.write(self.conn.send(hello))
            async with asyncio.timeout(self.worker.handshake_timeout):
                while True:
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        self.worker.trouble(
                            "closed before welcome",
                            logging.WARNING,
                            "%s: the engine closed the socket before welcome",
                            self.worker,
                        )
                        return None
                    self.conn.receive_data(data)
                    msg = self.conn.next_message()
                    if isinstance(msg, m.Welcome):
                        return msg
                    if isinstance(msg, m.Reject):
                        # Retried with backoff: a conflict may clear when the engine restarts.
                        self.worker.trouble(
                            f"reject {msg.code}",
                            logging.ERROR,
                            "%s: the engine rejected the registration: %s: %s",
                            self.worker,
                            msg.code,
                            msg.message,
                        )
                        return None
        except TimeoutError:
            self.worker.trouble(
                "no welcome",
                logging.WARNING,
                "%s: no welcome within %.1f s",
                self.worker,
                self.worker.handshake_timeout,
            )
        except IpcProtocolError as exc:
            self.worker.trouble(
                "bad handshake",
                logging.ERROR,
                "%s: bad handshake from the engine: %s",
                self.worker,
                exc,
            )
        except OSError as exc:
            self.worker.trouble(
                f"handshake {exc.errno}",
                logging.WARNING,
                "%s: handshake failed: %s",
                self.worker,
                exc,
            )
        return None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        read = loop.create_task(self._read_loop())
        stop = loop.create_task(self.worker._stopping.wait())
        beat = loop.create_task(self._heartbeat()) if self.heartbeat > 0 else None
        try:
            await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                await self._drain(read)
        finally:
            for task in (read, stop, beat):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _drain(self, read: asyncio.Task[None]) -> None:
        """Graceful stop: drain, finish what is in flight (within grace), then close."""
        log.info("%s: draining (%d in flight)", self.worker, self.worker.in_flight)
        self._send_drain()
        # Keep reading meanwhile: query results and pings still arrive.
        await self.worker._finish_tasks()
        await self._close()
        with contextlib.suppress(asyncio.CancelledError):
            await read

    async def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.worker.on_session_closed(self)
        if self._closer is not None and self._closer is not asyncio.current_task():
            self._closer.cancel()
        self.conn.close()
        for future in self._queries.values():
            if not future.done():
                future.set_exception(ServiceUnavailableError("the engine connection closed"))
        self._queries.clear()
        self._flush_out()
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()

    # ------------------------------------------------------------------ inbound
    async def _read_loop(self) -> None:
        try:
            while True:
                self._process()
                data = await self.reader.read(READ_SIZE)
                if not data:
                    if not self.closed and self._closer is None:
                        log.warning("%s: the engine closed the connection", self.worker)
                    return
                self.conn.receive_data(data)
        except IpcProtocolError as exc:
            log.error("%s: the engine broke the IPC protocol: %s", self.worker, exc)
        except OSError as exc:
            log.warning("%s: connection to the engine lost: %s", self.worker, exc)

    def _process(self) -> None:
        worker = self.worker
        while (msg := self.conn.next_message()) is not None:
            if isinstance(msg, m.Message):
                worker.spawn(self._request(handle_message(self.service, self, msg)))
            elif isinstance(msg, m.HttpRequest):
                worker.spawn(self._request(handle_http(self.service, self, msg)))
            elif isinstance(msg, m.Connect):
                worker.spawn(self._request(handle_connect(self.service, self, msg)))
            elif isinstance(msg, m.Event):
                worker.spawn(self._request(handle_event(self.service, self, msg)))
            elif isinstance(msg, m.Disconnect):
                worker.spawn(self._notification(handle_disconnect(self.service, self, msg)))
            elif isinstance(msg, m.Presence):
                worker.spawn(self._notification(handle_presence(self.service, self, msg)))
            elif isinstance(msg, m.Result):
                future = self._queries.pop(msg.id, None)
                if future is not None and not future.done():
                    future.set_result(msg)
            elif isinstance(msg, m.Ping):
                with contextlib.suppress(ServiceUnavailableError):
                    self._write(m.Pong(n=msg.n))
            elif isinstance(msg, m.Pong):
                if msg.n == self._awaiting_pong:
                    self._awaiting_pong = None
            elif isinstance(msg, m.Drain):
                log.info("%s: the engine asked us to drain", worker)
                if self._closer is None:
                    self._closer = asyncio.get_running_loop().create_task(self._engine_drain())

    async def _engine_drain(self) -> None:
        # The engine sends no new requests; finish ours, then close so we reconnect
        # (to the engine's successor, when it is restarting).
        await self.worker._finish_tasks()
        self._flush_out()
        self.writer.close()

    async def _request(self, handling: Coroutine[Any, Any, m.Reply]) -> None:
        slots = self.worker._slots
        try:
            if not slots.try_take():  # a free slot, nearly always: no await, no future
                await slots.take()
            try:
                reply = await handling
            finally:
                slots.give()
        finally:
            handling.close()  # no-op once awaited; frees it if the slot wait was cancelled
        self.reply(reply)

    async def _notification(self, handling: Coroutine[Any, Any, None]) -> None:
        slots = self.worker._slots
        try:
            if not slots.try_take():
                await slots.take()
            try:
                await handling
            finally:
                slots.give()
        finally:
            handling.close()  # no-op once awaited; frees it if the slot wait was cancelled

    async def _heartbeat(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(self.heartbeat)
            if self._awaiting_pong is not None:
                log.warning(
                    "%s: no pong from the engine within %.1f s; reconnecting",
                    self.worker,
                    self.heartbeat,
                )
                self.writer.transport.abort()
                return
            n += 1
            self._awaiting_pong = n
            try:
                self._write(m.Ping(n=n))
            except ServiceUnavailableError:
                return

    # ----------------------------------------------------------------- outbound
    def _write(self, msg: Any) -> None:
        """Queue one frame; all frames of one loop iteration leave in one write.

        Commands and the reply of a handler are usually produced in the same
        iteration: one system call and one wake-up of the engine instead of several.
        Order is kept, so commands still precede their reply.
        """
        if self.closed or self._transport.is_closing():
            raise ServiceUnavailableError("not connected to the engine")
        frame = self.conn.send(msg)
        if self._out is None:
            self._out = [frame]
            asyncio.get_running_loop().call_soon(self._flush_out)
        else:
            self._out.append(frame)

    def _flush_out(self) -> None:
        out, self._out = self._out, None
        if out and not self._transport.is_closing():
            self.writer.writelines(out)

    def _send_drain(self) -> None:
        if not self._drain_sent and self.conn.state in (IpcState.READY, IpcState.DRAINING):
            self._drain_sent = True
            with contextlib.suppress(ServiceUnavailableError):
                self._write(m.Drain())

    def reply(self, reply: m.Reply) -> None:
        """Send a reply, or drop it when the connection it answers is gone."""
        if self.closed or reply.id not in self.conn.pending_in:
            log.debug("%s: dropping the reply to %d (connection closed)", self.worker, reply.id)
            return
        try:
            try:
                self._write(reply)
            except PeerFrameTooLarge:
                # IpcConn checked the size before marking the id answered: answer it
                # with an error instead.
                log.error(
                    "%s: reply to %d is larger than the engine's max_frame (%d bytes)",
                    self.worker,
                    reply.id,
                    self.conn.peer_max_frame,
                )
                self._write(m.Reply(id=reply.id, error=InternalError("reply too large").to_info()))
        except ServiceUnavailableError:
            log.debug("%s: dropping the reply to %d (connection closing)", self.worker, reply.id)

    # ------------------------------------------------------------- Link (commands)
    def command(self, msg: Any) -> None:
        """Write one command now (join, leave, emit, close)."""
        try:
            self._write(msg)
        except LocalProtocolError as exc:
            # Only an oversize command gets here: the engine would refuse the frame.
            raise InternalError(str(exc)) from None

    async def flush(self) -> None:
        self._flush_out()
        try:
            await self.writer.drain()
        except OSError:
            raise ServiceUnavailableError("connection to the engine lost") from None

    async def query(
        self,
        what: str,
        *,
        conn: int | None = None,
        room: str | None = None,
        user: str | None = None,
        since: int | None = None,
        epoch: str | None = None,
        limit: int | None = None,
    ) -> Any:
        return await self._ask(
            lambda query_id: m.Query(
                id=query_id,
                what=what,
                conn=conn,
                room=room,
                user=user,
                since=since,
                epoch=epoch,
                limit=limit,
            ),
            f"the {what} query",
        )

    async def publish(self, name: str, data: bytes) -> Any:
        return await self._ask(
            lambda publish_id: m.Publish(id=publish_id, name=name, json=data),
            f"the publish of {name!r}",
        )

    async def _ask(self, make: Callable[[int], Any], what: str) -> Any:
        """Send a request of ours (query, publish) and await its ``result``."""
        self._query_ids += 1
        query_id = self._query_ids
        future: asyncio.Future[m.Result] = asyncio.get_running_loop().create_future()
        self._queries[query_id] = future
        try:
            self.command(make(query_id))
            async with asyncio.timeout(self.worker.query_timeout):
                result = await future
        except TimeoutError:
            self.conn.expire(query_id)
            raise ServiceTimeoutError(f"the engine did not answer {what}") from None
        finally:
            self._queries.pop(query_id, None)
        if result.error is not None:
            raise error_for_code(result.error)
        return None if result.json is None else orjson.loads(result.json)
