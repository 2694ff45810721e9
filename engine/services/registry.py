"""Registry and ServiceEntry: the services, their workers, and where a worker is chosen for a call.

A request becomes a ``Call`` (engine/services/workers.py); ``ServiceEntry.pick`` gives it to the
service's worker with the fewest calls in flight, if one is under its capacity; otherwise it
waits in the service's bounded queue (full: OVERLOADED)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from engine.services.events import EventRouter
from engine.services.replay import ReplayCache
from engine.services.workers import Call, Link, MakeRequest, ServiceError, Worker
from protocol import ErrorCode, LocalProtocolError
from protocol.ipc import messages as m

if TYPE_CHECKING:
    from engine.services.host import Host

__all__ = ["Registry", "ServiceEntry"]

log = logging.getLogger("linkd.workers")


class ServiceEntry:
    """A registered service: its routes, its workers, its queue."""

    def __init__(self, registry: Registry, registration: m.Registration) -> None:
        self.registry = registry
        self.name = registration.name
        self.registration = registration
        self.workers: list[Worker] = []
        self.queue: deque[Call] = deque()
        self._rr = 0
        #: Undo functions for the routes mounted for this registration.
        self.unmount: list[Callable[[], None]] = []

    def pick(self) -> Worker | None:
        """The available worker with the fewest calls in flight (ties: round robin)."""
        best: Worker | None = None
        workers = self.workers
        n = len(workers)
        for i in range(n):
            worker = workers[(self._rr + i) % n]
            if worker.available and (best is None or len(worker.in_flight) < len(best.in_flight)):
                best = worker
        if n:
            self._rr = (self._rr + 1) % n
        return best

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if not w.draining]

    async def call(self, make: MakeRequest) -> m.Reply:
        """Send a request built by ``make(id)`` and wait for its reply.

        Raises:
            ServiceError: SERVICE_UNAVAILABLE, OVERLOADED or TIMEOUT.
        """
        registry = self.registry
        if not self.live_workers():
            raise ServiceError(ErrorCode.SERVICE_UNAVAILABLE, f"service {self.name} is unavailable")
        future: asyncio.Future[m.Reply] = registry.state.loop.create_future()
        call = Call(self, make, future)
        worker = self.pick()
        if worker is None:
            if len(self.queue) >= registry.max_queue:
                raise ServiceError(ErrorCode.OVERLOADED, f"service {self.name} is overloaded")
            self.queue.append(call)
        else:
            worker.send_call(call)
        started = registry.state.loop.time()
        call.deadline = started + registry.request_timeout
        registry.state.sweeper.schedule(call)
        try:
            return await future
        finally:
            call.release()
            registry.state.sweeper.cancel(call)
            registry.state.metrics.observe_ipc(self.name, registry.state.loop.time() - started)

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
            if call.future is not None and not call.future.done():
                worker.send_call(call)
        if self.registration.events:
            self.registry.events.pump(self)

    def fail_queue(self) -> None:
        calls, self.queue = list(self.queue), deque()
        for call in calls:
            call.deadline = math.inf
            call.fail(
                ServiceError(ErrorCode.SERVICE_UNAVAILABLE, f"service {self.name} is unavailable")
            )


def _routes(reg: m.Registration) -> tuple[object, ...]:
    return (reg.http, reg.ws, sorted(reg.events))


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
        worker = Worker(self._next_worker, proto)
        self.workers[worker.id] = worker
        return worker

    def register(self, worker: Worker, hello: m.Hello) -> m.Welcome | m.Reject:
        reg = hello.service
        if m.PROTOCOL_VERSION not in hello.versions:
            return m.Reject(
                "VERSION", f"engine speaks IPC version {m.PROTOCOL_VERSION}, not {hello.versions}"
            )
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
                call.deadline = math.inf
                call.fail(error)
            failed += len(calls)
        for worker in self.workers.values():
            calls = list(worker.in_flight.values())
            worker.in_flight = {}
            for call in calls:
                worker.proto.expire(call.id)  # its late reply is not a protocol error
                call.deadline = math.inf
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
        worker.fail_all()
        if entry is not None:
            if worker in entry.workers:
                entry.workers.remove(worker)
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
