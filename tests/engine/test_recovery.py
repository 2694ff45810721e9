"""Numbered streams and recovery (docs/recovery.md): the history, and real reconnects."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import orjson
import pytest

from engine import Engine
from engine.api.endpoint import WebSocket, WebSocketEndpoint
from engine.brokers.history import StreamHistory, parse_recover, stamp
from engine.brokers.publish import Publish
from tests.helpers.raw_ws import RawWs
from tests.helpers.server import make_config

SECRET = "a-development-secret-of-32-bytes!"


# ------------------------------------------------------------------ the history
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stamp_adds_the_position_to_the_event_object() -> None:
    out = stamp(b'{"type":"t","data":{"a":1}}', b"room", 'r"1', 7, "EP")
    assert orjson.loads(out) == {
        "type": "t",
        "data": {"a": 1},
        "room": 'r"1',
        "seq": 7,
        "epoch": "EP",
    }
    assert stamp(b"[1,2]", b"room", "r", 1, "E") == b"[1,2]"  # not an object: untouched


def test_since_returns_exactly_the_missed_events_and_says_when_that_is_all() -> None:
    clock = Clock()
    history = StreamHistory(size=3, ttl=10.0, clock=clock)
    stamped = [history.append("r:a", b'{"type":"e","data":%d}' % i, b"room", "a") for i in range(5)]
    position = history.position("r:a")
    assert position is not None
    epoch, seq = position
    assert seq == 5
    found = history.since("r:a", epoch, 3)
    assert (found.events, found.recovered) == (stamped[3:], True)
    found = history.since("r:a", epoch, 5)
    assert (found.events, found.recovered, found.seq) == ([], True, 5)
    # Seq 2 left the history (size 3 keeps 3..5): what is there, and "incomplete".
    found = history.since("r:a", epoch, 1)
    assert (found.events, found.recovered) == (stamped[2:], False)
    # Another epoch, or a position from the future: nothing, incomplete.
    assert not history.since("r:a", "other", 4).recovered
    assert history.since("r:a", "other", 4).events == []
    assert not history.since("r:a", epoch, 9).recovered


def test_expired_events_make_recovery_incomplete_but_an_up_to_date_client_is_fine() -> None:
    clock = Clock()
    history = StreamHistory(size=100, ttl=10.0, clock=clock)
    history.append("r:a", b'{"type":"e"}', b"room", "a")
    clock.now = 5.0
    history.append("r:a", b'{"type":"e"}', b"room", "a")
    clock.now = 12.0  # the first expired, the second not
    epoch = history.since("r:a", "?", 0).epoch
    assert [orjson.loads(e)["seq"] for e in history.since("r:a", epoch, 1).events] == [2]
    assert history.since("r:a", epoch, 1).recovered
    assert not history.since("r:a", epoch, 0).recovered
    clock.now = 20.0  # both expired: nothing missed is still "complete"
    assert history.since("r:a", epoch, 2).recovered
    clock.now = 20.0 + history.forget_after
    assert history.prune() == 1
    assert not history.since("r:a", epoch, 2).recovered  # forgotten: a new epoch


@pytest.mark.parametrize(
    "raw",
    [
        "!!!",
        base64.urlsafe_b64encode(b"[1]").decode(),
        base64.urlsafe_b64encode(b'{"rooms": {"a": ["e", -1]}}').decode(),
        base64.urlsafe_b64encode(b'{"rooms": {"a": ["e", true]}}').decode(),
        base64.urlsafe_b64encode(b'{"rooms": [], "user": ["e", 1]}').decode(),
        base64.urlsafe_b64encode(b'{"user": "e"}').decode(),
    ],
)
def test_bad_recover_parameters_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="recover"):
        parse_recover(raw)


def test_recover_parameter_round_trip_without_padding() -> None:
    text = encode({"rooms": {"a": ["E1", 3]}, "user": ["E2", 9]})
    assert "=" not in text
    parsed = parse_recover(text)
    assert parsed.rooms == {"a": ("E1", 3)} and parsed.user == ("E2", 9)


# -------------------------------------------------------------- real reconnects
def encode(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()


class Rooms(WebSocketEndpoint):
    """Joins the rooms named in ``?rooms=a,b`` on connect; ``ROOM text`` publishes."""

    auth_policy = "optional"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def on_connect(self, ws: WebSocket) -> None:
        for part in ws.request.query.split("&"):
            if part.startswith("rooms="):
                for room in part[6:].split(","):
                    self.engine.state.hub.join(ws, room)

    def on_message(self, ws: WebSocket, data: str | bytes) -> None:
        target, _, text = str(data).partition(" ")
        event = orjson.dumps({"type": "said", "data": text})
        if target.startswith("@"):
            self.engine.state.hub.publish(Publish.to(event, user=target[1:]))
        else:
            self.engine.state.hub.publish(Publish.to(event, room=target))


@asynccontextmanager
async def recovery_engine(**overrides: Any) -> AsyncIterator[Engine]:
    engine = Engine(make_config(jwt_secret=SECRET, **overrides))
    engine.websocket("/ws", Rooms(engine))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace=1.0)


async def recv_json(ws: RawWs) -> dict[str, Any]:
    frame = await ws.recv_frame(timeout=3.0)
    assert frame.opcode == 0x1
    value: dict[str, Any] = orjson.loads(frame.payload)
    return value


@pytest.mark.asyncio
async def test_a_reconnecting_client_gets_exactly_what_it_missed_then_live_events() -> None:
    async with recovery_engine() as engine:
        async with RawWs(engine.port, "/ws?rooms=news") as first, RawWs(engine.port, "/ws") as pub:
            pub.send_text("news one")
            pub.send_text("news two")
            got = [await recv_json(first) for _ in range(2)]
        assert [e["data"] for e in got] == ["one", "two"]
        assert [e["seq"] for e in got] == [1, 2] and {e["room"] for e in got} == {"news"}
        epoch = got[0]["epoch"]
        async with (
            RawWs(engine.port, "/ws?rooms=news") as probe,
            RawWs(engine.port, "/ws") as pub,
        ):
            for text in ("three", "four", "five"):  # missed while disconnected
                pub.send_text(f"news {text}")
            assert [(await recv_json(probe))["seq"] for _ in range(3)] == [3, 4, 5]
            recover = encode({"rooms": {"news": [epoch, 2]}})
            async with RawWs(engine.port, f"/ws?rooms=news&recover={recover}") as again:
                missed = [await recv_json(again) for _ in range(3)]
                verdict = await recv_json(again)
                pub.send_text("news six")
                live = await recv_json(again)
        assert [(e["seq"], e["data"]) for e in missed] == [(3, "three"), (4, "four"), (5, "five")]
        assert verdict == {
            "type": "linkd.recovered",
            "data": {"room": "news", "recovered": True, "epoch": epoch, "seq": 5, "missed": 3},
        }
        assert (live["seq"], live["data"], live["epoch"]) == (6, "six", epoch)
        assert engine.metrics.recoveries == {"complete": 1}


@pytest.mark.asyncio
async def test_beyond_retention_or_another_epoch_is_never_presented_as_complete() -> None:
    async with recovery_engine(history_size=2) as engine:
        async with RawWs(engine.port, "/ws") as pub, RawWs(engine.port, "/ws?rooms=feed") as sub:
            for i in range(5):
                pub.send_text(f"feed m{i}")
            events = [await recv_json(sub) for _ in range(5)]
        epoch = events[0]["epoch"]
        # Missed seq 2..5 but only 4..5 are kept.
        recover = encode({"rooms": {"feed": [epoch, 1]}})
        async with RawWs(engine.port, f"/ws?rooms=feed&recover={recover}") as ws:
            partial = [await recv_json(ws) for _ in range(2)]
            verdict = await recv_json(ws)
        assert [e["seq"] for e in partial] == [4, 5]
        assert verdict["data"] == {
            "room": "feed",
            "recovered": False,
            "epoch": epoch,
            "seq": 5,
            "missed": 2,
        }
        recover = encode({"rooms": {"feed": ["not-the-epoch", 5]}})
        async with RawWs(engine.port, f"/ws?rooms=feed&recover={recover}") as ws:
            verdict = await recv_json(ws)
        assert verdict["data"]["recovered"] is False and verdict["data"]["missed"] == 0
        assert engine.metrics.recoveries == {"incomplete": 2}


@pytest.mark.asyncio
async def test_the_user_stream_is_recovered_at_once() -> None:
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    async with recovery_engine() as engine:
        async with (
            RawWs(engine.port, f"/ws?token={token}") as tab,
            RawWs(engine.port, "/ws") as pub,
        ):
            pub.send_text("@u1 hello")
            first = await recv_json(tab)
        assert (first["user"], first["seq"]) == ("u1", 1)
        async with (
            RawWs(engine.port, f"/ws?token={token}") as other_tab,  # sees it: handled
            RawWs(engine.port, "/ws") as pub,
        ):
            pub.send_text("@u1 while-away")
            assert (await recv_json(other_tab))["data"] == "while-away"
        recover = encode({"user": [first["epoch"], 1]})
        async with RawWs(engine.port, f"/ws?token={token}&recover={recover}") as again:
            missed = await recv_json(again)
            verdict = await recv_json(again)
        assert (missed["seq"], missed["data"]) == (2, "while-away")
        assert verdict["data"] == {
            "user": "u1",
            "recovered": True,
            "epoch": first["epoch"],
            "seq": 2,
            "missed": 1,
        }


@pytest.mark.asyncio
async def test_a_malformed_recover_parameter_is_a_400_before_the_upgrade() -> None:
    async with recovery_engine() as engine, RawWs(engine.port, "/ws?recover=%%%") as ws:
        assert ws.status == 400
        error = orjson.loads(ws.response_body)["error"]
        assert error["code"] == "BAD_REQUEST" and "recover" in error["message"]
