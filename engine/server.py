"""Engine: listeners, lifecycle and graceful shutdown; the object embedders use.

engine = Engine(Config(port=8080))
engine.websocket("/echo", EchoEndpoint())
await engine.start()
...
await engine.stop()          # 1001 to WebSocket clients, finish HTTP, then close

Over 400 lines on purpose: it is the composition root (the one place that builds the
node, hub, broker, registry and listeners and wires them together) and the lifecycle
that must undo them in order (start, SIGHUP reload, the bounded drain). Split, the
order of construction and of teardown would live in two files that must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from engine.api.endpoint import WebSocket, WebSocketEndpoint
from engine.api.request import HttpHandler, Request, Response
from engine.api.routes import Routes
from engine.auth import Authenticator
from engine.brokers.base import Broker
from engine.brokers.history import StreamHistory
from engine.brokers.local import LocalBroker
from engine.brokers.presence import Presence, PresenceListener
from engine.brokers.publish import Publish
from engine.config import Config
from engine.core.corker import Corker
from engine.core.metrics import Metrics
from engine.core.sweeper import Sweeper
from engine.http.admin import Admin, AdminProtocol
from engine.http.protocol import HttpProtocol
from engine.http.server_api import ServerApi
from engine.hub.fanout import prepare
from engine.hub.hub import Hub
from engine.hub.member import Member
from engine.limits.ratelimit import AddressRates, ConnectionLimiter
from engine.node import Node
from engine.services.listener import start_ipc_server
from engine.services.registry import Registry
from engine.services.routing import mount_service
from engine.services.supervisor import Supervisor
from engine.tls import Certificates
from engine.ws.echo import EchoEndpoint
from protocol import CloseCode, ErrorCode

if TYPE_CHECKING:
    from engine.brokers.redis_presence import RedisPresence

__all__ = ["DRAIN_REASON", "Engine"]

#: The close reason of a shutdown: a client may reconnect at once (to another node)
#: and resume (docs/recovery.md).
DRAIN_REASON = "server restarting: reconnect and resume"

log = logging.getLogger("linkd.server")


class Engine:
    """A Linkd engine: mount handlers, then ``start()`` inside a running loop.

    Args:
        config: everything tunable; the defaults listen on ``0.0.0.0:3000``.
    """

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.routes = Routes()
        self.metrics = Metrics()
        self._server: asyncio.Server | None = None
        #: The listener's certificate when ``config.tls`` (re-read by ``reload``).
        self.tls: Certificates | None = None
        self._ipc_server: asyncio.Server | None = None
        #: The admin listener (``Config.admin_host``) and its routes.
        self._admin_server: asyncio.Server | None = None
        self._admin: Admin | None = None
        self._supervisor: Supervisor | None = None
        self._state: Node | None = None
        self._stopped: asyncio.Event | None = None
        #: Set once the workers were told to stop (``_begin_worker_stop``).
        self._workers_stopping: asyncio.Future[None] | None = None
        self._presence_listeners: list[PresenceListener] = []
        #: The server API (engine/http/server_api.py), built at start.
        self._api: ServerApi | None = None
        for path in self.config.echo_paths:
            self.websocket(path, EchoEndpoint())
        if self.config.api_on_client_port:
            self.route("POST", "/api/:method", self._serve_api)

    # ------------------------------------------------------------- mounting
    def route(self, method: str, path: str, handler: HttpHandler) -> None:
        """Serve ``method path`` with ``async def handler(request) -> Response``."""
        self.routes.add_http(method, path, handler)

    def http(self, method: str, path: str) -> Callable[[HttpHandler], HttpHandler]:
        """Decorator form of ``route``."""

        def register(handler: HttpHandler) -> HttpHandler:
            self.route(method, path, handler)
            return handler

        return register

    def websocket(self, path: str, endpoint: WebSocketEndpoint) -> None:
        """Accept WebSocket upgrades on ``path``, handled by ``endpoint``."""
        self.routes.add_websocket(path, endpoint)

    def broadcast(self, data: str | bytes, targets: Iterable[WebSocket] | None = None) -> int:
        """Send one message to ``targets`` (default: every open WebSocket), encoded once.

        Returns the number of connections it was queued to. Never waits for any of
        them: slow ones are handled by the slow-consumer policy.
        """
        state = self.state
        message = prepare(data, state.limits.compression_threshold)
        publish = Publish(kind="*", payload=message.payload)
        # Iterating the live set is safe: queuing never removes a connection from it
        # (a slow consumer is closed later, in connection_lost).
        if targets is None:
            return state.hub.fan(publish, message, state.ws_connections)
        # Every WebSocket handed out is a WsProtocol, which is also a hub Member.
        return state.hub.fan(publish, message, cast("Iterable[Member]", targets))

    def on_presence(self, listener: PresenceListener) -> PresenceListener:
        """Call ``listener(user_id, username, online)`` when a user comes or goes.

        Online at the user's first connection; offline once the last one has been
        closed for ``Config.presence_grace`` seconds. Usable as a decorator.
        """
        self._presence_listeners.append(listener)
        if self._state is not None:
            self._state.presence.listeners.append(listener)
        return listener

    def is_online(self, user_id: str) -> bool:
        return self.state.presence.is_online(user_id)

    def room_presence(self, room: str) -> list[dict[str, object]]:
        """The users in ``room``: ``[{userId, username, connections}]``."""
        return self.state.hub.room_presence(room)

    # ------------------------------------------------------------ lifecycle
    @property
    def state(self) -> Node:
        if self._state is None:
            raise RuntimeError("the engine is not started")
        return self._state

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the engine is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def admin_port(self) -> int:
        """The admin listener's bound port (``Config.admin_host`` set)."""
        if self._admin_server is None or not self._admin_server.sockets:
            raise RuntimeError("the engine has no admin listener")
        return int(self._admin_server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting; returns once listening."""
        if self._server is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        started = loop.time()
        config = self.config
        if config.tls:
            assert config.tls_cert is not None and config.tls_key is not None
            # Before anything is bound or started: a bad file stops the start here.
            self.tls = Certificates(
                config.tls_cert,
                config.tls_key,
                ciphers=config.tls_ciphers,
                min_version=config.tls_min_version,
            )
        self._state = state = build_node(self.config, self.routes, loop, self.metrics)
        self._api = ServerApi(state, started)
        self._stopped = asyncio.Event()
        state.presence.listeners.extend(self._presence_listeners)
        await state.broker.start(state.hub)
        presence = state.presence
        if not isinstance(presence, Presence):
            presence.start()
        state.registry = Registry(
            state,
            lambda entry: mount_service(state, entry),
            request_timeout=config.request_timeout,
            worker_concurrency=config.worker_concurrency,
            max_queue=config.service_queue,
            heartbeat=config.ipc_heartbeat,
        )
        if config.ipc_path:
            self._ipc_server = await start_ipc_server(
                state, state.registry, config.ipc_path, config.ipc_mode, config.ipc_max_frame
            )
        elif config.services:
            raise ValueError("--service needs an IPC socket (--ipc)")
        self._server = await loop.create_server(
            lambda: HttpProtocol(state),
            config.host,
            config.port,
            backlog=config.backlog,
            reuse_address=True,
            # engine --processes: every process binds the port, the kernel spreads
            # new connections over them (engine/cli/processes.py).
            reuse_port=config.reuse_port,
            **self._tls_options(),
        )
        log.info(
            "listening on %s:%d%s (WebSocket paths: %s)",
            config.host,
            self.port,
            " with TLS" if self.tls else "",
            ", ".join(sorted(self.routes.websocket)) or "none",
        )
        if self.tls:
            _log_certificate(self.tls, "serving")
        if config.admin_host is not None:
            # After the client port: /ready must not say yes before clients can connect.
            await self._start_admin(state, started)
        if config.services and config.ipc_path:
            self._supervisor = Supervisor(
                config.services, config.workers, config.ipc_path, config.shutdown_grace
            )
            self._supervisor.start()

    async def _serve_api(self, request: Request) -> Response:
        """``--api-on-client-port``: the server API under ``/api/`` of the client port."""
        api = self._api
        if api is None or not api.enabled:
            return Response.error(ErrorCode.NOT_FOUND, "the server API is off (no --api-key)")
        peer = request.remote[0] if request.remote else ""
        status, headers, body = await api.answer(request.http, peer)
        return Response(status, headers, body)

    async def _start_admin(self, state: Node, started: float) -> None:
        """Bind ``--admin-listen``; it answers until the very end of ``stop``."""
        config = self.config
        self._admin = admin = Admin(state, started, self._api)
        try:
            self._admin_server = await state.loop.create_server(
                lambda: AdminProtocol(admin),
                config.admin_host,
                config.admin_port,
                reuse_address=True,
            )
        except OSError:
            # The start fails as a whole: nothing half-started keeps accepting clients.
            await self.stop(grace=0)
            raise
        log.info(
            "admin listener on %s:%d (/metrics, /health, /ready)",
            config.admin_host,
            self.admin_port,
        )

    def _tls_options(self) -> dict[str, Any]:
        """``create_server`` keywords for TLS: the context, and its timeouts.

        The handshake has ``header_timeout`` (the HTTP protocol, and its header timer,
        start only once it is done: a client that stalls it would otherwise hold a
        socket for asyncio's 60 s); closing waits ``close_timeout`` for the peer's
        close_notify.
        """
        if self.tls is None:
            return {}
        config = self.config
        return {
            "ssl": self.tls.context,
            "ssl_handshake_timeout": config.header_timeout or None,
            "ssl_shutdown_timeout": config.close_timeout or None,
        }

    def reload(self) -> list[str]:
        """Re-read the TLS certificate and key and the token key files (SIGHUP).

        What loads is used by new connections and tokens verified from now on; open
        connections are not touched. A file that does not load changes nothing: the
        previous certificate or keys stay, the reason is logged, and returned.
        """
        errors: list[str] = []
        if self.tls is not None:
            error = self.tls.reload()
            if error is None:
                _log_certificate(self.tls, "reloaded")
            else:
                log.error("TLS certificate not reloaded, the previous one stays: %s", error)
                errors.append(error)
        if self._state is not None:
            error = self._state.authenticator.reload()
            if error is not None:
                errors.append(error)
        return errors

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, close WebSockets with 1001, finish HTTP, stop the workers:
        all within ``grace`` seconds (default ``Config.shutdown_grace``).

        One deadline, computed now, is shared by every phase. Clients and the calls
        they wait for may finish until the last slice of the grace (``_FINAL_SLICE``,
        at most a quarter of it); then every call still unanswered is failed with
        SERVICE_UNAVAILABLE (the client gets a 503 or an error reply, not a reset) and
        the workers are told to stop. At the deadline what is left is dropped: client
        connections, worker connections, and worker processes (SIGKILL). Only steps
        that must still complete after it (reaping killed workers, closing Redis) may
        take up to ``_CLEANUP`` seconds more.
        """
        if self._server is None or self._state is None:
            return
        grace = self.config.shutdown_grace if grace is None else grace
        state = self._state
        loop = state.loop
        started = loop.time()
        deadline = started + grace
        final = deadline - min(_FINAL_SLICE, grace / 4)
        cleanup = deadline + _CLEANUP
        state.shutting_down = True
        self._server.close()  # stop accepting
        for http in list(state.http_connections):
            http.shutdown()
        closing = asyncio.ensure_future(self._close_in_batches(state))
        if not await _until(final, _clients_done(state, closing, shield=True)):
            failed = state.registry.abandon_calls("the engine is shutting down")
            if failed:
                log.warning(
                    "grace nearly over: %d service call(s) failed (SERVICE_UNAVAILABLE)", failed
                )
            self._begin_worker_stop(state)
            await _until(deadline, _clients_done(state, closing, shield=False))
        closing.cancel()
        left = len(state.ws_connections) + len(state.http_connections)
        if left:
            log.warning("grace period over: dropping %d connections", left)
        for ws in list(state.ws_connections):
            ws.abort()
        for http in list(state.http_connections):
            http.abort()
        for task in list(state.tasks):
            task.cancel()
        if state.tasks:
            await _until(cleanup, asyncio.gather(*state.tasks, return_exceptions=True))
        await _until(min(cleanup, loop.time() + 1.0), self._server.wait_closed())
        await self._stop_workers(state, deadline, cleanup)
        if not isinstance(state.presence, Presence):
            # Before the broker: they share its client.
            await _until(max(cleanup, loop.time() + 0.25), state.presence.stop())
        await _until(max(cleanup, loop.time() + 0.25), state.broker.stop())
        # Last: probes saw /ready 503 and /health 200 for the whole drain.
        self._close_admin()
        state.close()
        self._server = None
        log.info("stopped in %.2fs", loop.time() - started)
        assert self._stopped is not None
        self._stopped.set()

    def _close_admin(self) -> None:
        if self._admin_server is not None:
            self._admin_server.close()
            self._admin_server = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def _begin_worker_stop(self, state: Node) -> None:
        """No new workers; ``drain`` to every worker (docs/ipc.md §4.5), SIGTERM to the
        supervised ones. Idempotent."""
        if self._workers_stopping is not None:
            return
        waits: list[asyncio.Future[None]] = []
        if self._ipc_server is not None:
            self._ipc_server.close()
            waits.append(asyncio.ensure_future(state.registry.drain_all()))
        if self._supervisor is not None:
            self._supervisor.terminate()
            waits.append(asyncio.ensure_future(self._supervisor.wait_exited()))
        self._workers_stopping = asyncio.ensure_future(_all(waits))

    async def _stop_workers(self, state: Node, deadline: float, cleanup: float) -> None:
        """Workers finish until ``deadline``; then their sockets are dropped and the
        supervised processes still running are killed."""
        self._begin_worker_stop(state)
        assert self._workers_stopping is not None
        await _until(deadline, asyncio.shield(self._workers_stopping))
        self._workers_stopping.cancel()
        if self._ipc_server is not None:
            for worker in list(state.registry.workers.values()):
                worker.proto.abort()
        if self._supervisor is not None:
            # The deadline has passed or everyone exited: this only kills and reaps.
            await _until(cleanup, self._supervisor.stop(deadline))
            self._supervisor = None
        if self._ipc_server is not None:
            await _until(min(cleanup, state.loop.time() + 1.0), self._ipc_server.wait_closed())
            self._ipc_server = None
            if self.config.ipc_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.config.ipc_path)
        self._workers_stopping = None

    async def _close_in_batches(self, state: Node) -> None:
        """1001 to every WebSocket, ``drain_batch`` at a time every ``drain_interval``
        seconds: clients reconnect (elsewhere) spread out, not all in one instant."""
        batch = self.config.drain_batch
        interval = self.config.drain_interval
        connections = list(state.ws_connections)
        if len(connections) > batch:
            log.info("closing %d WebSockets, %d every %.2fs", len(connections), batch, interval)
        for start in range(0, len(connections), batch):
            if start:
                await asyncio.sleep(interval)
            for ws in connections[start : start + batch]:
                ws.close(CloseCode.GOING_AWAY, DRAIN_REASON)

    async def serve(self) -> None:
        """Start, run until SIGINT or SIGTERM, then stop gracefully."""
        loop = asyncio.get_running_loop()
        # SIGHUP reloads (nginx's habit, certbot's deploy hook); never its default of
        # ending the process, even while starting.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        try:
            await self.start()
            stop = asyncio.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            try:
                await stop.wait()
                log.info("signal received: shutting down (grace %.1fs)", self.config.shutdown_grace)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError):
                        loop.remove_signal_handler(sig)
                await self.stop()
        finally:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signal.SIGHUP)

    def _on_hangup(self) -> None:
        if self._state is None:
            log.warning("SIGHUP before the engine is listening: nothing reloaded")
            return
        log.info("SIGHUP: reloading certificates and token keys")
        self.reload()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _log_certificate(tls: Certificates, what: str) -> None:
    info = tls.info
    if info is None:  # loaded by OpenSSL, but not parsed by cryptography
        log.info("TLS: %s %s", what, tls.cert)
        return
    log.info(
        "TLS: %s %s (%s, serial %x, valid until %s)",
        what,
        tls.cert,
        info.subject,
        info.serial,
        info.not_after,
    )


def build_node(
    config: Config, routes: Routes, loop: asyncio.AbstractEventLoop, metrics: Metrics
) -> Node:
    """Every shared part of one engine, in dependency order: the composition root.

    Nothing else constructs a sibling: the hub is given its broker, the broker its
    history, presence the broker's Redis client.
    """
    sweeper = Sweeper(loop, config.timer_resolution)
    corker = Corker(loop, metrics.fanout_latency)
    slow = config.slow_consumer_policies()
    broker: Broker
    presence: Presence | RedisPresence
    if config.redis_url:
        from engine.brokers.redis import RedisBroker  # redis is only imported when used
        from engine.brokers.redis_presence import RedisPresence

        redis_broker = RedisBroker(config, metrics)
        broker = redis_broker
        presence = RedisPresence(
            loop,
            redis_broker.client,
            redis_broker.node,
            config.presence_grace,
            config.presence_lease,
        )
    else:
        local = LocalBroker(StreamHistory(config.history_size, config.history_ttl, loop.time))
        broker = local
        presence = Presence(loop, config.presence_grace)
    hub = Hub(broker, presence, slow, metrics, corker, config.limits.compression_threshold)
    if isinstance(broker, LocalBroker):
        broker.attach(hub)
    limiter = ConnectionLimiter(
        max_connections=config.max_connections,
        per_ip=config.max_connections_per_ip,
        rate=config.new_connections_per_ip,
        burst=config.new_connections_burst,
        table_size=config.ip_table_size,
    )
    http_rates = (
        AddressRates(config.http_rate, config.http_burst, config.ip_table_size)
        if config.http_rate > 0
        else None
    )
    authenticator = Authenticator(
        secret=config.jwt_secret,
        public_key=config.jwt_public_key,
        jwks=config.jwks,
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
        leeway=config.jwt_leeway,
    )
    authenticator.allow_no_exp = config.jwt_allow_no_exp
    return Node(
        config=config,
        routes=routes,
        loop=loop,
        metrics=metrics,
        sweeper=sweeper,
        corker=corker,
        slow=slow,
        presence=presence,
        broker=broker,
        hub=hub,
        limiter=limiter,
        http_rates=http_rates,
        authenticator=authenticator,
    )


#: The end of the shutdown grace kept for forcing what is left (at most a quarter of
#: it): unanswered service calls are failed so their 503s go out in time, and workers
#: get this long to exit before they are killed at the deadline.
_FINAL_SLICE = 1.0
#: After the deadline, the most that steps which must still complete may take
#: (reaping killed workers, closing Redis connections).
_CLEANUP = 1.0


async def _until(when: float, aw: Awaitable[Any]) -> bool:
    """Await ``aw`` until loop time ``when`` (cancelling it then); True if it finished."""
    try:
        async with asyncio.timeout_at(when):
            await aw
    except TimeoutError:
        return False
    return True


async def _clients_done(state: Node, closing: asyncio.Future[None], *, shield: bool) -> None:
    """Every WebSocket told 1001 and every client connection and handler finished."""
    await (asyncio.shield(closing) if shield else closing)
    await state.wait_idle()


async def _all(waits: list[asyncio.Future[None]]) -> None:
    try:
        if waits:
            await asyncio.wait(waits)
    finally:
        for wait in waits:
            wait.cancel()
