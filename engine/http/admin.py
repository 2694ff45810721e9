"""The admin listener (``--admin-listen``): ``/metrics``, ``/health`` and ``/ready``
of the whole engine, on a port of their own.

It is not the client port's ``HttpProtocol``: the client caps, the request rate and
the drain apply to clients, and none of them may stop a scraper or a balancer's
probe from being answered (a node at ``max_connections`` must still say so, a
draining node must still say it is not ready). So this is a small pump of its own
over the same sans-I/O core (``HttpConn``), with three routes and no handler code.

- ``GET /health``: alive. 200 while the process runs, draining included; the body
  says how it is (status, version, uptime, connections).
- ``GET /ready``: 200 only when the node should get new clients: not draining, every
  ``--service`` with at least one live worker, the broker connected when ``--redis``
  is set; else 503 with the checks that failed.
- ``GET /metrics``: the Prometheus text of the engine's registry.
- ``POST /api/<method>``: the server API (engine/http/server_api.py), answered in
  order like the rest; the connection waits while a call awaits the broker.
- ``/admin``: the admin page with ``--admin-password`` (engine/http/admin_web.py);
  ``GET /admin/ws`` is handed over to its WebSocket.

Admin requests are not counted in ``linkd_http_requests_total`` (a scrape every 15 s
would show up as client traffic) and are never access-logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections.abc import Callable, Coroutine
from typing import Any, cast

import orjson

from engine.http.admin_web import WS_PATH, AdminWeb
from engine.http.base import JSON
from engine.http.openapi import SERVER_API_PATH, ApiDocuments
from engine.http.server_api import PREFIX, Answer, ServerApi, error_answer
from engine.node import Node
from protocol import ErrorCode, MessageTooBig, RemoteProtocolError
from protocol.http import NEED_DATA, HttpConn, HttpRequest, HttpState, PeerEOF

__all__ = ["Admin", "AdminProtocol"]

log = logging.getLogger("linkd.admin")

#: Open admin connections at most; one more is closed at once. A scraper, a probe or
#: two and an operator's curl need a handful: the bound is against a runaway client.
MAX_CONNECTIONS = 64

_METRICS_TYPE = [("content-type", "text/plain; version=0.0.4")]


class Admin:
    """The admin routes of one engine, and its open admin connections.

    Args:
        state: the engine's node.
        started: loop time the engine started (for the uptime).
        api: the engine's server API (one per engine: one rate table); None: its own.
    """

    def __init__(self, state: Node, started: float, api: ServerApi | None = None) -> None:
        self.state = state
        self.started = started
        self.connections: set[AdminProtocol] = set()
        self.api = api if api is not None else ServerApi(state, started)
        password = state.config.admin_password
        #: The admin page (None: no ``--admin-password``, its paths are 404).
        self.web = AdminWeb(state, started, self.api, password) if password else None
        # The server API's bound on bodies is the admin port's: its other routes take none.
        self.limits = dataclasses.replace(state.limits, max_body_bytes=state.config.api_max_body)
        self.routes: dict[str, Callable[[], Answer]] = {
            "/health": self.health,
            "/ready": self.ready,
            "/metrics": self.metrics,
        }
        #: The OpenAPI and AsyncAPI documents (engine/http/openapi.py), no key needed.
        self.documents = ApiDocuments(state)

    def answer(self, request: HttpRequest, peer: str = "") -> Answer | Coroutine[Any, Any, Answer]:
        """A route's answer, or the coroutine of a server API call's."""
        if request.path.startswith(PREFIX) and request.path != SERVER_API_PATH:
            return self.api.answer(request, peer)
        if self.web is not None and self.web.owns(request.path):
            return self.web.answer(request, peer)
        route = self.routes.get(request.path) or self.documents.route(request.path)
        if route is None:
            return _json(404, {"error": {"code": "NOT_FOUND", "message": "no such admin route"}})
        if request.method not in ("GET", "HEAD"):
            status, headers, body = _json(
                405, {"error": {"code": "METHOD_NOT_ALLOWED", "message": "method not allowed"}}
            )
            return status, [*headers, ("allow", "GET, HEAD")], body
        return route()

    def health(self) -> Answer:
        """Liveness: always 200 (a process that can answer is alive)."""
        state = self.state
        healthy = state.broker.healthy
        status = "draining" if state.shutting_down else "healthy" if healthy else "degraded"
        body: dict[str, object] = {
            "status": status,
            "version": state.config.version,
            "uptime": round(state.loop.time() - self.started, 3),
            "connections": {
                "http": len(state.http_connections),
                "websocket": len(state.ws_connections),
            },
        }
        if state.config.redis_url:
            body["redis"] = "connected" if healthy else "unreachable"
        return _json(200, body)

    def ready(self) -> Answer:
        """Readiness: 200 only when every check passes; 503 names the failed ones."""
        checks = self.checks()
        failed = [name for name, check in checks.items() if not check["ok"]]
        body = {"status": "not_ready" if failed else "ready", "failed": failed, "checks": checks}
        return _json(503 if failed else 200, body)

    def checks(self) -> dict[str, dict[str, object]]:
        state = self.state
        config = state.config
        checks: dict[str, dict[str, object]] = {
            "draining": {"ok": not state.shutting_down},
        }
        if config.services or state.registry.services:
            # Every service that registered must have a live worker (its routes answer
            # 503 meanwhile), and as many services as --service modules must have
            # registered (a module's service name is known only from its worker).
            live = state.registry.live_workers()
            expected = len(set(config.services)) if config.workers > 0 else 0
            serving = sum(1 for n in live.values() if n)
            checks["workers"] = {
                "ok": serving >= expected and all(live.values()),
                "services": live,
                "expected": expected,
            }
        if config.redis_url:
            checks["broker"] = {"ok": state.broker.healthy}
        return checks

    def metrics(self) -> Answer:
        return 200, _METRICS_TYPE, self.state.metrics.render()

    def close(self) -> None:
        """The engine stopped: drop what is still open."""
        if self.web is not None:
            self.web.close()
        for conn in list(self.connections):
            conn.abort()


def _json(status: int, body: object) -> Answer:
    return status, JSON, orjson.dumps(body)


class AdminProtocol(asyncio.Protocol):
    """One admin connection: requests answered in order, synchronously.

    A request must arrive within ``header_timeout`` of the connection or of the last
    answer (the sweeper's deadline), and reading stops while the transport's buffer
    is above its high-water mark, so a client that pipelines and never reads holds
    one socket and one buffer, no more.
    """

    __slots__ = ("_admin", "_busy", "_conn", "_peer", "_transport", "deadline")

    def __init__(self, admin: Admin) -> None:
        self._admin = admin
        self._conn = HttpConn(admin.limits)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        #: A server API call is being answered: nothing else is read meanwhile.
        self._busy = False
        self.deadline = math.inf

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        admin = self._admin
        if len(admin.connections) >= MAX_CONNECTIONS:
            log.warning("admin connection refused: %d open already", MAX_CONNECTIONS)
            transport.abort()
            return
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        admin.connections.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return
        self._conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        if self._transport is not None:
            self._conn.receive_data(b"")
            self._process()
        return True  # answered what came before the EOF; PeerEOF closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.deadline = math.inf
        self._admin.state.sweeper.cancel(self)
        self._admin.connections.discard(self)

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing() and not self._busy:
            self._transport.resume_reading()
            self._process()

    def _process(self) -> None:
        conn = self._conn
        while (
            (transport := self._transport) is not None
            and not self._busy
            and transport.get_write_buffer_size() < self._admin.state.limits.write_high_water
        ):
            try:
                event = conn.next_event()
            except MessageTooBig:
                status, headers, body = error_answer(
                    ErrorCode.PAYLOAD_TOO_LARGE, "request body too large"
                )
                self._admin.state.metrics.count_api("oversize", status)
                transport.write(conn.reject(status, headers, body))
                self._close()
                return
            except RemoteProtocolError:
                self._close()
                return
            if isinstance(event, PeerEOF):
                self._close()
                return
            if not isinstance(event, HttpRequest):
                if event is NEED_DATA and conn.state is HttpState.READING_BODY:
                    transport.write(conn.continue_bytes())
                return
            web = self._admin.web
            if web is not None and event.path == WS_PATH and event.upgrade:
                refused = web.upgrade(event, conn, transport)
                if refused is None:  # the socket is the admin page's WebSocket now
                    self._hand_over()
                    return
                answer: Answer | Coroutine[Any, Any, Answer] = refused
            else:
                answer = self._admin.answer(event, self._peer)
            if not isinstance(answer, tuple):
                # Awaits the broker: answered by the task, reading waits for it.
                self._busy = True
                transport.pause_reading()
                self.deadline = math.inf
                self._admin.state.sweeper.cancel(self)
                self._admin.state.spawn(self._answer_later(answer))
                return
            if not self._respond(answer):
                return

    async def _answer_later(self, answer: Coroutine[Any, Any, Answer]) -> None:
        try:
            result = await answer
        finally:
            self._busy = False
        transport = self._transport
        if transport is not None and self._respond(result):
            if transport.get_write_buffer_size() < self._admin.state.limits.write_high_water:
                transport.resume_reading()  # else resume_writing does
            self._process()  # what was pipelined behind it

    def _respond(self, answer: Answer) -> bool:
        """Write the answer; False once the connection is closing."""
        transport = self._transport
        if transport is None:
            return False
        status, headers, body = answer
        conn = self._conn
        transport.write(conn.respond(status, headers, body))
        if conn.state is HttpState.CLOSING:
            self._close()
            return False
        self._arm()
        return True

    def _arm(self) -> None:
        state = self._admin.state
        self.deadline = state.loop.time() + state.config.header_timeout
        state.sweeper.schedule(self)

    def on_deadline(self, now: float) -> None:
        """Idle between requests: a quiet close (a scraper's keep-alive connection).
        Part of a request not complete in time, or a close that never drained: drop."""
        transport = self._transport
        if transport is None:
            return
        if self._conn.state is HttpState.IDLE and not transport.is_closing():
            transport.close()
            self._arm()  # and dropped if what is left to write never drains
        else:
            transport.abort()

    def _hand_over(self) -> None:
        """The transport went to another protocol: forget it without closing it."""
        self._transport = None
        self.deadline = math.inf
        self._admin.state.sweeper.cancel(self)
        self._admin.connections.discard(self)

    def _close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
