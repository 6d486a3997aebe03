"""Typed values the ingest passes between its parts (parsed once from protobuf, never re-parsed)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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



def _as_list(given: Any) -> list[Any]:
    """A column's values as a list (arrays kept as given are converted only when a list is asked for)."""
    if isinstance(given, np.ndarray):
        out: list[Any] = given.tolist()
        return out
    return given if isinstance(given, list) else list(given)

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


class Column:
    """The samples of one signal in one batch, with absolute times.

    Validation (:mod:`tcu.ingest.validate`) hands over whole numpy columns (views of one
    array per batch); the store packs :attr:`times` and :attr:`doubles` without a Python
    step per sample. :attr:`t_ns` and :attr:`double_values` are the same samples as lists
    (made when asked, for the hub, events and tests); a column built from lists keeps them
    as given. Immutable, compared by value like the dataclass it replaces.
    """

    __slots__ = ("_doubles", "_t_ns", "signal", "string_values")

    signal: SignalDef
    string_values: list[str]
    _t_ns: Sequence[int] | npt.NDArray[np.int64]
    _doubles: Sequence[float] | npt.NDArray[np.float64]

    def __init__(
        self,
        signal: SignalDef,
        t_ns: Sequence[int] | npt.NDArray[np.int64],
        double_values: Sequence[float] | npt.NDArray[np.float64],
        string_values: list[str],
    ) -> None:
        object.__setattr__(self, "signal", signal)
        object.__setattr__(self, "_t_ns", t_ns)
        object.__setattr__(self, "_doubles", double_values)
        object.__setattr__(self, "string_values", string_values)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Column is immutable: cannot set {name}")

    @property
    def t_ns(self) -> list[int]:
        """UTC epoch nanoseconds (source time)."""
        return _as_list(self._t_ns)

    @property
    def double_values(self) -> list[float]:
        return _as_list(self._doubles)

    @property
    def times(self) -> npt.NDArray[np.int64]:
        """:attr:`t_ns` as an int64 array (no copy when it is one; OverflowError for a time beyond int64)."""
        return np.asarray(self._t_ns, dtype=np.int64)

    @property
    def doubles(self) -> npt.NDArray[np.float64]:
        """:attr:`double_values` as a float64 array (no copy when it is one)."""
        return np.asarray(self._doubles, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._t_ns)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Column):
            return NotImplemented
        return (self.signal, self.t_ns, self.double_values, self.string_values) == (
            other.signal,
            other.t_ns,
            other.double_values,
            other.string_values,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable lists inside, as the dataclass had

    def __repr__(self) -> str:
        return (
            f"Column(signal={self.signal!r}, t_ns={self.t_ns!r}, double_values={self.double_values!r},"
            f" string_values={self.string_values!r})"
        )


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


class Series:
    """Samples of one signal, time-ordered; one of the value lists is filled, as ``kind`` says.

    The store hands over numpy arrays (:attr:`times`, :attr:`doubles`), which Query writes to
    the wire without a Python step per sample (:mod:`tcu.ingest._query_wire`); :attr:`t_ns`
    and :attr:`double_values` are the same samples as lists. Compared by value.
    """

    __slots__ = ("_doubles", "_t_ns", "kind", "name", "string_values", "unit")

    name: str
    unit: str
    kind: ValueKind
    string_values: list[str]
    _t_ns: Sequence[int] | npt.NDArray[np.int64]
    _doubles: Sequence[float] | npt.NDArray[np.float64]

    def __init__(  # noqa: PLR0917 - the positional order of the dataclass it replaces
        self,
        name: str,
        unit: str,
        kind: ValueKind,
        t_ns: Sequence[int] | npt.NDArray[np.int64],
        double_values: Sequence[float] | npt.NDArray[np.float64],
        string_values: list[str],
    ) -> None:
        for key, value in (
            ("name", name),
            ("unit", unit),
            ("kind", kind),
            ("_t_ns", t_ns),
            ("_doubles", double_values),
            ("string_values", string_values),
        ):
            object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Series is immutable: cannot set {name}")

    @property
    def t_ns(self) -> list[int]:
        """UTC epoch nanoseconds (source time)."""
        return _as_list(self._t_ns)

    @property
    def double_values(self) -> list[float]:
        return _as_list(self._doubles)

    @property
    def times(self) -> npt.NDArray[np.int64]:
        return np.asarray(self._t_ns, dtype=np.int64)

    @property
    def doubles(self) -> npt.NDArray[np.float64]:
        return np.asarray(self._doubles, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._t_ns)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Series):
            return NotImplemented
        mine = (self.name, self.unit, self.kind, self.t_ns, self.double_values, self.string_values)
        theirs = (other.name, other.unit, other.kind, other.t_ns, other.double_values, other.string_values)
        return mine == theirs

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Series(name={self.name!r}, unit={self.unit!r}, kind={self.kind!r}, t_ns={self.t_ns!r},"
            f" double_values={self.double_values!r}, string_values={self.string_values!r})"
        )


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
