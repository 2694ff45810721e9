"""Engine: listeners, lifecycle and graceful shutdown; the object embedders use.

engine = Engine(Config(port=8080))
engine.websocket("/echo", EchoEndpoint())
await engine.start()
...
await engine.stop()          # 1001 to WebSocket clients, finish HTTP, then close
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from types import TracebackType

from protocol import CloseCode

from .app import HttpHandler, Routes, WebSocketEndpoint
from .config import Config
from .echo import EchoEndpoint
from .fanout import prepare
from .http_protocol import HttpProtocol
from .ipc_server import start_ipc_server
from .metrics import Metrics
from .presence import Presence, PresenceListener
from .services import mount_service
from .state import ServerState
from .supervisor import Supervisor
from .workers import Registry
from .ws_protocol import WsProtocol

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
        self._ipc_server: asyncio.Server | None = None
        self._supervisor: Supervisor | None = None
        self._state: ServerState | None = None
        self._stopped: asyncio.Event | None = None
        self._presence_listeners: list[PresenceListener] = []
        for path in self.config.echo_paths:
            self.websocket(path, EchoEndpoint())

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

    def broadcast(self, data: str | bytes, targets: Iterable[WsProtocol] | None = None) -> int:
        """Send one message to ``targets`` (default: every open WebSocket), encoded once.

        Returns the number of connections it was queued to. Never waits for any of
        them: slow ones are handled by the slow-consumer policy.
        """
        state = self.state
        message = prepare(data, state.limits.compression_threshold)
        # Iterating the live set is safe: queuing never removes a connection from it
        # (a slow consumer is closed later, in connection_lost).
        return state.hub.fan(message, state.ws_connections if targets is None else targets)

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
    def state(self) -> ServerState:
        if self._state is None:
            raise RuntimeError("the engine is not started")
        return self._state

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the engine is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting; returns once listening."""
        if self._server is not None:
            raise RuntimeError("already started")
        loop = asyncio.get_running_loop()
        self._state = state = ServerState(self.config, self.routes, loop, self.metrics)
        self._stopped = asyncio.Event()
        state.presence.listeners.extend(self._presence_listeners)
        await state.broker.start(state.hub)
        presence = state.presence
        if not isinstance(presence, Presence):
            presence.start()
        config = self.config
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
            self.config.host,
            self.config.port,
            backlog=self.config.backlog,
            reuse_address=True,
        )
        log.info(
            "listening on %s:%d (WebSocket paths: %s)",
            self.config.host,
            self.port,
            ", ".join(sorted(self.routes.websocket)) or "none",
        )
        if config.services and config.ipc_path:
            self._supervisor = Supervisor(
                config.services, config.workers, config.ipc_path, config.shutdown_grace
            )
            self._supervisor.start()

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, close WebSockets with 1001, finish HTTP, within ``grace``."""
        if self._server is None or self._state is None:
            return
        grace = self.config.shutdown_grace if grace is None else grace
        state = self._state
        state.shutting_down = True
        started = time.monotonic()
        self._server.close()  # stop accepting
        for http in list(state.http_connections):
            http.shutdown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._close_in_batches(state), grace)
            await asyncio.wait_for(
                state.wait_idle(), max(0.0, grace - (time.monotonic() - started))
            )
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
            await asyncio.gather(*state.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        if self._ipc_server is not None:
            # No new workers, then ask every worker to finish and leave (docs/ipc.md
            # §4.5); what is still connected when the grace period ends is dropped.
            self._ipc_server.close()
            remaining = max(0.5, grace - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.registry.drain_all(), remaining)
        if self._supervisor is not None:
            await self._supervisor.stop()
            self._supervisor = None
        if self._ipc_server is not None:
            for worker in list(state.registry.workers.values()):
                worker.proto.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ipc_server.wait_closed(), 1.0)
            self._ipc_server = None
            if self.config.ipc_path:
                with contextlib.suppress(OSError):
                    os.unlink(self.config.ipc_path)
        if not isinstance(state.presence, Presence):
            await state.presence.stop()  # before the broker: they share its client
        await state.broker.stop()
        state.close()
        self._server = None
        log.info("stopped in %.2fs", time.monotonic() - started)
        assert self._stopped is not None
        self._stopped.set()

    async def _close_in_batches(self, state: ServerState) -> None:
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
        await self.start()
        loop = asyncio.get_running_loop()
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
