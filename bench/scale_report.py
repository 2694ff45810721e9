"""Tables, ratios and targets of ``bench/scale.py`` (from its result dicts).

``table`` is the Markdown printed on stdout and pasted into ``bench/README.md``;
``ratios`` gives, per server, the cost per delivery at each size over the smallest, and
linkd against each other server at the same size; ``targets`` checks issue 14's goals.
"""

from __future__ import annotations

from typing import Any

from .cli import ms as _ms
from .cli import num as _num

__all__ = ["ratio_table", "ratios", "table", "targets"]

LINKD = "linkd"
#: Issue 14: the cost per delivery from 1 000 to 50 000 members grows by at most this.
COST_GROWTH_BOUND = 1.5
#: Issue 14: RSS per idle connection at 10 000, KiB.
IDLE_KIB_BOUND = 4.0
IDLE_AT = 10_000


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| members | server | connect s | conn/s | idle KiB/conn (main) | RSS after MiB "
        "| last member ms (min-max) | p50 ms | p99 ms | deliveries/s | server CPU % "
        "| server µs/delivery | load CPU % | kept up % | lost | errors | note |"
    )
    rows = [head, "|" + "---|" * 17]
    for r in results:
        procs = r.get("server_processes", 1)
        server = f"{r['server']} ({procs} processes + Redis)" if procs > 1 else r["server"]
        label = f"| {r['members']:,} | {server} |"
        if "skipped" in r:
            rows.append(label + " n/a |" * 14 + f" {r['skipped']} |")
            continue
        if "failed" in r or "saturation" not in r:
            why = r.get("failed") or r.get("error") or "incomplete"
            rows.append(label + " - |" * 14 + f" **failed**: {why} |")
            continue
        c, idle, single, sat = r["connect"], r["idle"], r["single"], r["saturation"]
        errors = sum(sat["errors"].values()) + sum(
            sum(run["errors"].values()) for run in single["runs"]
        )
        notes = []
        if sat["lagging"]:
            notes.append("**lagging: load-bound**")
        elif sat["load_bound"]:
            notes.append("load ≥ 90 %")
        if not single["all_complete"]:
            notes.append("a single publish did not reach every member")
        rss_after = sum(idle["rss_after"].values()) / 2**20
        rows.append(
            label
            + f" {c['connect_s']:.1f} | {_num(c['connect_per_s'])} |"
            + f" {idle['kib_per_conn']:.2f} ({idle['kib_per_conn_main']:.2f}) |"
            + f" {rss_after:,.1f} |"
            + f" {_ms(single['last_ms_median'])} ({_ms(single['last_ms_min'])}-"
            + f"{_ms(single['last_ms_max'])}) |"
            + f" {_ms(single['p50_ms_median'])} | {_ms(single['p99_ms_median'])} |"
            + f" {_num(sat['deliveries_per_s'])} | {_num(sat['server_cpu_percent'])} |"
            + f" {_num(sat['server_us_per_delivery'], 2)} | {_num(sat['load_cpu_percent'])} |"
            + f" {_num(100 * sat['kept_up'])} | {sat['lost']} | {errors} |"
            + f" {', '.join(notes)} |"
        )
    return "\n".join(rows)


def _ok(r: dict[str, Any]) -> bool:
    return "failed" not in r and "saturation" in r


def _cost(r: dict[str, Any]) -> float:
    return float(r["saturation"]["server_us_per_delivery"])


def ratios(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Cost growth per server (size ÷ smallest size) and linkd ÷ the others per size."""
    ok = [r for r in results if _ok(r)]
    growth: list[dict[str, Any]] = []
    for name in dict.fromkeys(r["server"] for r in ok):
        runs = sorted((r for r in ok if r["server"] == name), key=lambda r: r["members"])
        base = runs[0]
        for r in runs[1:]:
            growth.append(
                {
                    "server": name,
                    "members": r["members"],
                    "base_members": base["members"],
                    "cost_per_delivery": _cost(r) / _cost(base),
                    "last_member_time": r["single"]["last_ms_median"]
                    / base["single"]["last_ms_median"],
                }
            )
    versus: list[dict[str, Any]] = []
    for r in ok:
        if r["server"] != LINKD:
            continue
        for peer in ok:
            if peer["server"] == LINKD or peer["members"] != r["members"]:
                continue
            versus.append(
                {
                    "members": r["members"],
                    "peer": peer["server"],
                    "deliveries_per_s": r["saturation"]["deliveries_per_s"]
                    / peer["saturation"]["deliveries_per_s"],
                    "peer_cost_over_linkd": _cost(peer) / _cost(r),
                    "last_member_time": r["single"]["last_ms_median"]
                    / peer["single"]["last_ms_median"],
                    "idle_kib_per_conn": r["idle"]["kib_per_conn"] / peer["idle"]["kib_per_conn"],
                    "connect_time": r["connect"]["connect_s"] / peer["connect"]["connect_s"],
                }
            )
    return {"growth": growth, "versus": versus}


def ratio_table(rows: dict[str, list[dict[str, Any]]]) -> str:
    out = [
        "| server | members | ÷ members | cost per delivery | time to last member |",
        "|---|---|---|---|---|",
    ]
    for g in rows["growth"]:
        out.append(
            f"| {g['server']} | {g['members']:,} | {g['base_members']:,} |"
            f" {g['cost_per_delivery']:.2f}x | {g['last_member_time']:.2f}x |"
        )
    out += [
        "",
        "| members | linkd ÷ | deliveries/s | CPU/delivery peer ÷ linkd | time to last member "
        "| idle KiB/conn | connect time |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in rows["versus"]:
        out.append(
            f"| {v['members']:,} | {v['peer']} | {v['deliveries_per_s']:.2f}x |"
            f" {v['peer_cost_over_linkd']:.2f}x | {v['last_member_time']:.2f}x |"
            f" {v['idle_kib_per_conn']:.2f}x | {v['connect_time']:.2f}x |"
        )
    return "\n".join(out)


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 14's goals for linkd, where this sweep measured what they need."""
    goals: list[dict[str, Any]] = []
    linkd = sorted(
        (r for r in results if r["server"] == LINKD and _ok(r)), key=lambda r: r["members"]
    )
    if len(linkd) >= 2:
        small, big = linkd[0], linkd[-1]
        growth = _cost(big) / _cost(small)
        goals.append(
            {
                "goal": f"linkd cost per delivery {big['members']:,} ÷ {small['members']:,}"
                f" ≤ {COST_GROWTH_BOUND}x",
                "value": f"{growth:.2f}x ({_cost(small):.2f} → {_cost(big):.2f} µs)",
                "met": growth <= COST_GROWTH_BOUND,
            }
        )
    for r in linkd:
        if r["members"] == IDLE_AT:
            kib = r["idle"]["kib_per_conn"]
            goals.append(
                {
                    "goal": f"linkd idle {IDLE_AT:,}: ≤ {IDLE_KIB_BOUND:g} KiB per connection",
                    "value": f"{kib:.2f} KiB (engine alone {r['idle']['kib_per_conn_main']:.2f})",
                    "met": kib <= IDLE_KIB_BOUND,
                }
            )
    for r in results:
        if r["server"] == LINKD and not _ok(r):
            goals.append(
                {
                    "goal": f"linkd serves {r['members']:,} members",
                    "value": r.get("failed") or r.get("error"),
                    "met": False,
                }
            )
    return goals
