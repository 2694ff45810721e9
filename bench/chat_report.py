"""The tables of ``bench/chat.py``: per server and phase, then the ratios between servers.

``summarize`` turns one load report and the server's pids into result rows; ``table``
and ``ratio_table`` print them as Markdown (pasted in bench/README.md); ``ratios``
compares every server with each baseline (python-socketio and Node's socket.io).
"""

from __future__ import annotations

import math
from typing import Any

from .cli import ms as _ms
from .cli import num as _num

__all__ = ["BASELINES", "LOAD_BOUND", "ratio_table", "ratios", "summarize", "table", "verdict"]

BASELINES = ("socketio", "node")
#: Load CPU (% of one core) above which a run is flagged load-bound.
LOAD_BOUND = 90.0


def summarize(
    server: str, report: dict[str, Any], room_size: int, server_cpu: int | None
) -> list[dict[str, Any]]:
    """One row per phase: throughput, latency, CPU per message, flags."""
    rows = []
    for phase in report["phases"]:
        cpu_s = phase["cpu_seconds"]
        server_s = sum(s for name, s in cpu_s.items() if name != "load")
        percent = phase["cpu_percent"]
        server_pct = sum(p for name, p in percent.items() if name != "load")
        acks = phase["acks"]
        busy = phase["core_busy_percent"]
        other = math.nan
        if server_cpu is not None and server_cpu < len(busy):
            other = busy[server_cpu] - server_pct
        load_pct = percent.get("load", math.nan)
        expected = acks * room_size
        rows.append(
            {
                "server": server,
                **phase,
                "server_cpu_percent": server_pct,
                "server_cpu_percent_by_process": {n: p for n, p in percent.items() if n != "load"},
                "load_cpu_percent": load_pct,
                "other_cpu_percent_on_server_core": other,
                "cpu_us_per_message": 1e6 * server_s / acks if acks else math.nan,
                "cpu_us_per_delivery": (
                    1e6 * server_s / phase["deliveries"] if phase["deliveries"] else math.nan
                ),
                "kept_up": phase["deliveries"] / expected if expected else math.nan,
                "load_bound": load_pct >= LOAD_BOUND,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| server | phase | sent/s | acked msg/s | deliveries/s | ack p50 ms | ack p99 ms "
        "| delivery p50 ms | delivery p99 ms | server CPU % | µs/msg | load CPU % "
        "| other on server core % | kept up | errors |"
    )
    lines = [head, "|" + "---|" * 15]
    for r in rows:
        ack, dl = r["ack_latency_ms"], r["delivery_latency_ms"]
        flag = " (load ≥ 90 %)" if r["load_bound"] else ""
        phase = r["phase"] if r["phase"] == "rate" else f"saturation W={r['window']}"
        lines.append(
            f"| {r['server']} | {phase} | {_num(r['sent_per_s'])} | {_num(r['acks_per_s'])} "
            f"| {_num(r['deliveries_per_s'])} | {_ms(ack['p50'])} | {_ms(ack['p99'])} "
            f"| {_ms(dl['p50'])} | {_ms(dl['p99'])} | {_num(r['server_cpu_percent'])} "
            f"| {_num(r['cpu_us_per_message'])} | {_num(r['load_cpu_percent'])}{flag} "
            f"| {_num(r['other_cpu_percent_on_server_core'])} | {r['kept_up']:.3f} "
            f"| {r['errors'] + r['unanswered_at_end']} |"
        )
    return "\n".join(lines)


def _row(rows: list[dict[str, Any]], server: str, phase: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["server"] == server and r["phase"] == phase), None)


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each server ÷ each baseline: saturation throughput, fixed-rate p99s, CPU/msg."""
    servers = list(dict.fromkeys(r["server"] for r in rows))
    out = []
    for base in BASELINES:
        for server in servers:
            if server == base or base not in servers:
                continue
            sat, bsat = _row(rows, server, "saturation"), _row(rows, base, "saturation")
            rate, brate = _row(rows, server, "rate"), _row(rows, base, "rate")
            entry: dict[str, Any] = {"server": server, "baseline": base}
            if sat and bsat:
                entry["acked_per_s"] = _div(sat["acks_per_s"], bsat["acks_per_s"])
                entry["deliveries_per_s"] = _div(sat["deliveries_per_s"], bsat["deliveries_per_s"])
                # Baseline ÷ server: what the throughput ratio would be if both were CPU-bound.
                entry["cpu_per_message"] = _div(
                    bsat["cpu_us_per_message"], sat["cpu_us_per_message"]
                )
            if rate and brate:
                entry["ack_p99"] = _div(
                    rate["ack_latency_ms"]["p99"], brate["ack_latency_ms"]["p99"]
                )
                entry["delivery_p99"] = _div(
                    rate["delivery_latency_ms"]["p99"], brate["delivery_latency_ms"]["p99"]
                )
            out.append(entry)
    return out


def ratio_table(entries: list[dict[str, Any]]) -> str:
    lines = [
        "| server ÷ baseline | acked msg/s (saturation) | deliveries/s (saturation) "
        "| ack p99 (rate) | delivery p99 (rate) | CPU per message, baseline ÷ server |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:

        def x(key: str, entry: dict[str, Any] = e) -> str:
            value = entry.get(key, math.nan)
            return "-" if math.isnan(value) else f"{value:.2f}x"

        lines.append(
            f"| {e['server']} ÷ {e['baseline']} | {x('acked_per_s')} | {x('deliveries_per_s')} "
            f"| {x('ack_p99')} | {x('delivery_p99')} | {x('cpu_per_message')} |"
        )
    return "\n".join(lines)


def verdict(entries: list[dict[str, Any]]) -> str | None:
    """Issue 14's target: linkd ≥ 3x python-socketio at saturation and a lower p99."""
    e = next((e for e in entries if e["server"] == "linkd" and e["baseline"] == "socketio"), None)
    if e is None or "acked_per_s" not in e or "ack_p99" not in e:
        return None
    throughput = e["acked_per_s"] >= 3.0
    p99 = e["ack_p99"] < 1.0 and e["delivery_p99"] < 1.0
    return (
        f"target (>= 3x python-socketio at saturation, lower p99 at the fixed rate): "
        f"throughput {e['acked_per_s']:.2f}x {'met' if throughput else 'NOT met'}; "
        f"p99 ack {e['ack_p99']:.2f}x, delivery {e['delivery_p99']:.2f}x "
        f"{'met' if p99 else 'NOT met'}"
    )
