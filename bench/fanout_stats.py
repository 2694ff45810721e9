"""Latency histograms for the fan-out bench: cheap to fill, exact enough to merge.

A delivery's latency in microseconds goes to bucket ``us`` below 10 ms (1 µs wide),
``10_000 + (us - 10_000) // 100`` up to ~10 s (100 µs wide, < 1 % of the value), and
the last bucket above. The exact maximum is kept on the side. Histograms from several
load processes add bucket by bucket; percentiles are nearest-rank over the buckets
(a bucket's lower edge), in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = [
    "FINE_US",
    "N_BUCKETS",
    "bucket",
    "from_sparse",
    "merge",
    "new",
    "percentiles",
    "summary",
    "to_sparse",
]

FINE_US = 10_000
_COARSE_US = 100
_COARSE_BUCKETS = 100_000
N_BUCKETS = FINE_US + _COARSE_BUCKETS + 1
_LAST = N_BUCKETS - 1
_COARSE_END = FINE_US + _COARSE_US * _COARSE_BUCKETS


def new() -> list[int]:
    return [0] * N_BUCKETS


def bucket(us: int) -> int:
    """The bucket of a latency in µs (the hot path inlines the first test)."""
    if us < FINE_US:
        return us if us > 0 else 0
    if us < _COARSE_END:
        return FINE_US + (us - FINE_US) // _COARSE_US
    return _LAST


def _lower_edge_us(index: int) -> int:
    if index < FINE_US:
        return index
    return FINE_US + (index - FINE_US) * _COARSE_US


def merge(histograms: Iterable[list[int]]) -> list[int]:
    total = new()
    for hist in histograms:
        for i, n in enumerate(hist):
            if n:
                total[i] += n
    return total


def to_sparse(hist: list[int]) -> dict[int, int]:
    """Non-empty buckets only: what crosses the pipe to the orchestrator."""
    return {i: n for i, n in enumerate(hist) if n}


def from_sparse(sparse: dict[int, int]) -> list[int]:
    hist = new()
    for i, n in sparse.items():
        hist[i] += n
    return hist


def percentiles(hist: list[int], qs: Iterable[float]) -> list[float]:
    """Nearest-rank percentiles (ms) for the quantiles ``qs`` (ascending)."""
    count = sum(hist)
    out: list[float] = []
    if not count:
        return [math.nan for _ in qs]
    targets = [(q, max(1, math.ceil(q * count))) for q in qs]
    seen = 0
    it = iter(targets)
    current = next(it, None)
    for i, n in enumerate(hist):
        if not n:
            continue
        seen += n
        while current is not None and seen >= current[1]:
            out.append(_lower_edge_us(i) / 1000)
            current = next(it, None)
        if current is None:
            break
    return out


def summary(hist: list[int], max_us: int) -> dict[str, float]:
    """p50, p90, p99, p99.9 and max in ms, plus the count."""
    p50, p90, p99, p999 = percentiles(hist, (0.5, 0.9, 0.99, 0.999))
    count = sum(hist)
    return {
        "count": count,
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "p99.9": p999,
        "max": max_us / 1000 if count else math.nan,
    }
