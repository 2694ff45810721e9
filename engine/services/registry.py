"""Registry and ServiceEntry: the services, their workers, and where a worker is chosen for a call.

A request becomes a ``Call`` (engine/services/workers.py); ``ServiceEntry.pick`` gives it to the
service's worker with the fewest calls in flight, if one is under its capacity; otherwise it
waits in the service's bounded queue (full: OVERLOADED)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import orjson

from engine.services.events import EventRouter
from engine.services.replay import ReplayCache
from engine.services.workers import Call, Done, Link, MakeRequest, Outcome, ServiceError, Worker
from protocol import ErrorCode, LocalProtocolError
from protocol.ipc import messages as m

if TYPE_CHECKING:
    from engine.services.host import Host

__all__ = ["Registry", "ServiceEntry"]

log = logging.getLogger("linkd.workers")

#: Documentation a worker may register (the ``docs`` of its routes), in all: schemas
#: are the worker's input, kept while the service is registered and served as they are.
MAX_DOCS_BYTES = 256 * 1024


class ServiceEntry:
    """A registered service: its routes, its workers, its queue."""

    def __init__(self, registry: Registry, registration: m.Registration) -> None:
        self.registry = registry
        self.name = registration.name
        self.registration = registration
        self.workers: list[Worker] = []
        self.queue: deque[Call] = deque()
        self._rr = 0
        #: The deadline of the oldest queued call (the sweeper calls back then).
        self.deadline = math.inf
        #: Undo functions for the routes mounted for this registration.
        self.unmount: list[Callable[[], None]] = []

    def pick(self) -> Worker | None:
        """The available worker with the fewest calls in flight (ties: round robin)."""
        workers = self.workers
        n = len(workers)
        if n == 1:  # the common case, without the loop
            only = workers[0]
            return only if not only.draining and len(only.in_flight) < only.capacity else None
        best: Worker | None = None
        for i in range(n):
            worker = workers[(self._rr + i) % n]
            if worker.available and (best is None or len(worker.in_flight) < len(best.in_flight)):
                best = worker
        if n:
            self._rr = (self._rr + 1) % n
        return best

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if not w.draining]

    def start(self, make: MakeRequest, done: Done) -> Call:
        """Send a request built by ``make(id)`` (or queue it); ``done`` gets the reply
        or the ServiceError, exactly once, later (never from within ``start``: what
        fails at once is raised).

        Raises:
            ServiceError: SERVICE_UNAVAILABLE or OVERLOADED, at once.
        """
        registry = self.registry
        state = registry.state
        call = Call(self, make, done)
        call.started = started = state.loop.time()
        call.deadline = started + registry.request_timeout
        worker = self.pick()
        if worker is None:
            if not self.live_workers():
                raise ServiceError(
                    ErrorCode.SERVICE_UNAVAILABLE, f"service {self.name} is unavailable"
                )
            if len(self.queue) >= registry.max_queue:
                raise ServiceError(ErrorCode.OVERLOADED, f"service {self.name} is overloaded")
            self.queue.append(call)
            if self.deadline == math.inf:
                self.deadline = call.deadline  # the head's: the queue is in deadline order
                state.sweeper.schedule(self)
        else:
            worker.send_call(call)  # raises if it could not go: nothing to undo
        return call

    async def call(self, make: MakeRequest) -> m.Reply:
        """``start`` for a coroutine: the reply, or ServiceError raised."""
        future: asyncio.Future[Outcome] = self.registry.state.loop.create_future()

        def done(outcome: Outcome) -> None:
            if not future.done():
                future.set_result(outcome)

        call = self.start(make, done)
        try:
            outcome = await future
        except asyncio.CancelledError:
            call.abandon()
            raise
        if isinstance(outcome, ServiceError):
            raise outcome
        return outcome

    def call_ended(self, call: Call) -> None:
        if call.started:
            state = self.registry.state
            state.metrics.observe_ipc(self.name, state.loop.time() - call.started)

    def on_deadline(self, now: float) -> None:
        """Queued calls past their deadline fail with TIMEOUT (oldest first: they were
        queued in deadline order); then wait for the new head's."""
        self.deadline = math.inf
        queue = self.queue
        while queue and (queue[0].finished or queue[0].deadline <= now):
            call = queue.popleft()
            call.fail(ServiceError(ErrorCode.TIMEOUT, "the service did not answer"))
        if queue:
            self.deadline = queue[0].deadline
            self.registry.state.sweeper.schedule(self)

    def notify(self, msg: Any) -> None:
        """A one-way message (disconnect, presence) to a live worker; dropped if none."""
        live = self.live_workers()
        if live:
            with contextlib.suppress(LocalProtocolError):
                live[self._rr % len(live)].proto.send(msg)

    def pump(self) -> None:
        """Move queued calls to workers that have room, then waiting events."""
        queue = self.queue
        while queue:
            worker = self.pick()
            if worker is None:
                return
            call = queue.popleft()
            if call.done is not None:
                try:
                    worker.send_call(call)
                except ServiceError as error:
                    call.fail(error)
        if self.registration.events:
            self.registry.events.pump(self)

    def fail_queue(self) -> None:
        calls, self.queue = list(self.queue), deque()
        for call in calls:
            call.fail(
                ServiceError(ErrorCode.SERVICE_UNAVAILABLE, f"service {self.name} is unavailable")
            )


def _routes(reg: m.Registration) -> tuple[object, ...]:
    """What workers of one service must agree on; documentation is not part of it (a
    rolling deploy may reword it)."""
    http = [dataclasses.replace(route, docs=None) for route in reg.http]
    ws = dataclasses.replace(reg.ws, docs=None) if reg.ws is not None else None
    return (http, ws, sorted(reg.events))


def _docs_problem(reg: m.Registration) -> m.Reject | None:
    """A registration whose documentation is too large, or not JSON objects."""
    texts = [route.docs for route in reg.http]
    texts.append(reg.ws.docs if reg.ws is not None else None)
    found = [text for text in texts if text is not None]
    size = sum(len(text) for text in found)
    if size > MAX_DOCS_BYTES:
        return m.Reject(
            "DOCS_TOO_LARGE",
            f"service {reg.name} documents its routes in {size} bytes, over {MAX_DOCS_BYTES}",
        )
    for text in found:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        if type(value) is not dict:
            return m.Reject("BAD_DOCS", f"service {reg.name}: route docs must be a JSON object")
    return None


class Registry:
    """Every service and worker of one engine."""

    def __init__(
        self,
        state: Host,
        mount: Callable[[ServiceEntry], list[Callable[[], None]]],
        *,
        request_timeout: float,
        worker_concurrency: int,
        max_queue: int,
        heartbeat: float,
    ) -> None:
        self.state = state
        self._mount = mount
        self.request_timeout = request_timeout
        self.worker_concurrency = worker_concurrency
        self.max_queue = max_queue
        self.heartbeat = heartbeat
        self.services: dict[str, ServiceEntry] = {}
        self.workers: dict[int, Worker] = {}
        self._next_worker = 0
        self._gone: asyncio.Event | None = None
        state.presence.listeners.append(self.on_presence)
        state.metrics.workers_source = self.live_workers
        #: Events between services: the broker's queues, handed to the workers.
        self.events = EventRouter(self, state.broker.events)
        #: Recent WebSocket acks of every service, so a retried message id runs once.
        self.replay = ReplayCache(state.loop.time)

    def live_workers(self) -> dict[str, int]:
        """Live (not draining) workers by service: the ``linkd_service_workers`` gauge."""
        return {name: len(entry.live_workers()) for name, entry in self.services.items()}

    def on_presence(self, user_id: str, username: str | None, online: bool) -> None:
        """Tell every service that asked for presence (one worker each)."""
        note: m.Presence | None = None
        for entry in self.services.values():
            ws = entry.registration.ws
            if ws is not None and ws.presence:
                if note is None:
                    note = m.Presence(user=user_id, online=online, username=username)
                entry.notify(note)

    def new_worker(self, proto: Link) -> Worker:
        self._next_worker += 1
        worker = Worker(self._next_worker, proto, self.state.sweeper)
        self.workers[worker.id] = worker
        return worker

    def register(self, worker: Worker, hello: m.Hello) -> m.Welcome | m.Reject:
        reg = hello.service
        if m.PROTOCOL_VERSION not in hello.versions:
            return m.Reject(
                "VERSION", f"engine speaks IPC version {m.PROTOCOL_VERSION}, not {hello.versions}"
            )
        refused = _docs_problem(reg)
        if refused is not None:
            return refused
        entry = self.services.get(reg.name)
        # Workers of one service must route alike; version and concurrency may differ
        # (a rolling deploy, a bigger machine).
        if entry is not None and _routes(entry.registration) != _routes(reg):
            if entry.workers:
                return m.Reject(
                    "REGISTRATION_MISMATCH",
                    f"service {reg.name} is registered with different routes by its other workers",
                )
            # No worker left: a new version of the service may redefine its routes.
            self._unmount(entry)
            del self.services[reg.name]
            entry = None
        if entry is None:
            entry = ServiceEntry(self, reg)
            try:
                entry.unmount = self._mount(entry)
            except ValueError as exc:  # RouteConflict
                return m.Reject("ROUTE_CONFLICT", str(exc))
            self.services[reg.name] = entry
        worker.entry = entry
        worker.pid = hello.pid
        worker.capacity = max(1, min(reg.concurrency, self.worker_concurrency))
        entry.workers.append(worker)
        entry.registration = reg
        self.events.registered(entry)
        log.info(
            "worker %d (pid %d) registered service %s %s; %d worker(s)",
            worker.id,
            worker.pid,
            reg.name,
            reg.version,
            len(entry.workers),
        )
        # Queued calls move to this worker once its welcome is out (IpcProtocol).
        return m.Welcome(
            version=m.PROTOCOL_VERSION,
            worker=worker.id,
            max_frame=worker.proto.max_frame,
            heartbeat=self.heartbeat,
        )

    def abandon_calls(self, message: str) -> int:
        """Shutdown near the end of its grace: fail every queued and in-flight call now
        with SERVICE_UNAVAILABLE, so each client still gets an answer (HTTP 503, an
        error reply) before its connection is dropped. No worker takes new calls; late
        replies are dropped. Returns how many calls were failed."""
        error = ServiceError(ErrorCode.SERVICE_UNAVAILABLE, message)
        failed = 0
        for worker in self.workers.values():
            worker.draining = True  # before failing: nothing may pump a call to it
        for entry in self.services.values():
            calls, entry.queue = list(entry.queue), deque()
            for call in calls:
                call.fail(error)
            failed += len(calls)
        for worker in self.workers.values():
            calls = list(worker.in_flight.values())
            worker.in_flight = {}
            for call in calls:
                worker.proto.expire(call.id)  # its late reply is not a protocol error
                call.fail(error)
            failed += len(calls)
        return failed

    async def drain_all(self) -> None:
        """Send ``drain`` to every worker and wait until all of them disconnected."""
        self._gone = asyncio.Event()
        for worker in list(self.workers.values()):
            worker.draining = True
            if worker.entry is None:  # still in its handshake: nothing to finish
                worker.proto.abort()
                continue
            with contextlib.suppress(LocalProtocolError):
                worker.proto.send(m.Drain())
        if self.workers:
            await self._gone.wait()

    def _unmount(self, entry: ServiceEntry) -> None:
        for undo in entry.unmount:
            undo()
        entry.unmount = []

    def drain(self, worker: Worker) -> None:
        worker.draining = True
        entry = _entry_of(worker)
        if entry is not None and not entry.live_workers():
            entry.fail_queue()
            self.events.worker_left(entry)

    def remove(self, worker: Worker, reason: str) -> None:
        """The worker's socket closed: fail its calls, keep the service's routes."""
        if self.workers.pop(worker.id, None) is None:
            return
        if not self.workers and self._gone is not None:
            self._gone.set()
        entry = _entry_of(worker)
        n = len(worker.in_flight)
        # Out of the service before its calls fail: their callbacks run right away and
        # may start the connection's next call, which must go to a live worker.
        worker.draining = True
        if entry is not None and worker in entry.workers:
            entry.workers.remove(worker)
        worker.fail_all()
        if entry is not None:
            log.warning(
                "worker %d (pid %d) of %s gone (%s); %d call(s) failed, %d worker(s) left",
                worker.id,
                worker.pid,
                entry.name,
                reason,
                n,
                len(entry.workers),
            )
            if entry.live_workers():
                entry.pump()
            else:
                entry.fail_queue()
                self.events.worker_left(entry)


def _entry_of(worker: Worker) -> ServiceEntry | None:
    """The service the registry gave ``worker`` at its hello (a ``Pool`` to the worker)."""
    return cast("ServiceEntry | None", worker.entry)
