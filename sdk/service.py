"""Service: the decorators a service author uses and the registration they build."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from protocol.ipc import messages as m

from .context import HttpContext
from .response import Response
from .ws import AuthOption, WsRouter, _check_async, auth_mode

__all__ = ["Action", "HttpHandler", "Service", "WebSocketOptions"]

HttpHandler = Callable[[HttpContext], Awaitable[Any]]
Hook = Callable[["Service"], Awaitable[Any]]
ReadinessCheck = Callable[[], Awaitable[bool | None]]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
H = TypeVar("H", bound=Hook)
R = TypeVar("R", bound=ReadinessCheck)

#: Actions every service answers on ``GET /<name>/<action>``.
HEALTH_ACTIONS = ("health", "ready", "live")
# A readiness check that hangs must not hang the ready route with it.
READINESS_TIMEOUT = 5.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class WebSocketOptions:
    """The service's WebSocket endpoint.

    Args:
        path: where clients connect, e.g. ``/ws/chat``.
        auth: ``"required"`` (the engine answers 401 before the upgrade without a
            valid token), ``"optional"`` (a token is verified when given: the default),
            ``"none"`` (tokens ignored); ``True``/``False`` mean required/none.
        binary: accept binary frames (else the engine closes such a client with 1003).
        per_connection: messages of one connection handled at once (1: in order).
    """

    path: str
    auth: AuthOption = "optional"
    binary: bool = False
    per_connection: int = 1


@dataclass(frozen=True, slots=True)
class Action:
    """One HTTP action and its route."""

    name: str
    method: str
    path: str
    auth: str
    handler: HttpHandler


class Service:
    """A service: HTTP actions, a WebSocket endpoint and lifecycle hooks.

    Args:
        name: the service's name; its health routes are ``/<name>/health|ready|live``.
        version: the service's own version (logged by the engine).
        websocket: the WebSocket endpoint, if the service has one.
        concurrency: requests one worker handles at once.
    """

    def __init__(
        self,
        name: str,
        *,
        version: str = "0.0.0",
        websocket: WebSocketOptions | None = None,
        concurrency: int = 64,
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"bad service name {name!r}")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if websocket is not None:
            auth_mode(websocket.auth)  # fail now rather than at registration
            if not websocket.path.startswith("/"):
                raise ValueError("websocket path must start with /")
            if websocket.per_connection < 1:
                raise ValueError("per_connection must be at least 1")
        self.name = name
        self.version = version
        self.websocket = websocket
        self.concurrency = concurrency
        #: WebSocket handlers, groups and middleware.
        self.ws = WsRouter()
        #: The service's own database handle (or anything); handlers read ``ctx.db``.
        self.db: Any = None
        self.logger = logging.getLogger(f"linkd.service.{name}")
        self.actions: dict[str, Action] = {}
        self._before_start: list[Hook] = []
        self._after_start: list[Hook] = []
        self._after_stop: list[Hook] = []
        self._readiness: list[ReadinessCheck] = []
        #: True once every after_start hook finished; the ready route answers 503 before.
        self.started = False
        self._add_health_routes()

    def __repr__(self) -> str:
        return f"Service({self.name!r}, version={self.version!r})"

    # -------------------------------------------------------------- decorators
    def action(
        self,
        name: str,
        *,
        route: str | None = None,
        method: str = "GET",
        auth: AuthOption = False,
    ) -> Callable[[F], F]:
        """Register an HTTP action: ``@service.action("get-room", route="/chat/rooms/:id")``.

        Args:
            name: the action's name (unique in the service).
            route: the path; ``:name`` segments become ``ctx.params``. Default
                ``/<service>/<action>``.
            method: the HTTP method.
            auth: ``True`` (the engine answers 401 without a valid token),
                ``"optional"``, or ``False``.
        """
        path = route if route is not None else f"/{self.name}/{name}"
        verb = method.upper()

        def register(fn: F) -> F:
            _check_async(fn, f"action {name!r}")
            self._add_action(Action(name, verb, path, auth_mode(auth), fn))
            return fn

        return register

    def _add_action(self, action: Action) -> None:
        if action.name in self.actions:
            raise ValueError(f"action {action.name!r} already exists")
        if not action.path.startswith("/"):
            raise ValueError(f"route {action.path!r} must start with /")
        if action.method not in _METHODS:
            raise ValueError(f"unsupported method {action.method!r}")
        for other in self.actions.values():
            if (other.method, other.path) == (action.method, action.path):
                raise ValueError(f"{action.method} {action.path} is already action {other.name!r}")
        self.actions[action.name] = action

    def before_start(self, fn: H) -> H:
        """``async def (service)``: runs before connecting to the engine (open a pool).
        An exception stops the service before it registers."""
        _check_async(fn, "before_start")
        self._before_start.append(fn)
        return fn

    def after_start(self, fn: H) -> H:
        """``async def (service)``: runs once after the first welcome. The ready route
        answers 503 until every one finished; an exception is logged and keeps it so."""
        _check_async(fn, "after_start")
        self._after_start.append(fn)
        return fn

    def after_stop(self, fn: H) -> H:
        """``async def (service)``: runs once after the worker drained (close a pool)."""
        _check_async(fn, "after_stop")
        self._after_stop.append(fn)
        return fn

    def readiness(self, check: R) -> R:
        """``async def () -> bool``: the ready route answers 503 when one returns False,
        raises, or takes longer than 5 s."""
        _check_async(check, "readiness check")
        self._readiness.append(check)
        return check

    # ------------------------------------------------------------ registration
    def registration(self) -> m.Registration:
        """The ``hello.service`` of this service (docs/ipc.md §4.1)."""
        http = [
            m.HttpRoute(action=a.name, method=a.method, path=a.path, auth=a.auth)
            for a in self.actions.values()
        ]
        ws = None
        router = self.ws
        if self.websocket is not None:
            opts = self.websocket
            mode = auth_mode(opts.auth)
            if mode == "none" and router.requires_auth:
                raise ValueError(
                    "handlers require auth but the websocket endpoint has auth='none': "
                    "the engine would never verify a token"
                )
            ws = m.WsRoute(
                path=opts.path,
                types=router.exact_types,
                prefixes=list(router.prefixes),
                catch_all=router.catch_all is not None,
                auth=mode,
                on_connect=router.connect_handler is not None,
                on_disconnect=router.disconnect_handler is not None,
                binary=opts.binary,
                per_connection=opts.per_connection,
                concurrent=sorted(router.concurrent),
                presence=router.presence_handler is not None,
            )
        elif router.has_handlers:
            raise ValueError(
                "WebSocket handlers need Service(..., websocket=WebSocketOptions(...))"
            )
        return m.Registration(
            name=self.name,
            version=self.version,
            http=http,
            ws=ws,
            concurrency=self.concurrency,
        )

    # --------------------------------------------------------------- lifecycle
    async def run_before_start(self) -> None:
        for hook in self._before_start:
            await hook(self)

    async def run_after_start(self) -> None:
        try:
            for hook in self._after_start:
                await hook(self)
        except Exception:
            self.logger.exception("after_start hook failed; the service stays not ready")
            return
        self.started = True

    async def run_after_stop(self) -> None:
        for hook in self._after_stop:
            try:
                await hook(self)
            except Exception:
                self.logger.exception("after_stop hook failed")

    async def is_ready(self) -> bool:
        """Whether after_start finished and every readiness check passes."""
        if not self.started:
            return False
        for check in self._readiness:
            try:
                ok = await asyncio.wait_for(check(), READINESS_TIMEOUT)
            except Exception:
                self.logger.warning("readiness check %r failed", check, exc_info=True)
                return False
            if ok is False:
                return False
        return True

    # ----------------------------------------------------------- health routes
    def _add_health_routes(self) -> None:
        async def health(ctx: HttpContext) -> Any:
            return {"status": "ok", "service": self.name, "version": self.version}

        async def live(ctx: HttpContext) -> Any:
            return {"status": "ok"}

        async def ready(ctx: HttpContext) -> Any:
            if await self.is_ready():
                return {"status": "ready"}
            return Response(503, json={"status": "not ready"})

        for name, fn in zip(HEALTH_ACTIONS, (health, ready, live), strict=True):
            self._add_action(Action(name, "GET", f"/{self.name}/{name}", "none", fn))
