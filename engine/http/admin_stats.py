"""The numbers of the admin page (docs/admin.md): rates from the engine's counters,
sampled once a second, and the snapshot its WebSockets receive.

The counters are the ones ``/metrics`` exposes (engine/core/metrics.py): a rate is
the difference of two samples over the time between them, and the fan-out latency
quantiles come from the histogram's bucket counts over the last few samples (the
way Prometheus' ``histogram_quantile`` reads them), so nothing on the message path
does any work for the page.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.node import Node

__all__ = ["HISTORY", "Sampler", "quantile"]

#: Points of the chart kept (one a second): the last two minutes.
HISTORY = 120
#: Samples whose latency observations make up the quantiles: a second alone holds
#: too few publishes on a quiet node for a p99 worth drawing.
LATENCY_WINDOW = 5
#: Rooms listed by size; workers listed per service (the rest are counted).
TOP_ROOMS = 10
MAX_WORKERS_LISTED = 64


@dataclass(frozen=True, slots=True)
class _Counters:
    """The cumulative counters one sample reads."""

    at: float
    messages_in: int
    messages_out: int
    publishes: int
    deliveries: int
    slow: int
    rate_limited: int
    latency: tuple[int, ...]
    errors: dict[str, int]


class Sampler:
    """Samples one node's counters; builds the admin page's snapshot.

    Args:
        state: the engine's node.
        started: loop time the engine started (the uptime).
    """

    def __init__(self, state: Node, started: float) -> None:
        self.state = state
        self.started = started
        #: Chart points, oldest first: ``{t, in, out, deliveries, p50, p99}``.
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        #: Nodes with a live lease in Redis (refreshed by the page; None: unknown).
        self.nodes: list[str] | None = None
        self._last = self._read(state.loop.time())
        self._deltas: deque[list[int]] = deque(maxlen=LATENCY_WINDOW)
        self._rates: dict[str, float] = {}
        self._error_rates: dict[str, float] = {}

    def _read(self, now: float) -> _Counters:
        metrics = self.state.metrics
        return _Counters(
            at=now,
            messages_in=metrics.ws_messages_in,
            messages_out=metrics.ws_messages_out,
            publishes=metrics.fanout_publishes,
            deliveries=metrics.fanout_deliveries,
            slow=metrics.slow_consumers + sum(metrics.slow_consumer_events.values()),
            rate_limited=metrics.ws_rate_limited + metrics.ws_abuse_closes + metrics.ws_throttled,
            latency=tuple(metrics.fanout_latency.counts),
            errors=dict(metrics.ipc_errors),
        )

    def sample(self, now: float) -> dict[str, Any]:
        """Read the counters, update the rates; returns the new chart point."""
        last, current = self._last, self._read(now)
        self._last = current
        span = max(current.at - last.at, 1e-3)

        def rate(name: str) -> float:
            delta: int = getattr(current, name) - getattr(last, name)
            return round(delta / span, 2)

        self._rates = {
            name: rate(name)
            for name in (
                "messages_in",
                "messages_out",
                "publishes",
                "deliveries",
                "slow",
                "rate_limited",
            )
        }
        self._error_rates = {
            service: round((n - last.errors.get(service, 0)) / span, 2)
            for service, n in current.errors.items()
        }
        self._deltas.append([a - b for a, b in zip(current.latency, last.latency, strict=True)])
        window = [sum(column) for column in zip(*self._deltas, strict=True)]
        bounds = self.state.metrics.fanout_latency.bounds
        point = {
            "t": int(time.time() * 1000),
            "in": self._rates["messages_in"],
            "out": self._rates["messages_out"],
            "deliveries": self._rates["deliveries"],
            "p50": _ms(quantile(bounds, window, 0.5)),
            "p99": _ms(quantile(bounds, window, 0.99)),
        }
        self.history.append(point)
        return point

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready values (built once per tick)."""
        state = self.state
        metrics = state.metrics
        hub = state.hub
        rates = self._rates
        point = self.history[-1] if self.history else None
        return {
            "type": "snapshot",
            "node": self._node(),
            "connections": {
                "http": len(state.http_connections),
                "websocket": len(state.ws_connections),
                "byPath": {p: n for p, n in sorted(metrics.ws_open_by_path.items()) if n},
            },
            "users": len(hub.users),
            "messages": {
                "inPerSec": rates.get("messages_in", 0.0),
                "outPerSec": rates.get("messages_out", 0.0),
                "in": metrics.ws_messages_in,
                "out": metrics.ws_messages_out,
            },
            "fanout": {
                "publishesPerSec": rates.get("publishes", 0.0),
                "deliveriesPerSec": rates.get("deliveries", 0.0),
                "deliveries": metrics.fanout_deliveries,
                "p50Ms": point["p50"] if point else None,
                "p99Ms": point["p99"] if point else None,
            },
            "rooms": {
                "count": len(hub.rooms),
                "top": [
                    {"room": name, "members": len(members)}
                    for name, members in heapq.nlargest(
                        TOP_ROOMS, hub.rooms.items(), key=lambda item: len(item[1])
                    )
                ],
            },
            "services": self._services(),
            "events": {
                "slowConsumerCloses": metrics.slow_consumers,
                "slowConsumerEvents": dict(sorted(metrics.slow_consumer_events.items())),
                "slowPerSec": rates.get("slow", 0.0),
                "rateLimitedMessages": metrics.ws_rate_limited,
                "abuseCloses": metrics.ws_abuse_closes,
                "throttled": metrics.ws_throttled,
                "rateLimitedPerSec": rates.get("rate_limited", 0.0),
                "refusedConnections": dict(sorted(metrics.ws_refused.items())),
            },
            "point": point,
        }

    def _node(self) -> dict[str, Any]:
        state = self.state
        broker = state.broker
        node: dict[str, Any] = {
            "id": getattr(broker, "node", None),
            "version": state.config.version,
            "uptime": round(state.loop.time() - self.started, 1),
            "draining": state.shutting_down,
            "redis": None,
            "nodes": self.nodes,
        }
        if state.config.redis_url:
            node["redis"] = "connected" if broker.healthy else "unreachable"
        return node

    def _services(self) -> list[dict[str, Any]]:
        registry = getattr(self.state, "registry", None)  # set once the engine started
        if registry is None:
            return []
        errors = self.state.metrics.ipc_errors
        out = []
        for name, entry in sorted(registry.services.items()):
            workers = entry.workers
            out.append(
                {
                    "name": name,
                    "workers": [
                        {
                            "id": w.id,
                            "pid": w.pid,
                            "inFlight": len(w.in_flight),
                            "capacity": w.capacity,
                            "draining": w.draining,
                        }
                        for w in workers[:MAX_WORKERS_LISTED]
                    ],
                    "workerCount": len(workers),
                    "inFlight": sum(len(w.in_flight) for w in workers),
                    "queued": len(entry.queue),
                    "errors": errors.get(name, 0),
                    "errorsPerSec": self._error_rates.get(name, 0.0),
                }
            )
        return out


def quantile(bounds: tuple[float, ...], counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of observations counted per bucket (``counts[i]`` fell at or
    below ``bounds[i]``; the last count is +Inf), interpolated linearly within its
    bucket; None when nothing was observed. Past the last bound: the last bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, n in enumerate(counts):
        if n and below + n >= rank:
            if index >= len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - below) / n
        below += n
    return bounds[-1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
