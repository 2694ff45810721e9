"""Host: what services/ needs of the engine around it, stated here so services/ never
imports engine/node.py (the node imports the registry: that would be a circle).

engine/node.py's ``Node`` satisfies it; engine/server.py passes the node in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from engine.api.routes import Routes
from engine.auth import Authenticator
from engine.brokers.base import Broker
from engine.brokers.presence import Presence
from engine.config import Config
from engine.core.corker import Corker
from engine.core.metrics import Metrics
from engine.core.sweeper import Sweeper
from engine.hub.hub import Hub
from protocol import Limits

if TYPE_CHECKING:
    from engine.brokers.redis_presence import RedisPresence

__all__ = ["Host"]


class Host(Protocol):
    config: Config
    limits: Limits
    loop: asyncio.AbstractEventLoop
    metrics: Metrics
    sweeper: Sweeper
    corker: Corker
    hub: Hub
    broker: Broker
    presence: Presence | RedisPresence
    authenticator: Authenticator
    routes: Routes

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine as a task the engine tracks (and awaits at shutdown)."""
