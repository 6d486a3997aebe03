"""A fixed-bucket histogram for Prometheus, with no dependency (a leaf: the ingest's writer
thread and the servers observe into it; :mod:`tcu.metrics` exposes it at scrape time).

``observe()`` takes a lock and does one bisect: it is meant for once-per-RPC or
once-per-transaction values, not per sample. ``snapshot()`` returns consistent cumulative
bucket counts, the sum and the count.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

__all__ = ["LATENCY_BUCKETS_S", "SIZE_BUCKETS", "Histogram"]

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
"""Seconds: sub-millisecond commits up to five-minute streams."""

SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
"""Counts (batches in a group commit)."""


class Histogram:
    """Observations counted into ``buckets`` (upper bounds, ascending; +Inf is implied)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets: tuple[float, ...] = tuple(buckets)
        if list(self.buckets) != sorted(set(self.buckets)):
            raise ValueError(f"buckets must be ascending and distinct, got {self.buckets}")
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            self._counts[i] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[tuple[str, int]], float, int]:
        """``([(le, cumulative count), ..., ("+Inf", count)], sum, count)``."""
        with self._lock:
            counts = list(self._counts)
            total = self._sum
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip([*map(_le, self.buckets), "+Inf"], counts, strict=True):
            running += n
            out.append((bound, running))
        return out, total, running

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)


def _le(bound: float) -> str:
    return repr(float(bound))
