"""RedisBroker: rooms, users and everyone across engine nodes (docs/scaling.md).

One Lua script numbers an event in its stream, keeps it in a Redis Stream for
recovery and publishes it on the stream's channel, atomically: the channel's order
is the numbering's order. Every node, the publishing one included, delivers what
comes back on the channels it subscribed to, so every node sees one order per room.

A node subscribes only to the rooms and users its own connections are in (and to
``everyone``), and unsubscribes when the last one leaves. Ordering across the two
Redis connections (commands, subscriptions) is kept by one queue of operations: a
publish queued after a subscription is sent only once Redis confirmed it, so a
connection that joined a room before an emit always receives it.

When Redis cannot be reached, events are delivered to this node's connections only,
unnumbered (they cannot be recovered), ``healthy`` is False, and the broker
reconnects with backoff and subscribes again.

A recovery always ends in a verdict: one Redis cannot answer (unreachable, an error,
the connection lost under it, slower than ``--recovery-timeout``) is answered
``recovered: false`` and the connection gets live events again (docs/recovery.md).

Over 400 lines on purpose: one connection's state machine (queue, fence, echoes,
reconnect, local fallback) — the ordering guarantees live in how these parts
interleave, so they are read in one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from engine.brokers.base import FIELDS, Conn, Numbered, Sink
from engine.brokers.commands import Command, Outcome
from engine.brokers.history import HistoryPage, Recovery, history_page, new_epoch
from engine.brokers.publish import Kind, Publish
from engine.brokers.redis_control import RedisControl
from engine.brokers.redis_events import RedisEvents

if TYPE_CHECKING:
    from engine.config import Config
    from engine.core.metrics import Metrics

__all__ = ["RedisBroker"]

log = logging.getLogger("linkd.redis")

# KEYS: seq, epoch, history. ARGV: channel, payload, field, name (JSON), max events,
# key lifetime (ms), node, exclude (JSON), event (JSON), a new epoch, history ttl (ms).
_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[10]
  redis.call('SET', KEYS[2], epoch)
end
local body = ARGV[2]
if string.sub(body, -1) == '}' then
  body = string.sub(body, 1, -2) .. ',"' .. ARGV[3] .. '":' .. ARGV[4] ..
    ',"seq":' .. seq .. ',"epoch":"' .. epoch .. '"}'
end
if tonumber(ARGV[5]) > 0 then
  local now = redis.call('TIME')
  local ms = now[1] * 1000 + math.floor(now[2] / 1000)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], seq .. '-0', 't', ms, 'p', body)
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
redis.call('PUBLISH', ARGV[1],
  '["' .. ARGV[7] .. '",' .. ARGV[8] .. ',' .. ARGV[9] .. ',' .. seq .. ']\\n' .. body)
return seq
"""
#: The same, answering ``{seq, epoch}``: for a publish whose caller waits for its
#: offset (the server API). A second script rather than an argument, so that a worker's
#: emit sends and parses exactly what it did (an array reply costs redis-py's parser
#: more than an integer: measured 36 -> 51 us per publish in a pipeline of 256).
_PUBLISH_NUMBERED = _PUBLISH.replace("\nreturn seq\n", "\nreturn {seq, epoch}\n")
assert _PUBLISH_NUMBERED != _PUBLISH

_BATCH = 256
#: Publishes waiting for Redis beyond this are delivered locally instead (bounded memory).
MAX_QUEUED = 100_000


def _channel(kind: str, name: str) -> bytes:
    return b"lk:*" if kind == "*" else f"lk:{kind}:{name}".encode()


def _keys(kind: str, name: str) -> tuple[str, str, str]:
    tag = f"lk:{{{kind}:{name}}}"  # one hash slot per stream (Redis Cluster)
    return f"{tag}:seq", f"{tag}:epoch", f"{tag}:hist"


class RedisBroker:
    def __init__(self, config: Config, metrics: Metrics) -> None:
        assert config.redis_url
        self._url = config.redis_url
        self._metrics = metrics
        #: This node's id: its own events' exclusions apply here only.
        self.node = os.urandom(6).hex()
        self._size = config.history_size
        self._ttl_ms = int(config.history_ttl * 1000)
        self._keep_ms = int(max(config.history_ttl * 10, 600.0) * 1000)
        self.recovery_timeout = config.recovery_timeout
        self.max_held = config.recovery_max_held
        self.healthy = False
        self._hub: Sink | None = None
        # No retries inside redis-py: a failure must reach us at once (local fallback,
        # our own reconnect with backoff and resubscription).
        self._redis: aioredis.Redis | None = aioredis.Redis.from_url(
            self._url,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )
        self._pubsub: Any = None
        self._script: Any = None
        self._numbered_script: Any = None
        #: Events between services: a Redis Stream per subscribing service.
        self.events = RedisEvents(self._redis, self.node)
        #: Commands on connections of other nodes (the server API's disconnect...).
        self.control = RedisControl(self._redis, self.node, self._apply)
        #: Channels this node wants, and those Redis confirmed.
        self._wanted: set[bytes] = {b"lk:*"}
        self._confirmed: set[bytes] = set()
        self._confirming: dict[bytes, asyncio.Future[None]] = {}
        self._ops: deque[tuple[Any, ...]] = deque()
        #: Our own publishes whose echo we still expect: channel → highest seq.
        self._echoes: dict[bytes, int] = {}
        #: The highest seq delivered per channel (an echo may beat the publish's reply).
        self._delivered: dict[bytes, int] = {}
        self._echoed = asyncio.Event()
        self._wake = asyncio.Event()
        #: An operation taken off the queue is being sent (the queue may look empty).
        self._busy = False
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._overflowing = False

    @property
    def client(self) -> aioredis.Redis:
        """The command connection pool (presence shares it)."""
        assert self._redis is not None
        return self._redis

    # ------------------------------------------------------------ lifecycle
    async def start(self, hub: Sink) -> None:
        self._hub = hub
        assert self._redis is not None
        self._script = self._redis.register_script(_PUBLISH)
        self._numbered_script = self._redis.register_script(_PUBLISH_NUMBERED)
        with contextlib.suppress(RedisError, OSError):
            await self._connect()
        if not self.healthy:
            log.warning("Redis at %s unreachable: local delivery only until it answers", self._url)
        self._tasks = [
            asyncio.get_running_loop().create_task(self._run_ops()),
            asyncio.get_running_loop().create_task(self._read()),
        ]
        await self.events.start()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self.control.stop()
        await self.events.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    async def _connect(self) -> None:
        """(Re)connect: a fresh subscription connection, every wanted channel again."""
        assert self._redis is not None
        await self._redis.ping()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        self._confirmed.clear()
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(*self._wanted, **self.control.handlers())
        self.healthy = True
        log.info("Redis connected (%s), node %s", self._url, self.node)

    # -------------------------------------------------------- subscriptions
    def watch(self, kind: str, name: str) -> None:
        channel = _channel(kind, name)
        if channel not in self._wanted:
            self._wanted.add(channel)
            self._queue(("sub", channel))

    def unwatch(self, kind: str, name: str) -> None:
        channel = _channel(kind, name)
        if channel in self._wanted:
            self._wanted.discard(channel)
            self._queue(("unsub", channel))

    # --------------------------------------------------------------- fence
    def fence(self) -> asyncio.Future[None] | None:
        """Done once every operation queued so far took effect here: subscriptions
        confirmed, publishes numbered and (on channels we receive) delivered. None
        when nothing is pending. Replies wait on it, so an ack never overtakes the
        join or the emit its handler did before it.

        None while Redis is unreachable: publishes are delivered here at once then,
        and a join's subscription waits for the reconnection, which must not hold a
        reply (or a server API answer) for the length of the outage."""
        if not self.healthy or (not self._ops and not self._echoes and not self._busy):
            return None
        if self._ops and self._ops[-1][0] == "fence":
            future: asyncio.Future[None] = self._ops[-1][1]
            return future
        future = asyncio.get_running_loop().create_future()
        self._queue(("fence", future))
        return future

    async def _pass_fence(self, future: asyncio.Future[None]) -> None:
        try:
            async with asyncio.timeout(2.0):
                while self._echoes:
                    self._echoed.clear()
                    await self._echoed.wait()
        except TimeoutError:
            log.warning("echo of %d channel(s) not received in 2 s", len(self._echoes))
            self._echoes.clear()
        if not future.done():
            future.set_result(None)

    # ------------------------------------------------------------- publish
    def publish(self, publish: Publish, numbered: Numbered | None = None) -> None:
        if not self.healthy or len(self._ops) >= MAX_QUEUED:
            # Redis unreachable, or too far behind to queue more: this node only.
            if self.healthy and not self._overflowing:
                log.warning("%d operations waiting for Redis: delivering locally", MAX_QUEUED)
            self._overflowing = self.healthy
            self._deliver_locally(publish)
            _resolve(numbered, None)
            return
        self._overflowing = False
        # A worker's emit (nobody waits for its number): the 2-tuple it always was.
        self._queue(("pub", publish) if numbered is None else ("pub", publish, numbered))

    def _deliver_locally(self, publish: Publish) -> None:
        """This node's connections only, unnumbered (they cannot be recovered)."""
        assert self._hub is not None
        self._metrics.count_broker_fallback()
        self._hub.deliver(publish)

    def _queue(self, op: tuple[Any, ...]) -> None:
        self._ops.append(op)
        self._wake.set()

    async def _run_ops(self) -> None:
        """Send queued operations in order (consecutive publishes as one pipeline);
        while Redis is unreachable, reconnect with backoff."""
        backoff = 0.1
        while not self._stopping:
            if not self.healthy:
                try:
                    await self._connect()
                    backoff = 0.1
                except Exception as exc:  # whatever it was, try again later
                    if not isinstance(exc, RedisError | OSError):
                        log.warning("Redis reconnect failed: %s: %s", type(exc).__name__, exc)
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, 5.0)
                    continue
            if not self._ops:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._busy = True
            try:
                op = self._ops[0]
                if op[0] == "pub":
                    await self._send_publishes()
                elif op[0] == "sub":
                    self._ops.popleft()
                    await self._subscribe(op[1])
                elif op[0] == "unsub":
                    self._ops.popleft()
                    if op[1] not in self._wanted:  # not wanted again meanwhile
                        await self._pubsub.unsubscribe(op[1])
                        self._confirmed.discard(op[1])
                        self._echoes.pop(op[1], None)
                        self._delivered.pop(op[1], None)
                elif op[0] == "recover":
                    self._ops.popleft()
                    await self._recover(*op[1:])
                elif op[0] == "fence":
                    self._ops.popleft()
                    await self._pass_fence(op[1])
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc)
            except Exception:
                # A bug must not end this task: every later operation would wait forever.
                log.exception("Redis operation %r failed", op[0])
            finally:
                self._busy = False

    async def _subscribe(self, channel: bytes) -> None:
        if channel not in self._wanted or channel in self._confirmed:
            return
        future = asyncio.get_running_loop().create_future()
        self._confirming[channel] = future
        await self._pubsub.subscribe(channel)
        try:
            async with asyncio.timeout(5.0):
                await future  # publishes after this one reach us: Redis confirmed
        finally:
            self._confirming.pop(channel, None)

    async def _send_publishes(self) -> None:
        assert self._redis is not None
        batch: list[Publish] = []
        # Callers waiting for the offset of a publish of the batch, by the publish's
        # identity (each in the batch until the end): a worker's emit has none, and
        # pays one len() and one empty-dict test here.
        waiting: dict[int, Numbered] = {}
        while self._ops and self._ops[0][0] == "pub" and len(batch) < _BATCH:
            op = self._ops.popleft()
            if len(op) > 2:
                waiting[id(op[1])] = op[2]
            batch.append(op[1])
        pipe = self._redis.pipeline(transaction=False)
        for publish in batch:
            # On the channel: '[node, exclude, event, seq]\n' + body (as _PUBLISH sends it).
            header = orjson.dumps(publish.exclude), orjson.dumps(publish.event)
            kind, name = publish.kind, publish.name
            if kind == "*" or publish.binary:
                # Unnumbered: everyone, and binary frames (not kept for recovery); a
                # fifth header field marks the binary ones.
                flag = b",true" if publish.binary else b""
                head = b'["%s",%s,%s,null%s]\n' % (self.node.encode(), *header, flag)
                pipe.publish(_channel(kind, name), head + publish.payload)
                continue
            seq_key, epoch_key, hist_key = _keys(kind, name)
            args = (
                _channel(kind, name),
                publish.payload,
                FIELDS[kind],
                orjson.dumps(name),
                self._size,
                self._keep_ms,
                self.node,
                header[0],
                header[1],
                new_epoch(),
                self._ttl_ms,
            )
            # Answers {seq, epoch} for a caller that waits for it, else the seq alone.
            script = self._numbered_script if waiting and id(publish) in waiting else self._script
            await script(keys=[seq_key, epoch_key, hist_key], args=args, client=pipe)
        try:
            results = await pipe.execute()
        except (RedisError, OSError):
            # Not published: this node's connections still get them (unnumbered).
            for publish in batch:
                self._deliver_locally(publish.later())
            for numbered in waiting.values():
                _resolve(numbered, None)
            raise
        for publish, result in zip(batch, results, strict=True):
            channel = _channel(publish.kind, publish.name)
            if waiting and id(publish) in waiting:
                seq = self._numbered(publish, result, waiting[id(publish)])
            else:
                seq = int(result) if publish.kind != "*" and not publish.binary else 0
            if seq and channel in self._confirmed and self._delivered.get(channel, 0) < seq:
                self._echoes[channel] = max(seq, self._echoes.get(channel, 0))

    @staticmethod
    def _numbered(publish: Publish, result: Any, numbered: Numbered) -> int:
        """Tell the caller waiting for it the offset of ``publish`` (the script's
        ``{seq, epoch}``; None for an unnumbered one); its seq (0: unnumbered)."""
        if publish.kind == "*" or publish.binary:
            _resolve(numbered, None)
            return 0
        seq, epoch = int(result[0]), result[1]
        _resolve(numbered, (epoch.decode() if isinstance(epoch, bytes) else str(epoch), seq))
        return seq

    def _lost(self, exc: BaseException) -> None:
        if self.healthy:
            log.warning(
                "Redis connection lost (%s: %s): local delivery only, reconnecting",
                type(exc).__name__,
                exc,
            )
        self.healthy = False
        assert self._hub is not None
        # Queued publishes cannot wait for Redis: deliver them here now.
        kept: deque[tuple[Any, ...]] = deque()
        while self._ops:
            op = self._ops.popleft()
            if op[0] == "pub":
                self._deliver_locally(op[1].later())
                if len(op) > 2:
                    _resolve(op[2], None)
            elif op[0] == "recover":
                self._hub.recovery_failed(op[1], op[2], op[3])
            elif op[0] == "fence" and not op[1].done():
                op[1].set_result(None)
            # sub/unsub: _connect subscribes to what is wanted then.
        self._echoes.clear()
        self._ops = kept

    # ------------------------------------------------------------- commands
    async def command(self, command: Command) -> Outcome:
        """Apply ``command`` on every node concerned: here at once, and through Redis
        on the others (the user's: all; a connection's: its node), waiting at most
        ``REPLY_TIMEOUT`` for their answers (engine/brokers/redis_control.py)."""
        here = command.node is None or command.node == self.node
        if command.user is None and here:
            return Outcome(await self._apply(command), nodes=1)
        mine = self._apply(command) if command.user is not None else None
        if not self.healthy:
            # The other nodes cannot be reached: what this node did, said incomplete.
            count = await mine if mine is not None else 0
            return Outcome(count, nodes=1 if mine is not None else 0, complete=False)
        remote = self.control.send(command)
        if mine is None:
            count, answered, complete = await remote
            return Outcome(count, nodes=answered, complete=complete)
        local, (count, answered, complete) = await asyncio.gather(mine, remote)
        return Outcome(local + count, nodes=answered + 1, complete=complete)

    async def _apply(self, command: Command) -> int:
        """Apply ``command`` to this node's connections; a join is counted once its
        subscription took effect, so a publish sent after the answer reaches them."""
        assert self._hub is not None
        count = self._hub.apply(command)
        if command.action == "subscribe" and count:
            fence = self.fence()
            if fence is not None:
                await fence
        return count

    # -------------------------------------------------------------- receive
    async def _read(self) -> None:
        while not self._stopping:
            if not self.healthy or self._pubsub is None:
                await asyncio.sleep(0.05)
                continue
            pubsub = self._pubsub
            try:
                message = await pubsub.get_message(timeout=1.0)
            except Exception as exc:  # any failure: the subscription is gone
                # Not only RedisError/OSError: if this task ended, the node would
                # believe it is subscribed and never receive another event.
                if pubsub is not self._pubsub:
                    continue  # closed under us by a reconnect: read the new one
                self._lost(exc)
                self._wake.set()  # the ops task reconnects
                continue
            if message is not None:
                try:
                    self._on_message(message)
                except Exception:
                    # A bug in one delivery must not end the subscription for all.
                    log.exception("delivering a Redis message failed")

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if kind == "subscribe" and isinstance(channel, bytes):
            self._confirmed.add(channel)
            future = self._confirming.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
            return
        if kind != "message" or not isinstance(channel, bytes):
            return
        data = message["data"]
        head, _, body = data.partition(b"\n")
        try:
            node, excluded, event, seq, *flags = orjson.loads(head)
        except (orjson.JSONDecodeError, ValueError):
            log.warning("malformed message on %r dropped", channel)
            return
        # Built back from the wire, once: ``lk:*``, ``lk:r:<room>``, ``lk:u:<user>``.
        target: Kind = "*" if channel == b"lk:*" else "r" if channel[3:4] == b"r" else "u"
        name = "" if target == "*" else channel[5:].decode()
        if seq is not None:
            self._delivered[channel] = seq
            if channel in self._echoes and self._echoes[channel] <= seq:
                del self._echoes[channel]
                self._echoed.set()
        assert self._hub is not None
        self._hub.deliver(
            Publish(
                kind=target,
                name=name,
                payload=body,
                # Exclusions are connection ids of the node that published.
                exclude=tuple(excluded) if excluded and node == self.node else (),
                event=event,
                seq=seq,
                binary=bool(flags and flags[0]),
            )
        )

    # -------------------------------------------------------------- history
    async def read_history(
        self, room: str, since: int | None, epoch: str | None, limit: int
    ) -> HistoryPage:
        """A page of the room's Redis Stream (the one recovery reads): one round trip,
        two when ``since`` turns out to be of another epoch. Not queued behind the
        operations: a read needs no ordering against this node's publishes."""
        assert self._redis is not None
        seq_key, epoch_key, hist_key = _keys("r", room)
        pipe = self._redis.pipeline(transaction=True)
        pipe.get(epoch_key)
        pipe.get(seq_key)
        if since is None:
            pipe.xrevrange(hist_key, max="+", min="-", count=limit)
        else:
            pipe.xrange(hist_key, min=f"{since + 1}-0", max="+", count=limit)
        stored_epoch, stored_seq, entries = await pipe.execute()
        current_epoch = stored_epoch.decode() if stored_epoch else None
        current = int(stored_seq or 0)
        if since is None:
            entries = list(reversed(entries))
        elif (epoch is not None and epoch != current_epoch) or since > current:
            # A position of another life of the stream: the page starts at the oldest.
            entries = await self._redis.xrange(hist_key, min="-", max="+", count=limit)
        oldest_ms = time.time() * 1000 - self._ttl_ms
        kept = [
            (int(entry_id.split(b"-")[0]), float(fields[b"t"]), fields[b"p"])
            for entry_id, fields in entries
            if int(fields[b"t"]) >= oldest_ms
        ]
        return history_page(current_epoch, current, kept, since, epoch, limit)

    # ------------------------------------------------------------- recovery
    def recover(self, ws: Conn, kind: str, name: str, epoch: str, seq: int) -> None:
        assert self._hub is not None
        if not self.healthy or len(self._ops) >= MAX_QUEUED:
            # Nothing to read it from, or too far behind: not recovered, live at once.
            self._hub.recovery_failed(ws, kind, name)
            return
        # After the subscription the join queued: what follows the snapshot arrives live.
        self._queue(("recover", ws, kind, name, epoch, seq))

    async def _recover(self, ws: Conn, kind: str, name: str, epoch: str, seq: int) -> None:
        """Read the stream's position and entries after ``seq``; any failure (and the
        recovery's deadline) ends in ``recovered: false``, never in a connection left
        waiting. A lost connection is re-raised: the broker reconnects."""
        assert self._redis is not None and self._hub is not None
        hub = self._hub
        deadline = hub.recovery_deadline(ws, kind, name)
        if deadline is None:
            return  # answered meanwhile (timed out, gave up) or the connection is gone
        seq_key, epoch_key, hist_key = _keys(kind, name)
        try:
            # Bounded so a hung Redis holds the queue no longer than the verdict waits.
            async with asyncio.timeout_at(deadline):
                pipe = self._redis.pipeline(transaction=True)
                pipe.get(epoch_key)
                pipe.get(seq_key)
                pipe.xrange(hist_key, min=f"{seq + 1}-0", max="+")
                stored_epoch, stored_seq, entries = await pipe.execute()
            found = self._found(epoch, seq, stored_epoch, stored_seq, entries)
        except TimeoutError:  # (an OSError: first) the deadline, Redis too slow for it
            hub.recovery_failed(ws, kind, name)
            return
        except (RedisError, OSError):
            hub.recovery_failed(ws, kind, name)
            raise
        except Exception:
            log.exception("recovery of %s:%s failed", kind, name)
            hub.recovery_failed(ws, kind, name)
            return
        hub.send_recovery(ws, kind, name, found)

    def _found(
        self, epoch: str, seq: int, stored_epoch: Any, stored_seq: Any, entries: Any
    ) -> Recovery:
        current_epoch = stored_epoch.decode() if stored_epoch else ""
        current = int(stored_seq or 0)
        if epoch != current_epoch or seq > current:
            return Recovery([], False, current_epoch, current)
        if seq == current:
            return Recovery([], True, current_epoch, current)
        oldest_ms = time.time() * 1000 - self._ttl_ms
        kept = [
            (int(fields[b"t"]), fields[b"p"])
            for _, fields in entries
            if int(fields[b"t"]) >= oldest_ms
        ]
        events = [payload for _, payload in kept]
        first = int(entries[len(entries) - len(kept)][0].split(b"-")[0]) if kept else 0
        complete = bool(kept) and first == seq + 1 and len(events) == current - seq
        return Recovery(events, complete, current_epoch, current)


def _resolve(numbered: Numbered | None, offset: tuple[str, int] | None) -> None:
    """Tell a waiting caller its publish's offset (None: not numbered)."""
    if numbered is not None and not numbered.done():
        numbered.set_result(offset)
