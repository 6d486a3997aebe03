"""Chaos accounting: what the ingest must hold after agent kills, and what it does hold.

The simulator's ground truth is cut into *segments*, one per socketcand client
(one per agent process): client ``k`` received the frames stamped from its
``connected`` time ``c_k`` up to its ``disconnected`` time ``d_k`` (the last
client to the end of the drive). A new agent starts with a fresh periodic
sampler, so the periodic rule (:func:`tcu.demo.verify.expected_samples`) is
applied to each segment on its own.

A SIGKILL loses what the agent had decoded but not yet spooled, and the frames
still in the socket buffers; the spool never promised those. So in each segment
that ended with a kill, the *kill window* ``(s_k, d_k]`` is cut out, where
``s_k`` is the newest sample the ingest holds from that segment (``c_k - 1`` if
it holds none). Its simulated length ``d_k - s_k`` is compared with what the
agent may have held: ``batch.max_age_ms`` of wall time times the speed, plus a
slack. Everything else is expected exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tcu.demo.verify import Expected, Series, expected_samples, verify_store
from tcu.signals.mapping import Catalog

__all__ = ["Accounting", "Segment", "account"]


@dataclass(frozen=True, slots=True)
class Segment:
    """The simulated time one socketcand client covered, in µs; ``killed`` if its agent was killed."""

    start_us: int
    end_us: int | None  # None: to the end of the drive
    killed: bool


@dataclass(slots=True)
class Accounting:
    samples_expected: int = 0
    samples_stored: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected: int = 0
    value_errors: int = 0
    unspooled_at_kills: int = 0
    kill_windows_ms: list[float] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)


def _slice(ground_truth: Mapping[str, Series], lo_ns: int, hi_ns: int | None) -> dict[str, Series]:
    """Ground truth with source times in ``[lo_ns, hi_ns]`` (no upper bound for None)."""
    out: dict[str, Series] = {}
    for name, (t_ns, values) in ground_truth.items():
        mask = t_ns >= lo_ns
        if hi_ns is not None:
            mask &= t_ns <= hi_ns
        out[name] = (t_ns[mask], values[mask])
    return out


def _concat(parts: Sequence[Series]) -> Series:
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def account(
    ground_truth: Mapping[str, Series],
    catalog: Catalog,
    segments: Sequence[Segment],
    stored: Mapping[str, Series],
) -> Accounting:
    """Compare ``stored`` (every sample the ingest returned, duplicates included) with the ground truth."""
    all_stored_t = (
        np.concatenate([t for t, _ in stored.values()]) if stored else np.empty(0, np.int64)
    ).astype(np.int64)
    result = Accounting(samples_stored=len(all_stored_t))
    expected_parts: dict[str, list[Series]] = {s.name: [] for s in catalog.signals}
    for seg in segments:
        lo_ns = seg.start_us * 1000
        hi_ns = None if seg.end_us is None else seg.end_us * 1000
        seg_expected = expected_samples(_slice(ground_truth, lo_ns, hi_ns), catalog)
        cut_ns: int | None = None
        if seg.killed:
            assert hi_ns is not None, "a killed segment has an end"
            in_seg = all_stored_t[(all_stored_t >= lo_ns) & (all_stored_t <= hi_ns)]
            newest_ns = int(in_seg.max()) if len(in_seg) else lo_ns - 1000
            cut_ns = newest_ns
            result.kill_windows_ms.append((hi_ns - newest_ns) / 1e6)
        for name, (t_ns, values) in seg_expected.series.items():
            if cut_ns is None:
                expected_parts[name].append((t_ns, values))
                continue
            keep = t_ns <= cut_ns
            result.unspooled_at_kills += int((~keep).sum())
            expected_parts[name].append((t_ns[keep], values[keep]))
    expected = Expected({name: _concat(parts) for name, parts in expected_parts.items()})
    comparison = verify_store(expected, stored, catalog)
    result.samples_expected = comparison.samples_expected
    result.lost = comparison.samples_lost
    result.value_errors = comparison.value_errors
    for name, (t_ns, _) in stored.items():
        _, counts = np.unique(t_ns, return_counts=True)
        result.duplicates += int((counts - 1).sum())
        exp_t = expected.series.get(name, (np.empty(0, np.int64), None))[0]
        result.unexpected += len(np.setdiff1d(t_ns, exp_t))
        missing = np.setdiff1d(exp_t, t_ns)
        if len(missing) and len(result.lost_examples) < 5:
            result.lost_examples.append(f"{name}: {len(missing)} missing, first t_ns={int(missing[0])}")
    for name, (exp_t, _) in expected.series.items():
        if name not in stored and len(exp_t) and len(result.lost_examples) < 5:
            result.lost_examples.append(f"{name}: all {len(exp_t)} missing")
    return result
