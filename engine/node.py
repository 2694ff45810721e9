"""Node: what the protocols of one engine share, as a plain holder.

engine/server.py (the composition root) builds every part in order and passes them
in; nothing here constructs a sibling. http/ and ws/ read it; services/ does not
import it (it states what it needs as ``engine/services/host.py``'s ``Host``, which
this class satisfies).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, ValuesView
from typing import TYPE_CHECKING, Any, Protocol

from engine.api.routes import Routes
from engine.auth import Authenticator
from engine.brokers.base import Broker
from engine.brokers.presence import Presence
from engine.config import Config
from engine.core.corker import Corker
from engine.core.metrics import Metrics
from engine.core.sweeper import Sweeper
from engine.core.tasks import Tasks
from engine.hub.hub import Hub
from engine.hub.member import Member
from engine.limits.ratelimit import AddressRates, ConnectionLimiter
from engine.limits.slow import PolicyTable
from protocol.ws import SharedDeflater

if TYPE_CHECKING:
    from engine.brokers.redis_presence import RedisPresence
    from engine.services.registry import Registry

__all__ = ["HttpConnection", "Node"]


class HttpConnection(Protocol):
    """What shutdown needs of an HTTP connection (engine/http/protocol.py)."""

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


class Node:
    """Shared by the listener and every protocol instance of one ``Engine``."""

    def __init__(
        self,
        *,
        config: Config,
        routes: Routes,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics,
        sweeper: Sweeper,
        corker: Corker,
        slow: PolicyTable,
        presence: Presence | RedisPresence,
        broker: Broker,
        hub: Hub,
        limiter: ConnectionLimiter,
        http_rates: AddressRates | None,
        authenticator: Authenticator,
    ) -> None:
        self.config = config
        self.limits = config.limits
        #: A frame this size or smaller cannot take an unpaused connection past
        #: ``max_outbound_bytes`` (its transport holds at most ``write_high_water``):
        #: outbound.py's ``send_now`` then skips the buffer-size call.
        self.frame_headroom = config.limits.max_outbound_bytes - config.limits.write_high_water
        self.routes = routes
        self.loop = loop
        self.metrics = metrics
        self.sweeper = sweeper
        self.corker = corker
        #: Slow-consumer policies by path and event type.
        self.slow = slow
        self.presence = presence
        self.broker = broker
        self.hub = hub
        #: Upgrade-time caps: open connections in all and per address, new ones per address.
        self.limiter = limiter
        #: The per-address HTTP request rate (None: off).
        self.http_rates = http_rates
        #: HTTP connections holding a ``max_connections`` slot (an upgrade hands its
        #: slot to the WebSocket, counted in ``ws_connections``).
        self.http_slots = 0
        self.authenticator = authenticator
        #: Services and workers (set by Engine.start: the registry is given this node).
        self.registry: Registry
        self.http_connections: set[HttpConnection] = set()
        self.tasks = Tasks(loop, self.check_idle)
        self.shutting_down = False
        self._idle: asyncio.Event | None = None
        self._deflaters: dict[int, SharedDeflater] = {}
        self._next_id = 0

    def close(self) -> None:
        """Stop the node's own timers (the engine stopped)."""
        self.sweeper.close()
        self.presence.close()

    @property
    def ws_connections(self) -> ValuesView[Member]:
        """Every open WebSocket (a live view of the hub's index: no second copy)."""
        return self.hub.by_id.values()

    @property
    def open_connections(self) -> int:
        """Client connections holding a ``max_connections`` slot: HTTP and WebSocket."""
        return self.http_slots + len(self.ws_connections)

    @property
    def busy(self) -> bool:
        return bool(self.ws_connections or self.http_connections or self.tasks)

    def check_idle(self) -> None:
        """Called when a connection or task ends: wakes ``wait_idle`` at the last one."""
        if self._idle is not None and not self.busy:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until no connection is open and no handler task runs (used at shutdown)."""
        self._idle = asyncio.Event()
        if self.busy:
            await self._idle.wait()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine as a task the engine tracks (and awaits at shutdown)."""
        self.tasks.spawn(coro)

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def shared_deflater(self, window_bits: int) -> SharedDeflater:
        """The one context-free compressor for a window size (see ``SharedDeflater``)."""
        deflater = self._deflaters.get(window_bits)
        if deflater is None:
            opts = self.config.deflate
            deflater = SharedDeflater(window_bits, opts.level, opts.mem_level)
            self._deflaters[window_bits] = deflater
        return deflater
