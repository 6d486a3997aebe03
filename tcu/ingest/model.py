"""Typed values the ingest passes between its parts (parsed once from protobuf, never re-parsed)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from tcu.errors import IngestError

__all__ = [
    "Batch",
    "CampaignRef",
    "Capture",
    "Catalog",
    "Column",
    "FrameSeries",
    "HistoryQuery",
    "LossRecord",
    "QuarantinedBatch",
    "Series",
    "SignalDef",
    "StoreResult",
    "ValueKind",
    "VehicleNotFound",
    "VehicleSummary",
]


class VehicleNotFound(IngestError):
    """A query names a vehicle the sink has no data for."""


class ValueKind(enum.Enum):
    """How a signal's values are carried (the catalog's ``ValueType``)."""

    DOUBLE = "double"
    STRING = "string"


@dataclass(frozen=True, slots=True)
class SignalDef:
    """One signal of a catalog."""

    signal_id: int
    name: str
    unit: str
    kind: ValueKind
    source: str = ""
    resolution: float = 0.0
    period_ms: int = 0


@dataclass(frozen=True, slots=True)
class Catalog:
    """The signals a stream announced in its Hello, by signal id."""

    catalog_id: str
    signals: Mapping[int, SignalDef]


@dataclass(frozen=True, slots=True)
class Column:
    """The samples of one signal in one batch, with absolute times."""

    signal: SignalDef
    t_ns: list[int]
    """UTC epoch nanoseconds (source time)."""
    double_values: list[float]
    string_values: list[str]

    def __len__(self) -> int:
        return len(self.t_ns)


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated telemetry batch. ``(vehicle_id, boot_epoch, seq)`` identifies it."""

    vehicle_id: str
    boot_epoch: int
    seq: int
    catalog: Catalog
    base_time_ns: int
    created_ns: int
    columns: tuple[Column, ...]
    loss: LossRecord | None = None
    """Set when this sequence number stands for a batch the vehicle lost (no columns then)."""
    events: tuple[Capture, ...] = ()
    """Captures of condition-triggered campaigns carried by this batch (``TelemetryBatch.events``)."""
    payload: bytes = b""
    """The batch's bytes as received, kept so that the sink can quarantine a batch it fails to write."""

    @property
    def samples(self) -> int:
        return sum(len(column) for column in self.columns)


@dataclass(frozen=True, slots=True)
class FrameSeries:
    """Raw CAN frames of one ``(bus, arbitration_id)`` in a capture, with absolute times."""

    bus: str
    arbitration_id: int
    t_ns: list[int]
    """UTC epoch nanoseconds (CAN source time), one per frame."""
    data: list[bytes]
    """Payload of each frame (0-64 bytes)."""
    dropped: int = 0
    """Frames of the window the vehicle left out (the latest ones) to fit its batch limits."""

    def __len__(self) -> int:
        return len(self.t_ns)


@dataclass(frozen=True, slots=True)
class Capture:
    """A validated captured event: a campaign's samples around one trigger, with absolute times.

    Every sample and frame time lies in ``[start_ns, end_ns]`` and ``start_ns <= trigger_ns <= end_ns``.
    """

    campaign: str
    campaign_version: int
    trigger_ns: int
    start_ns: int
    end_ns: int
    columns: tuple[Column, ...]
    truncated: bool = False
    history_incomplete: bool = False
    frames: tuple[FrameSeries, ...] = ()
    """Raw CAN frames of the campaign's ``raw_frames`` ids, one entry per ``(bus, id)``."""

    @property
    def samples(self) -> int:
        return sum(len(column) for column in self.columns)

    @property
    def frame_count(self) -> int:
        return sum(len(frames) for frames in self.frames)


@dataclass(frozen=True, slots=True)
class CampaignRef:
    """A campaign a vehicle runs, as its latest check-in named it."""

    name: str
    version: int


@dataclass(frozen=True, slots=True)
class LossRecord:
    """A batch the vehicle gave up before it was acked (spool eviction, age, corruption)."""

    reason: str
    priority: int
    created_ns: int
    payload_bytes: int


@dataclass(frozen=True, slots=True)
class QuarantinedBatch:
    """A batch whose own content the ingest could not accept, kept as it arrived.

    Its ``(vehicle_id, boot_epoch, seq)`` counts as stored (acks pass it, retries are
    duplicates); ``payload`` is the batch's bytes exactly as received (the
    ``UploadRequest.batch`` field), so nothing the vehicle sent is lost.
    """

    vehicle_id: str
    boot_epoch: int
    seq: int
    reason: str
    received_ns: int
    """Ingest clock (UTC epoch ns) when the batch was read from the stream."""
    payload: bytes
    catalog_id: str = ""
    """The announced catalog the batch names (the Hello's ``catalog`` when it names none of them)."""
    agent_version: str = ""


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What a sink answers for one batch, after it is durable."""

    duplicate: bool
    """The batch had been stored before; nothing was stored again."""
    acked_seq: int
    """Highest ``s`` such that batches 1..s of this (vehicle, boot epoch) are all stored."""
    quarantined: bool = False
    """The key is held in quarantine (stored now, or before when ``duplicate``)."""
    reason: str = ""
    """Why the sink quarantined a :class:`Batch` that passed validation (its write failed)."""


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """Stored samples of one vehicle in ``[start_ns, end_ns)``; empty ``signals`` means all."""

    vehicle_id: str
    signals: tuple[str, ...]
    start_ns: int
    end_ns: int
    chunk_samples: int


@dataclass(frozen=True, slots=True)
class Series:
    """Samples of one signal, time-ordered; one of the value lists is filled, as ``kind`` says."""

    name: str
    unit: str
    kind: ValueKind
    t_ns: list[int]
    double_values: list[float]
    string_values: list[str]


@dataclass(frozen=True, slots=True)
class VehicleSummary:
    """What the sink knows about one vehicle."""

    vehicle_id: str
    boot_epoch: int
    """Boot epoch of the most recently stored batch."""
    batches: int
    samples: int
    signals: tuple[str, ...]
    first_sample_ns: int
    last_sample_ns: int
    last_seen_ns: int
    """Ingest clock (UTC epoch ns) of the most recent commit for this vehicle."""
    lost_batches: int = 0
    """Sequence numbers the vehicle reported as lost batches (``DataLoss``)."""
    campaigns: tuple[CampaignRef, ...] = ()
    """Campaigns of the vehicle's latest check-in (empty when it never checked in)."""
    checkin_ns: int = 0
    """Ingest clock (UTC epoch ns) of that check-in; 0 when there was none."""
    quarantined_batches: int = 0
    """Batches of the vehicle held in quarantine (malformed content, see :class:`QuarantinedBatch`)."""
