"""Completion: what a handler returns when it finishes by callback, not as a coroutine.

A coroutine ``on_message`` costs a task per message, a future per call it awaits and
a loop turn for each wake-up. A handler that hands its work to someone who calls
back (the service routes: the worker's reply arrives in the IPC read) returns a
``Completion`` instead and calls ``finish()`` when it is done; the connection hands
over its next message right then, in the same call stack, still one at a time and in
order. It is awaitable too, for code that awaits whatever a handler returned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

__all__ = ["Completion"]


class Completion:
    """One handler's work, finished once by ``finish()``; ``then`` runs one callback."""

    __slots__ = ("_then", "finished")

    def __init__(self) -> None:
        self._then: Callable[[], None] | None = None
        self.finished = False

    def then(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once finished (at the next loop turn if it already is: a
        chain of completions that finished early must not recurse)."""
        if self.finished:
            asyncio.get_running_loop().call_soon(callback)
        else:
            self._then = callback

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        callback, self._then = self._then, None
        if callback is not None:
            callback()

    def __await__(self) -> Generator[Any, None, None]:
        if self.finished:
            return
        future = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        self.then(wake)
        yield from future.__await__()
