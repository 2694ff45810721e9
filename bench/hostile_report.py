"""Rows, bounds, verdicts and the Markdown tables of ``bench/hostile.py``.

The RSS bound of an attack window is what the engine's configured limits allow the
attacker to hold: ``--rss-slack`` MiB (allocator and interpreter noise) plus, per
connection the attacker keeps open at once, either an *active* budget (it sends data:
``--max-header-size`` + ``--max-message-size`` + ``--max-outbound-buffer``, about
5 MiB with the defaults) or an *idle* budget (it only connects or trickles a request:
``--max-header-size`` + the transport's write high-water mark, 80 KiB). The verdict
compares the growth during the attack and its cooldown (the peak minus the RSS when the
attack started), so that memory an earlier attack left behind is not charged to the
next one; the growth over the baseline's peak is shown beside it. The cooldown counts:
an engine still working through what the attacker left behind (the pipelined requests
of defect 1) grows after the attacker is gone.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from protocol.limits import Limits

from .cli import ms as _ms

__all__ = ["after_table", "build_rows", "phase_bound", "table"]

MIB = 1 << 20
#: Close codes that mean "refused as the design table says" (docs/clients.md).
_REFUSAL_CODES = {"1002", "1003", "1007", "1008", "1009"}
#: The upgrade itself refused by a per-address limit: the attack never got a socket.
_UPGRADE_REFUSED = {"upgrade 429", "upgrade 503"}


def _budgets(args: argparse.Namespace) -> tuple[int, int]:
    active = args.max_header_size + args.max_message_size + args.max_outbound_buffer
    idle = args.max_header_size + Limits().write_high_water
    return active, idle


def phase_bound(attack: str, setup: str, args: argparse.Namespace) -> float:
    """MiB the engine may grow by during ``attack`` (see the module docstring)."""
    active, idle = _budgets(args)
    held = {
        "pipeline": (args.pipeline_connections, active),
        "fragments": (1, active),
        "ping-flood": (1, active),
        "slowloris": (args.slowloris_connections, idle),
        "garbage": (4, active),
        "slow-reader": (args.slow_readers + (1 if setup == "service" else 0), active),
        "conn-flood": (args.flood_connections, idle),
        "smuggling": (8, active),
        "bad-tokens": (4, active),
    }
    n, budget = held[attack]
    return float(args.rss_slack + n * budget / MIB)


def _log_stats(log: bytes, secrets: list[str]) -> dict[str, int]:
    lines = log.splitlines()
    encoded = [s.encode() for s in secrets]
    return {
        "lines": len(lines),
        "tracebacks": sum(1 for line in lines if line.startswith(b"Traceback")),
        "lines_with_a_token": sum(1 for line in lines if any(s in line for s in encoded)),
    }


def _wanted(attack: str, result: dict[str, Any], log: dict[str, int], args: Any) -> str:
    """Did the engine refuse the attack the way the issue wants? ``-``: no rule."""
    if "failed" in result:
        return "attacker failed"
    if attack == "fragments":
        bad = sorted(k for k in result["outcomes"] if k not in _REFUSAL_CODES and k != "cut off")
        return "yes" if not bad else "no: " + ", ".join(bad)
    if attack == "slowloris":
        still = sum(c.get("still open", 0) for c in result["outcomes"].values())
        return "yes" if not still else f"no: {still} still open"
    if attack == "garbage":
        bad = sorted(
            f"{kind}→{outcome}"
            for kind, counts in result["outcomes"].items()
            for outcome in counts
            if outcome not in _REFUSAL_CODES | _UPGRADE_REFUSED
            and outcome not in ("cut off", "answered, kept open")
        )
        return "yes" if not bad else "no: " + ", ".join(bad[:4]) + (" …" if len(bad) > 4 else "")
    if attack == "conn-flood":
        cap = args.max_connections
        ok = result["peak_open"] <= cap
        return "yes" if ok else f"no: {result['peak_open']:,} open > --max-connections {cap:,}"
    if attack == "smuggling":
        bad = result["variants_not_refused"]
        return "yes" if not bad else f"no: {len(bad)}/{len(result['outcomes'])} variants"
    if attack == "bad-tokens":
        problems = []
        if result["variants_not_401"]:
            problems.append("not 401: " + ", ".join(result["variants_not_401"]))
        if log["tracebacks"]:
            problems.append(f"{log['tracebacks']:,} tracebacks")
        if log["lines_with_a_token"]:
            problems.append(f"{log['lines_with_a_token']:,} log lines with a token")
        return "yes" if not problems else "no: " + "; ".join(problems)
    return "-"


def _window(run: dict[str, Any], i: int) -> dict[str, Any] | None:
    marks = run["marks"]
    if i + 1 >= len(marks):
        return None  # the engine died before this window
    start, end = marks[i], marks[i + 1]
    rss = [s[2] for s in run["samples"] if s[1] == i] or [start["rss"]]
    wall = end["t"] - start["t"]
    return {
        "seconds": wall,
        "engine_cpu_percent": 100 * (end["engine_cpu_s"] - start["engine_cpu_s"]) / wall,
        "clients_cpu_percent": 100 * (end["clients_cpu_s"] - start["clients_cpu_s"]) / wall,
        "workers_cpu_percent": 100 * (end["workers_cpu_s"] - start["workers_cpu_s"]) / wall,
        # Busy time of the engine's core not spent by the engine or its workers: other
        # jobs of a shared machine, which move latency as much as any attack.
        "other_cpu_percent_on_engine_core": math.nan
        if not start["core_busy_s"]
        else 100
        * (
            (end["core_busy_s"] - start["core_busy_s"])
            - (end["engine_cpu_s"] - start["engine_cpu_s"])
            - (end["workers_cpu_s"] - start["workers_cpu_s"])
        )
        / wall,
        "rss_start_mib": start["rss"] / MIB,
        "rss_peak_mib": max(rss) / MIB,
        "rss_end_mib": end["rss"] / MIB,
        "workers_rss_end_mib": end["workers_rss"] / MIB,
        "log": (start["log_offset"], end["log_offset"]),
    }


def build_rows(
    runs: list[dict[str, Any]], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    after: list[dict[str, Any]] = []
    for run in runs:
        cw = run["clients"]["windows"]
        base = _window(run, 0)
        base_p99 = cw[0]["latency_ms"]["p99"]
        base_peak = base["rss_peak_mib"] if base else math.nan
        for i, name in enumerate(run["windows"]):
            if name.endswith(" after"):
                continue
            w = _window(run, i)
            c = cw[i]
            row: dict[str, Any] = {
                "setup": run["setup"],
                "phase": name,
                "latency_ms": c["latency_ms"],
                "p99_ratio": c["latency_ms"]["p99"] / base_p99 if base_p99 else math.nan,
                "health_ms": c["health_latency_ms"],
                "health_errors": c["health_errors"],
                "sent": c["sent"] + c["fanout_expected"],
                "received": c["received"] + c["fanout_received"],
                "lost": c["lost"] + c["fanout_lost"],
                "fanout": {k: c[k] for k in c if k.startswith("fanout")},
                "disconnects": c["disconnects"],
                "close_codes": c["close_codes"],
                "window": w,
            }
            if w is None:
                row.update(verdict="FAIL: engine died", attacker="-", wanted="-", bound_mib=None)
                rows.append(row)
                continue
            # The attack's cost includes what the engine does after the attacker left.
            later = _window(run, i + 1) if name != "baseline" and i + 1 < len(cw) else None
            peak = max(w["rss_peak_mib"], later["rss_peak_mib"] if later else 0.0)
            row["rss_peak_mib"] = peak
            row["rss_growth_mib"] = peak - w["rss_start_mib"]
            row["rss_over_baseline_mib"] = peak - base_peak
            if name == "baseline":
                row.update(attacker="-", wanted="-", bound_mib=None, verdict="baseline")
                rows.append(row)
                continue
            result = run["attacks"].get(name, {"summary": "no result", "failed": "none"})
            end = run["marks"][min(i + 2, len(run["marks"]) - 1)]["log_offset"]
            log = _log_stats(run["log"][w["log"][0] : end], result.get("secrets", []))
            bound = phase_bound(name, run["setup"], args)
            problems = []
            if not c["latency_ms"]["p99"] <= 2 * base_p99:
                problems.append(f"p99 {row['p99_ratio']:.1f}x")
            if row["lost"]:
                problems.append(f"{row['lost']:,} lost")
            if row["disconnects"]:
                problems.append(f"{row['disconnects']} clients closed")
            if row["rss_growth_mib"] > bound:
                problems.append(f"RSS +{row['rss_growth_mib']:.0f} MiB")
            row.update(
                attacker=result.get("summary", "-"),
                attack_result=result,
                engine_log=log,
                wanted=_wanted(name, result, log, args),
                bound_mib=bound,
                verdict="ok" if not problems else "FAIL: " + ", ".join(problems),
            )
            rows.append(row)
            aw = _window(run, i + 1) if i + 1 < len(cw) else None
            ac = cw[i + 1] if i + 1 < len(cw) else None
            if aw is not None and ac is not None:
                after.append(
                    {
                        "setup": run["setup"],
                        "phase": name,
                        "latency_ms": ac["latency_ms"],
                        "health_ms": ac["health_latency_ms"],
                        "lost": ac["lost"] + ac["fanout_lost"],
                        "rss_end_mib": aw["rss_end_mib"],
                        "rss_retained_mib": aw["rss_end_mib"] - base_peak,
                        "engine_cpu_percent": aw["engine_cpu_percent"],
                        "seconds": aw["seconds"],
                        "health_fast_after_s": run["recovery_s"].get(name),
                    }
                )
    return rows, after


def _mib(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| setup | phase | p50 ms | p99 ms | p99 ÷ base | /health max ms | sent | received "
        "| lost | clients closed | engine CPU % | peak RSS MiB | RSS + attack MiB "
        "| RSS + over base MiB | bound MiB | attacker got | refused as wanted | verdict |"
    )
    lines = [head, "|" + "---|" * 18]
    for r in rows:
        w = r["window"] or {}
        ratio = "-" if r["phase"] == "baseline" else f"{r['p99_ratio']:.2f}x"
        bound = "-" if r["bound_mib"] is None else f"{r['bound_mib']:.0f}"
        lines.append(
            f"| {r['setup']} | {r['phase']} | {_ms(r['latency_ms']['p50'])} "
            f"| {_ms(r['latency_ms']['p99'])} | {ratio} | {_ms(r['health_ms']['max'])} "
            f"| {r['sent']:,} | {r['received']:,} | {r['lost']:,} | {r['disconnects']} "
            f"| {w.get('engine_cpu_percent', math.nan):.0f} "
            f"| {r.get('rss_peak_mib', math.nan):.1f} | {_mib(r.get('rss_growth_mib'))} "
            f"| {_mib(r.get('rss_over_baseline_mib'))} | {bound} | {r['attacker']} "
            f"| {r['wanted']} | {r['verdict']} |"
        )
    return "\n".join(lines)


def after_table(after: list[dict[str, Any]], limit: float) -> str:
    lines = [
        "| setup | after phase | /health fast again after s | window s | p99 ms "
        "| /health max ms | lost | engine CPU % | RSS at end MiB | RSS retained over base MiB |",
        "|" + "---|" * 10,
    ]
    for a in after:
        fast = a["health_fast_after_s"]
        recovered = f"> {limit:.0f}" if fast is None else f"{fast:.1f}"
        lines.append(
            f"| {a['setup']} | {a['phase']} | {recovered} | {a['seconds']:.1f} "
            f"| {_ms(a['latency_ms']['p99'])} "
            f"| {_ms(a['health_ms']['max'])} | {a['lost']:,} | {a['engine_cpu_percent']:.0f} "
            f"| {a['rss_end_mib']:.1f} | {_mib(a['rss_retained_mib'])} |"
        )
    return "\n".join(lines)
