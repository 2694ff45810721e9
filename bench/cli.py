"""What every bench command line shares: the results path, core and name arguments."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["RESULTS_DIR", "cpu_arg", "names_arg", "output_path"]

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
