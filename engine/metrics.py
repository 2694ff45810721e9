"""Engine metrics on a private prometheus-client registry.

One registry per Engine, so tests and embedders can run several engines in one
process. Counters on the per-message path are plain integer attributes, read by a
custom collector at scrape time: a prometheus ``Counter.inc()`` takes a lock, which
is too much to pay per delivered frame.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .slow import Policy

__all__ = ["Metrics"]


class Metrics(Collector):
    """Counters and gauges of one engine; attributes are bumped directly by the shell."""

    def __init__(self) -> None:
        self.http_open = 0
        self.ws_open = 0
        self.http_requests: dict[int, int] = {}
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
        #: WebSocket upgrades refused by a connection cap, by reason.
        self.ws_refused: dict[str, int] = {"per_ip": 0, "rate": 0, "global": 0}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def count_request(self, status: int) -> None:
        self.http_requests[status] = self.http_requests.get(status, 0) + 1

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
        reqs = CounterMetricFamily(
            "linkd_http_requests", "HTTP responses sent, by status", labels=["status"]
        )
        for status, n in sorted(self.http_requests.items()):
            reqs.add_metric([str(status)], n)
        yield reqs
        yield CounterMetricFamily(
            "linkd_ws_messages_received", "WebSocket messages received", value=self.ws_messages_in
        )
        yield CounterMetricFamily(
            "linkd_ws_bytes_received", "WebSocket message bytes received", value=self.ws_bytes_in
        )
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
            "WebSocket connections closed with 1008 for sustained rate-limit abuse",
            value=self.ws_abuse_closes,
        )
        refused = CounterMetricFamily(
            "linkd_ws_refused_connections",
            "WebSocket upgrades refused by a connection cap, by reason (per_ip, rate, global)",
            labels=["reason"],
        )
        for reason, n in sorted(self.ws_refused.items()):
            refused.add_metric([reason], n)
        yield refused

    def render(self) -> bytes:
        return generate_latest(self.registry)
