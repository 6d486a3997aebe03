"""Per-signal ring buffers of recent samples, sized from the campaigns.

Condition campaigns need history: the pre-trigger window of their captured
signals, the windows of ``min/max/avg(sig, W)``, and the latest (and, for
``changed``, the previous) sample of every signal their expression reads. One
preallocated :class:`RingBuffer` per signal serves all campaigns; its capacity
is the longest history any campaign needs times the signal's expected rate::

    capacity = ceil(history_s * rate_hz * 1.1) + 2    # 10 % for rate jitter, +2 for the edges

:func:`plan_buffers` computes the capacities and checks their memory (16 bytes
per sample: int64 time + float64 value) against a budget. Campaigns are added
in priority order (higher first, then file order); if some do not fit, the
whole set is refused with an error naming those campaigns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tcu.collect.campaign import Campaign, CampaignError, Condition
from tcu.signals.codec import DatabaseCodec
from tcu.signals.mapping import Catalog

__all__ = [
    "BYTES_PER_FRAME",
    "BYTES_PER_SAMPLE",
    "BufferPlan",
    "FrameKey",
    "FrameRing",
    "RingBuffer",
    "buffer_needs",
    "frame_needs",
    "frame_rates_from_dbc",
    "plan_buffers",
    "rates_from_dbc",
]

FrameKey = tuple[str, int]  # (bus, arbitration id)

BYTES_PER_SAMPLE = 16
MAX_FRAME_BYTES = 64
BYTES_PER_FRAME = 8 + MAX_FRAME_BYTES + 1 + 8  # time, payload, length, row index
_JITTER = 1.1
_EDGE = 2


class RingBuffer:
    """The last ``capacity`` samples of one signal, in time order, preallocated."""

    __slots__ = ("_n", "_pos", "_t", "_v", "capacity", "overwritten")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._t = np.zeros(capacity, np.int64)
        self._v = np.zeros(capacity, np.float64)
        self._pos = 0  # next write index
        self._n = 0
        self.overwritten = 0  # samples pushed out by newer ones

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return int(self._t.nbytes + self._v.nbytes)

    def push(self, t_ns: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> None:
        """Append samples (time order); the oldest are overwritten when full."""
        n = len(t_ns)
        if n == 0:
            return
        cap = self.capacity
        self.overwritten += max(0, self._n + n - cap)
        if n >= cap:
            self._t[:] = t_ns[-cap:]
            self._v[:] = values[-cap:]
            self._pos = 0
            self._n = cap
            return
        first = min(n, cap - self._pos)
        self._t[self._pos : self._pos + first] = t_ns[:first]
        self._v[self._pos : self._pos + first] = values[:first]
        rest = n - first
        if rest:
            self._t[:rest] = t_ns[first:]
            self._v[:rest] = values[first:]
        self._pos = (self._pos + n) % cap
        self._n = min(cap, self._n + n)

    def view(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Copies of the held samples, oldest first."""
        if self._n < self.capacity:
            return self._t[: self._n].copy(), self._v[: self._n].copy()
        p = self._pos
        return np.concatenate((self._t[p:], self._t[:p])), np.concatenate((self._v[p:], self._v[:p]))

    @property
    def full(self) -> bool:
        return self._n == self.capacity

    def last_t_ns(self) -> int | None:
        return int(self._t[(self._pos - 1) % self.capacity]) if self._n else None


class FrameRing:
    """The last ``capacity`` raw CAN frames of one (bus, arbitration id), preallocated.

    Payloads up to 64 bytes (CAN FD) are held in a fixed ``capacity x 64`` array.
    """

    __slots__ = ("_data", "_len", "_ring", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ring = RingBuffer(capacity)  # times (the value column holds the row index)
        self._data = np.zeros((capacity, MAX_FRAME_BYTES), np.uint8)
        self._len = np.zeros(capacity, np.uint8)

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def overwritten(self) -> int:
        return self._ring.overwritten

    @property
    def nbytes(self) -> int:
        return self._ring.nbytes + int(self._data.nbytes + self._len.nbytes)

    def push(self, t_ns: npt.NDArray[np.int64], data: Sequence[bytes]) -> None:
        n = len(data)
        if n == 0:
            return
        cap = self.capacity
        rows = (self._ring._pos + np.arange(n)) % cap if n < cap else np.arange(cap)
        payloads = data[-cap:] if n >= cap else data
        for row, payload in zip(rows.tolist(), payloads, strict=True):
            k = min(len(payload), MAX_FRAME_BYTES)
            self._data[row, :k] = np.frombuffer(payload[:k], np.uint8)
            self._len[row] = k
        self._ring.push(t_ns, rows.astype(np.float64) if n < cap else np.arange(cap, dtype=np.float64))

    def view(self) -> tuple[npt.NDArray[np.int64], list[bytes]]:
        """Times and payloads of the held frames, oldest first."""
        t, rows = self._ring.view()
        idx = rows.astype(np.int64).tolist()
        return t, [self._data[i, : self._len[i]].tobytes() for i in idx]


@dataclass(frozen=True, slots=True)
class BufferPlan:
    """Capacities per signal id and the memory they take."""

    capacity: Mapping[int, int]  # signal id -> samples
    history_ns: Mapping[int, int]  # signal id -> longest history any campaign needs
    campaign_bytes: Mapping[str, int]  # campaign name -> bytes of its own needs, as if alone
    frame_capacity: Mapping[FrameKey, int] = field(default_factory=dict)  # (bus, id) -> frames

    @property
    def total_bytes(self) -> int:
        return (
            sum(self.capacity.values()) * BYTES_PER_SAMPLE
            + sum(self.frame_capacity.values()) * BYTES_PER_FRAME
        )


def buffer_needs(campaign: Campaign) -> dict[str, int]:
    """History in ns per signal name one campaign needs kept (0: the latest samples only)."""
    if not isinstance(campaign.mode, Condition):
        return {}
    cond = campaign.mode
    needs: dict[str, int] = dict.fromkeys(cond.expression.signals, 0)
    for s in campaign.signals:
        needs[s] = max(needs.get(s, 0), cond.pre_trigger_ms * 1_000_000)
    for w in cond.expression.cost().windows:
        needs[w.signal] = max(needs.get(w.signal, 0), w.window_ns)
    return needs


def frame_needs(campaign: Campaign) -> dict[FrameKey, int]:
    """Pre-trigger history in ns per raw frame id one campaign captures."""
    if not isinstance(campaign.mode, Condition):
        return {}
    pre_ns = campaign.mode.pre_trigger_ms * 1_000_000
    return {(f.bus, f.arbitration_id): pre_ns for f in campaign.mode.raw_frames}


def _capacity(history_ns: int, rate_hz: float) -> int:
    # round() first so 2 s * 50 Hz * 1.1 is 110, not 110.00000000000001 -> 111
    return math.ceil(round(history_ns / 1e9 * rate_hz * _JITTER, 9)) + _EDGE


def plan_buffers(
    campaigns: Sequence[Campaign],
    catalog: Catalog,
    rate_hz: Mapping[int, float],
    memory_budget_bytes: int,
    *,
    frame_rate_hz: Mapping[FrameKey, float] | None = None,
) -> BufferPlan:
    """Size one ring buffer per signal (and raw frame id) that condition campaigns use, within the budget.

    ``rate_hz`` maps signal ids to their expected sample rate and ``frame_rate_hz``
    maps ``(bus, arbitration_id)`` to the expected frame rate (e.g. from the DBC
    cycle times, see :func:`rates_from_dbc` and :func:`frame_rates_from_dbc`).
    Something that needs history but has no rate is an error. Campaigns must have
    passed :func:`~tcu.collect.campaign.validate`.
    """
    frame_rate_hz = frame_rate_hz or {}
    ids = {s.name: s.signal_id for s in catalog.signals}
    order = sorted(range(len(campaigns)), key=lambda i: (-campaigns[i].priority, i))
    history: dict[int, int] = {}
    frame_history: dict[FrameKey, int] = {}
    campaign_bytes: dict[str, int] = {}
    refused: list[Campaign] = []

    def no_rate(c: Campaign, what: str, hist_ns: int) -> CampaignError:
        return CampaignError(
            f"campaign {c.name!r}: {what} needs {hist_ns / 1e6:g} ms of history "
            "but has no expected rate to size its buffer",
            path=c.source.path,
            line=c.source.line,
        )

    def size(signals: Mapping[int, int], frames: Mapping[FrameKey, int]) -> int:
        return (
            sum(_capacity(h, rate_hz.get(k, 0.0)) for k, h in signals.items()) * BYTES_PER_SAMPLE
            + sum(_capacity(h, frame_rate_hz.get(k, 0.0)) for k, h in frames.items()) * BYTES_PER_FRAME
        )

    for i in order:
        c = campaigns[i]
        own: dict[int, int] = {}
        for name, hist_ns in buffer_needs(c).items():
            sid = ids[name]
            if hist_ns > 0 and not rate_hz.get(sid, 0.0) > 0:
                raise no_rate(c, f"signal {name!r}", hist_ns)
            own[sid] = hist_ns
        own_frames = frame_needs(c)
        for (bus, arb), hist_ns in own_frames.items():
            if hist_ns > 0 and not frame_rate_hz.get((bus, arb), 0.0) > 0:
                raise no_rate(c, f"raw frame {bus}/0x{arb:X}", hist_ns)
        campaign_bytes[c.name] = size(own, own_frames)
        merged = dict(history)
        for sid, h in own.items():
            merged[sid] = max(merged.get(sid, 0), h)
        merged_frames = dict(frame_history)
        for key, h in own_frames.items():
            merged_frames[key] = max(merged_frames.get(key, 0), h)
        if size(merged, merged_frames) > memory_budget_bytes:
            refused.append(c)
        else:
            history, frame_history = merged, merged_frames
    if refused:
        first = refused[0]
        listed = ", ".join(f"{c.name!r} ({campaign_bytes[c.name]} bytes alone)" for c in refused)
        raise CampaignError(
            f"ring buffers exceed the memory budget of {memory_budget_bytes} bytes; "
            f"taking campaigns by priority, these do not fit: {listed}",
            path=first.source.path,
            line=first.source.line,
        )
    capacity = {sid: _capacity(h, rate_hz.get(sid, 0.0)) for sid, h in history.items()}
    frame_capacity = {k: _capacity(h, frame_rate_hz.get(k, 0.0)) for k, h in frame_history.items()}
    return BufferPlan(capacity, history, campaign_bytes, frame_capacity)


def rates_from_dbc(catalog: Catalog, codecs: Mapping[str, Sequence[DatabaseCodec]]) -> dict[int, float]:
    """Expected rate per signal id from its DBC message's cycle time (``GenMsgCycleTime``).

    ``codecs``: bus → its compiled DBCs (:func:`tcu.signals.decoder.compile_codecs`).
    Signals whose message has no cycle time are left out.
    """
    rates: dict[int, float] = {}
    for spec in catalog.signals:
        for db in codecs.get(spec.bus, ()):
            msg = db.by_name(spec.message)
            if msg is None:
                continue
            if msg.cycle_time_ms is not None:
                rates[spec.signal_id] = 1000.0 / msg.cycle_time_ms
            break
    return rates


def frame_rates_from_dbc(
    codecs: Mapping[str, Sequence[DatabaseCodec]], keys: Iterable[FrameKey] | None = None
) -> dict[FrameKey, float]:
    """Expected frame rate per ``(bus, arbitration_id)`` from the DBC cycle times.

    With ``keys`` only those ids, else every message of every bus's DBCs. Ids
    with no DBC message or no cycle time are left out.
    """
    rates: dict[FrameKey, float] = {}
    if keys is None:
        for bus, dbs in codecs.items():
            for db in dbs:
                for msg in db.messages:
                    if msg.cycle_time_ms is not None:
                        rates.setdefault((bus, msg.frame_id), 1000.0 / msg.cycle_time_ms)
        return rates
    for bus, arb in keys:
        for db in codecs.get(bus, ()):
            found = next((m for m in db.messages if m.frame_id == arb), None)
            if found is None:
                continue
            if found.cycle_time_ms is not None:
                rates[(bus, arb)] = 1000.0 / found.cycle_time_ms
            break
    return rates
