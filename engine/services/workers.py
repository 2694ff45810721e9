"""Worker and Call: one connected worker process, one request to a service.

A request (HTTP action, WebSocket connect or message) becomes a ``Call``; the registry
(engine/services/registry.py) picks its worker or queues it. Every call has one
deadline (→ TIMEOUT), kept by its worker (or its service while queued). A worker that
goes away fails its calls in flight with SERVICE_UNAVAILABLE; queued calls wait for the
others.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from engine.core.sweeper import Sweeper
from protocol import ErrorCode, LocalProtocolError
from protocol.ipc import PeerFrameTooLarge
from protocol.ipc import messages as m

__all__ = ["Call", "Link", "MakeRequest", "Pool", "ServiceError", "Worker"]

log = logging.getLogger("linkd.workers")

MakeRequest = Callable[[int], Any]


class Pool(Protocol):
    """What a call and a worker need of their service (``ServiceEntry``)."""

    queue: deque[Call]

    def pump(self) -> None:
        """Hand queued calls to workers that have room."""

    def call_ended(self, call: Call) -> None:
        """``call`` ended (settled or abandoned): its latency is observed."""


class Link(Protocol):
    """What a worker needs of its connection (``IpcProtocol``, engine/services/connection.py)."""

    @property
    def max_frame(self) -> int: ...

    def send(self, msg: Any) -> None: ...

    def expire(self, request_id: int) -> None: ...

    def abort(self) -> None: ...


class ServiceError(Exception):
    """A call failed; ``code`` is what the client is told."""

    def __init__(self, code: ErrorCode, message: str, details: bytes | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


def _spent(request_id: int) -> Any:
    raise RuntimeError("this call is finished")


#: What a call ends with: the worker's reply, or why there is none.
Outcome = m.Reply | ServiceError
Done = Callable[[Outcome], None]


class Call:
    """One request to a service, from queueing to its reply (or failure).

    It ends exactly once, by ``settle``: a reply, a timeout, the worker gone. Its
    ``deadline`` is kept by its worker, or its service while queued: one timer each on
    the sweeper for all their calls, not one per call. ``done``
    is a plain callback run right there (in the IPC read that brought the reply), not a
    future: a WebSocket message's ack is built and queued without a task, a future or
    a loop turn in between (docs/architecture.md, "the worker hop").
    """

    __slots__ = ("deadline", "done", "entry", "id", "make", "started", "worker")

    def __init__(self, entry: Pool, make: MakeRequest, done: Done) -> None:
        self.entry = entry
        self.make = make
        #: None once settled (or abandoned).
        self.done: Done | None = done
        self.worker: Worker | None = None
        self.id = 0
        self.deadline = math.inf
        self.started = 0.0

    @property
    def finished(self) -> bool:
        return self.done is None

    def settle(self, outcome: Outcome) -> None:
        """End the call with ``outcome`` (nothing happens if it ended already)."""
        done = self.done
        if done is None:
            return
        self.abandon()
        done(outcome)

    def abandon(self) -> None:
        """Nobody waits any more (the caller was cancelled): let go of the request now;
        a late reply is dropped."""
        self.done = None
        # The deadline stays: an abandoned call in flight still holds a slot of its
        # worker until the reply comes or the deadline passes.
        self.make = _spent
        self.worker = None
        self.entry.call_ended(self)

    def fail(self, error: ServiceError) -> None:
        self.settle(error)


class Worker:
    """The engine's view of one connected worker process."""

    __slots__ = (
        "_next_id",
        "_timers",
        "capacity",
        "deadline",
        "draining",
        "entry",
        "id",
        "in_flight",
        "pid",
        "proto",
    )

    def __init__(self, worker_id: int, proto: Link, timers: Sweeper) -> None:
        self.id = worker_id
        self.proto = proto
        self._timers = timers
        #: The earliest deadline of its calls in flight (when the sweeper calls back).
        self.deadline = math.inf
        self.entry: Pool | None = None
        self.in_flight: dict[int, Call] = {}
        self.capacity = 1
        self.draining = False
        self.pid = 0
        self._next_id = 0

    @property
    def available(self) -> bool:
        return not self.draining and len(self.in_flight) < self.capacity

    def send_call(self, call: Call) -> None:
        """Hand ``call`` to this worker.

        Raises:
            ServiceError: PAYLOAD_TOO_LARGE (the request exceeds the worker's frame)
                or SERVICE_UNAVAILABLE (its socket is closing); the call was not sent.
        """
        self._next_id += 1
        call.id = self._next_id
        call.worker = self
        self.in_flight[call.id] = call
        if call.deadline < self.deadline:
            self.deadline = call.deadline
            self._timers.schedule(self)
        try:
            self.proto.send(call.make(call.id))
        except PeerFrameTooLarge:
            del self.in_flight[call.id]
            call.worker = None
            raise ServiceError(
                ErrorCode.PAYLOAD_TOO_LARGE, "request too large for the service"
            ) from None
        except LocalProtocolError:
            # The socket is closing: the same as a worker that went away.
            del self.in_flight[call.id]
            call.worker = None
            raise ServiceError(
                ErrorCode.SERVICE_UNAVAILABLE, "the service worker went away"
            ) from None

    def on_reply(self, reply: m.Reply) -> None:
        call = self.in_flight.pop(reply.id, None)
        if call is None:
            return  # timed out earlier: dropped (docs/ipc.md §5 R9)
        call.settle(reply)
        if self.entry is not None:
            self.entry.pump()

    def on_deadline(self, now: float) -> None:
        """Calls in flight past their deadline fail with TIMEOUT (their late replies
        are dropped); then wait for the next earliest."""
        self.deadline = math.inf
        in_flight = self.in_flight
        late = [call for call in in_flight.values() if call.deadline <= now]
        for call in late:
            del in_flight[call.id]
            self.proto.expire(call.id)
            call.fail(ServiceError(ErrorCode.TIMEOUT, "the service did not answer"))
        earliest = min((call.deadline for call in in_flight.values()), default=math.inf)
        if earliest < self.deadline:
            self.deadline = earliest
            self._timers.schedule(self)
        if late and self.entry is not None:
            self.entry.pump()

    def fail_all(self) -> None:
        calls, self.in_flight = list(self.in_flight.values()), {}
        self.deadline = math.inf
        self._timers.cancel(self)
        for call in calls:
            call.fail(ServiceError(ErrorCode.SERVICE_UNAVAILABLE, "the service worker went away"))
