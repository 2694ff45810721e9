"""Events between services: a work queue per subscribing service (docs/sdk.md, "Events").

A published event is queued once for every service that subscribed to its name (the
``events`` of its workers' registration); one worker of that service takes it and
acks it when its handler returned. Unacked (the worker died, the request timed out)
it goes back to the front of its queue with ``attempt`` one higher. What waits is
bounded per service (``MAX_WAITING_EVENTS``, ``MAX_WAITING_BYTES``, in flight
included): past it the publish is refused (``EventsFull``) for every subscriber, so
nothing is queued for some and lost for others. A service whose last worker went
away keeps its subscription, and its queue, ``SUBSCRIPTION_TTL`` seconds.

``LocalEvents`` keeps the queues in the engine's memory (one node; lost when the
engine stops); ``RedisEvents`` (engine/brokers/redis_events.py) in Redis Streams,
shared by every node. The engine's side that hands events to workers is
engine/services/events.py (``EventRouter``, the ``EventSink`` here).
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = [
    "EVENT_NAME",
    "MAX_ATTEMPTS",
    "MAX_EVENT_BYTES",
    "MAX_WAITING_BYTES",
    "MAX_WAITING_EVENTS",
    "SUBSCRIPTION_TTL",
    "Delivery",
    "EventSink",
    "EventStore",
    "EventsFull",
    "LocalEvents",
]

log = logging.getLogger("linkd.events")

#: Events waiting or in flight per subscribing service; past it a publish is refused.
MAX_WAITING_EVENTS: Final = 10_000
#: The same bound in bytes of event data (16 MiB): 10 000 events of 64 KiB would be
#: 640 MiB of engine (or Redis) memory for one stuck service.
MAX_WAITING_BYTES: Final = 16 * 1024 * 1024
#: The largest event data (JSON text) one publish may carry.
MAX_EVENT_BYTES: Final = 64 * 1024
#: Seconds a service without any live worker keeps its subscriptions and its queue.
SUBSCRIPTION_TTL: Final = 3600.0
#: Deliveries of one event at most: a handler that kills its worker every time (a
#: poison event) must not cycle forever. Past it the event is dropped and logged.
MAX_ATTEMPTS: Final = 10
#: Event names: what ``publish_event`` and ``on_event`` accept.
EVENT_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")


@dataclass(slots=True)
class Delivery:
    """One event for one service, from its queue to the ack."""

    service: str
    name: str
    #: The event's data, JSON text as the publisher sent it.
    data: bytes
    #: The publishing service.
    source: str | None
    #: When it was published, in ms since the Unix epoch.
    time: float
    attempt: int = 1
    #: The backend's handle (Redis: the stream entry id).
    ref: Any = None


def exhausted(delivery: Delivery) -> bool:
    """True (and logged) once ``delivery`` was tried ``MAX_ATTEMPTS`` times: dropped."""
    if delivery.attempt < MAX_ATTEMPTS:
        return False
    log.error(
        "event %s for service %s dropped after %d deliveries without an ack",
        delivery.name,
        delivery.service,
        delivery.attempt,
    )
    return True


class EventsFull(Exception):
    """A subscriber's queue is at its bound: the publish was refused for all."""

    def __init__(self, service: str, waiting: int) -> None:
        super().__init__(
            f"service {service!r} has {waiting} events waiting (bound {MAX_WAITING_EVENTS} "
            f"events, {MAX_WAITING_BYTES} bytes)"
        )
        self.service = service


class EventSink(Protocol):
    """What a store hands deliveries to: the engine's ``EventRouter``."""

    def events_ready(self, service: str) -> None:
        """Deliveries of ``service`` may be taken (``take``) now."""

    def capacity(self, service: str) -> int:
        """How many more events the live workers of ``service`` on this node take now."""


class EventStore(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def attach(self, sink: EventSink) -> None: ...

    def subscribe(self, service: str, names: list[str]) -> None:
        """``service``'s workers consume ``names`` (replaces what it consumed before)."""

    def set_live(self, service: str, live: bool) -> None:
        """Whether ``service`` has a live worker on this node."""

    async def publish(self, name: str, data: bytes, source: str | None) -> list[str]:
        """Queue the event for every subscriber; returns their names, sorted.

        Raises:
            EventsFull: a subscriber is at its bound (queued for none).
        """

    def take(self, service: str) -> Delivery | None:
        """The next delivery of ``service`` for a worker of this node, if any."""

    def done(self, delivery: Delivery) -> None:
        """Its handler returned: forget it."""

    def retry(self, delivery: Delivery) -> None:
        """Its handler did not finish: deliver it again (to any worker)."""


class _Queue:
    __slots__ = ("bytes", "in_flight", "ready")

    def __init__(self) -> None:
        self.ready: deque[Delivery] = deque()
        self.in_flight = 0
        self.bytes = 0

    @property
    def waiting(self) -> int:
        return len(self.ready) + self.in_flight


class LocalEvents:
    """The queues in this engine's memory (no ``--redis``)."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._sink: EventSink | None = None
        #: Event name → the services that consume it.
        self._subs: dict[str, set[str]] = {}
        self._names: dict[str, list[str]] = {}
        self._queues: dict[str, _Queue] = {}
        #: Services without a live worker → when their last one went away.
        self._gone_at: dict[str, float] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        waiting = sum(q.waiting for q in self._queues.values())
        if waiting:
            log.warning("engine stopping: %d service event(s) not delivered are lost", waiting)

    def attach(self, sink: EventSink) -> None:
        self._sink = sink

    def subscribe(self, service: str, names: list[str]) -> None:
        for name in self._names.get(service, []):
            self._subs.get(name, set()).discard(service)
        self._names[service] = list(names)
        for name in names:
            self._subs.setdefault(name, set()).add(service)
        self._queues.setdefault(service, _Queue())

    def set_live(self, service: str, live: bool) -> None:
        # Live again: the registry pumps once the worker's welcome is out.
        if live:
            self._gone_at.pop(service, None)
        else:
            self._gone_at.setdefault(service, self._clock())

    def _expired(self, service: str) -> bool:
        gone = self._gone_at.get(service)
        if gone is None or self._clock() - gone < SUBSCRIPTION_TTL:
            return False
        queue = self._queues.get(service)
        lost = queue.waiting if queue is not None else 0
        log.warning(
            "service %s had no worker for %.0f s: its event subscriptions end, %d event(s) "
            "waiting for it dropped",
            service,
            SUBSCRIPTION_TTL,
            lost,
        )
        self.subscribe(service, [])
        self._queues.pop(service, None)
        self._names.pop(service, None)
        self._gone_at.pop(service, None)
        return True

    async def publish(self, name: str, data: bytes, source: str | None) -> list[str]:
        services = sorted(s for s in self._subs.get(name, ()) if not self._expired(s))
        queues = [self._queues[s] for s in services]
        for service, queue in zip(services, queues, strict=True):
            if queue.waiting >= MAX_WAITING_EVENTS or queue.bytes + len(data) > MAX_WAITING_BYTES:
                raise EventsFull(service, queue.waiting)
        now = time.time() * 1000.0
        for service, queue in zip(services, queues, strict=True):
            queue.ready.append(Delivery(service, name, data, source, now))
            queue.bytes += len(data)
        if self._sink is not None:
            for service in services:
                self._sink.events_ready(service)
        return services

    def take(self, service: str) -> Delivery | None:
        queue = self._queues.get(service)
        if queue is None or not queue.ready:
            return None
        queue.in_flight += 1
        return queue.ready.popleft()

    def done(self, delivery: Delivery) -> None:
        queue = self._queues.get(delivery.service)
        if queue is not None:
            queue.in_flight -= 1
            queue.bytes -= len(delivery.data)

    def retry(self, delivery: Delivery) -> None:
        queue = self._queues.get(delivery.service)
        if queue is None:
            return
        if exhausted(delivery):
            self.done(delivery)
            return
        queue.in_flight -= 1
        delivery.attempt += 1
        queue.ready.appendleft(delivery)  # first in line again: it waited longest
        if self._sink is not None:
            self._sink.events_ready(delivery.service)

    def waiting(self, service: str) -> int:
        queue = self._queues.get(service)
        return queue.waiting if queue is not None else 0
