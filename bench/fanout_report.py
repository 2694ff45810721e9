"""Tables, ratios, targets and charts of ``bench/fanout.py`` (from its result dicts).

``table`` and ``idle_table`` are the Markdown printed on stdout and pasted into
``bench/README.md``; ``ratios`` divides linkd (and linkd-inproc) by each peer at the
same scenario and size; ``targets`` checks the goals of issue 4; ``plot`` writes PNG
charts with matplotlib's Agg backend.
"""

from __future__ import annotations

import contextlib
import math
from importlib import metadata
from pathlib import Path
from typing import Any

from .cli import ms as _ms
from .cli import num as _num
from .ipc import _git as git
from .ipc import machine as _machine

__all__ = ["git", "idle_table", "machine", "plot", "ratio_table", "ratios", "table", "targets"]

LINKD = ("linkd", "linkd-inproc")
PEERS = ("websockets", "picows")


def machine() -> dict[str, Any]:
    """``bench.ipc.machine()`` plus the fan-out bench's packages."""
    facts = _machine()
    for name in ("websockets", "picows", "uvloop", "orjson", "psutil", "matplotlib", "tqdm"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            facts["versions"][name] = metadata.version(name)
    facts["git_dirty"] = git("status", "--porcelain").splitlines()
    return facts


def case_label(r: dict[str, Any]) -> str:
    if r["scenario"] == "rate":
        return f"rate {r['subscribers']:,}x{r['rate']:g}/s"
    return f"{r['scenario']} {r['subscribers']:,}"


def _writes(value: float | None) -> str:
    # picows writes with send(2), which /proc/PID/io does not count as a write.
    return "n/a" if value is None or not value > 0.005 else f"{value:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    """Load scenarios: one row per server and case."""
    head = (
        "| case | server | deliveries/s | publishes/s | p50 ms | p99 ms | p99.9 ms | max ms "
        "| lost | errors | server CPU % | server µs/delivery | server writes/delivery "
        "| other on server core % | load CPU % | kept up % | note |"
    )
    rows = [head, "|" + "---|" * 17]
    for r in results:
        if r["scenario"] == "idle":
            continue
        label = case_label(r)
        if r.get("skipped"):
            rows.append(f"| {label} | {r['server']} |" + " n/a |" * 14 + f" {r['skipped']} |")
            continue
        lat = r["latency_ms"]
        notes = []
        if r["lagging"]:
            notes.append("**lagging: load-bound**")
        elif r["load_bound"]:
            notes.append("load ≥ 90 %")
        if r["scenario"] == "deflate":
            notes.append(f"{100 * r['compressed_fraction']:.0f} % compressed")
        if r.get("extra_envelope_keys"):
            keys = "/".join(r["extra_envelope_keys"])
            notes.append(f"message {r['message_bytes']} B (+{keys})")
        rows.append(
            f"| {label} | {r['server']} | {_num(r['deliveries_per_s'])} "
            f"| {_num(r['publishes_per_s'])} | {_ms(lat['p50'])} | {_ms(lat['p99'])} "
            f"| {_ms(lat['p99.9'])} | {_ms(lat['max'])} | {r['lost']:,} | {r['error_count']} "
            f"| {_num(r['server_cpu_percent'])} | {_num(r['server_us_per_delivery'], 1)} "
            f"| {_writes(r.get('server_write_syscalls_per_delivery'))} "
            f"| {_num(r.get('other_cpu_percent_on_server_core'))} "
            f"| {_num(r['load_cpu_percent'])} | {_num(100 * r['kept_up'])} | {', '.join(notes)} |"
        )
    return "\n".join(rows)


def idle_table(results: list[dict[str, Any]]) -> str:
    head = (
        "| idle connections | server | RSS before MiB | RSS after MiB | KiB/conn (all processes) "
        "| KiB/conn (main process only) |"
    )
    rows = [head, "|" + "---|" * 6]
    for r in results:
        if r["scenario"] != "idle":
            continue
        rows.append(
            f"| {r['subscribers']:,} | {r['server']} | {r['rss_before_total'] / 2**20:.1f} "
            f"| {r['rss_after_total'] / 2**20:.1f} | {r['kib_per_conn']:.2f} "
            f"| {r['kib_per_conn_main']:.2f} |"
        )
    return "\n".join(rows)


def _metric(r: dict[str, Any]) -> tuple[str, float] | None:
    """The number a case is judged by: (name, value)."""
    if r.get("skipped"):
        return None
    if r["scenario"] in ("saturation", "deflate", "tls"):
        return "deliveries/s", r["deliveries_per_s"]
    if r["scenario"] == "rate":
        return "p99", r["latency_ms"]["p99"]
    return "KiB/conn", r["kib_per_conn"]


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """linkd / peer on the case's metric (deliveries/s: higher is better; else lower)."""
    out = []
    for r in results:
        if r["server"] not in LINKD:
            continue
        mine = _metric(r)
        row: dict[str, Any] = {"case": case_label(r), "server": r["server"]}
        row["metric"] = mine[0] if mine else "-"
        for peer in PEERS:
            other = next(
                (
                    p
                    for p in results
                    if p["server"] == peer
                    and p["scenario"] == r["scenario"]
                    and p["subscribers"] == r["subscribers"]
                    and p.get("rate") == r.get("rate")
                ),
                None,
            )
            theirs = _metric(other) if other is not None else None
            row[peer] = mine[1] / theirs[1] if mine and theirs and theirs[1] else None
            # CPU per delivery, theirs / ours: the throughput ratio if both were CPU-bound.
            row[f"{peer}_cpu"] = (
                other["server_us_per_delivery"] / r["server_us_per_delivery"]
                if other is not None
                and not other.get("skipped")
                and not r.get("skipped")
                and "server_us_per_delivery" in r
                else None
            )
        out.append(row)
    return out


def ratio_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | metric | linkd server | ÷ websockets | ÷ picows "
        "| CPU/delivery websockets ÷ linkd | CPU/delivery picows ÷ linkd |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        keys = [*PEERS, *(f"{p}_cpu" for p in PEERS)]
        cells = ["n/a" if r.get(k) is None else f"{r[k]:.2f}x" for k in keys]
        lines.append(f"| {r['case']} | {r['metric']} | {r['server']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 4's goals for the ``linkd`` column, each with the measured ratio/value."""

    def find(server: str, scenario: str, n: int, rate: float | None = None) -> Any:
        return next(
            (
                r
                for r in results
                if r["server"] == server
                and r["scenario"] == scenario
                and r["subscribers"] == n
                and (rate is None or r.get("rate") == rate)
                and not r.get("skipped")
            ),
            None,
        )

    goals: list[dict[str, Any]] = []

    def ratio(goal: str, a: Any, b: Any, key: Any, bound: float, higher: bool) -> None:
        if a is None or b is None:
            return
        value = key(a) / key(b) if key(b) else math.nan
        met = value >= bound if higher else value <= bound
        goals.append({"goal": goal, "value": f"{value:.2f}x", "met": bool(met)})

    def deliveries(r: Any) -> float:
        return float(r["deliveries_per_s"])

    def p99(r: Any) -> float:
        return float(r["latency_ms"]["p99"])

    for server in LINKD:
        for peer, bound in (("picows", 1.5), ("websockets", 2.5)):
            ratio(
                f"{server} saturation 1,000 ≥ {bound}x {peer}",
                find(server, "saturation", 1000),
                find(peer, "saturation", 1000),
                deliveries,
                bound,
                True,
            )
        ratio(
            f"{server} deflate 1,000 ≥ 3x websockets",
            find(server, "deflate", 1000),
            find("websockets", "deflate", 1000),
            deliveries,
            3.0,
            True,
        )
        for n, rate in ((1000, 20.0), (5000, 4.0)):
            ratio(
                f"{server} rate {n:,}x{rate:g}/s p99 ≤ 1.2x picows",
                find(server, "rate", n, rate),
                find("picows", "rate", n, rate),
                p99,
                1.2,
                False,
            )
        idle = find(server, "idle", 10000) or find(server, "idle", 1000)
        if idle is not None:
            value = idle["kib_per_conn"]
            goals.append(
                {
                    "goal": f"{server} idle {idle['subscribers']:,}: ≤ 5 KiB per connection",
                    "value": f"{value:.2f} KiB",
                    "met": bool(value <= 5),
                }
            )
    return goals


def plot(results: list[dict[str, Any]], stem: Path) -> list[Path]:
    """Throughput, latency and memory charts: ``<stem>-{throughput,latency,memory}.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    servers = [s for s in (*LINKD, *PEERS) if any(r["server"] == s for r in results)]
    written: list[Path] = []

    def bars(ax: Any, cases: list[str], value: Any, ylabel: str, log: bool = False) -> None:
        width = 0.8 / max(len(servers), 1)
        for i, server in enumerate(servers):
            heights = []
            for case in cases:
                r = next(
                    (
                        r
                        for r in results
                        if r["server"] == server and case_label(r) == case and not r.get("skipped")
                    ),
                    None,
                )
                heights.append(value(r) if r is not None else 0.0)
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(cases))]
            ax.bar(xs, heights, width, label=server)
        ax.set_xticks(range(len(cases)), cases, rotation=15)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.legend()
        ax.grid(axis="y", alpha=0.3)

    load = [r for r in results if r["scenario"] in ("saturation", "deflate")]
    if load:
        cases = list(dict.fromkeys(case_label(r) for r in load))
        fig, ax = plt.subplots(figsize=(10, 5))
        bars(ax, cases, lambda r: r["deliveries_per_s"], "deliveries / s")
        ax.set_title("Fan-out at saturation (one room, publisher K in flight)")
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "-throughput.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    rate = [r for r in results if r["scenario"] == "rate"]
    if rate:
        cases = list(dict.fromkeys(case_label(r) for r in rate))
        fig, axes = plt.subplots(1, 3, figsize=(15, 5))
        for ax, q in zip(axes, ("p50", "p99", "p99.9"), strict=True):
            bars(ax, cases, lambda r, q=q: r["latency_ms"][q], f"{q} latency, ms", log=True)
            ax.set_title(f"Per-delivery latency {q}")
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "-latency.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    idle = [r for r in results if r["scenario"] == "idle"]
    if idle:
        fig, ax = plt.subplots(figsize=(8, 5))
        for server in servers:
            points = sorted(
                (r["subscribers"], r["kib_per_conn"]) for r in idle if r["server"] == server
            )
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=server)
        ax.set_xscale("log")
        ax.set_xlabel("idle connections")
        ax.set_ylabel("server RSS growth, KiB per connection")
        ax.axhline(5, color="grey", linestyle="--", linewidth=1, label="target (linkd) 5 KiB")
        ax.legend()
        ax.grid(alpha=0.3)
        ax.set_title("Memory per idle connection")
        fig.tight_layout()
        written.append(stem.with_name(stem.name + "-memory.png"))
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
