"""The server API (docs/server-api.md): what a backend in any language may ask of the
engine over HTTP, in JSON, the way a Python worker asks over IPC.

``POST /api/<method>`` with a JSON object, ``Authorization: apikey <key>``. Served on
the admin listener (``--admin-listen``), and on the client port under ``/api/`` with
``--api-on-client-port``. No ``--api-key``: the API is off (404).

Every call goes through the same hub and broker calls a worker's commands do
(engine/services/connection.py): a publish is one ``Publish.to`` value given to
``Hub.publish``, so it is numbered, kept and carried to the other nodes exactly as a
worker's ``emit``, in one order with them, and answered with the offset it got.
``disconnect``, ``subscribe`` and ``unsubscribe`` are one ``Command`` the broker applies
on every node concerned (engine/brokers/commands.py): a user's connections wherever
they are, a connection named ``node:id`` on its node.

Bounds: a body over ``api_max_body`` is 413 (the connection is closed); calls per
second per key, and per address while its key is wrong, over ``api_rate`` are 429.
Keys are compared in constant time against every configured key and never logged.

Over 400 lines: ten methods, each a few lines of validation and one call, and
the auth and bounds they share; a table of methods in one place.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.exceptions import RedisError

from engine.api.request import error_body
from engine.brokers.base import Numbered
from engine.brokers.commands import Action, Command, split_conn
from engine.brokers.history import MAX_HISTORY_LIMIT
from engine.brokers.publish import Publish
from engine.limits.ratelimit import AddressRates, address_key
from engine.node import Node
from protocol import ErrorCode
from protocol.http import HttpRequest

__all__ = ["PREFIX", "Answer", "ServerApi"]

log = logging.getLogger("linkd.api")

#: Where the API's methods live: ``/api/publish`` ...
PREFIX = "/api/"

Answer = tuple[int, list[tuple[str, str]], bytes]

_JSON = [("content-type", "application/json")]
#: Rooms one broadcast may name; rooms one ``rooms`` answer lists.
MAX_BROADCAST_ROOMS = 1000
MAX_ROOMS_LISTED = 10_000
#: Close codes a disconnect may ask for (RFC 6455 §7.4), as a worker's ``close``.
_SENDABLE = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
#: A close reason fits in a control frame (125 bytes, 2 of them the code).
_MAX_REASON = 123
#: Seconds a publish's answer waits for its number (Redis far behind, or hung).
_NUMBERED_WITHIN = 10.0
_NODES = "lk:nodes"


class ApiError(Exception):
    """A refused call: its code (and so its HTTP status) and what the caller reads."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _bad(message: str) -> ApiError:
    return ApiError(ErrorCode.BAD_REQUEST, message)


def error_answer(code: ErrorCode, message: str) -> Answer:
    return code.status, list(_JSON), error_body(code, message)


class _Body:
    """The request's JSON object, read field by field; unknown fields refused."""

    def __init__(self, raw: bytes, allowed: frozenset[str]) -> None:
        if not raw.strip():
            value: Any = {}
        else:
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise _bad("the body is not JSON") from None
        if not isinstance(value, dict):
            raise _bad("the body must be a JSON object")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise _bad(f"unknown field(s): {', '.join(unknown)}")
        self.value: dict[str, Any] = value

    def has(self, name: str) -> bool:
        return self.value.get(name) is not None

    def text(self, name: str, *, required: bool = False) -> str | None:
        value = self.value.get(name)
        if value is None:
            if required:
                raise _bad(f"{name} is required")
            return None
        if not isinstance(value, str) or not value:
            raise _bad(f"{name} must be a non-empty string")
        return value

    def integer(self, name: str) -> int | None:
        value = self.value.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"{name} must be an integer")
        return value

    def flag(self, name: str) -> bool:
        value = self.value.get(name, False)
        if not isinstance(value, bool):
            raise _bad(f"{name} must be true or false")
        return value

    def conn(self, name: str) -> int | None:
        """A connection id: an integer, or its decimal string (the SDK's ``socket.id``)."""
        value = self.value.get(name)
        if value is None:
            return None
        found = _conn_id(value)
        if found is None:
            raise _bad(f"{name} must be a connection id (an integer)")
        return found

    def ids(self, name: str) -> tuple[int, ...]:
        value = self.value.get(name)
        if value is None:
            return ()
        found = [_conn_id(v) for v in value] if isinstance(value, list) else [None]
        if any(v is None for v in found):
            raise _bad(f"{name} must be a list of connection ids")
        return tuple(v for v in found if v is not None)

    def texts(self, name: str, most: int) -> list[str]:
        value = self.value.get(name)
        if not isinstance(value, list) or not value:
            raise _bad(f"{name} must be a non-empty list of strings")
        if len(value) > most:
            raise _bad(f"{name} may name at most {most}")
        if not all(isinstance(v, str) and v for v in value):
            raise _bad(f"{name} must be a non-empty list of strings")
        return value


Method = Callable[[_Body], Awaitable[object]]


class ServerApi:
    """The methods of the server API of one engine node.

    Args:
        state: the engine's node.
        started: loop time the engine started (``info``'s uptime).
    """

    def __init__(self, state: Node, started: float) -> None:
        config = state.config
        self.state = state
        self.started = started
        self._keys = [key.encode() for key in config.api_keys]
        self._rates = (
            AddressRates(config.api_rate, config.api_burst, 4096) if config.api_rate > 0 else None
        )
        self.methods: dict[str, tuple[frozenset[str], Method]] = {
            "publish": (_PUBLISH, self.publish),
            "broadcast": (frozenset({"rooms", "event", "data", "exclude"}), self.broadcast),
            "presence": (frozenset({"room"}), self.presence),
            "presence_stats": (frozenset({"room"}), self.presence_stats),
            "rooms": (frozenset({"prefix"}), self.rooms),
            "history": (frozenset({"room", "since", "epoch", "limit"}), self.history),
            "disconnect": (frozenset({"user", "connection", "code", "reason"}), self.disconnect),
            "subscribe": (frozenset({"user", "connection", "room"}), self.subscribe),
            "unsubscribe": (frozenset({"user", "connection", "room"}), self.unsubscribe),
            "info": (frozenset(), self.info),
        }

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    async def answer(self, request: HttpRequest, peer: str) -> Answer:
        """Answer one call; never raises (an unexpected failure is a logged 500)."""
        name = request.path[len(PREFIX) :]
        try:
            status, headers, body = await self._answer(request, peer, name)
        except ApiError as exc:
            status, headers, body = error_answer(exc.code, exc.message)
        except Exception:
            log.exception("server API %r failed", name)
            status, headers, body = error_answer(ErrorCode.INTERNAL, "internal error")
        self.state.metrics.count_api(name if name in self.methods else "unknown", status)
        return status, headers, body

    async def _answer(self, request: HttpRequest, peer: str, name: str) -> Answer:
        if not self._keys:
            raise ApiError(ErrorCode.NOT_FOUND, "the server API is off (no --api-key)")
        if len(request.body) > self.state.config.api_max_body:  # the client port's bound
            raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, "request body too large")
        key = self._key_of(request)
        limited = self._limited(f"k{key}" if key is not None else f"a{address_key(peer)}")
        if limited:
            status, headers, body = error_answer(ErrorCode.RATE_LIMITED, "too many API calls")
            return status, [*headers, ("retry-after", str(max(1, round(limited))))], body
        if key is None:
            status, headers, body = error_answer(
                ErrorCode.UNAUTHORIZED, "needs Authorization: apikey <key>"
            )
            return status, [*headers, ("www-authenticate", "apikey")], body
        entry = self.methods.get(name)
        if entry is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no such API method {name!r}")
        if request.method != "POST":
            status, headers, body = error_answer(
                ErrorCode.METHOD_NOT_ALLOWED, "server API methods are POST"
            )
            return status, [*headers, ("allow", "POST")], body
        allowed, method = entry
        result = await method(_Body(request.body, allowed))
        return 200, list(_JSON), orjson.dumps(result)

    async def call(self, name: str, args: dict[str, Any]) -> object:
        """Call method ``name`` in-process (the admin page, docs/admin.md), with the same
        checks of its arguments as over HTTP; no key, no rate.

        Raises:
            ApiError: the arguments were refused, or the method failed.
        """
        allowed, method = self.methods[name]
        return await method(_Body(orjson.dumps(args), allowed))

    def _key_of(self, request: HttpRequest) -> int | None:
        """The index of the key the request names, or None; every key is compared (in
        constant time), so the time taken says nothing about which one is close."""
        header = request.header("authorization") or ""
        scheme, _, given = header.partition(" ")
        offered = given.strip().encode("latin-1") if scheme.lower() == "apikey" else b""
        found = None
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(key, offered) and offered:
                found = index
        return found

    def _limited(self, who: str) -> float:
        rates = self._rates
        return 0.0 if rates is None else rates.take(who, self.state.loop.time())

    # ----------------------------------------------------------- publishing
    async def publish(self, body: _Body) -> object:
        room, user = body.text("room"), body.text("user")
        address = body.value.get("connection")
        where = None if address is None else split_conn(address)
        if address is not None and where is None:
            raise _bad("connection must be a connection id (an integer, or node:id)")
        node, conn = where if where is not None else (None, None)
        everyone = body.flag("everyone")
        if sum((room is not None, user is not None, conn is not None, everyone)) != 1:
            raise _bad("publish needs exactly one of room, user, connection, everyone")
        publish = Publish.to(
            _payload(body),
            room=room,
            user=user,
            conn=conn,
            everyone=everyone,
            exclude=body.ids("exclude"),
            event=body.text("event", required=True),
        )
        broker = self.state.broker
        if publish.kind == "c":
            if node is None or node == getattr(broker, "node", None):
                # This node's connection: delivered at once.
                return {"delivered": self.state.hub.deliver(publish)}
            command = Command(
                action="send", conn=conn, node=node, payload=publish.payload, event=publish.event
            )
            return (await broker.command(command)).answer("delivered")
        # The broker's path, as hub.publish takes it for a worker's emit, with the
        # offset this publish gets.
        numbered: Numbered = self.state.loop.create_future()
        broker.publish(publish, numbered)
        return await self._offset(publish, numbered)

    async def broadcast(self, body: _Body) -> object:
        rooms = body.texts("rooms", MAX_BROADCAST_ROOMS)
        payload, event, exclude = _payload(body), body.text("event"), body.ids("exclude")
        publishes = [Publish.to(payload, room=room, exclude=exclude, event=event) for room in rooms]
        broker, loop = self.state.broker, self.state.loop
        numbered: list[Numbered] = []
        for publish in publishes:  # all queued first: one round trip to Redis, not N
            numbered.append(loop.create_future())
            broker.publish(publish, numbered[-1])
        results = []
        for publish, offset in zip(publishes, numbered, strict=True):
            results.append({"room": publish.name, **await self._offset(publish, offset)})
        return {"results": results}

    async def _offset(self, publish: Publish, numbered: Numbered) -> dict[str, object]:
        """``{"offset": {epoch, seq}}``: the number the broker gave this very publish
        (racing callers each get their own), once it took effect here; ``{}`` when it
        was not numbered (everyone; Redis unreachable: delivered unnumbered)."""
        try:
            async with asyncio.timeout(_NUMBERED_WITHIN):
                position = await numbered
                fence = self.state.broker.fence()
                if fence is not None:
                    await fence  # delivered here too, as a worker's reply waits for
        except TimeoutError:
            position = None if numbered.cancelled() or not numbered.done() else numbered.result()
        if publish.kind == "*" or position is None:
            return {}
        return {"offset": {"epoch": position[0], "seq": position[1]}}

    # ------------------------------------------------------------- reading
    async def presence(self, body: _Body) -> object:
        room = body.text("room", required=True)
        assert room is not None
        users = await self._presence(room)
        return {"room": room, "users": users}

    async def presence_stats(self, body: _Body) -> object:
        room = body.text("room", required=True)
        assert room is not None
        users = await self._presence(room)
        return {
            "room": room,
            "users": len(users),
            "connections": sum(int(u["connections"]) for u in users),
        }

    async def _presence(self, room: str) -> list[dict[str, Any]]:
        """The room's users, cluster-wide with Redis (as a worker's presence query)."""
        state = self.state
        if not state.config.redis_url:
            return state.hub.room_presence(room)
        from engine.brokers.redis_presence import RedisPresence

        presence = state.presence
        assert isinstance(presence, RedisPresence)
        try:
            return await presence.room_users(room)
        except (OSError, RedisError):
            raise ApiError(ErrorCode.SERVICE_UNAVAILABLE, "presence is unavailable") from None

    async def rooms(self, body: _Body) -> object:
        prefix = body.value.get("prefix") or ""
        if not isinstance(prefix, str):
            raise _bad("prefix must be a string")
        rooms = self.state.hub.rooms
        names = sorted(name for name in rooms if name.startswith(prefix))
        listed = [{"room": name, "members": len(rooms[name])} for name in names]
        return {
            "rooms": listed[:MAX_ROOMS_LISTED],
            "more": len(listed) > MAX_ROOMS_LISTED,
            "scope": "node",
        }

    async def history(self, body: _Body) -> object:
        room = body.text("room", required=True)
        assert room is not None
        since, epoch = body.integer("since"), body.text("epoch")
        limit = body.integer("limit")
        limit = 100 if limit is None else limit
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise _bad(f"limit must be between 1 and {MAX_HISTORY_LIMIT}")
        if since is not None and since < 0:
            raise _bad("since must not be negative")
        try:
            page = await self.state.broker.read_history(room, since, epoch, limit)
        except (OSError, RedisError):
            raise ApiError(ErrorCode.SERVICE_UNAVAILABLE, "history is unavailable") from None
        return orjson.Fragment(page.to_json(room))

    async def info(self, body: _Body) -> object:
        state = self.state
        broker = state.broker
        node = getattr(broker, "node", None)
        out: dict[str, object] = {
            "node": node,
            "version": state.config.version,
            "uptime": round(state.loop.time() - self.started, 3),
            "draining": state.shutting_down,
            "connections": {
                "http": len(state.http_connections),
                "websocket": len(state.ws_connections),
            },
            "users": len(state.hub.users),
            "rooms": len(state.hub.rooms),
            "services": state.registry.live_workers(),
        }
        if state.config.redis_url:
            out["broker"] = "connected" if broker.healthy else "unreachable"
            out["nodes"] = await self._nodes(broker)
        return out

    async def _nodes(self, broker: Any) -> list[str] | None:
        """Nodes with a live presence lease in Redis (None: Redis cannot say now)."""
        try:
            client = broker.client
            nodes = sorted(
                n.decode() if isinstance(n, bytes) else str(n)
                for n in await client.smembers(_NODES)
            )
            pipe = client.pipeline(transaction=False)
            for node in nodes:
                pipe.exists(f"lk:lease:{node}")
            alive = await pipe.execute()
        except (OSError, RedisError):
            return None
        return [node for node, live in zip(nodes, alive, strict=True) if live]

    # ------------------------------------------------ acting on connections
    async def disconnect(self, body: _Body) -> object:
        code = body.integer("code")
        code = 1000 if code is None else code
        if not (code in _SENDABLE or 3000 <= code <= 4999):
            raise _bad(f"close code {code} cannot be sent")
        reason = body.value.get("reason") or ""
        if not isinstance(reason, str) or len(reason.encode()) > _MAX_REASON:
            raise _bad(f"reason must be a string of at most {_MAX_REASON} bytes")
        command = self._connections(body, "disconnect", code=code, reason=reason)
        return (await self.state.broker.command(command)).answer("disconnected")

    async def subscribe(self, body: _Body) -> object:
        room = body.text("room", required=True)
        assert room is not None
        command = self._connections(body, "subscribe", room=room)
        return (await self.state.broker.command(command)).answer("subscribed")

    async def unsubscribe(self, body: _Body) -> object:
        room = body.text("room", required=True)
        assert room is not None
        command = self._connections(body, "unsubscribe", room=room)
        return (await self.state.broker.command(command)).answer("unsubscribed")

    def _connections(
        self, body: _Body, action: Action, *, room: str = "", code: int = 1000, reason: str = ""
    ) -> Command:
        """The command on the connections of ``user`` (on every node), or on the one
        ``connection`` (this node's id, or ``node:id`` for another node's)."""
        user, address = body.text("user"), body.value.get("connection")
        if (user is None) == (address is None):
            raise _bad("needs exactly one of user, connection")
        node, conn = None, None
        if address is not None:
            where = split_conn(address)
            if where is None:
                raise _bad("connection must be a connection id (an integer, or node:id)")
            node, conn = where
        return Command(
            action=action, user=user, conn=conn, node=node, room=room, code=code, reason=reason
        )


def _conn_id(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 20:
        return int(value)
    return None


_PUBLISH = frozenset({"room", "user", "connection", "everyone", "event", "data", "exclude"})


def _payload(body: _Body) -> bytes:
    """The event as a client receives it: ``{"type", "data"}``, as a worker emits it."""
    event = body.text("event", required=True)
    if event is not None and event.startswith("linkd."):
        raise _bad("event types linkd.* are the engine's own")
    return orjson.dumps({"type": event, "data": body.value.get("data")})
