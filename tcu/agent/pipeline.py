"""The agent's main path, written once: frames → decoder → engine → batch builder → outbox.

::

    FrameBatch ──decode──▶ SignalColumns ──process──▶ kept samples ──add──▶ BatchBuilder ──build──▶ sink
                               │                        events ──────────────event_batch────────▶ sink
                               └──▶ on_decoded hooks (e.g. the V2X adapter), before any selection

:meth:`Pipeline.feed` takes one :class:`~tcu.frames.FrameBatch` (the agent's: every bus's
frames of one tick, the ``channel`` column naming the bus; or one bus's, from a replayed log)
and carries it all the way: the decoder
(:class:`~tcu.signals.decoder.SignalDecoder`) turns it into catalog signal columns, every
``on_decoded`` hook gets those columns, the campaign engine
(:class:`~tcu.collect.engine.CampaignEngine`, which also runs the default periodic
campaign) selects the samples to keep and completes condition captures, the batch builder
collects the kept samples, and a batch that is due (full or old) is built and handed to the
sink, as is every completed event (a batch of its own, with its campaign's priority).
:meth:`flush` hands on the batch being built; :meth:`close` first closes the open captures
(marked truncated), then flushes. The agent, ``tcu replay`` and the benchmarks drive it the
same way.

**The decoded-signal hook.** ``on_decoded`` is a list of callables ``hook(columns)``, called
in order with the columns of each batch as they are decoded, before the engine selects
from them: every decoded sample of every catalog signal, ``(signal id, t_ns, values)``
per column (names and units from the catalog). A hook runs in the pipeline's task, so it
must be quick and must not block (hand the columns to a bounded queue of its own, with a
stated policy, if it does more). It must not modify the arrays. An exception from a hook is
logged with its traceback and counted in :attr:`PipelineStats.hook_errors`; the pipeline
goes on with the next hook and the batch.

The sink is an ``async`` callable ``sink(payload, priority)`` that takes one batch (the
agent's appends to its outbox, waiting for acks while the outbox is full: the outbox's
stated policy), and ``notify()`` tells the uplink that batches are waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tcu.collect.batch import BatchBuilder
from tcu.collect.engine import CampaignEngine, CapturedEvent
from tcu.frames import FrameBatch
from tcu.signals.decoder import SignalColumns, SignalDecoder

__all__ = ["BusCounts", "OnDecoded", "Pipeline", "PipelineStats", "Sink"]

log = logging.getLogger(__name__)

OnDecoded = Callable[[SignalColumns], None]
"""A consumer of decoded signal columns (see the module docstring)."""

Sink = Callable[[bytes, int], Awaitable[None]]
"""Takes one serialised batch and its priority (0-255)."""


@dataclass(slots=True)
class BusCounts:
    """Per bus: frames fed, decoded (a mapped message) and of an id no DBC of the bus defines."""

    frames: int = 0
    decoded: int = 0
    unknown: int = 0


@dataclass(slots=True)
class PipelineStats:
    frames: int = 0
    batches_built: int = 0
    events: int = 0
    hook_errors: int = 0
    by_bus: dict[str, BusCounts] = field(default_factory=dict)
    """Keyed by channel (bus) name; a batch of several buses (the agent's tick, a replayed log)
    is counted under each of its channels."""


class Pipeline:
    """decoder → engine → batch builder → sink, with ``feed(frames)`` and ``flush()``."""

    def __init__(
        self,
        decoder: SignalDecoder,
        engine: CampaignEngine,
        builder: BatchBuilder,
        sink: Sink,
        *,
        event_batch: Callable[[CapturedEvent], bytes],
        notify: Callable[[], None] = lambda: None,
        on_decoded: Sequence[OnDecoded] = (),
        chunk_frames: int = 8192,
    ) -> None:
        self.decoder = decoder
        self.engine = engine
        self.builder = builder
        self.on_decoded: list[OnDecoded] = list(on_decoded)
        self.chunk_frames = chunk_frames
        """A larger batch (a tick after a stall, a simulator faster than real time) is carried through
        in parts of this many frames, so that a built batch stays near ``[batch] max_samples``."""
        self.stats = PipelineStats()
        self._sink = sink
        self._event_batch = event_batch
        self._notify = notify
        self.handing_on_samples = 0
        """Samples of a built batch that waits for room in the sink (lost, and counted by the
        driver, if a shutdown deadline cancels that wait)."""

    async def feed(self, frames: FrameBatch) -> None:
        """Carry a batch (one bus or several) through decoder, hooks, engine, builder; hand on what is due."""
        n = len(frames)
        if n <= self.chunk_frames:
            await self._feed(frames)
            return
        for start in range(0, n, self.chunk_frames):
            await self._feed(frames.select(np.arange(start, min(n, start + self.chunk_frames))))

    async def _feed(self, frames: FrameBatch) -> None:
        self.stats.frames += len(frames)
        self.engine.record_frames(frames)
        counts = self.decoder.counts
        names = frames.channels or ("",)
        decoded_by, unknown_by = counts.decoded_by_bus, counts.unknown_by_bus
        before = [(decoded_by.get(name, 0), unknown_by.get(name, 0)) for name in names]
        columns = self.decoder.decode(frames)
        # Per bus from the decoder's per-channel totals: a few lookups per batch, nothing per frame.
        one = len(names) == 1
        fed = [len(frames)] if one else np.bincount(frames.channel, minlength=len(names)).tolist()
        for name, n, (decoded, unknown) in zip(names, fed, before, strict=True):
            if not n:
                continue
            bus = self.stats.by_bus.get(name)
            if bus is None:
                bus = self.stats.by_bus[name] = BusCounts()
            bus.frames += n
            bus.decoded += decoded_by.get(name, 0) - decoded
            bus.unknown += unknown_by.get(name, 0) - unknown
        for hook in self.on_decoded:
            try:
                hook(columns)
            except Exception:  # a consumer's bug must not stop the telemetry
                self.stats.hook_errors += 1
                log.exception("on_decoded hook %r failed (%d so far)", hook, self.stats.hook_errors)
        out = self.engine.process(columns)
        self.builder.add(out.samples)
        await self.events(out.events)
        if self.builder.due():
            await self.flush()

    async def events(self, events: Sequence[CapturedEvent]) -> None:
        """Each completed event is a batch of its own, with its campaign's priority."""
        if not events:
            return
        for event in events:
            await self._sink(self._event_batch(event), event.priority)
            self.stats.events += 1
        self._notify()

    async def flush(self) -> None:
        """Hand on the batch being built (if it holds any sample)."""
        if not self.builder.samples:
            return
        payload, count = self.builder.build()
        self.handing_on_samples = count
        await self._sink(payload, 0)
        self.handing_on_samples = 0
        self.stats.batches_built += 1
        self._notify()

    async def flush_due(self) -> None:
        """Flush when the batch being built is old enough (``[batch] max_age_ms``)."""
        if self.builder.due():
            await self.flush()

    def wait_s(self, longest_s: float = 0.5) -> float:
        """How long a driver may wait for frames before the batch being built is due."""
        if not self.builder.samples:
            return longest_s
        return min(longest_s, max(0.0, self.builder.max_age_s - self.builder.age_s()))

    async def close(self) -> None:
        """At the end: close the open captures (marked truncated), then flush."""
        await self.events(self.engine.flush())
        await self.flush()
