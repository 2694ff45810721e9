"""Tasks: the coroutines the engine runs on its own (async handlers, their queues) and
awaits at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

__all__ = ["Tasks"]


class Tasks:
    """The running tasks; ``on_done`` is called as each one ends (the idle check)."""

    __slots__ = ("_loop", "_on_done", "_running")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_done: Callable[[], None]) -> None:
        self._loop = loop
        self._on_done = on_done
        self._running: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine as a task the engine tracks (and awaits at shutdown)."""
        task = self._loop.create_task(coro)
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._on_done()

    def __bool__(self) -> bool:
        return bool(self._running)

    def __len__(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[asyncio.Task[None]]:
        return iter(self._running)
