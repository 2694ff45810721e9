"""WsRouter: WebSocket message handlers, groups, middleware and the dispatch chain."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import TracebackType
from typing import Any, Literal, TypedDict, TypeVar, overload

import orjson

from .context import PresenceContext, WsContext
from .errors import UnauthorizedError, UnknownMessageTypeError
from .middleware import Next, check_async, check_group_callback, run_chain, split_options

__all__ = [
    "AuthOption",
    "ConnectHandler",
    "DisconnectHandler",
    "Middleware",
    "Next",
    "PresenceHandler",
    "WsGroup",
    "WsGroupOptions",
    "WsHandler",
    "WsHandlerOptions",
    "WsRouter",
    "auth_mode",
    "doc_entry",
    "docs_json",
]

AuthOption = bool | Literal["required", "optional", "none"]
WsHandler = Callable[[WsContext], Awaitable[Any]]
ConnectHandler = Callable[[WsContext], Awaitable[Any]]
#: ``async def on_disconnect(ctx, code, rooms)``: the close code and the rooms it was in.
DisconnectHandler = Callable[[WsContext, int, list[str]], Awaitable[Any]]
#: ``async def on_presence(ctx)``: ``ctx.user_id`` came online or went offline.
PresenceHandler = Callable[[PresenceContext], Awaitable[Any]]
#: ``async def mw(ctx, next)``: code before ``await next()`` runs before the handler.
Middleware = Callable[[WsContext, Next], Awaitable[Any]]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class WsHandlerOptions(TypedDict, total=False):
    """The ``opts`` of ``service.ws.on("type", opts, fn)``."""

    #: ``True``: a message without a verified identity is answered ``UNAUTHORIZED``.
    auth: AuthOption
    #: ``True``: runs alongside the connection's other messages (no ordering).
    concurrent: bool
    #: ``False``: a message repeating a recent ``id`` runs the handler again instead of
    #: getting the remembered ack (default ``True``: docs/sdk.md, "Retried requests").
    idempotent: bool
    #: Documentation for the engine's AsyncAPI document (docs/sdk.md, "API documents"):
    #: one line, longer text, the JSON schema of ``data`` and of the ack's ``data``.
    summary: str
    description: str
    schema: dict[str, Any]
    result: dict[str, Any]


class WsGroupOptions(TypedDict, total=False):
    """The ``opts`` of ``service.ws.group("prefix", opts, cb)``."""

    #: The default ``auth`` of the group's handlers (and of its catch-all types).
    auth: AuthOption


#: ``def cb(group)``: registers the group's handlers on the group it is given.
WsGroupCallback = Callable[["WsGroup"], Any]

#: The documentation keys of ``WsHandlerOptions``: they change no behaviour.
_DOC_OPTIONS = ("summary", "description", "schema", "result")
#: The keys of ``WsHandlerOptions``.
_HANDLER_OPTIONS = ("auth", "concurrent", "idempotent", *_DOC_OPTIONS)
_TEXT_DOCS = frozenset({"summary", "description"})

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


def doc_entry(what: str, options: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The documentation options among ``options``, checked now (not at the engine):
    ``summary``/``description`` are text, the others JSON schemas (dicts) that encode."""
    entry: dict[str, Any] = {}
    for key in keys:
        value = options.get(key)
        if value is None:
            continue
        if key in _TEXT_DOCS:
            if not isinstance(value, str):
                raise TypeError(f"{what}: {key} must be a string")
            entry[key] = value
        elif isinstance(value, Mapping):
            entry[key] = dict(value)
        else:
            raise TypeError(f"{what}: {key} must be a JSON schema (a dict)")
    if entry:
        try:
            orjson.dumps(entry)
        except orjson.JSONEncodeError as exc:
            raise TypeError(f"{what}: documentation must encode to JSON: {exc}") from None
    return entry


def docs_json(docs: Mapping[str, Any]) -> bytes | None:
    """A route's ``docs`` field: JSON text, or None (omitted: an older engine would
    refuse a field it does not know)."""
    return orjson.dumps(docs, option=orjson.OPT_SORT_KEYS) if docs else None


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
        #: Types whose repeated ids run the handler again (``idempotent=False``).
        self.not_idempotent: set[str] = set()
        #: Group prefixes, e.g. ``"chat."``.
        self.prefixes: list[str] = []
        self.catch_all: WsHandler | None = None
        self.connect_handler: ConnectHandler | None = None
        self.disconnect_handler: DisconnectHandler | None = None
        self.presence_handler: PresenceHandler | None = None
        #: ``on_binary``: binary frames (``ctx.message`` is ``bytes``).
        self.binary_handler: WsHandler | None = None
        self._global: list[Middleware] = []
        self._scoped: list[tuple[str, Middleware]] = []
        self._chains: dict[str, list[Middleware]] = {}
        # Groups with auth=True: their types need an identity even in the catch-all.
        self._auth_prefixes: list[str] = []
        #: Documentation of handled types and of the events the service pushes.
        self.type_docs: dict[str, dict[str, Any]] = {}
        self.emitted: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ registration
    @overload
    def on(
        self,
        type: str,
        opts: WsHandlerOptions | None = None,
        /,
        *,
        auth: AuthOption | None = None,
        concurrent: bool | None = None,
        idempotent: bool | None = None,
        summary: str | None = None,
        description: str | None = None,
        schema: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> Callable[[F], F]: ...
    @overload
    def on(self, type: str, opts: WsHandlerOptions, fn: F, /) -> F: ...
    @overload
    def on(self, type: str, fn: F, /) -> F: ...
    def on(
        self,
        type: str,
        opts: Any = None,
        fn: Any = None,
        /,
        *,
        auth: AuthOption | None = None,
        concurrent: bool | None = None,
        idempotent: bool | None = None,
        summary: str | None = None,
        description: str | None = None,
        schema: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> Any:
        """Handle messages whose ``type`` is exactly ``type``.

        As in the TypeScript SDK: ``ws.on("chat.send", {"auth": True}, fn)`` or
        ``ws.on("chat.send", fn)``; or as a decorator, ``@ws.on("chat.send", auth=True)``
        (``@ws.on("chat.send", {"auth": True})`` works too).

        ``auth=True`` answers ``UNAUTHORIZED`` to a message without a verified identity.
        ``concurrent=True`` lets these messages run alongside the connection's others
        instead of waiting their turn (no ordering: for typing indicators and the like).
        ``idempotent=False``: a message that repeats a recent ``id`` of the same user
        (a client's retry) runs the handler again; by default the engine answers it
        with the first one's ack.

        ``summary``, ``description``, ``schema`` (the JSON schema of ``data``) and
        ``result`` (of the ack's ``data``) document the type in the engine's AsyncAPI
        document (docs/sdk.md, "API documents"); they change no behaviour.
        """
        options, fn = split_options(
            f"ws.on({type!r})",
            opts,
            fn,
            {
                "auth": auth,
                "concurrent": concurrent,
                "idempotent": idempotent,
                "summary": summary,
                "description": description,
                "schema": schema,
                "result": result,
            },
            _HANDLER_OPTIONS,
        )
        required = auth_mode(options.get("auth", False)) == "required"
        parallel = bool(options.get("concurrent", False))
        once = bool(options.get("idempotent", True))
        docs = doc_entry(f"ws.on({type!r})", options, _DOC_OPTIONS)

        def register(handler: F) -> F:
            check_async(handler, f"handler of {type!r}")
            if type in self.handlers:
                raise ValueError(f"message type {type!r} already has a handler")
            self.handlers[type] = _Route(handler, required)
            if docs:
                self.type_docs[type] = docs
            if parallel:
                self.concurrent.add(type)
            if not once:
                self.not_idempotent.add(type)
            return handler

        return register if fn is None else register(fn)

    def emits(
        self,
        event: str,
        *,
        schema: dict[str, Any] | None = None,
        summary: str | None = None,
        description: str | None = None,
    ) -> None:
        """Declare an event the service pushes to clients (``ctx.to(room).emit(event,
        data)``), for the engine's AsyncAPI document: ``schema`` is the JSON schema of
        its ``data``. Documentation only: emitting undeclared events stays allowed."""
        if not isinstance(event, str) or not event or event.startswith("linkd."):
            raise ValueError(f"bad event type {event!r}: linkd.* types are the engine's own")
        if event in self.emitted:
            raise ValueError(f"event {event!r} is already declared")
        options = {"schema": schema, "summary": summary, "description": description}
        self.emitted[event] = doc_entry(
            f"ws.emits({event!r})", options, ("summary", "description", "schema")
        )

    def docs(self) -> bytes | None:
        """``WsRoute.docs``: the documented types and the declared events, as JSON."""
        out: dict[str, Any] = {}
        if self.type_docs:
            out["types"] = self.type_docs
        if self.emitted:
            out["emits"] = self.emitted
        return docs_json(out)

    def on_message(self, fn: F) -> F:
        """Catch-all: handles every type routed here that has no handler of its own."""
        check_async(fn, "on_message")
        if self.catch_all is not None:
            raise ValueError("on_message is already set")
        self.catch_all = fn
        return fn

    def on_binary(self, fn: F) -> F:
        """``async def (ctx)``: a binary frame arrived; ``ctx.message`` is its ``bytes``
        and ``ctx.type`` is ``"linkd.binary"``. A binary frame has no envelope, so every
        one comes here (dispatch on its first bytes if you frame your own), and no id:
        the return value is dropped (no ack); a raised error reaches the client as
        ``{"type": "linkd.binary", "error": {...}}``. Middleware runs as for a text
        message of type ``linkd.binary``. Registering it makes the endpoint accept
        binary frames (``WebSocketOptions(binary=True)``)."""
        check_async(fn, "on_binary")
        if self.binary_handler is not None:
            raise ValueError("on_binary is already set")
        self.binary_handler = fn
        return fn

    def on_connect(self, fn: F) -> F:
        """``async def (ctx)``: a client connected; raise to refuse it."""
        check_async(fn, "on_connect")
        if self.connect_handler is not None:
            raise ValueError("on_connect is already set")
        self.connect_handler = fn
        return fn

    def on_disconnect(self, fn: F) -> F:
        """``async def (ctx, code, rooms)``: a client left; ``ctx.message`` is None."""
        check_async(fn, "on_disconnect")
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
        check_async(fn, "on_presence")
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
            check_async(middleware, "middleware")
            self._scoped.append((pattern, middleware))
        else:
            if middleware is not None:
                raise TypeError("use(middleware) or use(pattern, middleware)")
            check_async(pattern, "middleware")
            self._global.append(pattern)
        self._chains.clear()

    def group(
        self,
        name: str,
        opts: WsGroupOptions | WsGroupCallback | None = None,
        cb: WsGroupCallback | None = None,
        /,
        *,
        auth: AuthOption | None = None,
    ) -> WsGroup:
        """The types under ``name + "."``; ``auth`` is the default of all of them.

        As in the TypeScript SDK, ``ws.group("chat", cb)`` or
        ``ws.group("chat", {"auth": True}, cb)`` calls ``cb(group)``, which registers
        on the group (``group.on("send", fn)`` handles ``chat.send``); or use it as a
        context manager: ``with service.ws.group("chat", auth=True) as ws: ...``.
        """
        if opts is not None and not isinstance(opts, Mapping):
            if cb is not None:
                raise TypeError("ws.group(prefix, cb) or ws.group(prefix, opts, cb)")
            opts, cb = None, opts  # group(name, cb)
        options, _ = split_options(f"ws.group({name!r})", opts, None, {"auth": auth}, ("auth",))
        if cb is not None:
            check_group_callback(cb, "handlers")
        prefix = name if name.endswith(".") else name + "."
        if prefix in self.prefixes:
            raise ValueError(f"group {name!r} already exists")
        self.prefixes.append(prefix)
        required = auth_mode(options.get("auth", False)) == "required"
        if required:
            self._auth_prefixes.append(prefix)
        group = WsGroup(self, prefix, required)
        if cb is not None:
            cb(group)
        return group

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
                self.binary_handler is not None,
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
        if ctx.envelope is not None and isinstance(ctx.envelope.data, bytes):
            # A binary frame (JSON never decodes to bytes): its own handler.
            if self.binary_handler is None:
                raise UnknownMessageTypeError("no handler for binary messages")
            return await run_chain(self._chain(type), ctx, self.binary_handler)
        route = self.handlers.get(type)
        if route is None:
            if self.catch_all is None:
                raise UnknownMessageTypeError(f"no handler for message type {type!r}")
            required = any(type.startswith(p) for p in self._auth_prefixes)
            route = _Route(self.catch_all, required)
        if route.auth_required and ctx.auth is None:
            raise UnauthorizedError()
        return await run_chain(self._chain(type), ctx, route.handler)


class WsGroup:
    """Handlers for the types under one prefix: ``ws.on("send")`` handles ``chat.send``.

    What ``service.ws.group(prefix, cb)`` passes to ``cb``, and what the context-manager
    form binds.
    """

    def __init__(self, router: WsRouter, prefix: str, auth_required: bool) -> None:
        self.router = router
        self.prefix = prefix
        self.auth_required = auth_required

    @overload
    def on(
        self,
        name: str,
        opts: WsHandlerOptions | None = None,
        /,
        *,
        auth: AuthOption | None = None,
        concurrent: bool | None = None,
        idempotent: bool | None = None,
        summary: str | None = None,
        description: str | None = None,
        schema: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> Callable[[F], F]: ...
    @overload
    def on(self, name: str, opts: WsHandlerOptions, fn: F, /) -> F: ...
    @overload
    def on(self, name: str, fn: F, /) -> F: ...
    def on(
        self,
        name: str,
        opts: Any = None,
        fn: Any = None,
        /,
        *,
        auth: AuthOption | None = None,
        concurrent: bool | None = None,
        idempotent: bool | None = None,
        summary: str | None = None,
        description: str | None = None,
        schema: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
    ) -> Any:
        """Handle type ``prefix + name`` (same forms as ``WsRouter.on``); ``auth``
        defaults to the group's."""
        options, fn = split_options(
            f"ws.on({self.prefix + name!r})",
            opts,
            fn,
            {
                "auth": auth,
                "concurrent": concurrent,
                "idempotent": idempotent,
                "summary": summary,
                "description": description,
                "schema": schema,
                "result": result,
            },
            _HANDLER_OPTIONS,
        )
        register: Callable[[F], F] = self.router.on(
            self.prefix + name,
            auth=options.get("auth", self.auth_required),
            concurrent=options.get("concurrent"),
            idempotent=options.get("idempotent"),
            **{key: options.get(key) for key in _DOC_OPTIONS},
        )
        return register if fn is None else register(fn)

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
