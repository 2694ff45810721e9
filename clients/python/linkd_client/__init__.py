"""linkd_client: a Python client for Linkd WebSocket endpoints.

Requests answered by acks, events, automatic reconnection with backoff, and recovery of
missed events (docs/recovery.md, docs/clients.md). The browser twin is clients/js/linkd.js.

| module | job |
|---|---|
| ``client`` | ``Client``: the connection loop (connect, read, dispatch, reconnect) |
| ``positions`` | where the client is in each stream; gaps, duplicates, ``?recover=`` |
| ``events`` | events, callbacks, ``events()`` iterators, counters |
| ``backoff`` | delays between reconnection attempts |
| ``tokens`` | when to refresh a token (its ``exp``, read unverified) |
| ``errors`` | ``ClientError`` (an error ack), ``ConnectionLostError`` |
"""

from __future__ import annotations

from .backoff import Backoff
from .client import Client, RefreshSource, TokenSource
from .errors import ClientError, ConnectionLostError
from .events import ClientStats, Event, EventStream, State
from .positions import MAX_AHEAD, Cursor, Positions, Stream

__all__ = [
    "MAX_AHEAD",
    "Backoff",
    "Client",
    "ClientError",
    "ClientStats",
    "ConnectionLostError",
    "Cursor",
    "Event",
    "EventStream",
    "Positions",
    "RefreshSource",
    "State",
    "Stream",
    "TokenSource",
]
