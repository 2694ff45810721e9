"""Engine metrics on a private prometheus-client registry.

One registry per Engine, so tests and embedders can run several engines in one
process. Counters on the per-message path are plain integer attributes, read by a
custom collector at scrape time: a prometheus ``Counter.inc()`` takes a lock, which
is too much to pay per delivered frame.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from engine.limits.slow import Policy

__all__ = ["Histogram", "Metrics"]

#: Seconds: fan-out (publish → last write) and IPC round trips live in 10 µs - 1 s.
LATENCY_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


class Histogram:
    """Counts per bucket, without a lock (one event loop observes)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, float(total)))
        return out


class Metrics(Collector):
    """Counters and gauges of one engine; attributes are bumped directly by the shell."""

    def __init__(self) -> None:
        self.http_open = 0
        self.ws_open = 0
        #: Open WebSockets by mounted path (404 keeps unknown paths out: bounded).
        self.ws_open_by_path: dict[str, int] = {}
        #: Bytes on the wire, frames included (compressed size when compressed).
        self.ws_bytes_out = 0
        #: Emits / broadcasts, the connections they were queued to, and the time from
        #: the publish reaching the engine to the end of the write of its last frame.
        self.fanout_publishes = 0
        self.fanout_deliveries = 0
        self.fanout_latency = Histogram()
        #: Request → reply round trips to service workers, by service.
        self.ipc_latency: dict[str, Histogram] = {}
        #: Requests to service workers that failed (timeout, unavailable, overloaded)
        #: or that the worker answered with an error, by service.
        self.ipc_errors: dict[str, int] = {}
        #: Events delivered to this node only because the broker (Redis) was unreachable.
        self.broker_fallbacks = 0
        #: Recovery verdicts by outcome, and the missed events they replayed.
        self.recoveries: dict[str, int] = {}
        self.recovered_events = 0
        #: Live workers by service (set by the engine: read at scrape time).
        self.workers_source: Callable[[], dict[str, int]] | None = None
        self.http_requests: dict[int, int] = {}
        #: Server API calls (engine/http/server_api.py), by method and status.
        self.api_requests: dict[tuple[str, int], int] = {}
        self.ws_messages_in = 0
        self.ws_messages_out = 0
        self.ws_bytes_in = 0
        self.ws_closes: dict[int, int] = {}
        #: Connections closed with 1013 (the disconnect policy).
        self.slow_consumers = 0
        #: Slow-consumer episodes by policy (a lossy policy counts once per episode).
        self.slow_consumer_events: dict[str, int] = {}
        #: Messages a lossy policy dropped (drop_oldest) or replaced (conflate).
        self.shed_messages: dict[str, int] = {}
        self.dropped_messages = 0
        #: Inbound WebSocket messages refused by a rate limit (not handled).
        self.ws_rate_limited = 0
        #: Connections closed with 1008 for sustained rate-limit abuse.
        self.ws_abuse_closes = 0
        #: Times a raw endpoint stopped reading a connection over its message rate.
        self.ws_throttled = 0
        #: Room joins refused: the connection was in max_rooms_per_connection rooms.
        self.ws_joins_refused = 0
        #: Acks of a repeated message id sent from the replay cache (handler not run).
        self.ws_replayed_acks = 0
        #: WebSocket upgrades refused by a connection cap, by reason.
        self.ws_refused: dict[str, int] = {"per_ip": 0, "rate": 0, "global": 0}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def observe_ipc(self, service: str, seconds: float) -> None:
        histogram = self.ipc_latency.get(service)
        if histogram is None:
            histogram = self.ipc_latency[service] = Histogram()
        histogram.observe(seconds)

    def count_ipc_error(self, service: str) -> None:
        self.ipc_errors[service] = self.ipc_errors.get(service, 0) + 1

    def count_broker_fallback(self) -> None:
        self.broker_fallbacks += 1

    def count_recovery(self, recovered: bool, events: int) -> None:
        outcome = "complete" if recovered else "incomplete"
        self.recoveries[outcome] = self.recoveries.get(outcome, 0) + 1
        self.recovered_events += events

    def count_request(self, status: int) -> None:
        self.http_requests[status] = self.http_requests.get(status, 0) + 1

    def count_api(self, method: str, status: int) -> None:
        key = (method, status)
        self.api_requests[key] = self.api_requests.get(key, 0) + 1

    def count_close(self, code: int) -> None:
        self.ws_closes[code] = self.ws_closes.get(code, 0) + 1

    def count_slow_consumer(self, policy: Policy) -> None:
        label = policy.label
        self.slow_consumer_events[label] = self.slow_consumer_events.get(label, 0) + 1

    def count_shed(self, policy: Policy) -> None:
        label = policy.label
        self.shed_messages[label] = self.shed_messages.get(label, 0) + 1

    def count_refused(self, reason: str) -> None:
        self.ws_refused[reason] = self.ws_refused.get(reason, 0) + 1

    def collect(self) -> Iterator[Metric]:
        conns = GaugeMetricFamily("linkd_connections", "Open client connections", labels=["kind"])
        conns.add_metric(["http"], self.http_open)
        conns.add_metric(["websocket"], self.ws_open)
        yield conns
        by_path = GaugeMetricFamily(
            "linkd_ws_connections", "Open WebSocket connections by path", labels=["path"]
        )
        for path, n in sorted(self.ws_open_by_path.items()):
            by_path.add_metric([path], n)
        yield by_path
        reqs = CounterMetricFamily(
            "linkd_http_requests", "HTTP responses sent, by status", labels=["status"]
        )
        for status, n in sorted(self.http_requests.items()):
            reqs.add_metric([str(status)], n)
        yield reqs
        api = CounterMetricFamily(
            "linkd_api_requests",
            "Server API calls answered, by method and status",
            labels=["method", "status"],
        )
        for (method, status), n in sorted(self.api_requests.items()):
            api.add_metric([method, str(status)], n)
        yield api
        yield CounterMetricFamily(
            "linkd_ws_messages_received", "WebSocket messages received", value=self.ws_messages_in
        )
        yield CounterMetricFamily(
            "linkd_ws_bytes_received",
            "WebSocket bytes received on the wire (frames, as sent: compressed when so)",
            value=self.ws_bytes_in,
        )
        yield CounterMetricFamily(
            "linkd_ws_bytes_sent",
            "WebSocket bytes written to the wire (frames, compressed when so)",
            value=self.ws_bytes_out,
        )
        yield CounterMetricFamily(
            "linkd_fanout_publishes",
            "Emits and broadcasts (one per publish, whatever the number of recipients)",
            value=self.fanout_publishes,
        )
        yield CounterMetricFamily(
            "linkd_fanout_deliveries",
            "Messages queued to connections by emits and broadcasts",
            value=self.fanout_deliveries,
        )
        yield _histogram(
            "linkd_fanout_latency_seconds",
            "From a publish reaching the engine to the write of its last frame",
            [((), self.fanout_latency)],
        )
        yield _histogram(
            "linkd_ipc_request_latency_seconds",
            "Round trip of a request to a service worker, by service",
            [((name,), h) for name, h in sorted(self.ipc_latency.items())],
            labels=["service"],
        )
        ipc_errors = CounterMetricFamily(
            "linkd_ipc_request_errors",
            "Requests to service workers that failed or were answered with an error, by service",
            labels=["service"],
        )
        for name, n in sorted(self.ipc_errors.items()):
            ipc_errors.add_metric([name], n)
        yield ipc_errors
        yield CounterMetricFamily(
            "linkd_broker_fallback_events",
            "Events delivered to this node only (unnumbered) because Redis was unreachable",
            value=self.broker_fallbacks,
        )
        recoveries = CounterMetricFamily(
            "linkd_recoveries",
            "Stream recoveries of reconnecting clients, by outcome (complete, incomplete)",
            labels=["outcome"],
        )
        for outcome, n in sorted(self.recoveries.items()):
            recoveries.add_metric([outcome], n)
        yield recoveries
        yield CounterMetricFamily(
            "linkd_recovered_events",
            "Missed events replayed to reconnecting clients",
            value=self.recovered_events,
        )
        workers = GaugeMetricFamily(
            "linkd_service_workers", "Live workers by service", labels=["service"]
        )
        if self.workers_source is not None:
            for name, n in sorted(self.workers_source().items()):
                workers.add_metric([name], n)
        yield workers
        yield CounterMetricFamily(
            "linkd_ws_messages_sent",
            "WebSocket messages queued to clients",
            value=self.ws_messages_out,
        )
        closes = CounterMetricFamily(
            "linkd_ws_closes", "WebSocket connections closed, by close code", labels=["code"]
        )
        for code, n in sorted(self.ws_closes.items()):
            closes.add_metric([str(code)], n)
        yield closes
        yield CounterMetricFamily(
            "linkd_slow_consumers",
            "Connections closed with 1013 because their outbound buffer passed its cap",
            value=self.slow_consumers,
        )
        events = CounterMetricFamily(
            "linkd_slow_consumer_events",
            "Slow-consumer policy firings, by policy (lossy ones once per episode)",
            labels=["policy"],
        )
        for label, n in sorted(self.slow_consumer_events.items()):
            events.add_metric([label], n)
        yield events
        shed = CounterMetricFamily(
            "linkd_shed_messages",
            "Messages dropped (drop_oldest) or replaced by a newer one (conflate)",
            labels=["policy"],
        )
        for label, n in sorted(self.shed_messages.items()):
            shed.add_metric([label], n)
        yield shed
        yield CounterMetricFamily(
            "linkd_dropped_messages",
            "Messages not delivered because the connection was closing or too slow",
            value=self.dropped_messages,
        )
        yield CounterMetricFamily(
            "linkd_ws_rate_limited_messages",
            "Inbound WebSocket messages refused by a rate limit",
            value=self.ws_rate_limited,
        )
        yield CounterMetricFamily(
            "linkd_ws_abuse_closes",
            "WebSocket connections closed with 1008 for sustained rate-limit abuse "
            "(refused messages, or frames over --ws-frame-rate)",
            value=self.ws_abuse_closes,
        )
        yield CounterMetricFamily(
            "linkd_ws_throttled",
            "Times a raw WebSocket endpoint stopped reading a connection over its message rate",
            value=self.ws_throttled,
        )
        yield CounterMetricFamily(
            "linkd_ws_joins_refused",
            "Room joins refused because the connection was in --max-rooms-per-connection rooms",
            value=self.ws_joins_refused,
        )
        yield CounterMetricFamily(
            "linkd_ws_replayed_acks",
            "Acks of a repeated message id answered from memory (the handler did not run again)",
            value=self.ws_replayed_acks,
        )
        refused = CounterMetricFamily(
            "linkd_ws_refused_connections",
            "Connections and upgrades refused before they were served, by reason (global, per_ip, "
            "rate, per_user, origin, proxy_header)",
            labels=["reason"],
        )
        for reason, n in sorted(self.ws_refused.items()):
            refused.add_metric([reason], n)
        yield refused

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _histogram(
    name: str,
    documentation: str,
    series: list[tuple[tuple[str, ...], Histogram]],
    labels: list[str] | None = None,
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels or [])
    for values, histogram in series:
        family.add_metric(list(values), histogram.cumulative(), histogram.sum)
    return family
