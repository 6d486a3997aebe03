"""Chaos accounting: what the ingest must hold after the faults, and what its database does hold.

Two ground truths, both outside the ingest:

* **Batches.** The agent's spool numbers batches 1, 2, 3, ... without gaps within
  its boot epoch, and the harness reads the spool (:mod:`_chaos_spool`) after every
  kill and after the final stop. Every seq up to the highest one the spool ever
  held must be in the database: as a batch, as a ``DataLoss`` record (a loss the
  agent *reported*) or in quarantine. A seq that is none of these is a batch
  *missing*: lost silently.
* **Samples.** The simulator's ground truth is cut into *segments*, one per
  socketcand client (one per agent process): client ``k`` received the frames
  stamped from its ``connected`` time ``c_k`` to its ``disconnected`` time ``d_k``.
  A new agent starts with a fresh periodic sampler, so the periodic rule
  (:func:`tcu.demo.verify.expected_samples`) is applied to each segment alone.

A SIGKILL loses what the agent had decoded but not yet spooled; the spool never
promised that. The *kill window* of a killed segment runs from ``T_k``, the newest
sample of the batches the spool held at the kill (seq up to its ``highest_seq``
then), to the kill instant on the simulator's clock. It is measured from what the
spool held, not from what the ingest holds: when the ingest loses the last
batches before a kill, the batch check reports them missing and the window grows.
No window can excuse more than the bound (``batch.max_age_ms`` of wall time times
the speed, plus slack): expected samples older than ``kill - bound`` are expected
even when ``T_k`` is older still, and a window over its bound fails the run,
unless the spool held ``DataLoss`` records after its newest data batch (the agent
reported that it could not keep them, e.g. on a full disk): then the samples
before ``kill - bound`` count as reported lost.

Samples that are expected but not stored are *reported lost* when the seqs
between the batches holding the same signal's stored neighbours (in time) hold
``DataLoss`` records or quarantined batches and no missing seq (the records stand
in for those batches, in seq order), and *lost* (silently) otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from _chaos_spool import SpoolFacts
from _chaos_store import StoreContents, StoredSeries

from tcu.demo.verify import Expected, Series, expected_samples, verify_store
from tcu.signals.mapping import Catalog

__all__ = ["Accounting", "Segment", "account"]

Key = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Segment:
    """The simulated time one socketcand client covered, in µs.

    ``killed``: its agent died (SIGKILL, or an exit of its own); then ``kill_us`` is
    the death on the simulator's clock and ``spool`` what its spool held right after.
    """

    start_us: int
    end_us: int | None  # None: to the end of the drive
    killed: bool
    kill_us: int | None = None
    spool: SpoolFacts | None = None


@dataclass(slots=True)
class Accounting:
    samples_expected: int = 0
    samples_stored: int = 0
    lost: int = 0
    """Expected samples missing with no DataLoss or quarantine record standing for them."""
    reported_lost: int = 0
    """Expected samples missing where DataLoss (or quarantine) records stand for their batches."""
    duplicates: int = 0
    unexpected: int = 0
    value_errors: int = 0
    unspooled_at_kills: int = 0
    kill_windows_ms: list[float] = field(default_factory=list)
    bounded_kill_windows_ms: list[float] = field(default_factory=list)
    """The kill windows held to the bound: 0 for those after DataLoss records (see below)."""
    kill_windows_after_dataloss: int = 0
    """Kills whose spool held DataLoss records after its newest data batch (e.g. a full disk)."""
    kills_unverified: int = 0
    """Kills after which the spool could not be read: their window fell back to the ingest's data."""
    batches_expected: int = 0
    batches_stored: int = 0
    batches_reported_lost: int = 0
    batches_quarantined: int = 0
    batches_missing: int = 0
    loss_reasons: dict[str, int] = field(default_factory=dict)
    unknown_epochs: int = 0
    """Boot epochs in the database that the spool never had (e.g. an agent on an in-memory outbox)."""
    orphan_samples: int = 0
    incomplete_batches: int = 0
    lost_examples: list[str] = field(default_factory=list)
    missing_batch_examples: list[str] = field(default_factory=list)


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


def _batch_ranges(
    t: npt.NDArray[np.int64], e: npt.NDArray[np.int64], s: npt.NDArray[np.int64]
) -> dict[Key, tuple[int, int]]:
    """(epoch, seq) -> (first, last) source time of its CAN samples."""
    if not len(t):
        return {}
    order = np.lexsort((t, s, e))
    t, e, s = t[order], e[order], s[order]
    starts = np.flatnonzero(np.r_[True, (e[1:] != e[:-1]) | (s[1:] != s[:-1])])
    ends = np.r_[starts[1:], len(t)] - 1
    return {(int(e[i]), int(s[i])): (int(t[i]), int(t[j])) for i, j in zip(starts, ends, strict=True)}


def _boundary(
    ground_truth: Mapping[str, Series],
    *,
    catalog: Catalog,
    after: Expected,
    at_ns: int,
    hi_ns: int | None,
    stored: Mapping[str, StoredSeries],
) -> Expected:
    """The expected samples of a client that connected right after another went at ``at_ns``.

    The simulator says the new client starts 1 µs after the old one went, but frames stamped
    exactly ``at_ns`` that it had not yet written when it saw the old client go are written to
    the new one. Which of those went where is not in its events: per signal, the rule applied
    from ``at_ns`` is taken instead when the database holds a sample only it expects.
    """
    including = expected_samples(_slice(ground_truth, at_ns, hi_ns), catalog)
    out = dict(after.series)
    for name, (t_b, v_b) in including.series.items():
        t_a = after.series[name][0]
        only_b = np.setdiff1d(t_b, t_a)
        if len(only_b) and name in stored and np.isin(only_b, stored[name].t_ns).any():
            out[name] = (t_b, v_b)
    return Expected(out)


def account(
    ground_truth: Mapping[str, Series],
    catalog: Catalog,
    segments: Sequence[Segment],
    store: StoreContents,
    *,
    spool_epochs: Mapping[int, int],
    kill_bound_us: int,
) -> Accounting:
    """Compare the database with the ground truth; ``spool_epochs``: epoch -> highest seq the spool held."""
    result = Accounting(orphan_samples=store.orphan_samples, incomplete_batches=store.incomplete_batches)
    can_names = {s.name for s in catalog.signals}
    can = {name: series for name, series in store.series.items() if name in can_names}
    all_t = np.concatenate([c.t_ns for c in can.values()]) if can else np.empty(0, np.int64)
    all_e = np.concatenate([c.epoch for c in can.values()]) if can else np.empty(0, np.int64)
    all_s = np.concatenate([c.seq for c in can.values()]) if can else np.empty(0, np.int64)
    ranges = _batch_ranges(all_t, all_e, all_s)

    # ---- batches: every seq the spool handed out must be in the database
    db_epochs = {e for e, _ in store.batches} | {e for e, _ in store.quarantined}
    result.unknown_epochs = len(db_epochs - set(spool_epochs))
    status: dict[int, npt.NDArray[np.int64]] = {}  # per epoch and seq: 0 data, 1 reported, 2 missing
    for epoch in sorted(db_epochs | set(spool_epochs)):
        seqs = [s for e, s in store.batches if e == epoch] + [s for e, s in store.quarantined if e == epoch]
        hi = max([spool_epochs.get(epoch, 0), *seqs])
        result.batches_expected += hi
        codes = np.zeros(hi + 2, np.int64)
        status[epoch] = codes
        for seq in range(1, hi + 1):
            key = (epoch, seq)
            row = store.batches.get(key)
            if row is not None and row.loss_reason is None:
                result.batches_stored += 1
                continue
            codes[seq] = 1 if row is not None or key in store.quarantined else 2
            if row is not None:
                reason = row.loss_reason or "?"
                result.batches_reported_lost += 1
                result.loss_reasons[reason] = result.loss_reasons.get(reason, 0) + 1
            elif key in store.quarantined:
                result.batches_quarantined += 1
            else:
                result.batches_missing += 1
                if len(result.missing_batch_examples) < 5:
                    result.missing_batch_examples.append(f"epoch {epoch} seq {seq}")

    # ---- samples: the periodic rule per segment, kill windows from the kill instant
    bound_ns = kill_bound_us * 1000
    expected_parts: dict[str, list[Series]] = {s.name: [] for s in catalog.signals}
    previous_end: int | None = None
    for seg in segments:
        lo_ns = seg.start_us * 1000
        hi_ns = None if seg.end_us is None else seg.end_us * 1000
        seg_expected = expected_samples(_slice(ground_truth, lo_ns, hi_ns), catalog)
        if previous_end is not None and seg.start_us == previous_end + 1:
            seg_expected = _boundary(
                ground_truth,
                catalog=catalog,
                after=seg_expected,
                at_ns=previous_end * 1000,
                hi_ns=hi_ns,
                stored=can,
            )
        previous_end = seg.end_us
        cut_ns: int | None = None
        if seg.killed:
            assert hi_ns is not None, "a killed segment has an end"
            kill_ns = hi_ns if seg.kill_us is None else min(hi_ns, seg.kill_us * 1000)
            in_seg = (all_t >= lo_ns) & (all_t <= hi_ns)
            facts = seg.spool
            if facts is None or facts.boot_epoch is None:
                result.kills_unverified += 1
            else:
                in_seg &= (all_e == facts.boot_epoch) & (all_s <= facts.highest_seq)
            newest_ns = int(all_t[in_seg].max()) if in_seg.any() else lo_ns - 1000
            window_ms = max(0, kill_ns - newest_ns) / 1e6
            result.kill_windows_ms.append(window_ms)
            if facts is not None and facts.boot_epoch is not None:
                # DataLoss records spooled after the newest data batch: the agent reported what
                # it could not keep (a full disk), so the window is not its to bound
                epoch, hi_seq = facts.boot_epoch, facts.highest_seq
                newest_seq = max((s for e, s in ranges if e == epoch and s <= hi_seq), default=0)
                if any(
                    (row := store.batches.get((epoch, seq))) is not None and row.loss_reason is not None
                    for seq in range(newest_seq + 1, hi_seq + 1)
                ):
                    result.kill_windows_after_dataloss += 1
                    window_ms = 0.0
            result.bounded_kill_windows_ms.append(window_ms)
            cut_ns = max(newest_ns, kill_ns - bound_ns)
        for name, (t_ns, values) in seg_expected.series.items():
            if cut_ns is None:
                expected_parts[name].append((t_ns, values))
                continue
            keep = t_ns <= cut_ns
            result.unspooled_at_kills += int((~keep).sum())
            expected_parts[name].append((t_ns[keep], values[keep]))
    expected = Expected({name: _concat(parts) for name, parts in expected_parts.items()})
    stored: dict[str, Series] = {name: (c.t_ns, c.values) for name, c in can.items()}
    comparison = verify_store(expected, stored, catalog)
    result.samples_expected = comparison.samples_expected
    result.samples_stored = comparison.samples_stored
    result.value_errors = comparison.value_errors
    runs = {e: (np.cumsum(c == 1), np.cumsum(c == 2)) for e, c in status.items()}

    def between(epoch: int, lo: int, hi: int) -> tuple[int, int]:
        """(reported, missing) seqs strictly between ``lo`` and ``hi`` in ``epoch``."""
        if epoch not in runs or hi - lo < 2:
            return 0, 0
        rep, mis = runs[epoch]
        hi = min(hi, len(rep))
        return int(rep[hi - 1] - rep[lo]), int(mis[hi - 1] - mis[lo])

    def reported(name: str, missing: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Missing samples whose place, between this signal's stored neighbours, holds only
        DataLoss or quarantined batches (at least one) and no missing seq."""
        out = np.zeros(len(missing), dtype=bool)
        c = can.get(name)
        n = 0 if c is None else len(c.t_ns)
        idx = np.searchsorted(c.t_ns, missing) if c is not None else np.zeros(len(missing), np.int64)
        for j, i in enumerate(idx.tolist()):
            prev = (int(c.epoch[i - 1]), int(c.seq[i - 1])) if c is not None and i > 0 else None
            nxt = (int(c.epoch[i]), int(c.seq[i])) if c is not None and i < n else None
            if prev is not None and nxt is not None and prev[0] == nxt[0]:
                lo, hi = sorted((prev[1], nxt[1]))
                r, m = between(prev[0], lo, hi)
            else:
                r = m = 0
                if prev is not None:
                    r, m = between(prev[0], prev[1], 1 << 62)
                if nxt is not None:
                    r2, m2 = between(nxt[0], 0, nxt[1])
                    r, m = r + r2, m + m2
                if prev is None and nxt is None:
                    for e in runs:
                        r2, m2 = between(e, 0, 1 << 62)
                        r, m = r + r2, m + m2
            out[j] = r > 0 and m == 0
        return out

    for name, (exp_t, _) in expected.series.items():
        got_t = stored.get(name, (np.empty(0, np.int64), None))[0]
        missing = np.setdiff1d(exp_t, got_t)
        if not len(missing):
            continue
        covered = reported(name, missing)
        result.reported_lost += int(covered.sum())
        silent = missing[~covered]
        result.lost += len(silent)
        if len(silent) and len(result.lost_examples) < 5:
            result.lost_examples.append(f"{name}: {len(silent)} missing, first t_ns={int(silent[0])}")
    for name, (t_ns, _) in stored.items():
        _, counts = np.unique(t_ns, return_counts=True)
        result.duplicates += int((counts - 1).sum())
        exp_t = expected.series.get(name, (np.empty(0, np.int64), None))[0]
        result.unexpected += len(np.setdiff1d(t_ns, exp_t))
    return result
