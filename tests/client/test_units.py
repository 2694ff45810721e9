"""linkd_client without a network: backoff delays, position cursors, the recover parameter."""

from __future__ import annotations

import random
from typing import Any

from linkd_client import MAX_AHEAD, Backoff, Cursor
from tests.client.support import decode_recover, new_client


def test_backoff_delays_are_full_jitter_under_a_doubling_ceiling() -> None:
    backoff = Backoff(initial=0.5, max=15.0, factor=2.0)
    random.seed(7)
    for failures, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (5, 15.0), (10_000, 15.0)]:
        delays = [backoff.delay(failures) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2


def test_cursor_advances_only_to_the_next_seq_or_a_new_epoch() -> None:
    cursor = Cursor("e1", 5)
    assert cursor.see("e1", 6) == "next"
    assert [cursor.see("e1", s) for s in (6, 5, 1)] == ["duplicate"] * 3
    assert cursor.see("e1", 8) == "gap"  # 7 missing: stays at 6
    assert cursor.see("e1", 9) == "ahead"  # the same hole
    assert (cursor.seq, cursor.ahead) == (6, {8, 9})
    assert cursor.see("e1", 9) == "duplicate"
    assert cursor.see("e1", 7) == "next"
    assert (cursor.seq, cursor.ahead) == (9, set())  # 8 and 9 were already seen
    assert cursor.see("e1", 12) == "gap"  # another hole
    assert cursor.see("e2", 1) == "next"
    assert (cursor.epoch, cursor.seq) == ("e2", 1)


def test_cursor_gives_up_on_a_gap_that_never_fills() -> None:
    cursor = Cursor("e", 0)
    for seq in range(2, MAX_AHEAD + 3):
        cursor.see("e", seq)
    assert cursor.seq == MAX_AHEAD + 2 and not cursor.ahead


def test_recover_parameter_merges_into_the_query_string() -> None:
    client = new_client("ws://h/ws/chat?token=a%20b&recover=old&x=1")
    assert client._connect_url() == "ws://h/ws/chat?token=a%20b&recover=old&x=1"  # nothing known
    client._track({"type": "t", "room": "général", "seq": 4, "epoch": "E1"})
    client._track({"type": "t", "user": "u-1", "seq": 2, "epoch": "U"})
    url = client._connect_url()
    base, _, query = url.partition("?")
    assert base == "ws://h/ws/chat"
    params = query.split("&")
    assert params[0] == "token=a+b" and params[1] == "x=1" and len(params) == 3
    value = params[2].removeprefix("recover=")
    assert "=" not in value and "+" not in value and "/" not in value
    assert decode_recover(value) == {"rooms": {"général": ["E1", 4]}, "user": ["U", 2]}


def test_recover_parameter_off_and_forget() -> None:
    client = new_client("ws://h/ws", recover=False)
    client._track({"type": "t", "room": "r", "seq": 1, "epoch": "E"})
    assert client._connect_url() == "ws://h/ws"
    assert client.positions() == {"rooms": {"r": ["E", 1]}}
    client.forget("r")
    assert client.recover_param() is None


def test_events_without_a_full_position_are_not_tracked() -> None:
    client = new_client("ws://h/ws")
    events: list[dict[str, Any]] = [
        {"type": "t", "data": 1},
        {"type": "t", "room": "r", "seq": "1", "epoch": "E"},
        {"type": "t", "room": "r", "seq": True, "epoch": "E"},
        {"type": "t", "room": "r", "seq": 1},
        {"type": "t", "seq": 1, "epoch": "E"},
    ]
    for event in events:
        assert client._track(event)
    assert client.positions() == {"rooms": {}}
