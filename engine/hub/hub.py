"""Hub: which connection is in which room, by id and by user; local fan-out.

The local side of one engine node. Rooms are global (any service may emit to any
room); a publish (one ``Publish`` value, engine/brokers/publish.py) goes through the
broker (engine/brokers/), which numbers it and brings it back to ``deliver`` on every
node that has a connection concerned; ``fan`` queues it to them (docs/architecture.md,
"Path of a publish").

Over 400 lines on purpose: membership, delivery and the recovery hold-back
share one set of indexes (rooms, users, held streams) that must change together; cut
apart, each half would reach into the other's dicts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from engine.brokers.base import FIELDS, Broker
from engine.brokers.commands import Command
from engine.brokers.history import Recovery
from engine.brokers.presence import Presence
from engine.brokers.publish import Publish
from engine.hub.fanout import fanout
from engine.hub.member import Member
from engine.limits.slow import PolicyTable
from protocol.ws import OutboundMessage

if TYPE_CHECKING:
    from engine.brokers.redis_presence import RedisPresence
    from engine.core.corker import Corker
    from engine.core.metrics import Metrics

__all__ = ["Hub"]

log = logging.getLogger("linkd.hub")


class Hub:
    __slots__ = (
        "_corker",
        "_metrics",
        "broker",
        "by_id",
        "compression_threshold",
        "pending",
        "presence",
        "rooms",
        "slow",
        "users",
    )

    def __init__(
        self,
        broker: Broker,
        presence: Presence | RedisPresence | None = None,
        slow: PolicyTable | None = None,
        metrics: Metrics | None = None,
        corker: Corker | None = None,
        compression_threshold: int = 128,
    ) -> None:
        self.by_id: dict[int, Member] = {}
        self.rooms: dict[str, set[Member]] = {}
        #: Every open connection of each authenticated user (all tabs, all paths).
        self.users: dict[str, set[Member]] = {}
        #: Told when a user's first connection opens and their last one closes.
        self.presence = presence
        #: Slow-consumer policies of event types (engine/limits/slow.py).
        self.slow = slow or PolicyTable()
        self._metrics = metrics
        self._corker = corker
        #: Numbers publishes and brings them to ``deliver`` (engine/brokers/).
        self.broker: Broker = broker
        self.compression_threshold = compression_threshold
        #: Streams with a recovery in flight: ``"r:room"`` → connection → its wait
        #: (the position it asked from, the live events held back until its missed
        #: ones are sent, its deadline).
        self.pending: dict[str, dict[Member, _Waiting]] = {}

    # ------------------------------------------------------------ membership
    def add(self, ws: Member) -> None:
        self.by_id[ws.id] = ws
        user_id = ws.user_id
        if user_id is not None:
            tabs = self.users.get(user_id)
            if tabs is None:
                self.users[user_id] = {ws}
                self.broker.watch("u", user_id)
                if self.presence is not None:
                    self.presence.connected(user_id, _username(ws))
            else:
                tabs.add(ws)
            recover = ws.recover
            if recover is not None and recover.user is not None:
                epoch, seq = recover.user
                recover.user = None
                self._recover(ws, "u", user_id, epoch, seq)

    def connections_of(self, user_id: str) -> int:
        tabs = self.users.get(user_id)
        return len(tabs) if tabs else 0

    def remove(self, ws: Member) -> list[str]:
        """Forget a closed connection; returns the rooms it was in."""
        self.by_id.pop(ws.id, None)
        user_id = ws.user_id
        if user_id is not None:
            tabs = self.users.get(user_id)
            if tabs is not None:
                tabs.discard(ws)
                if not tabs:
                    del self.users[user_id]
                    self.broker.unwatch("u", user_id)
                    if self.presence is not None:
                        self.presence.disconnected(user_id)
        rooms = sorted(ws.rooms) if ws.rooms else []
        for room in rooms:
            self._discard(room, ws)
        ws.rooms = None
        if self.pending:
            for key in [k for k, waiting in self.pending.items() if ws in waiting]:
                self._stop_waiting(key, ws)
        return rooms

    def join(self, ws: Member, room: str) -> bool:
        """Add ``ws`` to ``room``; False if it is closed, or refused because it is in
        ``ws.max_rooms`` rooms already (counted, logged, and the client is told:
        ``Member.join_refused``). Every join path comes here: worker commands, the
        embedding API, and joins that recover a stream (refused: no recovery)."""
        if ws.closed:
            return False
        mine = ws.rooms
        if mine is None:
            ws.rooms = [room]  # a one-item list: 64 bytes, a set 216
        elif room not in mine:
            limit = ws.max_rooms
            if limit and len(mine) >= limit:
                ws.join_refused(room, limit)
                return False
            if isinstance(mine, list):
                mine.append(room)
                if len(mine) > _SMALL:
                    ws.rooms = set(mine)
            else:
                mine.add(room)
            if ws.join_refusals:
                ws.end_join_refusals()
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = set()
            self.broker.watch("r", room)
        if ws not in members:
            members.add(ws)
            if ws.user_id is not None and self.presence is not None:
                self.presence.room_joined(room, ws.user_id)
        recover = ws.recover
        if recover is not None:
            position = recover.rooms.pop(room, None)
            if position is not None:
                self._recover(ws, "r", room, *position)
        return True

    # -------------------------------------------------------------- recovery
    def _recover(self, ws: Member, kind: str, name: str, epoch: str, seq: int) -> None:
        # Live events of the stream are held back for this connection until the
        # broker has sent what it missed (at once for the local broker). However the
        # recovery goes, it ends in a verdict: an error, a deadline, too much held.
        key = f"{kind}:{name}"
        wait = _Waiting(epoch, seq)
        self.pending.setdefault(key, {})[ws] = wait
        try:
            self.broker.recover(ws, kind, name, epoch, seq)
        except Exception:
            log.exception("recovery of %s failed", key)
            self.recovery_failed(ws, kind, name)
            return
        if self.pending.get(key, {}).get(ws) is wait:  # answered later (Redis)
            wait.timer = asyncio.get_running_loop().call_later(
                self.broker.recovery_timeout, self._give_up, ws, kind, name, "timed out"
            )

    def recovery_deadline(self, ws: Member, kind: str, name: str) -> float | None:
        """Loop time by which ``ws``'s recovery of the stream must be answered; None if
        it no longer waits (answered, given up, gone): the broker need not look."""
        wait = self.pending.get(f"{kind}:{name}", {}).get(ws)
        if wait is None:
            return None
        if wait.timer is not None:
            return wait.timer.when()
        return asyncio.get_running_loop().time() + self.broker.recovery_timeout

    def send_recovery(self, ws: Member, kind: str, name: str, found: Recovery) -> None:
        """The broker found what ``ws`` missed: send it, the verdict, then what was held."""
        wait = self._stop_waiting(f"{kind}:{name}", ws)
        if wait is None or ws.closed:
            return  # already given up (a late answer: it would duplicate), or gone
        # Held events up to the verdict's seq were in the history: sent above, or known.
        self._answer(ws, kind, name, found, wait.held, found.seq)

    def recovery_failed(self, ws: Member, kind: str, name: str) -> None:
        """The recovery cannot be completed (Redis failed or too slow, too many events
        held): ``recovered: false`` with the client's own position, unchanged (nothing
        is claimed about what it missed), then every event held, in order."""
        wait = self._stop_waiting(f"{kind}:{name}", ws)
        if wait is None or ws.closed:
            return
        self._answer(ws, kind, name, Recovery([], False, wait.epoch, wait.seq), wait.held, None)

    def _give_up(self, ws: Member, kind: str, name: str, why: str) -> None:
        _given_up.count(why)
        self.recovery_failed(ws, kind, name)

    def _answer(
        self,
        ws: Member,
        kind: str,
        name: str,
        found: Recovery,
        held: list[tuple[int | None, bytes]],
        known: int | None,
    ) -> None:
        threshold = self.compression_threshold
        for payload in found.events:
            ws.send_prepared(OutboundMessage(payload, text=True, compression_threshold=threshold))
        verdict = orjson.dumps(
            {
                "type": "linkd.recovered",
                "data": {
                    FIELDS[kind].decode(): name,
                    "recovered": found.recovered,
                    "epoch": found.epoch,
                    "seq": found.seq,
                    "missed": len(found.events),
                },
            }
        )
        ws.send_prepared(OutboundMessage(verdict, text=True, compression_threshold=threshold))
        for seq, payload in held:
            # Unnumbered ones (Redis unreachable: local delivery) always go.
            if known is None or seq is None or seq > known:
                ws.send_prepared(
                    OutboundMessage(payload, text=True, compression_threshold=threshold)
                )
        if self._metrics is not None:
            self._metrics.count_recovery(found.recovered, len(found.events))

    def _stop_waiting(self, key: str, ws: Member) -> _Waiting | None:
        waiting = self.pending.get(key)
        if waiting is None:
            return None
        wait = waiting.pop(ws, None)
        if not waiting:
            del self.pending[key]
        if wait is not None and wait.timer is not None:
            wait.timer.cancel()
        return wait

    def leave(self, ws: Member, room: str) -> None:
        if self.pending:  # left before its verdict: none, nor what was held for it
            self._stop_waiting(f"r:{room}", ws)
        mine = ws.rooms
        if isinstance(mine, list):
            if room in mine:
                mine.remove(room)
        elif mine:
            mine.discard(room)
        self._discard(room, ws)

    def _discard(self, room: str, ws: Member) -> None:
        members = self.rooms.get(room)
        if members is not None and ws in members:
            members.discard(ws)
            if ws.user_id is not None and self.presence is not None:
                self.presence.room_left(room, ws.user_id)
            if not members:
                del self.rooms[room]
                self.broker.unwatch("r", room)

    def apply(self, command: Command) -> int:
        """Apply a command (the server API's, from this node or through the broker from
        another) to this node's open connections of its user, or its one connection:
        close them, join or leave the room, or send the event. How many it acted on."""
        if command.user is not None:
            found: Iterable[Member] = self.users.get(command.user, ())
        else:
            ws = self.by_id.get(command.conn) if command.conn is not None else None
            found = (ws,) if ws is not None else ()
        targets = [ws for ws in found if not ws.closed]
        action, room = command.action, command.room
        if action == "disconnect":
            for ws in targets:
                ws.close(command.code, command.reason)
            return len(targets)
        if action == "subscribe":
            return sum(1 for ws in targets if self.join(ws, room))
        if action == "unsubscribe":
            targets = [ws for ws in targets if ws.rooms and room in ws.rooms]
            for ws in targets:
                self.leave(ws, room)
            return len(targets)
        if command.conn is None or not targets:  # send: to one connection, unnumbered
            return 0
        return self.deliver(Publish.to(command.payload, conn=command.conn, event=command.event))

    def rooms_of(self, ws: Member) -> list[str]:
        return sorted(ws.rooms) if ws.rooms else []

    def members(self, room: str) -> list[int]:
        return sorted(ws.id for ws in self.rooms.get(room, ()))

    def room_presence(self, room: str) -> list[dict[str, Any]]:
        """The users with a connection in ``room``: ``{userId, username, connections}``.

        Anonymous connections are not users; ``members`` counts them.
        """
        found: dict[str, dict[str, Any]] = {}
        for ws in self.rooms.get(room, ()):
            user_id = ws.user_id
            if user_id is None:
                continue
            entry = found.get(user_id)
            if entry is None:
                found[user_id] = {"userId": user_id, "username": _username(ws), "connections": 1}
            else:
                entry["connections"] += 1
        return [found[user] for user in sorted(found)]

    # --------------------------------------------------------------- fan-out
    def publish(self, publish: Publish) -> None:
        """A JSON event ``{"type", "data"}`` from a service, to its one target.

        To a room or a user it is numbered (and kept for recovery) by the broker,
        which may deliver it later (Redis: when it comes back from the channel).
        """
        if publish.kind == "c":  # a worker only knows its own node's connections
            self.deliver(publish)
        else:
            self.broker.publish(publish)

    def deliver(self, publish: Publish) -> int:
        """Queue a published event to the local connections concerned (the broker's
        callback). ``publish.seq``: its number, for the recoveries holding it back; a
        ``binary`` one goes out as one binary frame, built once as a text one is."""
        targets = self._targets(publish)
        if publish.binary:
            # Not in the stream (unnumbered, never recovered): nothing to order it
            # against, so not held behind a recovery either.
            message = OutboundMessage(
                publish.payload, text=False, compression_threshold=self.compression_threshold
            )
            return self.fan(publish, message, targets)
        if self.pending:
            waiting = self.pending.get(publish.stream)
            if waiting:
                # Unnumbered ones too (Redis unreachable): nothing overtakes what is held.
                cap = self.broker.max_held
                held = (publish.seq, publish.payload)
                over = []
                for ws, wait in waiting.items():
                    wait.held.append(held)
                    if len(wait.held) > cap:
                        over.append(ws)
                targets = [ws for ws in targets if ws not in waiting]
                for ws in over:  # held too much: given up, what was held goes out now
                    self._give_up(ws, publish.kind, publish.name, "too many live events held")
        message = OutboundMessage(
            publish.payload, text=True, compression_threshold=self.compression_threshold
        )
        return self.fan(publish, message, targets, numbered=publish.kind in FIELDS)

    def emit(
        self,
        message: OutboundMessage,
        *,
        room: str | None = None,
        user: str | None = None,
        conn: int | None = None,
        everyone: bool = False,
        exclude: Iterable[int] = (),
        event: str | None = None,
    ) -> int:
        """Deliver a pre-built message on this node, to one target kind, minus
        ``exclude`` (connection ids): the embedders' emit (docs/embedding.md). Not
        numbered, not sent to other nodes; ``publish`` is the services' path.

        ``event``: the event type, for its slow-consumer policy and conflation key.
        """
        try:
            publish = Publish.to(
                message.payload,
                room=room,
                user=user,
                conn=conn,
                everyone=everyone,
                exclude=exclude,
                event=event,
            )
        except ValueError:
            return 0  # no target: nobody
        return self.fan(publish, message, self._targets(publish))

    def _targets(self, publish: Publish) -> Iterable[Member]:
        """The local connections of the publish's room, user, connection or everyone."""
        kind = publish.kind
        if kind == "r":
            return self.rooms.get(publish.name, ())
        if kind == "u":
            return self.users.get(publish.name, ())
        if kind == "*":
            return self.by_id.values()
        ws = self.by_id.get(publish.conn) if publish.conn is not None else None
        return (ws,) if ws is not None else ()

    def _skip(self, payload: bytes, excluded: list[Member], field: bytes) -> None:
        """An excluded connection still learns the event's number (``linkd.skip``), so
        its stream has no hole: a client's positions stay exact (docs/recovery.md)."""
        at = payload.rfind(b',"' + field + b'":')
        if at < 0 or not payload.endswith(b"}"):
            return  # not numbered
        skip = OutboundMessage(
            b'{"type":"linkd.skip"' + payload[at:],
            text=True,
            compression_threshold=self.compression_threshold,
        )
        for ws in excluded:
            ws.send_prepared(skip)

    def fan(
        self,
        publish: Publish,
        message: OutboundMessage,
        targets: Iterable[Member],
        *,
        numbered: bool = False,
    ) -> int:
        """Queue ``message`` (the frame of ``publish``, built once) to ``targets`` minus
        the publish's exclusions, counting it in the metrics. Its kind, target and
        event select the slow-consumer policy and key; ``numbered``: it came through
        the broker, so excluded connections of a room or user stream are told its
        number."""
        if publish.exclude:
            excluded = set(publish.exclude)
            kept: list[Member] = []
            skipped: list[Member] = []
            for ws in targets:
                (skipped if ws.id in excluded else kept).append(ws)
            targets = kept
            if skipped and numbered:
                self._skip(message.payload, skipped, FIELDS[publish.kind])
        policy = key = None
        event = publish.event
        if event is not None and self.slow.lossy:
            policy = self.slow.for_event(event)
            key = f"{publish.stream}\x00{event}"
        metrics = self._metrics
        delivered = fanout(message, targets, policy, key, publish.write_now, metrics)
        if metrics is not None:
            metrics.fanout_publishes += 1
            metrics.fanout_deliveries += delivered
            if delivered and self._corker is not None:
                self._corker.published(publish.started)
        return delivered


class _Waiting:
    """One connection's recovery of one stream, in flight."""

    __slots__ = ("epoch", "held", "seq", "timer")

    def __init__(self, epoch: str, seq: int) -> None:
        self.epoch = epoch
        self.seq = seq
        #: Live events ``(seq, payload)`` of the stream, in order (seq None: unnumbered).
        self.held: list[tuple[int | None, bytes]] = []
        #: Gives up at the broker's recovery timeout (None: not armed yet).
        self.timer: asyncio.TimerHandle | None = None


class _GivenUp:
    """Recoveries given up by the hub, logged at most every 10 s (an outage can give
    up thousands at once)."""

    __slots__ = ("_counts", "_next")

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._next = 0.0

    def count(self, why: str) -> None:
        self._counts[why] = self._counts.get(why, 0) + 1
        now = time.monotonic()
        if now >= self._next:
            self._next = now + 10.0
            counts, self._counts = self._counts, {}
            detail = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
            log.warning("recoveries given up (%s): recovered false, live delivery", detail)


_given_up = _GivenUp()


#: A connection's rooms are a list up to this many (membership tests are short), a set
#: beyond.
_SMALL = 8


def _username(ws: Member) -> str | None:
    name = ws.auth.get("username") if ws.auth else None
    return name if isinstance(name, str) else None
