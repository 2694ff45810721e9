"""Run an in-process Engine on an ephemeral loopback port for one test."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from engine import Config, Engine
from protocol import Limits
from protocol.ws import DeflateOptions


def make_config(**overrides: Any) -> Config:
    """A Config on 127.0.0.1:0 with echo on /echo; ``limits``/``deflate`` take kwargs dicts."""
    limits = overrides.pop("limits", {})
    deflate = overrides.pop("deflate", {})
    base = Config(
        host="127.0.0.1",
        port=0,
        echo_paths=("/echo",),
        access_log=False,
        timer_resolution=0.05,
        # Tests open many connections and send floods from one address: limits are
        # opted into by the tests that check them (tests/engine/test_ratelimit*.py).
        ws_rate=0,
        max_connections_per_ip=0,
        new_connections_per_ip=0,
        http_rate=0,
        # Tests read the counters from the client port; tests/engine/test_admin.py
        # checks the default (404 there, served by the admin listener).
        public_metrics=True,
        limits=dataclasses.replace(Limits(), **limits) if isinstance(limits, dict) else limits,
        deflate=dataclasses.replace(DeflateOptions(), **deflate)
        if isinstance(deflate, dict)
        else deflate,
    )
    return dataclasses.replace(base, **overrides)


@asynccontextmanager
async def running_engine(engine: Engine | None = None, **overrides: Any) -> AsyncIterator[Engine]:
    """Start ``engine`` (or a new one from ``make_config(**overrides)``), stop it after."""
    engine = engine or Engine(make_config(**overrides))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop(grace=1.0)
