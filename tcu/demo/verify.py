"""Compare what the ingest stored with what the simulator encoded.

The expected samples are computed from the simulator's ground truth file and
the campaign's rule alone (the default periodic campaign keeps the first
sample of each signal in each ``period_ms`` window of source time), never from
the agent's own counters. The ground truth file is the simulator's documented
output format (``.npz`` with ``t_us:<message>:<signal>`` and
``value:<message>:<signal>`` columns per signal), read here with numpy: ``tcu``
does not import ``sim``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tcu.signals.mapping import Catalog

__all__ = ["Comparison", "Expected", "expected_samples", "load_ground_truth", "verify_store"]

Series = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]


@dataclass(frozen=True, slots=True)
class Expected:
    """Expected samples per VSS name: (t_ns, values)."""

    series: dict[str, Series]

    @property
    def total(self) -> int:
        return sum(len(t) for t, _ in self.series.values())


@dataclass(slots=True)
class Comparison:
    samples_expected: int = 0
    samples_stored: int = 0
    samples_matched: int = 0
    samples_lost: int = 0
    samples_unexpected: int = 0
    value_errors: int = 0
    distinct_signals: int = 0
    worst: dict[str, str] = field(default_factory=dict)


def load_ground_truth(path: str | Path) -> dict[str, Series]:
    """``{"Message.Signal": (t_ns, values)}`` from the simulator's ground-truth file."""
    out: dict[str, Series] = {}
    with np.load(path, allow_pickle=False) as npz:
        for name in npz.files:
            if not name.startswith("t_us:"):
                continue
            _, message, signal = name.split(":", 2)
            t_us = npz[name].astype(np.int64)
            out[f"{message}.{signal}"] = (t_us * 1000, npz[f"value:{message}:{signal}"].astype(np.float64))
    return out


def expected_samples(ground_truth: Mapping[str, Series], catalog: Catalog) -> Expected:
    """Apply the periodic campaign rule to the ground truth, signal by signal."""
    series: dict[str, Series] = {}
    for spec in catalog.signals:
        gt = ground_truth.get(f"{spec.message}.{spec.signal}")
        if gt is None:
            series[spec.name] = (np.empty(0, np.int64), np.empty(0, np.float64))
            continue
        t_ns, values = gt
        order = np.argsort(t_ns, kind="stable")
        t_ns, values = t_ns[order], values[order]
        windows = t_ns // (spec.period_ms * 1_000_000)
        first = np.ones(len(windows), dtype=np.bool_)
        first[1:] = windows[1:] != windows[:-1]
        series[spec.name] = (t_ns[first], values[first])
    return Expected(series)


def verify_store(expected: Expected, stored: Mapping[str, Series], catalog: Catalog) -> Comparison:
    """Match stored samples to expected ones by signal and source time; check values to resolution."""
    result = Comparison(samples_expected=expected.total)
    result.samples_stored = sum(len(t) for t, _ in stored.values())
    result.distinct_signals = sum(1 for t, _ in stored.values() if len(t))
    resolution = {s.name: s.resolution for s in catalog.signals}
    for name, (exp_t, exp_v) in expected.series.items():
        got_t, got_v = stored.get(name, (np.empty(0, np.int64), np.empty(0, np.float64)))
        common, exp_idx, got_idx = np.intersect1d(exp_t, got_t, assume_unique=False, return_indices=True)
        result.samples_matched += len(common)
        result.samples_lost += len(exp_t) - len(common)
        result.samples_unexpected += len(got_t) - len(common)
        tolerance = max(resolution.get(name, 0.0), 1e-9)
        diff = np.abs(exp_v[exp_idx] - got_v[got_idx])
        bad = diff > tolerance
        if bad.any():
            result.value_errors += int(bad.sum())
            i = int(np.argmax(diff))
            result.worst[name] = (
                f"at t_ns={int(common[i])}: stored {got_v[got_idx][i]!r}, encoded {exp_v[exp_idx][i]!r}"
            )
    for name in stored.keys() - expected.series.keys():
        result.samples_unexpected += len(stored[name][0])
    return result
