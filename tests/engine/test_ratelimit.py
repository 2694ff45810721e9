"""Unit tests of engine/ratelimit.py with an injected clock: bucket math, the address table."""

from __future__ import annotations

import pytest

from engine.cli import build_parser, config_from_args
from engine.config import Config
from engine.limits.ratelimit import ConnectionLimiter, TokenBucket, address_key, parse_type_limit

# ------------------------------------------------------------------ the bucket


def test_bucket_starts_full_and_allows_the_burst_back_to_back() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    # Empty: one token comes back after 1/rate seconds.
    assert bucket.take(100.0) == pytest.approx(0.5)


def test_retry_after_counts_the_partial_refill() -> None:
    bucket = TokenBucket(rate=4.0, burst=1.0, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.25)
    assert bucket.take(0.1) == pytest.approx(0.15)  # 0.4 of a token is back
    # A refusal spends nothing: waiting exactly what was announced is enough.
    assert bucket.take(0.25) == 0.0
    assert bucket.take(0.25) == pytest.approx(0.25)


def test_refill_is_capped_at_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2.0, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    # An hour idle banks two tokens, not 36000.
    assert [bucket.take(3600.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_sustained_rate_is_the_configured_rate() -> None:
    bucket = TokenBucket(rate=5.0, burst=1.0, now=0.0)
    passed = sum(bucket.take(i * 0.01) == 0.0 for i in range(1000))  # 100/s for 10 s
    assert passed in (50, 51)  # the first token plus 5/s


def test_full() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0, now=0.0)
    assert bucket.full(0.0)
    bucket.take(0.0)
    assert not bucket.full(0.5)
    assert bucket.full(1.0)


def test_bucket_has_slots() -> None:
    assert not hasattr(TokenBucket(1.0, 1.0, 0.0), "__dict__")


# -------------------------------------------------------------- config / CLI


def test_parse_type_limit() -> None:
    assert parse_type_limit("chat.send=5/10") == ("chat.send", 5.0, 10.0)
    assert parse_type_limit("typing=0.5") == ("typing", 0.5, 1.0)
    for bad in ("chat.send", "=1/2", "x=a/b", "x=1/0.5", "x=-1/2", "x=inf/2"):
        with pytest.raises(ValueError):
            parse_type_limit(bad)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        Config(ws_rate=10, ws_burst=0.5)
    with pytest.raises(ValueError):
        Config(new_connections_per_ip=-1)
    with pytest.raises(ValueError):
        Config(max_connections_per_ip=-1)
    with pytest.raises(ValueError):
        Config(ws_type_limits=(("x", 1.0, 0.0),))
    Config(ws_rate=0, ws_burst=0, new_connections_per_ip=0, new_connections_burst=0)


def test_cli_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINKD_WS_RATE", "7")
    monkeypatch.setenv("LINKD_MAX_CONNECTIONS_PER_IP", "3")
    monkeypatch.setenv("LINKD_WS_TYPE_LIMIT", "a=1/2,b=3/4")
    args = build_parser().parse_args(
        ["--ws-burst", "9", "--ws-type-limit", "c=5/6", "--new-connections-per-ip", "0"]
    )
    config = config_from_args(args)
    assert (config.ws_rate, config.ws_burst) == (7.0, 9.0)
    assert config.max_connections_per_ip == 3
    assert config.new_connections_per_ip == 0
    assert config.ws_type_limits == (("a", 1.0, 2.0), ("b", 3.0, 4.0), ("c", 5.0, 6.0))


def test_cli_defaults_are_shown_in_help() -> None:
    text = build_parser().format_help()
    for flag in (
        "--ws-rate",
        "--ws-burst",
        "--ws-type-limit",
        "--ws-abuse-limit",
        "--ws-abuse-window",
        "--max-connections",
        "--max-connections-per-ip",
        "--new-connections-per-ip",
        "--new-connections-burst",
        "--ip-table-size",
    ):
        env = "LINKD_" + flag[2:].upper().replace("-", "_")
        assert flag in text and env in text
    defaults = Config()
    # The documented defaults (docs/configuration.md): message rate on, per-address
    # caps off (clients behind one proxy or NAT share an address).
    assert (defaults.ws_rate, defaults.ws_burst, defaults.ws_abuse_limit) == (100, 200, 20)
    assert (defaults.max_connections_per_ip, defaults.max_connections) == (0, 100_000)
    assert (defaults.new_connections_per_ip, defaults.new_connections_burst) == (0, 40)


# ------------------------------------------------------------- address keys


def test_address_key() -> None:
    assert address_key("203.0.113.7") == "203.0.113.7"
    # One IPv6 client owns a /64: every address in it is one key.
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not-an-ip:x") == "not-an-ip:x"


# ------------------------------------------------------------- the limiter


def test_per_ip_cap_counts_open_connections() -> None:
    limiter = ConnectionLimiter(per_ip=2)
    for _ in range(2):
        assert limiter.admit("a", 0.0, 0) is None
        limiter.opened("a", 0.0)
    refusal = limiter.admit("a", 0.0, 2)
    assert refusal is not None and refusal.reason == "per_ip" and refusal.retry_after > 0
    assert limiter.admit("b", 0.0, 2) is None  # another address is not affected
    limiter.closed("a")
    assert limiter.admit("a", 0.0, 1) is None


def test_admitted_but_not_opened_does_not_count() -> None:
    limiter = ConnectionLimiter(per_ip=1)
    for _ in range(5):  # e.g. upgrades refused later with 401
        assert limiter.admit("a", 0.0, 0) is None


def test_new_connection_rate() -> None:
    limiter = ConnectionLimiter(rate=2.0, burst=3.0)
    assert [limiter.admit("a", 0.0, 0) for _ in range(3)] == [None, None, None]
    refusal = limiter.admit("a", 0.0, 0)
    assert refusal is not None and refusal.reason == "rate"
    assert refusal.retry_after == pytest.approx(0.5)
    assert limiter.admit("b", 0.0, 0) is None
    assert limiter.admit("a", 0.5, 0) is None


def test_global_cap() -> None:
    limiter = ConnectionLimiter(max_connections=10)
    assert limiter.admit("a", 0.0, 9) is None
    refusal = limiter.admit("a", 0.0, 10)
    assert refusal is not None and refusal.reason == "global"
    # The global cap needs no table.
    assert len(limiter) == 0


def test_table_stays_bounded_under_many_addresses() -> None:
    limiter = ConnectionLimiter(per_ip=5, rate=1.0, burst=2.0, table_size=100)
    # Ten addresses hold connections; they must never be forgotten.
    for i in range(10):
        key = f"10.0.0.{i}"
        assert limiter.admit(key, 0.0, 0) is None
        limiter.opened(key, 0.0)
    # A flood from 100 000 distinct addresses, all at the same instant (nothing refills).
    for i in range(100_000):
        limiter.admit(f"198.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 0.0, 10)
        assert len(limiter) <= 100 + 10
    for i in range(10):
        assert limiter.open_count(f"10.0.0.{i}") == 1


def test_idle_refilled_entries_are_forgotten() -> None:
    limiter = ConnectionLimiter(rate=1.0, burst=2.0, table_size=1000)
    for i in range(50):
        limiter.admit(f"a{i}", 0.0, 0)
    assert len(limiter) == 50
    # Much later every bucket is full again: those entries carry no information.
    for _ in range(30):
        limiter.admit("late", 100.0, 0)
    assert len(limiter) == 1


def test_entries_still_refilling_are_kept_until_the_table_is_full() -> None:
    limiter = ConnectionLimiter(rate=1.0, burst=1.0, table_size=1000)
    limiter.admit("a", 0.0, 0)
    for i in range(100):
        limiter.admit(f"b{i}", 0.5, 0)
    refusal = limiter.admit("a", 0.5, 0)  # "a" was not forgotten: still limited
    assert refusal is not None and refusal.reason == "rate"


def test_cap_only_table_drops_an_address_with_its_last_connection() -> None:
    limiter = ConnectionLimiter(per_ip=3)
    limiter.admit("a", 0.0, 0)
    limiter.opened("a", 0.0)
    assert len(limiter) == 1
    limiter.closed("a")
    assert len(limiter) == 0
    limiter.closed("a")  # unknown: ignored
    limiter.closed(None)


def test_disabled_limiter_tracks_nothing() -> None:
    limiter = ConnectionLimiter()
    for i in range(100):
        assert limiter.admit(f"a{i}", 0.0, 10**6) is None
        limiter.opened(f"a{i}", 0.0)
    assert len(limiter) == 0
