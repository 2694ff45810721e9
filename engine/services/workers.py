"""Worker and Call: one connected worker process, one request to a service.

A request (HTTP action, WebSocket connect or message) becomes a ``Call``; the registry
(engine/services/registry.py) picks its worker or queues it. Every call has one
deadline on the engine's sweeper (→ TIMEOUT). A worker that goes away fails its calls
in flight with SERVICE_UNAVAILABLE; queued calls wait for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

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


class Call:
    """One request to a service, from queueing to its reply (or failure)."""

    __slots__ = ("deadline", "entry", "future", "id", "make", "worker")

    def __init__(self, entry: Pool, make: MakeRequest, future: asyncio.Future[m.Reply]):
        self.entry = entry
        self.make = make
        #: None once finished (``release``).
        self.future: asyncio.Future[m.Reply] | None = future
        self.worker: Worker | None = None
        self.id = 0
        self.deadline = math.inf

    def release(self) -> None:
        """Finished: let go of the request and the reply now. The timer wheel may hold
        this object until its deadline (the request timeout, 30 s by default): it must
        not keep a kilobyte per request alive for that long."""
        self.deadline = math.inf
        self.make = _spent
        self.future = None
        self.worker = None

    def on_deadline(self, now: float) -> None:
        if self.future is None or self.future.done():
            self.deadline = math.inf
            return
        if self.worker is not None:
            self.worker.expire(self)
        else:
            with contextlib.suppress(ValueError):
                self.entry.queue.remove(self)
        self.deadline = math.inf
        self.fail(ServiceError(ErrorCode.TIMEOUT, "the service did not answer"))

    def fail(self, error: ServiceError) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(error)


class Worker:
    """The engine's view of one connected worker process."""

    __slots__ = ("_next_id", "capacity", "draining", "entry", "id", "in_flight", "pid", "proto")

    def __init__(self, worker_id: int, proto: Link) -> None:
        self.id = worker_id
        self.proto = proto
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
        self._next_id += 1
        call.id = self._next_id
        call.worker = self
        self.in_flight[call.id] = call
        try:
            self.proto.send(call.make(call.id))
        except PeerFrameTooLarge:
            del self.in_flight[call.id]
            call.fail(
                ServiceError(ErrorCode.PAYLOAD_TOO_LARGE, "request too large for the service")
            )
        except LocalProtocolError:
            # The socket is closing: the same as a worker that went away.
            del self.in_flight[call.id]
            call.fail(ServiceError(ErrorCode.SERVICE_UNAVAILABLE, "the service worker went away"))

    def on_reply(self, reply: m.Reply) -> None:
        call = self.in_flight.pop(reply.id, None)
        if call is None:
            return  # timed out earlier: dropped (docs/ipc.md §5 R9)
        call.deadline = math.inf
        if call.future is not None and not call.future.done():
            call.future.set_result(reply)
        if self.entry is not None:
            self.entry.pump()

    def expire(self, call: Call) -> None:
        self.in_flight.pop(call.id, None)
        self.proto.expire(call.id)
        if self.entry is not None:
            self.entry.pump()

    def fail_all(self) -> None:
        calls, self.in_flight = list(self.in_flight.values()), {}
        for call in calls:
            call.deadline = math.inf
            call.fail(ServiceError(ErrorCode.SERVICE_UNAVAILABLE, "the service worker went away"))
