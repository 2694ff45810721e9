"""What every connection of one engine shares: config, clocks, registries, the corker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import ValuesView
from typing import TYPE_CHECKING, Protocol

from protocol.ws import SharedDeflater

from .app import Routes
from .auth import Authenticator
from .broker import Broker, LocalBroker
from .config import Config
from .history import StreamHistory
from .hub import Hub
from .metrics import Histogram, Metrics
from .presence import Presence
from .ratelimit import AddressRates, ConnectionLimiter
from .sweeper import Sweeper

if TYPE_CHECKING:
    from .http_protocol import HttpProtocol
    from .redis_presence import RedisPresence
    from .workers import Registry
    from .ws_protocol import WsProtocol

__all__ = ["Corker", "Flushable", "ServerState"]


class Flushable(Protocol):
    def flush(self) -> None: ...


class Corker:
    """Collects the frames queued to each connection during one loop iteration.

    The first frame queued to a connection registers it here; one ``call_soon``
    flushes every registered connection with a single ``write``/``writelines``, after
    the callbacks already due in this iteration. An idle system adds no timer and no
    delay; a busy one turns N deliveries to a connection into one system call.
    """

    __slots__ = ("_latency", "_loop", "_pending", "_published", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, latency: Histogram | None = None) -> None:
        self._loop = loop
        self._pending: list[Flushable] = []
        self._scheduled = False
        #: perf_counter() of each publish queued during this iteration.
        self._published: list[float] = []
        self._latency = latency

    def add(self, proto: Flushable) -> None:
        self._pending.append(proto)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    @property
    def idle(self) -> bool:
        """Nothing corked in this iteration yet."""
        return not self._pending

    def published(self, started: float) -> None:
        """A publish queued its frames: observe its latency when they are written."""
        self._published.append(started)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for proto in pending:
            proto.flush()
        if self._published:
            published, self._published = self._published, []
            if self._latency is not None:
                now = time.perf_counter()
                for started in published:
                    self._latency.observe(now - started)


class ServerState:
    """Shared by the listener and every protocol instance of one ``Engine``."""

    def __init__(
        self, config: Config, routes: Routes, loop: asyncio.AbstractEventLoop, metrics: Metrics
    ) -> None:
        self.config = config
        self.limits = config.limits
        self.routes = routes
        self.loop = loop
        self.metrics = metrics
        self.sweeper = Sweeper(loop, config.timer_resolution)
        self.corker = Corker(loop, metrics.fanout_latency)
        #: Slow-consumer policies by path and event type.
        self.slow = config.slow_consumer_policies()
        self.presence: Presence | RedisPresence = Presence(loop, config.presence_grace)
        self.broker: Broker = self._make_broker(config)
        if config.redis_url:
            from .redis_broker import RedisBroker
            from .redis_presence import RedisPresence

            assert isinstance(self.broker, RedisBroker)
            self.presence = RedisPresence(
                loop,
                self.broker.client,
                self.broker.node,
                config.presence_grace,
                config.presence_lease,
            )
        self.hub = Hub(
            self.presence,
            self.slow,
            metrics,
            self.corker,
            self.broker,
            config.limits.compression_threshold,
        )
        if isinstance(self.broker, LocalBroker):
            self.broker.attach(self.hub)
        # The in-memory history is pruned here; Redis expires its own keys.
        self._prune_timer: asyncio.TimerHandle | None = (
            loop.call_later(60.0, self._prune) if isinstance(self.broker, LocalBroker) else None
        )
        #: Upgrade-time caps: open connections in all and per address, new ones per address.
        self.limiter = ConnectionLimiter(
            max_connections=config.max_connections,
            per_ip=config.max_connections_per_ip,
            rate=config.new_connections_per_ip,
            burst=config.new_connections_burst,
            table_size=config.ip_table_size,
        )
        #: The per-address HTTP request rate (None: off).
        self.http_rates = (
            AddressRates(config.http_rate, config.http_burst, config.ip_table_size)
            if config.http_rate > 0
            else None
        )
        #: HTTP connections holding a ``max_connections`` slot (an upgrade hands its
        #: slot to the WebSocket, counted in ``ws_connections``).
        self.http_slots = 0
        self.authenticator = Authenticator(
            secret=config.jwt_secret,
            public_key=config.jwt_public_key,
            jwks=config.jwks,
            audience=config.jwt_audience,
            issuer=config.jwt_issuer,
            leeway=config.jwt_leeway,
        )
        #: Services and workers (set by Engine.start).
        self.registry: Registry
        self.http_connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.shutting_down = False
        self._idle: asyncio.Event | None = None
        self._deflaters: dict[int, SharedDeflater] = {}
        self._next_id = 0

    def _make_broker(self, config: Config) -> Broker:
        if config.redis_url:
            from .redis_broker import RedisBroker  # redis is only imported when used

            return RedisBroker(config, self.metrics)
        return LocalBroker(StreamHistory(config.history_size, config.history_ttl, self.loop.time))

    def _prune(self) -> None:
        assert isinstance(self.broker, LocalBroker)
        self.broker.history.prune()
        self._prune_timer = self.loop.call_later(60.0, self._prune)

    def close(self) -> None:
        """Stop the state's own timers (the engine stopped)."""
        if self._prune_timer is not None:
            self._prune_timer.cancel()
            self._prune_timer = None
        self.sweeper.close()
        self.presence.close()

    @property
    def ws_connections(self) -> ValuesView[WsProtocol]:
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

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.check_idle()

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

    def spawn(self, coro: asyncio.Future[None] | asyncio.Task[None] | object) -> None:
        """Run a coroutine as a task the engine tracks (and awaits at shutdown)."""
        task: asyncio.Task[None] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
