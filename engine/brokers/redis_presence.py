"""Presence across engine nodes through Redis (docs/scaling.md, "Presence").

Each node holds a lease (``lk:lease:<node>``, renewed every third of its life) and
writes what its own connections contribute: per user, how many connections it holds
(``lk:pn:<node>``), and per room, which users it holds there (``lk:rp:<room>``, field
``<node> NUL <user>``). The cluster-wide count of each user's connections lives in
``lk:count``, the announced-online users in ``lk:online``.

A user goes online when ``SADD lk:online`` says it was not there (one node announces
it, once); offline when their count reached zero and stayed there for the grace period
(``SREM`` decides who announces). A node that dies stops renewing its lease; within a
few seconds of its expiry a surviving node (one, by an ``SET NX`` claim) takes back
its contributions: counts go down, room entries go, users with nothing left go offline
after the grace period. Queries skip entries of nodes whose lease is gone, so the
answer is the same on every node and right even before the reaper ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from engine.brokers.presence import PresenceListener

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["RedisPresence"]

log = logging.getLogger("linkd.presence")

_COUNT = "lk:count"
_ONLINE = "lk:online"
_NAMES = "lk:names"
_NODES = "lk:nodes"
#: Presence updates kept while Redis is unreachable (bounded memory).
MAX_QUEUED = 100_000

# KEYS: node's users, counts, online, names. ARGV: user, username ('' for none).
_CONNECT = """
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if ARGV[2] ~= '' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[2]) end
return redis.call('SADD', KEYS[3], ARGV[1])
"""
# KEYS: node's users, counts. ARGV: user, how many. Returns the user's total left.
_DISCONNECT = """
local mine = redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(ARGV[2]))
if mine <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
local total = redis.call('HINCRBY', KEYS[2], ARGV[1], -tonumber(ARGV[2]))
if total <= 0 then redis.call('HDEL', KEYS[2], ARGV[1]); return 0 end
return total
"""
# KEYS: counts, online. ARGV: user. Returns 1 when the caller must announce offline.
_GONE = """
local total = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if total > 0 then return 0 end
return redis.call('SREM', KEYS[2], ARGV[1])
"""


def _text(value: bytes | str) -> str:
    """Redis answers bytes (no decode_responses): names and ids are UTF-8."""
    return value.decode() if isinstance(value, bytes) else value


class RedisPresence:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: aioredis.Redis,
        node: str,
        grace: float,
        lease: float,
    ) -> None:
        self._loop = loop
        self._redis = client
        self.node = node
        self._grace = grace
        self._lease = lease
        self.listeners: list[PresenceListener] = []
        self._users_key = f"lk:pn:{node}"
        self._rooms_key = f"lk:nr:{node}"
        self._connect = client.register_script(_CONNECT)
        self._disconnect = client.register_script(_DISCONNECT)
        self._gone = client.register_script(_GONE)
        #: Local (room, user) → connections of that user in that room on this node.
        self._in_room: dict[tuple[str, str], int] = {}
        #: Users with a connection here (for the synchronous ``is_online``).
        self._here: dict[str, str | None] = {}
        self._ops: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._stopping = False
        self._dropping = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._tasks = [
            self._loop.create_task(self._run_ops()),
            self._loop.create_task(self._keep_lease()),
        ]

    async def stop(self) -> None:
        """Let queued updates go, then drop the lease: the others reap what is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                while self._ops:  # noqa: ASYNC110 - a queue drained by our own task
                    await asyncio.sleep(0.01)
        self._stopping = True
        self._wake.set()
        for handle in self._timers:
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(f"lk:lease:{self.node}")

    def close(self) -> None:
        for handle in self._timers:
            handle.cancel()

    # ---------------------------------------------------- local transitions
    def is_online(self, user_id: str) -> bool:
        """This node's view (a connection here); ``online()`` asks the cluster."""
        return user_id in self._here

    def connected(self, user_id: str, username: str | None) -> None:
        self._here[user_id] = username
        self._queue(("connect", user_id, username or ""))

    def disconnected(self, user_id: str) -> None:
        self._here.pop(user_id, None)
        self._queue(("disconnect", user_id, 1))

    def room_joined(self, room: str, user_id: str) -> None:
        key = (room, user_id)
        n = self._in_room.get(key, 0)
        self._in_room[key] = n + 1
        if n == 0:
            self._queue(("room", room, user_id, 1))

    def room_left(self, room: str, user_id: str) -> None:
        key = (room, user_id)
        n = self._in_room.get(key, 0) - 1
        if n > 0:
            self._in_room[key] = n
            return
        self._in_room.pop(key, None)
        self._queue(("room", room, user_id, -1))

    # --------------------------------------------------------------- queries
    async def online(self, user_id: str) -> bool:
        return bool(await self._redis.sismember(_ONLINE, user_id))

    async def room_users(self, room: str) -> list[dict[str, Any]]:
        entries = await self._redis.hgetall(f"lk:rp:{room}")
        counts: dict[str, dict[str, int]] = {}
        for field, value in entries.items():
            node, _, user = _text(field).partition("\x00")
            counts.setdefault(node, {})[user] = int(value)
        if not counts:
            return []
        nodes = list(counts)
        pipe = self._redis.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(f"lk:lease:{node}")
        alive = await pipe.execute()
        users: dict[str, int] = {}
        for node, live in zip(nodes, alive, strict=True):
            if live:  # a dead node's entries are ignored until they are reaped
                for user, n in counts[node].items():
                    users[user] = users.get(user, 0) + n
        if not users:
            return []
        ordered = sorted(users)
        names = await self._redis.hmget(_NAMES, ordered)
        return [
            {
                "userId": user,
                "username": _text(name) if name is not None else None,
                "connections": users[user],
            }
            for user, name in zip(ordered, names, strict=True)
        ]

    # ------------------------------------------------------------- plumbing
    def _queue(self, op: tuple[Any, ...]) -> None:
        if self._stopping:
            return
        if len(self._ops) >= MAX_QUEUED:
            # Redis has been unreachable for long: bounded memory first. The counts of
            # this node are then off until its connections come and go again.
            if not self._dropping:
                log.error("%d presence updates waiting for Redis: dropping new ones", MAX_QUEUED)
            self._dropping = True
            return
        self._dropping = False
        self._ops.append(op)
        self._wake.set()

    async def _run_ops(self) -> None:
        while not self._stopping:
            if not self._ops:
                self._wake.clear()
                await self._wake.wait()
                continue
            op = self._ops[0]
            try:
                await self._apply(op)
            except (RedisError, OSError) as exc:
                log.warning("presence update not written (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            self._ops.popleft()

    async def _apply(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "connect":
            _, user, name = op
            keys = [self._users_key, _COUNT, _ONLINE, _NAMES]
            if await self._connect(keys=keys, args=[user, name]):
                self._announce(user, name or None, True)
        elif kind == "disconnect":
            _, user, n = op
            total = await self._disconnect(keys=[self._users_key, _COUNT], args=[user, n])
            if int(total) <= 0:
                self._later(user)
        elif kind == "room":
            _, room, user, delta = op
            field = f"{self.node}\x00{user}"
            pipe = self._redis.pipeline(transaction=False)
            if delta > 0:
                pipe.hset(f"lk:rp:{room}", field, 1)
                pipe.sadd(self._rooms_key, room)
            else:
                pipe.hdel(f"lk:rp:{room}", field)
            await pipe.execute()
        elif kind == "gone":
            _, user = op
            if await self._gone(keys=[_COUNT, _ONLINE], args=[user]):
                name = await self._redis.hget(_NAMES, user)
                self._announce(user, _text(name) if name else None, False)

    def _later(self, user: str) -> None:
        """Offline unless a connection (on any node) comes back within the grace."""

        def due() -> None:
            self._timers.discard(handle)
            self._queue(("gone", user))

        handle = self._loop.call_later(self._grace, due)
        self._timers.add(handle)

    def _announce(self, user: str, name: str | None, online: bool) -> None:
        for listener in self.listeners:
            try:
                listener(user, name, online)
            except Exception:
                log.exception("presence listener failed for user %s", user)

    # ---------------------------------------------------------- lease, reap
    async def _keep_lease(self) -> None:
        lease_ms = int(self._lease * 1000)
        while not self._stopping:
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.set(f"lk:lease:{self.node}", 1, px=lease_ms)
                pipe.sadd(_NODES, self.node)
                await pipe.execute()
                await self._reap()
            except (RedisError, OSError) as exc:
                log.warning("presence lease not renewed (%s)", exc)
            await asyncio.sleep(self._lease / 3)

    async def _reap(self) -> None:
        """Take back what nodes whose lease expired left behind (one reaper each)."""
        nodes = [_text(n) for n in await self._redis.smembers(_NODES)]
        others = [n for n in nodes if n != self.node]
        if not others:
            return
        pipe = self._redis.pipeline(transaction=False)
        for node in others:
            pipe.exists(f"lk:lease:{node}")
        alive = await pipe.execute()
        for node, live in zip(others, alive, strict=True):
            if live or not await self._redis.set(f"lk:reap:{node}", self.node, nx=True, px=60_000):
                continue
            users = await self._redis.hgetall(f"lk:pn:{node}")
            for user_b, n in users.items():
                user = _text(user_b)
                total = await self._disconnect(keys=[f"lk:pn:{node}", _COUNT], args=[user, int(n)])
                if int(total) <= 0:
                    self._later(user)
            for room_b in await self._redis.smembers(f"lk:nr:{node}"):
                room = _text(room_b)
                fields = [
                    f
                    for f in await self._redis.hkeys(f"lk:rp:{room}")
                    if _text(f).startswith(node + "\x00")
                ]
                if fields:
                    await self._redis.hdel(f"lk:rp:{room}", *fields)
            await self._redis.delete(f"lk:pn:{node}", f"lk:nr:{node}")
            await self._redis.srem(_NODES, node)
            log.warning("node %s lost its lease: its %d user(s) taken back", node, len(users))
