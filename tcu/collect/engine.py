"""The campaign engine: decoded signal columns in, kept samples and captured events out.

How the agent calls it (one task, one thread; the engine is not thread-safe)::

    engine = CampaignEngine(campaigns, catalog, rates_from_dbc(catalog, codecs), memory_budget_bytes,
                            frame_rates=frame_rates_from_dbc(codecs), default_periodic=True)
    for fb in frame_batches:                    # one bus's FrameBatch
        engine.record_frames(fb)                # only if raw_frames are used
        out = engine.process(decoder.decode(fb))
        builder.add(out.samples)                # periodic and on-change samples
        for event in out.events: ...            # completed condition captures
    engine.replace(new_campaigns)               # cloud push: old set kept if the new one is bad
    leftover = engine.flush()                   # at shutdown: pending captures, marked truncated

Rules, all on the CAN source clock (``t_ns`` of the samples), never wall time:

* **Periodic**: per campaign and signal, the first sample of each
  ``floor(t_ns / period_ns)`` window is kept. The **default periodic campaign**
  (``default_periodic=True``) is this rule with each catalog signal's own ``period_ms``
  (the mapping's): it runs beside the campaign set, is not listed in :meth:`active`
  and keeps its windows across :meth:`replace`. Because the rule only depends on
  source times, the expected samples of a drive can be computed from recorded ground
  truth alone, whatever speed the agent ran at.
* **On change**: per campaign and signal, a sample is kept when it is the first
  one, or when ``|value - last kept value| > deadband`` and
  ``t_ns - last kept t_ns >= min_interval_ms``. A sample kept by several
  campaigns appears once in :attr:`CollectOutput.samples`.
* **Condition evaluation**: in each :meth:`~CampaignEngine.process` call, a
  condition is evaluated once at every distinct source time at which a signal
  its expression reads has a sample in the call, in increasing time order; at
  time ``t`` each signal's value is its latest sample with time ``<= t``
  received so far (this call included, so samples of several signals at the
  same ``t`` are all applied before evaluating at ``t``). Across calls,
  evaluations follow call order. Each signal's samples must be time-ordered
  across calls; a sample older than the signal's buffered latest is dropped and
  counted in :attr:`EngineStats.out_of_order_dropped`.
* **Triggers**: ``rising_edge`` fires at a false→true transition (the state
  before the first evaluation is false); ``always`` fires at every true
  evaluation. A trigger less than ``min_trigger_interval_ms`` after the
  campaign's previous trigger is ignored. At most ``max_pending_events``
  captures per campaign are open at once; further triggers are dropped and
  counted (:attr:`EngineStats.triggers_dropped`).
* **Captures**: an event triggered at ``T`` carries, per captured signal, every
  sample with ``T - pre <= t_ns <= T + post``. It completes in the first call
  after which the source-time watermark (the largest ``t_ns`` seen on any
  signal) is beyond ``T + post + completion_lateness_ms``. Pre-trigger samples
  come from the ring buffers; if a buffer had already overwritten part of the
  window, the event is marked ``history_incomplete``.
* **Raw frames**: frames offered with :meth:`~CampaignEngine.record_frames`
  whose ``(bus, arbitration_id)`` a condition campaign lists in ``raw_frames``
  are kept in preallocated frame rings (pre-trigger history) and captured with
  the same ``[T - pre, T + post]`` rule into :attr:`CapturedEvent.frames`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tcu.collect.buffer import BufferPlan, FrameKey, FrameRing, RingBuffer, plan_buffers
from tcu.collect.campaign import Campaign, Condition, OnChange, Periodic, validate
from tcu.frames import FrameBatch
from tcu.signals.decoder import SignalColumns
from tcu.signals.mapping import Catalog

__all__ = ["CampaignEngine", "CapturedEvent", "CapturedFrames", "CollectOutput", "EngineStats"]

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
_NS_PER_MS = 1_000_000
_EMPTY_T = np.empty(0, np.int64)
_EMPTY_V = np.empty(0, np.float64)
_DEFAULT_KEY = ("<default periodic>", 0)


@dataclass(frozen=True, slots=True)
class CapturedFrames:
    """Raw CAN frames of one ``(bus, arbitration_id)`` captured by an event."""

    bus: str
    arbitration_id: int
    t_ns: npt.NDArray[np.int64]
    data: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    """One completed condition capture."""

    campaign: str
    version: int
    priority: int
    trigger_t_ns: int
    start_t_ns: int  # trigger - pre
    end_t_ns: int  # trigger + post
    columns: SignalColumns  # one column per captured signal (campaign order), possibly empty
    truncated: bool = False  # closed by flush()/replace() before end_t_ns was passed
    history_incomplete: bool = False  # a ring buffer had dropped part of the pre-trigger window
    frames: tuple[CapturedFrames, ...] = ()  # one entry per raw frame id of the campaign


@dataclass(frozen=True, slots=True)
class CollectOutput:
    samples: SignalColumns
    events: list[CapturedEvent]


@dataclass(slots=True)
class EngineStats:
    samples_in: int = 0
    samples_out: int = 0
    evaluations: int = 0
    triggers: int = 0
    triggers_dropped: int = 0
    events_completed: int = 0
    out_of_order_dropped: int = 0


@dataclass(slots=True)
class _Select:
    """Periodic or on-change state of one (campaign, signal)."""

    key: tuple[str, int]
    period_ns: int = 0  # > 0: periodic
    deadband: float = 0.0
    min_interval_ns: int = 0
    last_window: int = -(2**63)
    last_t: int | None = None
    last_v: float = 0.0

    def keep(self, t: I64, v: F64) -> npt.NDArray[np.bool_] | None:
        """Mask of the samples this selector keeps; ``None`` when it keeps none."""
        if self.period_ns:
            if int(t[-1]) // self.period_ns <= self.last_window:
                return None  # the whole column is in windows already served
            windows = t // self.period_ns
            previous_max = np.maximum.accumulate(np.concatenate(([self.last_window], windows[:-1])))
            self.last_window = max(self.last_window, int(windows[-1]), int(previous_max[-1]))
            return windows > previous_max
        keep = np.zeros(len(t), np.bool_)
        last_t, last_v = self.last_t, self.last_v
        band, interval = self.deadband, self.min_interval_ns
        for i, (ti, vi) in enumerate(zip(t.tolist(), v.tolist(), strict=True)):
            if last_t is None or (abs(vi - last_v) > band and ti - last_t >= interval):
                keep[i] = True
                last_t, last_v = ti, vi
        self.last_t, self.last_v = last_t, last_v
        return keep


@dataclass(slots=True)
class _Pending:
    trigger_t_ns: int
    start_t_ns: int
    end_t_ns: int
    parts: dict[int, list[tuple[I64, F64]]]
    history_incomplete: bool
    frame_parts: dict[FrameKey, list[tuple[I64, list[bytes]]]] = field(default_factory=dict)


@dataclass(slots=True)
class _CondState:
    campaign: Campaign
    cond: Condition
    expr_ids: tuple[tuple[str, int], ...]  # (name, signal id) read by the expression
    capture_ids: tuple[int, ...]
    frame_keys: tuple[FrameKey, ...] = ()
    last_truth: bool = False
    last_trigger_t_ns: int | None = None
    pending: list[_Pending] = field(default_factory=list)


@dataclass(slots=True)
class _Active:
    campaigns: tuple[Campaign, ...]
    plan: BufferPlan
    buffers: dict[int, RingBuffer]
    selects: dict[int, list[_Select]]  # signal id -> selectors
    conditions: list[_CondState]
    relevant: frozenset[int] = frozenset()  # signal ids any campaign uses
    frame_rings: dict[FrameKey, FrameRing] = field(default_factory=dict)
    frame_ids: dict[str, frozenset[int]] = field(default_factory=dict)  # bus -> wanted ids


class _History:
    """Per buffered signal: buffer contents followed by this call's samples, built on first use."""

    __slots__ = ("_batch", "_buffers", "_cache")

    def __init__(self, buffers: Mapping[int, RingBuffer], batch: Mapping[int, tuple[I64, F64]]) -> None:
        self._buffers = buffers
        self._batch = batch
        self._cache: dict[int, tuple[I64, F64]] = {}

    def __getitem__(self, sid: int) -> tuple[I64, F64]:
        got = self._cache.get(sid)
        if got is None:
            old_t, old_v = self._buffers[sid].view()
            new = self._batch.get(sid)
            got = (
                (old_t, old_v)
                if new is None
                else (np.concatenate((old_t, new[0])), np.concatenate((old_v, new[1])))
            )
            self._cache[sid] = got
        return got


class CampaignEngine:
    """Runs a set of campaigns over decoded signal columns (see the module docstring)."""

    def __init__(
        self,
        campaigns: Sequence[Campaign],
        catalog: Catalog,
        rates: Mapping[int, float],
        memory_budget_bytes: int,
        *,
        max_pending_events: int = 16,
        completion_lateness_ms: int = 0,
        frame_rates: Mapping[FrameKey, float] | None = None,
        default_periodic: bool = False,
    ) -> None:
        self.catalog = catalog
        # The default periodic campaign: one selector per catalog signal, kept over replace().
        self._default: dict[int, _Select] = (
            {
                s.signal_id: _Select(_DEFAULT_KEY, period_ns=s.period_ms * _NS_PER_MS)
                for s in catalog.signals
                if s.period_ms > 0
            }
            if default_periodic
            else {}
        )
        self.rates = dict(rates)
        self.frame_rates = dict(frame_rates or {})
        self._staged: dict[FrameKey, list[tuple[I64, list[bytes]]]] = {}
        self.memory_budget_bytes = memory_budget_bytes
        self.max_pending_events = max_pending_events
        self.completion_lateness_ns = completion_lateness_ms * _NS_PER_MS
        self.stats = EngineStats()
        self._ids = {s.name: s.signal_id for s in catalog.signals}
        self._watermark_ns: int | None = None
        self._active = self._build(campaigns, None)

    # ------------------------------------------------------------------ public

    def active(self) -> list[tuple[str, int]]:
        """``(name, version)`` of the running campaigns, for check-ins."""
        return [c.key for c in self._active.campaigns]

    @property
    def buffer_plan(self) -> BufferPlan:
        return self._active.plan

    @property
    def watermark_ns(self) -> int | None:
        """The largest source time seen so far on any signal."""
        return self._watermark_ns

    def replace(self, campaigns: Sequence[Campaign]) -> list[CapturedEvent]:
        """Swap in a new campaign set, all or nothing.

        The new set is validated and its buffers planned first; on any error the
        exception propagates and the old set keeps running untouched. Campaigns
        equal in the old and new set (same name, version and definition) keep
        their state: open captures, trigger state, periodic windows. Buffered
        history is carried over for signals in both plans. Open captures of
        campaigns that are gone or changed are returned, marked truncated.
        """
        old = self._active
        new = self._build(campaigns, old)
        kept = {c.campaign.key for c in new.conditions}
        closed = [
            self._finish(c, p, truncated=True)
            for c in old.conditions
            if c.campaign.key not in kept
            for p in c.pending
        ]
        self._active = new
        log.info(
            "campaigns replaced: %d active (%s); %d open captures closed",
            len(new.campaigns),
            ", ".join(f"{n}@{v}" for n, v in self.active()),
            len(closed),
        )
        return closed

    def flush(self) -> list[CapturedEvent]:
        """Close every open capture (marked truncated), e.g. at shutdown."""
        out: list[CapturedEvent] = []
        for c in self._active.conditions:
            out.extend(self._finish(c, p, truncated=True) for p in c.pending)
            c.pending = []
        return out

    def record_frames(self, frames: FrameBatch) -> None:
        """Offer raw frames (time-ordered per bus) for the ``raw_frames`` of condition campaigns.

        The batch may hold several buses (the agent's once-per-tick batch): each frame
        belongs to the bus its ``channel`` names. Call it with a frame batch *before*
        :meth:`process` of the columns decoded from that batch; the frames are used by the
        next :meth:`process` call. Only ids some campaign captures are kept (a vectorised
        filter otherwise).
        """
        if len(frames) == 0 or not self._active.frame_ids:
            return
        if len(frames.channels) <= 1:
            self._record_bus(frames.channels[0] if frames.channels else "", frames)
            return
        for index, bus in enumerate(frames.channels):
            if self._active.frame_ids.get(bus):
                rows = np.flatnonzero(frames.channel == index)
                if len(rows):
                    self._record_bus(bus, frames.select(rows))

    def _record_bus(self, bus: str, frames: FrameBatch) -> None:
        wanted = self._active.frame_ids.get(bus)
        if not wanted:
            return
        ids = np.asarray(frames.arbitration_id, np.int64)
        hit = np.isin(ids, np.fromiter(wanted, np.int64, len(wanted)))
        if not hit.any():
            return
        for arb in np.unique(ids[hit]).tolist():
            idx = np.flatnonzero(ids == arb)
            self._staged.setdefault((bus, arb), []).append(
                (frames.t_ns[idx], [frames.payload(i) for i in idx.tolist()])
            )

    def process(self, columns: SignalColumns) -> CollectOutput:
        """Run one batch of decoded columns through every campaign.

        Each column must be time-ordered (the decoder's are); several columns of
        one signal in a call are merged and sorted.
        """
        act = self._active
        batch = self._merge(columns, act)
        staged = self._take_staged()
        hist = _History(act.buffers, batch)
        events: list[CapturedEvent] = []
        for cs in act.conditions:
            self._run_condition(cs, act, batch, hist, staged)
        self._push_frames(act, staged)
        watermark = self._watermark_ns
        horizon = (watermark if watermark is not None else -(2**63)) - self.completion_lateness_ns
        for cs in act.conditions:
            if cs.pending and cs.pending[0].end_t_ns < horizon:
                done = [p for p in cs.pending if p.end_t_ns < horizon]
                cs.pending = [p for p in cs.pending if not p.end_t_ns < horizon]
                events.extend(self._finish(cs, p, truncated=False) for p in done)
        for sid, buf in act.buffers.items():
            col = batch.get(sid)
            if col is not None:
                buf.push(*col)
        samples: SignalColumns = []
        for sid, (t, v) in batch.items():
            selects = act.selects.get(sid)
            if not selects:
                continue
            keep: npt.NDArray[np.bool_] | None = None
            for sel in selects:
                k = sel.keep(t, v)
                if k is not None:
                    keep = k if keep is None else keep | k
            if keep is None:
                continue
            n = int(np.count_nonzero(keep))
            if n == len(t):
                samples.append((sid, t, v))
            elif n:
                samples.append((sid, t[keep], v[keep]))
            self.stats.samples_out += n
        return CollectOutput(samples, events)

    # ------------------------------------------------------------------ internals

    def _take_staged(self) -> dict[FrameKey, tuple[I64, list[bytes]]]:
        staged, self._staged = self._staged, {}
        out: dict[FrameKey, tuple[I64, list[bytes]]] = {}
        for key, chunks in staged.items():
            if len(chunks) == 1:
                out[key] = chunks[0]
            else:
                out[key] = (np.concatenate([c[0] for c in chunks]), [d for c in chunks for d in c[1]])
        return out

    @staticmethod
    def _push_frames(act: _Active, staged: Mapping[FrameKey, tuple[I64, list[bytes]]]) -> None:
        for key, (t, data) in staged.items():
            ring = act.frame_rings.get(key)
            if ring is not None:
                ring.push(t, data)

    def _merge(self, columns: SignalColumns, act: _Active) -> dict[int, tuple[I64, F64]]:
        """One time-ordered column per signal that a campaign uses; moves the watermark.

        Samples of buffered signals older than the buffer's latest are dropped.
        """
        relevant = act.relevant
        watermark = self._watermark_ns
        batch: dict[int, tuple[I64, F64]] = {}
        merged: set[int] = set()
        samples_in = 0
        for sid, t, v in columns:
            n = len(t)
            if n == 0:
                continue
            samples_in += n
            top = int(t[-1])
            if watermark is None or top > watermark:
                watermark = top
            if sid not in relevant:
                continue
            prior = batch.get(sid)
            if prior is None:
                batch[sid] = (t, v)
            else:
                batch[sid] = (np.concatenate((prior[0], t)), np.concatenate((prior[1], v)))
                merged.add(sid)
        self.stats.samples_in += samples_in
        self._watermark_ns = watermark
        for sid in merged:
            t, v = batch[sid]
            order = np.argsort(t, kind="stable")
            batch[sid] = (t[order], v[order])
        for sid, buf in act.buffers.items():
            col = batch.get(sid)
            last = buf.last_t_ns() if col is not None else None
            if col is None or last is None or int(col[0][0]) >= last:
                continue
            t, v = col
            ok = t >= last
            self.stats.out_of_order_dropped += int(np.count_nonzero(~ok))
            if ok.any():
                batch[sid] = (t[ok], v[ok])
            else:
                del batch[sid]
        return batch

    def _run_condition(
        self,
        cs: _CondState,
        act: _Active,
        batch: Mapping[int, tuple[I64, F64]],
        hist: _History,
        staged: Mapping[FrameKey, tuple[I64, list[bytes]]],
    ) -> None:
        cond = cs.cond
        # Captures already open extend with this batch's samples only.
        for p in cs.pending:
            for sid in cs.capture_ids:
                t, v = batch.get(sid, (_EMPTY_T, _EMPTY_V))
                if len(t):
                    lo = int(np.searchsorted(t, p.start_t_ns, side="left"))
                    hi = int(np.searchsorted(t, p.end_t_ns, side="right"))
                    if hi > lo:
                        p.parts[sid].append((t[lo:hi], v[lo:hi]))
            for key in cs.frame_keys:
                got = staged.get(key)
                if got is not None:
                    _append_frames(p.frame_parts[key], got, p.start_t_ns, p.end_t_ns)
        present = [batch[sid][0] for _, sid in cs.expr_ids if sid in batch]
        if not present:
            return
        times = present[0] if len(present) == 1 else np.concatenate(present)
        times = np.unique(times)
        series = {name: hist[sid] for name, sid in cs.expr_ids}
        truth = cond.expression.evaluate(series, times)
        self.stats.evaluations += len(times)
        if cond.trigger == "rising_edge":
            before = np.concatenate(([cs.last_truth], truth[:-1]))
            fire = truth & ~before
        else:
            fire = truth
        cs.last_truth = bool(truth[-1])
        if not fire.any():
            return
        interval_ns = cond.min_trigger_interval_ms * _NS_PER_MS
        pre_ns, post_ns = cond.pre_trigger_ms * _NS_PER_MS, cond.post_trigger_ms * _NS_PER_MS
        for trig in times[fire].tolist():
            if cs.last_trigger_t_ns is not None and trig - cs.last_trigger_t_ns < interval_ns:
                continue
            if len(cs.pending) >= self.max_pending_events:
                self.stats.triggers_dropped += 1
                continue
            cs.last_trigger_t_ns = trig
            self.stats.triggers += 1
            start, end = trig - pre_ns, trig + post_ns
            parts: dict[int, list[tuple[I64, F64]]] = {}
            incomplete = False
            for sid in cs.capture_ids:
                t, v = hist[sid]
                lo = int(np.searchsorted(t, start, side="left"))
                hi = int(np.searchsorted(t, end, side="right"))
                parts[sid] = [(t[lo:hi], v[lo:hi])] if hi > lo else []
                buf = act.buffers[sid]
                if buf.overwritten and len(t) and t[0] > start:
                    incomplete = True
            frame_parts: dict[FrameKey, list[tuple[I64, list[bytes]]]] = {}
            for key in cs.frame_keys:
                frame_parts[key] = []
                ring = act.frame_rings[key]
                ft, fd = ring.view()
                _append_frames(frame_parts[key], (ft, fd), start, end)
                got = staged.get(key)
                if got is not None:
                    _append_frames(frame_parts[key], got, start, end)
                if ring.overwritten and len(ft) and ft[0] > start:
                    incomplete = True
            cs.pending.append(_Pending(trig, start, end, parts, incomplete, frame_parts))

    def _finish(self, cs: _CondState, p: _Pending, *, truncated: bool) -> CapturedEvent:
        columns: SignalColumns = []
        for sid in cs.capture_ids:
            chunks = p.parts.get(sid, [])
            if not chunks:
                columns.append((sid, _EMPTY_T.copy(), _EMPTY_V.copy()))
            elif len(chunks) == 1:
                columns.append((sid, chunks[0][0].copy(), chunks[0][1].copy()))
            else:
                columns.append(
                    (sid, np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
                )
        frames: list[CapturedFrames] = []
        for bus, arb in cs.frame_keys:
            chunks_f = p.frame_parts.get((bus, arb), [])
            times = np.concatenate([ch[0] for ch in chunks_f]) if chunks_f else _EMPTY_T.copy()
            payloads = tuple(d for ch in chunks_f for d in ch[1])
            frames.append(CapturedFrames(bus, arb, times, payloads))
        self.stats.events_completed += 1
        c = cs.campaign
        return CapturedEvent(
            c.name,
            c.version,
            c.priority,
            p.trigger_t_ns,
            p.start_t_ns,
            p.end_t_ns,
            columns,
            truncated=truncated,
            history_incomplete=p.history_incomplete,
            frames=tuple(frames),
        )

    def _build(self, campaigns: Sequence[Campaign], old: _Active | None) -> _Active:
        campaigns = tuple(campaigns)
        validate(campaigns, self.catalog)
        plan = plan_buffers(
            campaigns, self.catalog, self.rates, self.memory_budget_bytes, frame_rate_hz=self.frame_rates
        )
        ids = self._ids
        old_selects: dict[tuple[tuple[str, int], int], _Select] = {}
        old_conds: dict[tuple[str, int], _CondState] = {}
        old_defs: dict[tuple[str, int], Campaign] = {}
        if old is not None:
            for sid, sels in old.selects.items():
                for sel in sels:
                    old_selects[(sel.key, sid)] = sel
            old_conds = {c.campaign.key: c for c in old.conditions}
            old_defs = {c.key: c for c in old.campaigns}
        selects: dict[int, list[_Select]] = {sid: [sel] for sid, sel in self._default.items()}
        conditions: list[_CondState] = []
        for c in campaigns:
            same = old_defs.get(c.key) == c
            mode = c.mode
            if isinstance(mode, Condition):
                prior = old_conds.get(c.key) if same else None
                if prior is not None:
                    conditions.append(prior)
                    continue
                expr_ids = tuple(sorted((n, ids[n]) for n in mode.expression.signals))
                keys = tuple(dict.fromkeys((f.bus, f.arbitration_id) for f in mode.raw_frames))
                conditions.append(_CondState(c, mode, expr_ids, tuple(ids[s] for s in c.signals), keys))
                continue
            for s in c.signals:
                sid = ids[s]
                prior_sel = old_selects.get((c.key, sid)) if same else None
                if prior_sel is not None:
                    sel = prior_sel
                elif isinstance(mode, Periodic):
                    sel = _Select(c.key, period_ns=mode.period_of(s) * _NS_PER_MS)
                else:
                    assert isinstance(mode, OnChange)
                    sel = _Select(
                        c.key, deadband=mode.deadband_of(s), min_interval_ns=mode.min_interval_ms * _NS_PER_MS
                    )
                selects.setdefault(sid, []).append(sel)
        buffers: dict[int, RingBuffer] = {}
        for sid, cap in plan.capacity.items():
            buf = RingBuffer(cap)
            prior_buf = old.buffers.get(sid) if old is not None else None
            if prior_buf is not None and len(prior_buf):
                buf.push(*prior_buf.view())
                buf.overwritten += prior_buf.overwritten
            buffers[sid] = buf
        log.debug("campaign buffers: %d signals, %d bytes", len(buffers), plan.total_bytes)
        relevant = frozenset(selects) | frozenset(buffers)
        frame_rings: dict[FrameKey, FrameRing] = {}
        for key, cap in plan.frame_capacity.items():
            ring = FrameRing(cap)
            prior_ring = old.frame_rings.get(key) if old is not None else None
            if prior_ring is not None and len(prior_ring):
                ring.push(*prior_ring.view())
            frame_rings[key] = ring
        frame_ids: dict[str, set[int]] = {}
        for bus, arb in frame_rings:
            frame_ids.setdefault(bus, set()).add(arb)
        return _Active(
            campaigns,
            plan,
            buffers,
            selects,
            conditions,
            relevant,
            frame_rings,
            {bus: frozenset(v) for bus, v in frame_ids.items()},
        )


def _append_frames(
    into: list[tuple[I64, list[bytes]]], frames: tuple[I64, list[bytes]], start_ns: int, end_ns: int
) -> None:
    t, data = frames
    lo = int(np.searchsorted(t, start_ns, side="left"))
    hi = int(np.searchsorted(t, end_ns, side="right"))
    if hi > lo:
        into.append((t[lo:hi], data[lo:hi]))
