"""What every bench command line shares: the results path, core and name arguments,
the cells of its tables."""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["RESULTS_DIR", "cpu_arg", "ms", "names_arg", "num", "output_path"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def output_path(requested: str | None, bench: str) -> Path:
    """``requested``, else ``results/<bench>-<date>.json`` (``-2``, ``-3``... if taken)."""
    if requested:
        return Path(requested)
    day = dt.date.today().isoformat()
    path, n = RESULTS_DIR / f"{bench}-{day}.json", 2
    while path.exists():
        path, n = RESULTS_DIR / f"{bench}-{day}-{n}.json", n + 1
    return path


def cpu_arg(value: str) -> int | None:
    """A core number, or none ("", "none", "-"): not pinned."""
    return None if value.lower() in ("", "none", "-") else int(value)


def names_arg(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names from ``allowed``."""

    def parse(value: str) -> list[str]:
        names = [v.strip() for v in value.split(",") if v.strip()]
        for name in names:
            if name not in allowed:
                raise argparse.ArgumentTypeError(f"{name!r}: choose from {', '.join(allowed)}")
        return names

    return parse


def num(value: float | None, digits: int = 0) -> str:
    """A table cell: ``1,234`` (or with ``digits`` decimals); ``-`` for none or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ms(value: float | None) -> str:
    """A latency cell in ms: two decimals under 10, one under 1 000, then ``1,234``."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 1000 else f"{value:,.0f}"
