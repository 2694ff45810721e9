"""RedisEvents: the queues of events between services in Redis, shared by every node.

One Redis Stream per subscribing service, with one consumer group (``g``); each node
reads it as consumer ``<node id>``, only as many entries as its live workers of that
service can take now (so the nodes share the work), and XACKs + XDELs an entry once a
worker acked it. A publish is one Lua script: it finds the subscribers (a set per
event name), checks every bound first, then XADDs to each: queued for all or none.

Redelivery: an event whose worker died goes to another worker of this node when
there is one, else back into the stream (a copy XADDed, the original acked, in one
script) for any node. The entries of a node that died stay pending in the group:
every node with a live worker of the service XAUTOCLAIMs entries idle longer than
``CLAIM_IDLE``. Each node refreshes the ``alive`` key of the services it has live
workers of; a service whose key expired (``SUBSCRIPTION_TTL`` after its last worker
anywhere) is unsubscribed and its stream dropped at the next publish of its events.

Every key carries the hash tag ``{lk:ev}``: one slot, so the scripts may touch them
together (Redis Cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from engine.brokers.events import (
    MAX_WAITING_BYTES,
    MAX_WAITING_EVENTS,
    SUBSCRIPTION_TTL,
    Delivery,
    EventsFull,
    EventSink,
    exhausted,
)

__all__ = ["CLAIM_IDLE", "RedisEvents"]

log = logging.getLogger("linkd.events")

PREFIX: Final = "{lk:ev}:"
#: Entries pending this long (ms) in a consumer's list belong to a node that died:
#: well above the request timeout, after which a live node redelivers its own.
CLAIM_IDLE: Final = 120_000
#: Seconds between refreshes of the ``alive`` keys and XAUTOCLAIM sweeps.
REFRESH: Final = 5.0
_BLOCK_MS: Final = 1000

# ARGV: prefix, event name, data, source, max events, max bytes.
_PUBLISH = """
local subs = ARGV[1] .. 'n:' .. ARGV[2]
local services = redis.call('SMEMBERS', subs)
table.sort(services)
local live = {}
for _, s in ipairs(services) do
  local base = ARGV[1] .. 's:' .. s
  if redis.call('EXISTS', base .. ':alive') == 1 then
    local n = redis.call('XLEN', base .. ':q')
    local b = tonumber(redis.call('GET', base .. ':bytes') or '0')
    if n >= tonumber(ARGV[5]) or b + #ARGV[3] > tonumber(ARGV[6]) then
      return {'full', s, n}
    end
    table.insert(live, s)
  else
    -- No worker anywhere for SUBSCRIPTION_TTL: the subscription ends, its queue too.
    for _, name in ipairs(redis.call('SMEMBERS', base .. ':names')) do
      redis.call('SREM', ARGV[1] .. 'n:' .. name, s)
    end
    redis.call('DEL', base .. ':names', base .. ':q', base .. ':bytes')
  end
end
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
for _, s in ipairs(live) do
  local base = ARGV[1] .. 's:' .. s
  redis.call('XADD', base .. ':q', '*', 'n', ARGV[2], 'd', ARGV[3], 's', ARGV[4], 't', ms, 'a', 1)
  redis.call('INCRBY', base .. ':bytes', #ARGV[3])
end
table.insert(live, 1, 'ok')
return live
"""

# ARGV: prefix, service, ttl (ms), names...
_SUBSCRIBE = """
local base = ARGV[1] .. 's:' .. ARGV[2]
for _, name in ipairs(redis.call('SMEMBERS', base .. ':names')) do
  redis.call('SREM', ARGV[1] .. 'n:' .. name, ARGV[2])
end
redis.call('DEL', base .. ':names')
for i = 4, #ARGV do
  redis.call('SADD', ARGV[1] .. 'n:' .. ARGV[i], ARGV[2])
  redis.call('SADD', base .. ':names', ARGV[i])
end
redis.call('SET', base .. ':alive', '1', 'PX', ARGV[3])
local ok = pcall(redis.call, 'XGROUP', 'CREATE', base .. ':q', 'g', '0', 'MKSTREAM')
return 1
"""

# ARGV: prefix, service, entry id, bytes.
_ACK = """
local q = ARGV[1] .. 's:' .. ARGV[2] .. ':q'
if redis.call('XACK', q, 'g', ARGV[3]) == 1 then
  redis.call('XDEL', q, ARGV[3])
  redis.call('DECRBY', ARGV[1] .. 's:' .. ARGV[2] .. ':bytes', ARGV[4])
end
return 1
"""

# ARGV: prefix, service, entry id, name, data, source, time, attempt.
_REQUEUE = """
local q = ARGV[1] .. 's:' .. ARGV[2] .. ':q'
if redis.call('XACK', q, 'g', ARGV[3]) == 1 then
  redis.call('XDEL', q, ARGV[3])
  redis.call('XADD', q, '*', 'n', ARGV[4], 'd', ARGV[5], 's', ARGV[6], 't', ARGV[7], 'a', ARGV[8])
end
return 1
"""


def _delivery(service: str, entry_id: bytes, fields: dict[bytes, bytes], claimed: bool) -> Delivery:
    attempt = int(fields.get(b"a", b"1")) + (1 if claimed else 0)
    source = fields.get(b"s", b"").decode() or None
    return Delivery(
        service,
        fields[b"n"].decode(),
        fields[b"d"],
        source,
        float(fields.get(b"t", b"0")),
        attempt,
        entry_id,
    )


class RedisEvents:
    """The work queues in Redis Streams (``--redis``)."""

    def __init__(self, client: aioredis.Redis, node: str) -> None:
        self._redis = client
        self._node = node
        self._sink: EventSink | None = None
        self._scripts: dict[str, Any] = {}
        #: Services with a live worker here → their reader task.
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        #: Entries read for this node's workers, not handed out yet (or to redeliver).
        self._buffers: dict[str, list[Delivery]] = {}
        self._subscribed: dict[str, list[str]] = {}
        self._ops: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for name, text in (
            ("publish", _PUBLISH),
            ("subscribe", _SUBSCRIBE),
            ("ack", _ACK),
            ("requeue", _REQUEUE),
        ):
            self._scripts[name] = self._redis.register_script(text)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run_ops()), loop.create_task(self._refresh())]

    async def stop(self) -> None:
        for service in list(self._readers):
            self.set_live(service, False)  # what this node read goes back for the others
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._ops.join()
        tasks = [*self._tasks, *self._readers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def attach(self, sink: EventSink) -> None:
        self._sink = sink

    # ------------------------------------------------------------ operations
    def _queue(self, op: str, arg: Any) -> None:
        self._ops.put_nowait((op, arg))

    async def _run_ops(self) -> None:
        """Acks, requeues and subscriptions, in order; a failed one is logged (an
        unacked entry is claimed and delivered again later: at least once)."""
        while True:
            op, arg = await self._ops.get()
            try:
                if op == "subscribe":
                    service, names = arg
                    args = [PREFIX, service, int(SUBSCRIPTION_TTL * 1000), *names]
                    await self._scripts["subscribe"](keys=[], args=args)
                elif op == "ack":
                    d: Delivery = arg
                    await self._scripts["ack"](
                        keys=[], args=[PREFIX, d.service, d.ref, len(d.data)]
                    )
                elif op == "requeue":
                    d = arg
                    args = [
                        PREFIX,
                        d.service,
                        d.ref,
                        d.name,
                        d.data,
                        d.source or "",
                        int(d.time),
                        d.attempt,
                    ]
                    await self._scripts["requeue"](keys=[], args=args)
            except (RedisError, OSError) as exc:
                log.warning("events: Redis %s failed: %s", op, exc)
            except Exception:
                log.exception("events: Redis %s failed", op)
            finally:
                self._ops.task_done()

    # ------------------------------------------------------------ the store
    def subscribe(self, service: str, names: list[str]) -> None:
        if self._subscribed.get(service) != names:
            self._subscribed[service] = list(names)
            self._queue("subscribe", (service, list(names)))

    def set_live(self, service: str, live: bool) -> None:
        if live:
            if service not in self._readers:
                self._buffers.setdefault(service, [])
                self._wake[service] = asyncio.Event()
                self._readers[service] = asyncio.get_running_loop().create_task(self._read(service))
            return
        reader = self._readers.pop(service, None)
        if reader is not None:
            reader.cancel()
        self._wake.pop(service, None)
        # Read by this node but no worker here to take them: back for any node.
        for delivery in self._buffers.pop(service, []):
            self._queue("requeue", delivery)

    async def publish(self, name: str, data: bytes, source: str | None) -> list[str]:
        args = [PREFIX, name, data, source or "", MAX_WAITING_EVENTS, MAX_WAITING_BYTES]
        result = await self._scripts["publish"](keys=[], args=args)
        if result[0] == b"full":
            raise EventsFull(result[1].decode(), int(result[2]))
        return [s.decode() for s in result[1:]]

    def take(self, service: str) -> Delivery | None:
        buffer = self._buffers.get(service)
        if not buffer:
            return None
        delivery = buffer.pop(0)
        if not buffer:
            self._poke(service)
        return delivery

    def done(self, delivery: Delivery) -> None:
        self._queue("ack", delivery)
        self._poke(delivery.service)

    def retry(self, delivery: Delivery) -> None:
        if exhausted(delivery):
            self.done(delivery)
            return
        delivery.attempt += 1
        buffer = self._buffers.get(delivery.service)
        if buffer is not None:
            buffer.insert(0, delivery)  # a live worker here takes it next
            if self._sink is not None:
                self._sink.events_ready(delivery.service)
        else:
            self._queue("requeue", delivery)

    def _poke(self, service: str) -> None:
        wake = self._wake.get(service)
        if wake is not None:
            wake.set()

    # ------------------------------------------------------------- reading
    async def _read(self, service: str) -> None:
        """While this node has a live worker of ``service``: read what they can take."""
        queue = f"{PREFIX}s:{service}:q"
        wake = self._wake[service]
        buffer = self._buffers[service]
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        while True:
            try:
                assert self._sink is not None
                room = self._sink.capacity(service) - len(buffer)
                if room <= 0:
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await wake.wait()
                    continue
                found: list[Delivery] = []
                if loop.time() >= next_claim:
                    next_claim = loop.time() + REFRESH
                    claimed: Any = await self._redis.xautoclaim(
                        queue, "g", self._node, CLAIM_IDLE, "0-0", count=room
                    )
                    found = [_delivery(service, i, f, True) for i, f in claimed[1] if f]
                if not found:
                    answer: Any = await self._redis.xreadgroup(
                        "g", self._node, {queue: ">"}, count=room, block=_BLOCK_MS
                    )
                    for _, entries in answer or []:
                        found += [_delivery(service, i, f, False) for i, f in entries if f]
                if found:
                    buffer.extend(found)
                    self._sink.events_ready(service)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if "NOGROUP" in str(exc):
                    # The stream was dropped (or never made): subscribe again.
                    names = self._subscribed.get(service)
                    if names is not None:
                        self._queue("subscribe", (service, names))
                        self._subscribed[service] = names
                else:
                    log.warning("events of %s: reading Redis failed: %s", service, exc)
                await asyncio.sleep(0.5)
            except Exception:
                log.exception("events of %s: reading failed", service)
                await asyncio.sleep(0.5)

    async def _refresh(self) -> None:
        """Keep the services with a live worker here subscribed (their ``alive`` key)."""
        ttl = int(SUBSCRIPTION_TTL * 1000)
        while True:
            await asyncio.sleep(REFRESH)
            for service in list(self._readers):
                base = f"{PREFIX}s:{service}"
                try:
                    if not await self._redis.set(f"{base}:alive", "1", px=ttl, xx=True):
                        # Expired meanwhile (or Redis lost it): subscribe again.
                        names = self._subscribed.get(service, [])
                        self._queue("subscribe", (service, names))
                except (RedisError, OSError) as exc:
                    log.warning("events: refreshing %s failed: %s", service, exc)
