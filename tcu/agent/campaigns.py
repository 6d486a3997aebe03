"""Collection campaigns in the agent: the engine, its events as batches, and replacing the set.

The default periodic campaign (the mapping's ``period_ms``) runs inside the
campaign engine beside the campaign set, so a sample chosen by several
campaigns travels once (:mod:`tcu.collect.engine`). Each
captured event becomes a batch of its own, spooled with its campaign's
priority, so eviction under a full spool takes bulk periodic data before
events.

An event's raw CAN frames (``raw_frames``) travel in the same batch
(``CapturedEvent.frames``). So that one event batch always fits the uplink's and
the ingest's default limits (16 MiB messages, 1,000,000 samples), an event
carries at most :data:`MAX_EVENT_FRAMES` frames and about
:data:`MAX_EVENT_FRAME_BYTES` bytes of them: beyond that the latest frames of
the window are left out, counted per id in ``CapturedFrames.dropped`` and logged,
never silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

import numpy as np

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.collect.buffer import frame_rates_from_dbc, rates_from_dbc
from tcu.collect.campaign import Campaign, load_campaigns, parse_campaigns, validate
from tcu.collect.engine import CampaignEngine, CapturedEvent, CapturedFrames
from tcu.config import CampaignSettings
from tcu.signals.codec import DatabaseCodec
from tcu.signals.mapping import Catalog

__all__ = ["MAX_EVENT_FRAMES", "MAX_EVENT_FRAME_BYTES", "CampaignRuntime", "encode_frames"]

log = logging.getLogger(__name__)

MAX_EVENT_FRAMES = 250_000
MAX_EVENT_FRAME_BYTES = 8 * 1024 * 1024
_FRAME_OVERHEAD_BYTES = 13  # upper bound per frame: packed sint64 offset (<= 10) + data tag and length


class CampaignRuntime:
    """The campaign engine of one agent, with what it needs to (re)load campaigns."""

    def __init__(
        self,
        settings: CampaignSettings,
        catalog: Catalog,
        codecs: Mapping[str, Sequence[DatabaseCodec]],
        *,
        vehicle_id: str,
        default_periodic: bool = True,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.vehicle_id = vehicle_id
        campaigns = load_campaigns(settings.file) if settings.file is not None else []
        validate(campaigns, catalog)
        self.engine = CampaignEngine(
            campaigns,
            catalog,
            rates_from_dbc(catalog, codecs),
            settings.memory_budget_bytes,
            frame_rates=frame_rates_from_dbc(codecs),
            default_periodic=default_periodic,
        )
        self.events_captured = 0
        self.frames_dropped = 0
        log.info("campaigns: %s", ", ".join(f"{n} v{v}" for n, v in self.engine.active()) or "none")

    def replace_from_text(self, text: str, *, origin: str) -> list[CapturedEvent]:
        """Parse, check and swap in a new campaign set; raises and keeps the old set when it is bad."""
        campaigns: list[Campaign] = parse_campaigns(text, path=origin)
        validate(campaigns, self.catalog)
        closed = self.engine.replace(campaigns)
        log.info(
            "campaigns replaced from %s: %s", origin, ", ".join(f"{n} v{v}" for n, v in self.engine.active())
        )
        return closed

    def checkin(self) -> ingest_pb.CheckIn:
        return ingest_pb.CheckIn(
            campaigns=[ingest_pb.CampaignVersion(name=n, version=v) for n, v in self.engine.active()]
        )

    def event_batch(self, event: CapturedEvent) -> bytes:
        """One event as a batch without samples (identity stamped at send time)."""
        self.events_captured += 1
        batch = telemetry_pb.TelemetryBatch(
            vehicle_id=self.vehicle_id,
            catalog_id=self.catalog.catalog_id,
            base_time_ns=event.start_t_ns,
            created_ns=time.time_ns(),
        )
        captured = batch.events.add(
            campaign=event.campaign,
            campaign_version=event.version,
            trigger_ns=event.trigger_t_ns,
            start_ns=event.start_t_ns,
            end_ns=event.end_t_ns,
            truncated=event.truncated,
            history_incomplete=event.history_incomplete,
        )
        for sid, t_ns, values in event.columns:
            column = captured.columns.add(signal_id=sid)
            column.t_offset_ns.extend((t_ns - event.start_t_ns).tolist())
            column.double_values.extend(values.tolist())
        dropped = encode_frames(captured, event.frames, event.start_t_ns)
        if dropped:
            self.frames_dropped += dropped
            log.warning(
                "event %s v%d at %d: %d raw frames of the window left out (the latest) to keep the"
                " event under %d frames / %d bytes; counted in CapturedFrames.dropped",
                event.campaign,
                event.version,
                event.trigger_t_ns,
                dropped,
                MAX_EVENT_FRAMES,
                MAX_EVENT_FRAME_BYTES,
            )
        return batch.SerializeToString()


def encode_frames(
    captured: telemetry_pb.CapturedEvent,
    frames: Sequence[CapturedFrames],
    start_ns: int,
    *,
    max_frames: int = MAX_EVENT_FRAMES,
    max_bytes: int = MAX_EVENT_FRAME_BYTES,
) -> int:
    """Add an event's raw frames to ``captured`` (offsets from ``start_ns``); returns how many were left out.

    Within the bounds every frame is kept. Beyond them the earliest frames of all
    ids together (by source time) are kept and the rest counted per id in ``dropped``.
    """
    counts = [len(f.data) for f in frames]
    total = sum(counts)
    sizes = np.fromiter((len(d) + _FRAME_OVERHEAD_BYTES for f in frames for d in f.data), np.int64, total)
    keep = counts
    if total > max_frames or int(sizes.sum()) > max_bytes:
        order = np.argsort(np.concatenate([f.t_ns for f in frames]), kind="stable")
        fits = (np.cumsum(sizes[order]) <= max_bytes) & (np.arange(1, total + 1) <= max_frames)
        kept = int(np.count_nonzero(fits))  # a prefix of ``order``: both sums only grow
        owner = np.repeat(np.arange(len(frames)), counts)
        keep = np.bincount(owner[order[:kept]], minlength=len(frames)).tolist()
    for f, n in zip(frames, keep, strict=True):
        entry = captured.frames.add(bus=f.bus, arbitration_id=f.arbitration_id, dropped=len(f.data) - n)
        entry.t_offset_ns.extend((f.t_ns[:n] - start_ns).tolist())
        entry.data.extend(f.data[:n])
    return total - sum(keep)
