"""RedisControl: commands on connections of other nodes, over Redis pub/sub
(docs/scaling.md, "Commands across nodes").

A command for a user goes on ``lk:ctl``, which every node subscribes to; one for a
connection goes on its node's own channel ``lk:n:<node>``. Each node that receives
it applies it to its connections and answers on the asking node's channel with how
many it acted on. ``PUBLISH`` returns how many subscribers received the command, so
the asking node knows how many answers to wait for: the count is exact when they
all came within ``REPLY_TIMEOUT``, and says it is not otherwise.

One channel for every node, rather than the user's event channel (only the nodes
with the user subscribe to it): a node whose subscription to the user's channel is
still being confirmed already holds the connection, and must be reached; the
event channels keep their one wire format; and a command is an operator's action,
rare, so that every node reads one short message costs nothing. The messages are
read through redis-py's per-channel handlers: the event path's code is unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from engine.brokers.commands import Command

__all__ = ["CONTROL", "MAX_PENDING", "REPLY_TIMEOUT", "RedisControl", "node_channel"]

log = logging.getLogger("linkd.redis")

#: The channel of commands for a user's connections, wherever they are.
CONTROL = b"lk:ctl"
#: Seconds the asking node waits for the others' answers.
REPLY_TIMEOUT = 2.0
#: Commands waiting for answers, and commands being applied here (bounded memory).
MAX_PENDING = 10_000


def node_channel(node: str) -> bytes:
    """A node's own channel: commands for its connections, answers to its commands."""
    return f"lk:n:{node}".encode()


class _Waiter:
    """The answers to one command this node sent."""

    __slots__ = ("answered", "count", "done", "expected", "seen")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        #: How many received it (PUBLISH's reply); None until it came back.
        self.expected: int | None = None
        #: Receivers heard from (our own echo on ``lk:ctl`` included), and other
        #: nodes among them; connections they acted on.
        self.seen = 0
        self.answered = 0
        self.count = 0

    def check(self) -> None:
        if self.expected is not None and self.seen >= self.expected and not self.done.done():
            self.done.set_result(None)


class RedisControl:
    """Sends this node's commands and applies the others'.

    Args:
        client: the broker's command connection pool.
        node: this node's id.
        apply: applies a command to this node's connections; how many it acted on
            (once it took effect: a subscription confirmed).
    """

    def __init__(
        self, client: aioredis.Redis, node: str, apply: Callable[[Command], Awaitable[int]]
    ) -> None:
        self._client = client
        self.node = node
        self._apply = apply
        self._own = node_channel(node)
        self._ids = itertools.count(1)
        self._waiting: dict[str, _Waiter] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], None]]:
        """The channels to subscribe to, with their handlers (``PubSub.subscribe``)."""
        return {CONTROL.decode(): self._guarded, self._own.decode(): self._guarded}

    def _guarded(self, message: dict[str, Any]) -> None:
        # Raised out of a handler, an error would end the broker's subscription.
        try:
            if message.get("channel") == self._own:
                self._on_own(message)
            else:
                self._on_command(message)
        except Exception:
            log.exception("control message failed")

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for waiter in self._waiting.values():
            if not waiter.done.done():
                waiter.done.set_result(None)

    # ------------------------------------------------------------- asking
    async def send(self, command: Command) -> tuple[int, int, bool]:
        """Send ``command`` to the other nodes concerned (the user's: all; a connection's:
        its node); ``(connections acted on, nodes that answered, all answered)``."""
        if len(self._waiting) >= MAX_PENDING:
            return 0, 0, False
        ident = f"{self.node}:{next(self._ids)}"
        channel = CONTROL if command.user is not None else node_channel(command.node or "")
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        self._waiting[ident] = waiter
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                waiter.expected = int(
                    await self._client.publish(channel, command.to_wire(self.node, ident))
                )
                waiter.check()
                await waiter.done
        except (TimeoutError, RedisError, OSError):
            pass
        finally:
            del self._waiting[ident]
        complete = waiter.expected is not None and waiter.seen >= waiter.expected
        return waiter.count, waiter.answered, complete

    def _on_own(self, message: dict[str, Any]) -> None:
        """This node's channel: an answer to one of our commands, or a command for one
        of our connections."""
        data = message.get("data")
        if not isinstance(data, bytes):
            return
        if data.startswith(b'{"re"'):
            self._on_answer(data)
        else:
            self._on_command(message)

    def _on_answer(self, data: bytes) -> None:
        try:
            answer = orjson.loads(data)
            waiter = self._waiting.get(answer["re"])
            count = int(answer["n"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("malformed control answer dropped")
            return
        if waiter is not None:  # None: answered after the deadline
            waiter.seen += 1
            waiter.answered += 1
            waiter.count += count
            waiter.check()

    # ---------------------------------------------------------- answering
    def _on_command(self, message: dict[str, Any]) -> None:
        # Called by PubSub.get_message, in the broker's reading task: what takes
        # time (a subscription's confirmation comes through this very task) runs
        # in a task of its own.
        data = message.get("data")
        try:
            command, origin, ident = Command.from_wire(data if isinstance(data, bytes) else b"")
        except (orjson.JSONDecodeError, ValueError):
            log.warning("malformed control message dropped")
            return
        if origin == self.node:
            # Our own, echoed on lk:ctl: this node applied it before sending.
            waiter = self._waiting.get(ident)
            if waiter is not None:
                waiter.seen += 1
                waiter.check()
            return
        if len(self._tasks) >= MAX_PENDING:
            log.warning("%d control commands being applied: one dropped", MAX_PENDING)
            return
        task = asyncio.get_running_loop().create_task(self._answer(command, origin, ident))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, command: Command, origin: str, ident: str) -> None:
        try:
            count = await self._apply(command)
        except Exception:
            log.exception("control command %r failed", command.action)
            count = 0
        answer = orjson.dumps({"re": ident, "from": self.node, "n": count})
        try:
            await self._client.publish(node_channel(origin), answer)
        except (RedisError, OSError) as exc:
            log.warning("control answer not sent (%s: %s)", type(exc).__name__, exc)
