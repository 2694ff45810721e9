"""Service: the decorators a service author uses and the registration they build."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import TracebackType
from typing import Any, TypedDict, TypeVar, overload

from protocol.http.origin import parse_origins
from protocol.ipc import messages as m

from .context import EventContext, HttpContext
from .middleware import Next, check_async, check_group_callback, run_chain, split_options
from .response import Response
from .ws import AuthOption, WsRouter, auth_mode, doc_entry, docs_json

__all__ = [
    "Action",
    "ActionOptions",
    "EventHandler",
    "GroupOptions",
    "HttpGroup",
    "HttpHandler",
    "HttpMiddleware",
    "Service",
    "WebSocketOptions",
]

HttpHandler = Callable[[HttpContext], Awaitable[Any]]
#: ``async def on_room_created(ctx: EventContext)``: ``ctx.event``, ``ctx.data``.
EventHandler = Callable[[EventContext], Awaitable[Any]]
#: ``async def mw(ctx, next)``: code before ``await next()`` runs before the action.
HttpMiddleware = Callable[[HttpContext, Next], Awaitable[Any]]
#: ``def cb(group)``: registers the group's actions on the group it is given.
GroupCallback = Callable[["HttpGroup"], Any]
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
#: Event names, as the engine checks them (engine/brokers/events.py).
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class WebSocketOptions:
    """The service's WebSocket endpoint.

    Args:
        path: where clients connect, e.g. ``/ws/chat``.
        auth: ``"required"`` (the engine answers 401 before the upgrade without a
            valid token), ``"optional"`` (a token is verified when given: the default),
            ``"none"`` (tokens ignored); ``True``/``False`` mean required/none.
        binary: accept binary frames, handed to ``service.ws.on_binary`` (which implies
            it); without either the engine closes a client that sends one with 1003.
        per_connection: messages of one connection handled at once (1: in order).
        origins: origins a browser page may connect from to this path
            (``https://app.example.com``, ``https://*.example.com``); others get 403
            before the upgrade. None: the engine's ``--allowed-origins`` applies.
    """

    path: str
    auth: AuthOption = "optional"
    binary: bool = False
    per_connection: int = 1
    origins: tuple[str, ...] | list[str] | None = None

    def __post_init__(self) -> None:
        if self.origins is not None:
            parse_origins(self.origins)  # a bad pattern fails here, not at the engine


class ActionOptions(TypedDict, total=False):
    """The ``opts`` of ``service.action("name", opts, fn)``."""

    #: The path; ``:name`` segments become ``ctx.params``. Default ``/<service>/<name>``
    #: (in a group: relative to the group's prefix, default ``<prefix>/<name>``).
    route: str
    #: The HTTP method; default ``GET``.
    method: str
    #: ``True`` (the engine answers 401 without a valid token), ``"optional"``, ``False``.
    auth: AuthOption
    #: Documentation for the engine's OpenAPI document (docs/sdk.md, "API documents"):
    #: one line, longer text, the JSON schemas of the request and response bodies.
    summary: str
    description: str
    request: dict[str, Any]
    response: dict[str, Any]


#: The documentation keys of ``ActionOptions``: they change no behaviour.
_DOC_OPTIONS = ("summary", "description", "request", "response")
_ACTION_OPTIONS = ("route", "method", "auth", *_DOC_OPTIONS)


class GroupOptions(TypedDict, total=False):
    """The ``opts`` of ``service.group("/prefix", opts, cb)``."""

    #: The default ``auth`` of the group's actions.
    auth: AuthOption


@dataclass(frozen=True, slots=True)
class Action:
    """One HTTP action and its route."""

    name: str
    method: str
    path: str
    auth: str
    handler: HttpHandler
    #: The groups it was registered in, outermost first (their middleware wraps it).
    groups: tuple[HttpGroup, ...] = ()
    #: Health routes: no middleware, so a guard cannot make a probe fail.
    builtin: bool = False
    #: ``summary``, ``description``, ``request``, ``response`` given at registration.
    docs: dict[str, Any] | None = None


def _route_prefix(prefix: str) -> str:
    # "/admin", "admin", "/admin/" all mean /admin; "" or "/" mean no prefix.
    return "/" + prefix.strip("/") if prefix.strip("/") else ""


class HttpGroup:
    """Actions under one route prefix, sharing middleware and a default ``auth``.

    What ``service.group(prefix, cb)`` passes to ``cb``, and what the context-manager
    form binds: ``group.action("stats", {"route": "/stats"}, fn)`` serves
    ``<prefix>/stats``; ``group.use(mw)`` wraps only the group's actions.
    """

    def __init__(
        self,
        service: Service,
        prefix: str,
        auth: AuthOption,
        parents: tuple[HttpGroup, ...] = (),
    ) -> None:
        self.service = service
        #: The route prefix, normalised: ``"/table/admin"`` (no trailing slash).
        self.prefix = prefix
        self.auth = auth
        self._lineage = (*parents, self)

    def __repr__(self) -> str:
        return f"HttpGroup({self.prefix!r})"

    @overload
    def action(
        self,
        name: str,
        opts: ActionOptions | None = None,
        /,
        *,
        route: str | None = None,
        method: str | None = None,
        auth: AuthOption | None = None,
        summary: str | None = None,
        description: str | None = None,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
    ) -> Callable[[F], F]: ...
    @overload
    def action(self, name: str, opts: ActionOptions, fn: F, /) -> F: ...
    @overload
    def action(self, name: str, fn: F, /) -> F: ...
    def action(
        self,
        name: str,
        opts: Any = None,
        fn: Any = None,
        /,
        *,
        route: str | None = None,
        method: str | None = None,
        auth: AuthOption | None = None,
        summary: str | None = None,
        description: str | None = None,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
    ) -> Any:
        """Register an action under the group's prefix (same forms as ``Service.action``)."""
        keywords: dict[str, Any] = {"route": route, "method": method, "auth": auth}
        keywords.update(summary=summary, description=description)
        keywords.update(request=request, response=response)
        return self.service._register_action(name, opts, fn, keywords, self)

    def use(self, middleware: HttpMiddleware) -> None:
        """Middleware for this group's actions only (nested groups included)."""
        check_async(middleware, "middleware")
        self.service._add_middleware(self, middleware)

    def group(
        self,
        prefix: str,
        opts: GroupOptions | GroupCallback | None = None,
        cb: GroupCallback | None = None,
        /,
        *,
        auth: AuthOption | None = None,
    ) -> HttpGroup:
        """A group inside this one: its prefix is appended to this group's."""
        return self.service._make_group(prefix, opts, cb, auth, self)

    @property
    def lineage(self) -> tuple[HttpGroup, ...]:
        """This group's ancestors, outermost first, then itself."""
        return self._lineage

    def __enter__(self) -> HttpGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


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
        #: Service events this service consumes: name → handler (``on_event``).
        self.event_handlers: dict[str, EventHandler] = {}
        self._global: list[HttpMiddleware] = []
        self._scoped: list[tuple[str | HttpGroup, HttpMiddleware]] = []
        self._chains: dict[str, list[HttpMiddleware]] = {}
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
    @overload
    def action(
        self,
        name: str,
        opts: ActionOptions | None = None,
        /,
        *,
        route: str | None = None,
        method: str | None = None,
        auth: AuthOption | None = None,
        summary: str | None = None,
        description: str | None = None,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
    ) -> Callable[[F], F]: ...
    @overload
    def action(self, name: str, opts: ActionOptions, fn: F, /) -> F: ...
    @overload
    def action(self, name: str, fn: F, /) -> F: ...
    def action(
        self,
        name: str,
        opts: Any = None,
        fn: Any = None,
        /,
        *,
        route: str | None = None,
        method: str | None = None,
        auth: AuthOption | None = None,
        summary: str | None = None,
        description: str | None = None,
        request: dict[str, Any] | None = None,
        response: dict[str, Any] | None = None,
    ) -> Any:
        """Register an HTTP action.

        As in the TypeScript SDK: ``service.action("get-room", {"route":
        "/chat/rooms/:id", "method": "GET", "auth": True}, fn)`` or
        ``service.action("get-room", fn)``; or as a decorator,
        ``@service.action("get-room", route="/chat/rooms/:id", auth=True)``.

        Args:
            name: the action's name (unique in the service).
            opts / keywords: ``route`` (``:name`` segments become ``ctx.params``;
                default ``/<service>/<name>``), ``method`` (default ``GET``),
                ``auth`` (``True``: the engine answers 401 without a valid token;
                ``"optional"``; ``False``, the default); documentation for the
                engine's OpenAPI document, which changes no behaviour: ``summary``,
                ``description``, ``request`` and ``response`` (JSON schemas of the
                bodies; docs/sdk.md, "API documents").
            fn: ``async def (ctx: HttpContext)``; without it, a decorator is returned.
        """
        keywords: dict[str, Any] = {"route": route, "method": method, "auth": auth}
        keywords.update(summary=summary, description=description)
        keywords.update(request=request, response=response)
        return self._register_action(name, opts, fn, keywords, None)

    def _register_action(
        self,
        name: str,
        opts: Any,
        fn: Any,
        keywords: dict[str, Any],
        group: HttpGroup | None,
    ) -> Any:
        options, fn = split_options(f"action({name!r})", opts, fn, keywords, _ACTION_OPTIONS)
        docs = doc_entry(f"action({name!r})", options, _DOC_OPTIONS) or None
        route = options.get("route")
        if group is None:
            path = route if route is not None else f"/{self.name}/{name}"
            auth: AuthOption = options.get("auth", False)
            groups: tuple[HttpGroup, ...] = ()
        else:
            if route and not route.startswith("/"):
                raise ValueError(f"route {route!r} in group {group.prefix!r} must start with /")
            path = (group.prefix + (route if route is not None else f"/{name}")) or "/"
            auth = options.get("auth", group.auth)
            groups = group.lineage
        verb = str(options.get("method", "GET")).upper()
        mode = auth_mode(auth)

        def register(handler: F) -> F:
            check_async(handler, f"action {name!r}")
            self._add_action(Action(name, verb, path, mode, handler, groups, docs=docs))
            return handler

        return register if fn is None else register(fn)

    def use(self, pattern: str | HttpMiddleware, middleware: HttpMiddleware | None = None) -> None:
        """Add HTTP middleware: ``use(mw)`` for every action, ``use(pattern, mw)`` for
        the actions matching ``pattern`` (``fnmatch``, case-sensitive): their route when
        it starts with ``/`` (``"/chat/admin/*"``), else their name (``"admin-*"``).

        The same onion as ``service.ws.use``: every global middleware first, then the
        matching scoped ones (group middleware included), each in the order added;
        then the action. ``async def mw(ctx, next)``: ``await next()`` returns the
        action's result, which ``ctx.result`` holds and a middleware may replace.
        The health routes run without middleware.
        """
        if isinstance(pattern, str):
            if middleware is None:
                raise TypeError("use(pattern, middleware) needs the middleware")
            check_async(middleware, "middleware")
            self._add_middleware(pattern, middleware)
        else:
            if middleware is not None:
                raise TypeError("use(middleware) or use(pattern, middleware)")
            check_async(pattern, "middleware")
            self._add_middleware(None, pattern)

    def group(
        self,
        prefix: str,
        opts: GroupOptions | GroupCallback | None = None,
        cb: GroupCallback | None = None,
        /,
        *,
        auth: AuthOption | None = None,
    ) -> HttpGroup:
        """Actions under the route prefix ``prefix``, with their own middleware.

        As in the TypeScript SDK: ``service.group("/chat/admin", cb)`` or
        ``service.group("/chat/admin", {"auth": True}, cb)`` calls ``cb(group)``;
        ``group.action("stats", {"route": "/stats"}, fn)`` serves ``/chat/admin/stats``
        (the action's name stays ``"stats"``: names are unique in the service),
        ``group.use(mw)`` wraps the group's actions only. Or as a context manager:
        ``with service.group("/chat/admin", auth=True) as g: ...``.
        """
        return self._make_group(prefix, opts, cb, auth, None)

    def _make_group(
        self,
        prefix: str,
        opts: Any,
        cb: Any,
        auth: AuthOption | None,
        parent: HttpGroup | None,
    ) -> HttpGroup:
        if opts is not None and not isinstance(opts, Mapping):
            if cb is not None:
                raise TypeError("group(prefix, cb) or group(prefix, opts, cb)")
            opts, cb = None, opts  # group(prefix, cb)
        options, _ = split_options(f"group({prefix!r})", opts, None, {"auth": auth}, ("auth",))
        if cb is not None:
            check_group_callback(cb, "actions")
        base = parent.prefix if parent is not None else ""
        default_auth: AuthOption = options.get("auth", parent.auth if parent is not None else False)
        auth_mode(default_auth)  # fail now on a bad value
        group = HttpGroup(
            self,
            base + _route_prefix(prefix),
            default_auth,
            parent.lineage if parent is not None else (),
        )
        if cb is not None:
            cb(group)
        return group

    def _add_middleware(self, scope: str | HttpGroup | None, middleware: HttpMiddleware) -> None:
        if scope is None:
            self._global.append(middleware)
        else:
            self._scoped.append((scope, middleware))
        self._chains.clear()

    def _chain(self, action: Action) -> list[HttpMiddleware]:
        chain = self._chains.get(action.name)
        if chain is None:
            if action.builtin:
                chain = []
            else:
                chain = [*self._global]
                for scope, mw in self._scoped:
                    if isinstance(scope, HttpGroup):
                        hit = scope in action.groups
                    elif scope.startswith("/"):
                        hit = fnmatchcase(action.path, scope)
                    else:
                        hit = fnmatchcase(action.name, scope)
                    if hit:
                        chain.append(mw)
            self._chains[action.name] = chain
        return chain

    async def run_action(self, action: Action, ctx: HttpContext) -> Any:
        """Run the middleware chain and ``action``; returns ``ctx.result``."""
        return await run_chain(self._chain(action), ctx, action.handler)

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
        self._chains.pop(action.name, None)

    @overload
    def on_event(self, name: str, /) -> Callable[[F], F]: ...
    @overload
    def on_event(self, name: str, fn: F, /) -> F: ...
    def on_event(self, name: str, fn: Any = None, /) -> Any:
        """Consume the service event ``name`` (docs/sdk.md, "Events between services").

        ``@service.on_event("room.created")`` or ``service.on_event("room.created", fn)``;
        ``async def fn(ctx: EventContext)`` gets ``ctx.event``, ``ctx.data``,
        ``ctx.attempt``. Each event published under ``name`` goes to one worker of this
        service (and one of every other subscriber), at least once: acked when the
        handler returns (or raises: the error is logged, not retried); delivered again,
        to another worker, when its worker dies or overruns the request timeout.
        """
        if not isinstance(name, str) or not _EVENT_NAME.match(name):
            raise ValueError(
                f"bad event name {name!r}: letters, digits, '_', '.', ':' and '-', "
                "at most 128, not starting with a punctuation mark"
            )

        def register(handler: F) -> F:
            check_async(handler, f"on_event({name!r})")
            if name in self.event_handlers:
                raise ValueError(f"event {name!r} already has a handler")
            self.event_handlers[name] = handler
            return handler

        return register if fn is None else register(fn)

    def before_start(self, fn: H) -> H:
        """``async def (service)``: runs before connecting to the engine (open a pool).
        An exception stops the service before it registers."""
        check_async(fn, "before_start")
        self._before_start.append(fn)
        return fn

    def after_start(self, fn: H) -> H:
        """``async def (service)``: runs once after the first welcome. The ready route
        answers 503 until every one finished; an exception is logged and keeps it so."""
        check_async(fn, "after_start")
        self._after_start.append(fn)
        return fn

    def after_stop(self, fn: H) -> H:
        """``async def (service)``: runs once after the worker drained (close a pool)."""
        check_async(fn, "after_stop")
        self._after_stop.append(fn)
        return fn

    def readiness(self, check: R) -> R:
        """``async def () -> bool``: the ready route answers 503 when one returns False,
        raises, or takes longer than 5 s."""
        check_async(check, "readiness check")
        self._readiness.append(check)
        return check

    # ------------------------------------------------------------ registration
    def registration(self) -> m.Registration:
        """The ``hello.service`` of this service (docs/ipc.md §4.1)."""
        http = [
            m.HttpRoute(
                action=a.name,
                method=a.method,
                path=a.path,
                auth=a.auth,
                docs=docs_json(a.docs or {}),
            )
            for a in self.actions.values()
        ]
        ws = None
        router = self.ws
        if self.websocket is not None:
            opts = self.websocket
            mode = auth_mode(opts.auth)
            if opts.binary and router.binary_handler is None:
                raise ValueError(
                    "WebSocketOptions(binary=True) needs a service.ws.on_binary handler: "
                    "binary frames have no type to route by"
                )
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
                binary=opts.binary or router.binary_handler is not None,
                per_connection=opts.per_connection,
                concurrent=sorted(router.concurrent),
                presence=router.presence_handler is not None,
                not_idempotent=sorted(router.not_idempotent),
                origins=None if opts.origins is None else list(opts.origins),
                docs=router.docs(),
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
            events=sorted(self.event_handlers),
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
            self._add_action(Action(name, "GET", f"/{self.name}/{name}", "none", fn, builtin=True))
