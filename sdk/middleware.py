"""The middleware onion shared by HTTP actions and WebSocket handlers, and the
positional ``(name, opts, fn)`` forms both registries accept."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

__all__ = ["Next", "check_async", "check_group_callback", "run_chain", "split_options"]

#: ``await next()`` runs the rest of the chain and returns the handler's result.
Next = Callable[[], Awaitable[Any]]


class _HasResult(Protocol):
    result: Any


C = TypeVar("C", bound=_HasResult)


async def run_chain(
    chain: Sequence[Callable[[C, Next], Awaitable[Any]]],
    ctx: C,
    handler: Callable[[C], Awaitable[Any]],
) -> Any:
    """Run ``chain[0]`` around ``chain[1]`` ... around ``handler``; returns ``ctx.result``.

    The handler's value lands in ``ctx.result``; a middleware may replace it after
    ``await next()``. What middleware returns is ignored, as in the TypeScript SDK.
    """

    async def call(index: int) -> Any:
        if index < len(chain):
            await chain[index](ctx, lambda: call(index + 1))
        else:
            ctx.result = await handler(ctx)
        return ctx.result

    return await call(0)


def check_async(fn: Callable[..., Any], what: str) -> None:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what} must be an async function, got {fn!r}")


def check_group_callback(cb: Any, registers: str) -> None:
    """``cb`` of ``group(prefix, cb)``: a plain function (it runs once, right away)."""
    if not callable(cb):
        raise TypeError(f"the group callback must be a function, got {cb!r}")
    if inspect.iscoroutinefunction(cb):
        # Called and never awaited, it would register nothing.
        raise TypeError(f"the group callback registers {registers}: a plain def, not async def")


def split_options(
    what: str,
    opts_or_fn: Any,
    fn: Any,
    keywords: Mapping[str, Any],
    known: Sequence[str],
) -> tuple[dict[str, Any], Any]:
    """``(opts, fn)`` from the TypeScript form ``(name, opts, fn)`` / ``(name, fn)`` or
    the keyword form ``(name, key=value)``; ``fn`` is None for the decorator forms.

    Options come as a dict or as keywords, never both (which would win is a guess);
    an unknown key fails now rather than being silently ignored.
    """
    given = {k: v for k, v in keywords.items() if v is not None}
    if opts_or_fn is None:
        opts: dict[str, Any] = {}
    elif isinstance(opts_or_fn, Mapping):
        opts = dict(opts_or_fn)
    elif callable(opts_or_fn):
        if fn is not None:
            raise TypeError(f"{what}: give (name, opts, fn) or (name, fn)")
        opts, fn = {}, opts_or_fn
    else:
        raise TypeError(f"{what}: options must be a dict, got {type(opts_or_fn).__name__}")
    if opts and given:
        raise TypeError(f"{what}: give options as a dict or as keywords, not both")
    opts = opts or given
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise TypeError(f"{what}: unknown option {unknown[0]!r} (known: {', '.join(known)})")
    if fn is not None and not callable(fn):
        raise TypeError(f"{what}: the handler must be an async function, got {fn!r}")
    return opts, fn
