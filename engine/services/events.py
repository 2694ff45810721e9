"""EventRouter: hands the events of a service's queue to its workers, one at a time each.

An event is a request like the others (``event``, answered by ``reply``): it uses a
slot of the worker's capacity, has the request timeout as deadline, and is failed
with the worker. A reply (whatever it says: a handler's error is the service's to
log) acks it; a failure (worker gone, timeout) hands it back to the store, which
delivers it again (engine/brokers/events.py). Client requests go first: a worker's
free slots take queued calls before events (``ServiceEntry.pump``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from engine.brokers.events import MAX_EVENT_BYTES, Delivery, EventsFull, EventStore
from engine.services.workers import Call, Outcome, ServiceError, Worker
from protocol import ErrorCode
from protocol.ipc import messages as m

if TYPE_CHECKING:
    from engine.services.host import Host


class ServiceEntry(Protocol):
    """What the router needs of a service (engine/services/registry.py's entry)."""

    name: str
    registration: m.Registration
    workers: list[Worker]
    queue: deque[Call]

    def pick(self) -> Worker | None: ...

    def live_workers(self) -> list[Worker]: ...

    def pump(self) -> None: ...

    def call_ended(self, call: Call) -> None: ...


class Registry(Protocol):
    """What the router needs of the registry (it is given to it, never imported)."""

    state: Host
    request_timeout: float

    @property
    def services(self) -> Mapping[str, ServiceEntry]: ...


__all__ = ["EventRouter", "PublishRefused"]

log = logging.getLogger("linkd.events")


class PublishRefused(Exception):
    """A publish that cannot be queued: ``code`` is what the publisher is told."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EventRouter:
    """The engine's side of events between services (the store's ``EventSink``)."""

    def __init__(self, registry: Registry, store: EventStore) -> None:
        self.registry = registry
        self.store = store
        #: Deliveries acked / handed back, for tests and logs.
        self.acked = 0
        self.redelivered = 0
        store.attach(self)

    # ------------------------------------------------------------ EventSink
    def events_ready(self, service: str) -> None:
        entry = self.registry.services.get(service)
        if entry is not None:
            self.pump(entry)

    def capacity(self, service: str) -> int:
        entry = self.registry.services.get(service)
        if entry is None:
            return 0
        return sum(max(0, w.capacity - len(w.in_flight)) for w in entry.workers if w.available)

    # ------------------------------------------------------------ the registry's calls
    def registered(self, entry: ServiceEntry) -> None:
        """A worker of ``entry`` was welcomed."""
        self.store.subscribe(entry.name, list(entry.registration.events))
        if entry.registration.events:
            self.store.set_live(entry.name, True)

    def worker_left(self, entry: ServiceEntry) -> None:
        """A worker of ``entry`` went away or drained."""
        if not entry.live_workers():
            self.store.set_live(entry.name, False)

    def pump(self, entry: ServiceEntry) -> None:
        """Give waiting events to workers with a free slot (after queued calls)."""
        if not entry.registration.events or entry.queue:
            return
        while True:
            worker = entry.pick()
            if worker is None:
                return
            delivery = self.store.take(entry.name)
            if delivery is None:
                return
            self._send(entry, worker, delivery)

    async def publish(self, source: str | None, name: str, data: bytes) -> list[str]:
        """Queue one event for every subscriber; returns their names.

        Raises:
            PublishRefused: a bad name or data, or a subscriber's queue is full.
        """
        if len(data) > MAX_EVENT_BYTES:
            raise PublishRefused(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"event data is {len(data)} bytes, at most {MAX_EVENT_BYTES}",
            )
        try:
            return await self.store.publish(name, data, source)
        except EventsFull as exc:
            raise PublishRefused(ErrorCode.OVERLOADED, str(exc)) from None

    # ------------------------------------------------------------ one delivery
    def _send(self, entry: ServiceEntry, worker: Worker, delivery: Delivery) -> None:
        registry = self.registry
        loop = registry.state.loop

        def make(request_id: int) -> m.Event:
            return m.Event(
                id=request_id,
                name=delivery.name,
                json=delivery.data,
                attempt=delivery.attempt,
                source=delivery.source,
                time=delivery.time,
            )

        def done(outcome: Outcome) -> None:
            self._finished(entry, delivery, outcome)

        call = Call(entry, make, done)
        call.deadline = loop.time() + registry.request_timeout  # kept by the worker
        try:
            worker.send_call(call)
        except ServiceError as error:
            # At the next turn: a retry pumps again, and must not recurse into a worker
            # that refuses the same way at once.
            loop.call_soon(done, error)

    def _finished(self, entry: ServiceEntry, delivery: Delivery, outcome: Outcome) -> None:
        error = outcome if isinstance(outcome, ServiceError) else None
        if error is None:
            self.acked += 1
            self.store.done(delivery)
        elif error.code is ErrorCode.PAYLOAD_TOO_LARGE:
            log.error("event %s dropped: larger than service %s accepts", delivery.name, entry.name)
            self.store.done(delivery)
        else:
            self.redelivered += 1
            log.info(
                "event %s for %s not acked (%s): delivering it again",
                delivery.name,
                entry.name,
                error,
            )
            self.store.retry(delivery)
        self.pump(entry)
