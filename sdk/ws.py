"""WsRouter: WebSocket message handlers, groups, middleware and the dispatch chain."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import TracebackType
from typing import Any, Literal, TypeVar

from .context import PresenceContext, WsContext
from .errors import UnauthorizedError, UnknownMessageTypeError

__all__ = [
    "AuthOption",
    "ConnectHandler",
    "DisconnectHandler",
    "Middleware",
    "Next",
    "PresenceHandler",
    "WsGroup",
    "WsHandler",
    "WsRouter",
    "auth_mode",
]

AuthOption = bool | Literal["required", "optional", "none"]
WsHandler = Callable[[WsContext], Awaitable[Any]]
ConnectHandler = Callable[[WsContext], Awaitable[Any]]
#: ``async def on_disconnect(ctx, code, rooms)``: the close code and the rooms it was in.
DisconnectHandler = Callable[[WsContext, int, list[str]], Awaitable[Any]]
#: ``async def on_presence(ctx)``: ``ctx.user_id`` came online or went offline.
PresenceHandler = Callable[[PresenceContext], Awaitable[Any]]
Next = Callable[[], Awaitable[Any]]
#: ``async def mw(ctx, next)``: code before ``await next()`` runs before the handler.
Middleware = Callable[[WsContext, Next], Awaitable[Any]]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# Distinct message types seen is bounded by the registration except with a catch-all,
# where clients choose them: keep the per-type middleware cache small.
_MAX_CACHED_TYPES = 1024


def auth_mode(value: AuthOption) -> str:
    """``True``/``False``/``"required"``/``"optional"``/``"none"`` → the wire's string."""
    if value is True:
        return "required"
    if value is False:
        return "none"
    if value in ("required", "optional", "none"):
        return value
    raise ValueError(f"auth must be a bool, 'required', 'optional' or 'none', not {value!r}")


def _check_async(fn: Callable[..., Any], what: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what} must be an async function, got {fn!r}")


@dataclass(frozen=True, slots=True)
class _Route:
    handler: WsHandler
    auth_required: bool


class WsRouter:
    """The WebSocket side of a service (``service.ws``)."""

    def __init__(self) -> None:
        self.handlers: dict[str, _Route] = {}
        #: Types whose handlers run without waiting for the connection's other messages.
        self.concurrent: set[str] = set()
        #: Group prefixes, e.g. ``"chat."``.
        self.prefixes: list[str] = []
        self.catch_all: WsHandler | None = None
        self.connect_handler: ConnectHandler | None = None
        self.disconnect_handler: DisconnectHandler | None = None
        self.presence_handler: PresenceHandler | None = None
        self._global: list[Middleware] = []
        self._scoped: list[tuple[str, Middleware]] = []
        self._chains: dict[str, list[Middleware]] = {}
        # Groups with auth=True: their types need an identity even in the catch-all.
        self._auth_prefixes: list[str] = []

    # ------------------------------------------------------------ registration
    def on(
        self, type: str, *, auth: AuthOption = False, concurrent: bool = False
    ) -> Callable[[F], F]:
        """Handle messages whose ``type`` is exactly ``type``.

        ``auth=True`` answers ``UNAUTHORIZED`` to a message without a verified identity.
        ``concurrent=True`` lets these messages run alongside the connection's others
        instead of waiting their turn (no ordering: for typing indicators and the like).
        """
        required = auth_mode(auth) == "required"

        def register(fn: F) -> F:
            _check_async(fn, f"handler of {type!r}")
            if type in self.handlers:
                raise ValueError(f"message type {type!r} already has a handler")
            self.handlers[type] = _Route(fn, required)
            if concurrent:
                self.concurrent.add(type)
            return fn

        return register

    def on_message(self, fn: F) -> F:
        """Catch-all: handles every type routed here that has no handler of its own."""
        _check_async(fn, "on_message")
        if self.catch_all is not None:
            raise ValueError("on_message is already set")
        self.catch_all = fn
        return fn

    def on_connect(self, fn: F) -> F:
        """``async def (ctx)``: a client connected; raise to refuse it."""
        _check_async(fn, "on_connect")
        if self.connect_handler is not None:
            raise ValueError("on_connect is already set")
        self.connect_handler = fn
        return fn

    def on_disconnect(self, fn: F) -> F:
        """``async def (ctx, code, rooms)``: a client left; ``ctx.message`` is None."""
        _check_async(fn, "on_disconnect")
        if self.disconnect_handler is not None:
            raise ValueError("on_disconnect is already set")
        self.disconnect_handler = fn
        return fn

    def on_presence(self, fn: F) -> F:
        """``async def (ctx: PresenceContext)``: a user came online or went offline.

        Online at the user's first connection to the engine (any tab, any path);
        offline once the last one has been closed for the engine's presence grace
        period. Each transition reaches one worker of the service, once.
        """
        _check_async(fn, "on_presence")
        if self.presence_handler is not None:
            raise ValueError("on_presence is already set")
        self.presence_handler = fn
        return fn

    def use(self, pattern: str | Middleware, middleware: Middleware | None = None) -> None:
        """Add middleware: ``use(mw)`` for every message, ``use("chat.*", mw)`` for the
        types matching the pattern (``fnmatch``, case-sensitive).

        Every global middleware runs first, then the matching scoped ones, each in the
        order added; then the handler.
        """
        if isinstance(pattern, str):
            if middleware is None:
                raise TypeError("use(pattern, middleware) needs the middleware")
            _check_async(middleware, "middleware")
            self._scoped.append((pattern, middleware))
        else:
            if middleware is not None:
                raise TypeError("use(middleware) or use(pattern, middleware)")
            _check_async(pattern, "middleware")
            self._global.append(pattern)
        self._chains.clear()

    def group(self, name: str, *, auth: AuthOption = False) -> WsGroup:
        """A group of types under ``name + "."``; ``auth`` applies to all of them."""
        prefix = name if name.endswith(".") else name + "."
        if prefix in self.prefixes:
            raise ValueError(f"group {name!r} already exists")
        self.prefixes.append(prefix)
        required = auth_mode(auth) == "required"
        if required:
            self._auth_prefixes.append(prefix)
        return WsGroup(self, prefix, required)

    @property
    def exact_types(self) -> list[str]:
        """Types to register one by one: those no group prefix already covers."""
        return [t for t in self.handlers if not any(t.startswith(p) for p in self.prefixes)]

    @property
    def requires_auth(self) -> bool:
        """Whether some handler or group answers UNAUTHORIZED without an identity."""
        return bool(self._auth_prefixes) or any(r.auth_required for r in self.handlers.values())

    @property
    def has_handlers(self) -> bool:
        return any(
            (
                self.handlers,
                self.prefixes,
                self.catch_all is not None,
                self.connect_handler is not None,
                self.disconnect_handler is not None,
            )
        )

    # ---------------------------------------------------------------- dispatch
    def _chain(self, type: str) -> list[Middleware]:
        chain = self._chains.get(type)
        if chain is None:
            chain = [*self._global, *(mw for pat, mw in self._scoped if fnmatchcase(type, pat))]
            if len(self._chains) >= _MAX_CACHED_TYPES:
                self._chains.clear()
            self._chains[type] = chain
        return chain

    async def dispatch(self, ctx: WsContext) -> Any:
        """Run the middleware chain and the handler of ``ctx.type``; returns ``ctx.result``."""
        type = ctx.type
        route = self.handlers.get(type)
        if route is None:
            if self.catch_all is None:
                raise UnknownMessageTypeError(f"no handler for message type {type!r}")
            required = any(type.startswith(p) for p in self._auth_prefixes)
            route = _Route(self.catch_all, required)
        if route.auth_required and ctx.auth is None:
            raise UnauthorizedError()
        chain = self._chain(type)
        handler = route.handler

        async def call(index: int) -> Any:
            if index < len(chain):
                await chain[index](ctx, lambda: call(index + 1))
            else:
                ctx.result = await handler(ctx)
            return ctx.result

        return await call(0)


class WsGroup:
    """Handlers for the types under one prefix: ``ws.on("send")`` handles ``chat.send``."""

    def __init__(self, router: WsRouter, prefix: str, auth_required: bool) -> None:
        self.router = router
        self.prefix = prefix
        self.auth_required = auth_required

    def on(
        self, name: str, *, auth: AuthOption | None = None, concurrent: bool = False
    ) -> Callable[[F], F]:
        """Handle type ``prefix + name``; ``auth`` defaults to the group's."""
        required = self.auth_required if auth is None else auth_mode(auth) == "required"
        return self.router.on(self.prefix + name, auth=required, concurrent=concurrent)

    def use(self, middleware: Middleware) -> None:
        """Middleware for this group's types only."""
        self.router.use(self.prefix + "*", middleware)

    def __enter__(self) -> WsGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
