"""Check an Upload stream's Hello and batches before anything is stored.

Every problem raises :class:`~tcu.errors.BatchRejected` with a message that
names the batch, the signal and what was wrong, e.g.
``batch seq 7: column for signal 12 (Vehicle.Speed) has 5 times but 4 values``.

Every value that reaches the store is range-checked here: wire integers that SQLite's
int64 ``INTEGER`` cannot hold (``uint64`` fields such as ``boot_epoch``, ``seq`` and
``DataLoss.payload_bytes``; sums of base and offset times) and doubles that go to a
``NOT NULL`` column (a catalog's ``resolution`` must be finite; SQLite stores NaN as NULL).

:func:`validate_batch` tells two kinds apart. A batch that does not belong on its
stream (another vehicle, no usable ``(boot_epoch, seq)`` identity) raises
:class:`~tcu.errors.StreamRejected`: the stream ends. Any other problem is one of the
batch's own content (a catalog the Hello did not announce, columns, signal ids, value
types, limits, events) and raises a plain ``BatchRejected``: the ingest keeps that
batch in quarantine (its bytes, for a later decode) and the stream carries on. A
batch of an unannounced catalog is content, not stream: ending the stream would make
the agent resend it forever and strand every later batch behind it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import BatchRejected, StreamRejected
from tcu.ingest.config import IngestConfig
from tcu.ingest.model import (
    Batch,
    CampaignRef,
    Capture,
    Catalog,
    Column,
    FrameSeries,
    LossRecord,
    SignalDef,
    ValueKind,
)

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "Limits",
    "Session",
    "check_batch_identity",
    "implausible_samples",
    "validate_batch",
    "validate_checkin",
    "validate_hello",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_FRAME_PAYLOAD_BYTES = 64  # CAN FD

_KINDS = {
    telemetry_pb.VALUE_TYPE_DOUBLE: ValueKind.DOUBLE,
    telemetry_pb.VALUE_TYPE_STRING: ValueKind.STRING,
}


#: Samples dated before this (2000-01-01T00:00:00Z) are implausible (a log replayed without its time base).
PLAUSIBLE_AFTER_NS = 946_684_800 * 1_000_000_000
#: ... and so are samples more than this past the ingest's clock.
FUTURE_SLACK_NS = 86_400 * 1_000_000_000


def implausible_samples(batch: Batch, now_ns: int) -> tuple[int, int | None]:
    """(count, first time) of the batch's samples dated before 2000 or more than a day after ``now_ns``.

    Such samples are stored (they are what the vehicle sent) but flagged: the ingest counts
    them per vehicle and logs them, rather than storing 1970 silently. One array for the
    whole batch (its columns in order): a min and a max in the common case.
    """
    latest = now_ns + FUTURE_SLACK_NS
    arrays = [column.times for column in batch.columns if len(column)]
    if not arrays:
        return 0, None
    t_ns = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
    if int(t_ns.min()) >= PLAUSIBLE_AFTER_NS and int(t_ns.max()) <= latest:
        return 0, None  # the common case
    bad = (t_ns < PLAUSIBLE_AFTER_NS) | (t_ns > latest)
    count = int(np.count_nonzero(bad))
    return count, (int(t_ns[int(np.argmax(bad))]) if count else None)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size bounds for one Hello or batch."""

    max_catalog_signals: int = 65_536
    max_batch_columns: int = 65_536
    max_batch_samples: int = 1_000_000
    max_string_bytes: int = 4096
    max_checkin_campaigns: int = 4096
    max_previous_catalogs: int = 16
    """``Hello.previous_catalogs``: older catalogs whose batches still wait in the vehicle's spool."""
    max_hello_bytes: int = 1024 * 1024
    """Serialised size of a Hello (its catalogs live as long as the stream)."""
    max_vehicle_signals: int = 16_384
    """Signals of a Hello over all its catalogs."""

    @classmethod
    def from_config(cls, config: IngestConfig) -> Limits:
        return cls(
            max_hello_bytes=config.max_hello_bytes,
            max_vehicle_signals=config.max_vehicle_signals,
            max_catalog_signals=config.max_catalog_signals,
            max_batch_columns=config.max_batch_columns,
            max_batch_samples=config.max_batch_samples,
            max_string_bytes=config.max_string_bytes,
        )


@dataclass(frozen=True, slots=True)
class Session:
    """What a stream's Hello announced; batches are checked against it."""

    vehicle_id: str
    boot_epoch: int
    catalog: Catalog
    """The vehicle's current catalog (``Hello.catalog``)."""
    agent_version: str
    catalogs: Mapping[str, Catalog]
    """Every announced catalog by id: the current one and ``Hello.previous_catalogs``."""


def _check_text(what: str, value: str, limits: Limits, *, required: bool) -> None:
    if required and not value:
        raise BatchRejected(f"{what} is empty")
    if len(value.encode("utf-8")) > limits.max_string_bytes:
        raise BatchRejected(f"{what} is longer than {limits.max_string_bytes} bytes")


def validate_hello(hello: ingest_pb.Hello, limits: Limits) -> Session:
    """Check a stream's first message and build its catalogs.

    ``previous_catalogs`` (older catalogs that spooled batches were built with) are
    checked like ``catalog``; at most ``limits.max_previous_catalogs``, each id once.
    """
    size = hello.ByteSize()
    if size > limits.max_hello_bytes:
        raise BatchRejected(
            f"hello of {size} bytes from vehicle {hello.vehicle_id[:64]!r}: more than max_hello_bytes"
            f" {limits.max_hello_bytes}"
        )
    _check_text("hello: vehicle_id", hello.vehicle_id, limits, required=True)
    if hello.boot_epoch > INT64_MAX:
        raise BatchRejected(f"hello: boot_epoch {hello.boot_epoch} is above {INT64_MAX}")
    if not hello.HasField("catalog"):
        raise BatchRejected(f"hello from vehicle {hello.vehicle_id!r}: no catalog")
    if len(hello.previous_catalogs) > limits.max_previous_catalogs:
        raise BatchRejected(
            f"hello from vehicle {hello.vehicle_id!r}: {len(hello.previous_catalogs)} previous catalogs,"
            f" more than {limits.max_previous_catalogs}"
        )
    signals = len(hello.catalog.signals) + sum(len(c.signals) for c in hello.previous_catalogs)
    if signals > limits.max_vehicle_signals:
        raise BatchRejected(
            f"hello from vehicle {hello.vehicle_id!r}: {signals} signals in its catalogs, more than"
            f" max_vehicle_signals {limits.max_vehicle_signals}"
        )
    catalog = _catalog("hello: catalog", hello.catalog, limits)
    catalogs = {catalog.catalog_id: catalog}
    for index, message in enumerate(hello.previous_catalogs):
        previous = _catalog(f"hello: previous catalog #{index}", message, limits)
        if previous.catalog_id in catalogs:
            raise BatchRejected(
                f"hello: previous catalog #{index}: catalog {previous.catalog_id} is announced twice"
            )
        catalogs[previous.catalog_id] = previous
    return Session(
        vehicle_id=hello.vehicle_id,
        boot_epoch=hello.boot_epoch,
        catalog=catalog,
        agent_version=hello.agent_version,
        catalogs=catalogs,
    )


def _catalog(what: str, catalog: telemetry_pb.SignalCatalog, limits: Limits) -> Catalog:
    _check_text(f"{what}.catalog_id", catalog.catalog_id, limits, required=True)
    if len(catalog.signals) > limits.max_catalog_signals:
        raise BatchRejected(
            f"{what} {catalog.catalog_id} has {len(catalog.signals)} signals,"
            f" more than {limits.max_catalog_signals}"
        )
    signals: dict[int, SignalDef] = {}
    names: set[str] = set()
    for index, info in enumerate(catalog.signals):
        where = f"{what} {catalog.catalog_id} signal #{index} (id {info.signal_id})"
        _check_text(f"{where}: name", info.name, limits, required=True)
        _check_text(f"{where}: unit", info.unit, limits, required=False)
        _check_text(f"{where}: source", info.source, limits, required=False)
        kind = _KINDS.get(info.type)
        if kind is None:
            raise BatchRejected(f"{where} ({info.name}): value type {info.type} is not DOUBLE or STRING")
        if info.signal_id in signals:
            raise BatchRejected(f"{where} ({info.name}): signal id is used twice")
        if info.name in names:
            raise BatchRejected(f"{where}: name {info.name} is used twice")
        if not math.isfinite(info.resolution):  # SQLite stores NaN as NULL: the catalog row would fail
            raise BatchRejected(f"{where} ({info.name}): resolution {info.resolution} is not a finite number")
        names.add(info.name)
        signals[info.signal_id] = SignalDef(
            signal_id=info.signal_id,
            name=info.name,
            unit=info.unit,
            kind=kind,
            source=info.source,
            resolution=info.resolution,
            period_ms=info.period_ms,
        )
    return Catalog(catalog_id=catalog.catalog_id, signals=signals)


def validate_checkin(session: Session, checkin: ingest_pb.CheckIn, limits: Limits) -> tuple[CampaignRef, ...]:
    """Check a CheckIn: named campaigns, each name once, at most ``max_checkin_campaigns``."""
    label = f"check-in of vehicle {session.vehicle_id}"
    if len(checkin.campaigns) > limits.max_checkin_campaigns:
        raise BatchRejected(
            f"{label}: {len(checkin.campaigns)} campaigns, more than {limits.max_checkin_campaigns}"
        )
    names: set[str] = set()
    for index, campaign in enumerate(checkin.campaigns):
        _check_text(f"{label}: campaign #{index} name", campaign.name, limits, required=True)
        if campaign.name in names:
            raise BatchRejected(f"{label}: campaign {campaign.name!r} is named twice")
        names.add(campaign.name)
    return tuple(CampaignRef(name=c.name, version=c.version) for c in checkin.campaigns)


def validate_batch(session: Session, batch: telemetry_pb.TelemetryBatch, limits: Limits) -> Batch:
    """Check one batch against its stream's Hello and turn it into absolute-time columns.

    A batch may carry another boot epoch than the Hello (spooled batches of an
    earlier boot); its vehicle must be the stream's and its catalog one the Hello
    announced (``catalog`` or one of ``previous_catalogs``), whose signals its columns
    are read against.

    Raises :class:`~tcu.errors.StreamRejected` when the batch does not belong on the
    stream (see the module doc) and a plain ``BatchRejected`` for its own content.
    """
    check_batch_identity(session, batch)
    label = f"batch seq {batch.seq}"
    catalog = session.catalog
    if batch.HasField("loss"):
        if batch.columns or batch.events:
            raise BatchRejected(
                f"{label}: a DataLoss batch must not carry columns or events"
                f" ({len(batch.columns)} columns, {len(batch.events)} events given)"
            )
        if len(batch.loss.reason.encode("utf-8")) > limits.max_string_bytes:
            raise BatchRejected(f"{label}: DataLoss reason longer than {limits.max_string_bytes} bytes")
        if batch.loss.payload_bytes > INT64_MAX:  # uint64 on the wire, INTEGER (int64) in the store
            raise BatchRejected(
                f"{label}: DataLoss payload_bytes {batch.loss.payload_bytes} is above {INT64_MAX}"
            )
        return Batch(
            vehicle_id=batch.vehicle_id,
            boot_epoch=batch.boot_epoch,
            seq=batch.seq,
            catalog=catalog,
            base_time_ns=0,
            created_ns=batch.created_ns,
            columns=(),
            loss=LossRecord(
                reason=batch.loss.reason or "unknown",
                priority=batch.loss.priority,
                created_ns=batch.loss.created_ns,
                payload_bytes=batch.loss.payload_bytes,
            ),
        )
    announced = session.catalogs.get(batch.catalog_id)
    if announced is None:
        if len(session.catalogs) > 1:
            known = ", ".join(repr(c) for c in session.catalogs)
            raise BatchRejected(
                f"{label}: catalog_id {batch.catalog_id!r} is none of the announced catalogs ({known})"
            )
        raise BatchRejected(
            f"{label}: catalog_id {batch.catalog_id!r} is not the announced catalog {catalog.catalog_id!r}"
        )
    catalog = announced
    columns_total = len(batch.columns) + sum(len(event.columns) for event in batch.events)
    if columns_total > limits.max_batch_columns:
        raise BatchRejected(f"{label}: {columns_total} columns, more than {limits.max_batch_columns}")
    budget = _Budget(limits.max_batch_samples)
    base_ns = batch.base_time_ns
    columns = _columns(label, batch.columns, catalog, limits, base_ns, budget=budget, window=None)
    events: list[Capture] = []
    for index, event in enumerate(batch.events):
        where = f"{label}: event #{index} ({event.campaign or '?'} v{event.campaign_version})"
        _check_text(f"{where}: campaign", event.campaign, limits, required=True)
        if not event.start_ns <= event.trigger_ns <= event.end_ns:
            raise BatchRejected(
                f"{where}: times out of order: start_ns {event.start_ns}, trigger_ns {event.trigger_ns},"
                f" end_ns {event.end_ns} (need start <= trigger <= end)"
            )
        events.append(
            Capture(
                campaign=event.campaign,
                campaign_version=event.campaign_version,
                trigger_ns=event.trigger_ns,
                start_ns=event.start_ns,
                end_ns=event.end_ns,
                columns=_columns(
                    where,
                    event.columns,
                    catalog,
                    limits,
                    event.start_ns,
                    budget=budget,
                    window=(event.start_ns, event.end_ns),
                ),
                truncated=event.truncated,
                history_incomplete=event.history_incomplete,
                frames=_frames(where, event, limits, budget=budget),
            )
        )
    return Batch(
        vehicle_id=batch.vehicle_id,
        boot_epoch=batch.boot_epoch,
        seq=batch.seq,
        catalog=catalog,
        base_time_ns=base_ns,
        created_ns=batch.created_ns,
        columns=columns,
        events=tuple(events),
    )


def check_batch_identity(session: Session, batch: telemetry_pb.TelemetryBatch) -> None:
    """Raise :class:`~tcu.errors.StreamRejected` unless the batch is the stream's vehicle's and
    has a usable ``(boot_epoch, seq)`` (what quarantine and acks key on)."""
    label = f"batch seq {batch.seq}"
    if batch.vehicle_id != session.vehicle_id:
        raise StreamRejected(
            f"{label}: vehicle_id {batch.vehicle_id!r} is not the stream's vehicle {session.vehicle_id!r}"
        )
    if batch.seq < 1:
        raise StreamRejected(f"{label}: seq must be 1 or more")
    if batch.seq > INT64_MAX or batch.boot_epoch > INT64_MAX:
        raise StreamRejected(f"{label}: seq or boot_epoch {batch.boot_epoch} is above {INT64_MAX}")


@dataclass(slots=True)
class _Budget:
    """Samples a batch may still carry: its columns and its events' columns count together."""

    left: int

    def take(self, label: str, count: int, limit: int) -> None:
        self.left -= count
        if self.left < 0:
            raise BatchRejected(f"{label}: more than {limit} samples")


def _columns(
    label: str,
    messages: Sequence[telemetry_pb.SignalColumn],
    catalog: Catalog,
    limits: Limits,
    base_ns: int,
    *,
    budget: _Budget,
    window: tuple[int, int] | None,
) -> tuple[Column, ...]:
    """Check columns against the catalog and make their times absolute (``base_ns + offset``).

    With ``window`` (an event's ``[start_ns, end_ns]``) every absolute time must lie inside it.

    The samples are handled as whole arrays: every column's offsets and doubles are read
    into one int64 and one float64 array (one pass over the parsed message), each column's
    lowest and highest offset is one ``reduceat`` over them, and the columns handed on are
    views of ``offsets + base_ns``. Python loops over columns (their checks, in order, as
    before), never over samples (except the UTF-8 length of string values).
    """
    # Each repeated field read once (every access builds a wrapper): (column, offsets, doubles, strings).
    parts = [(c, c.t_offset_ns, c.double_values, c.string_values) for c in messages]
    counts = [len(offs) for _, offs, _, _ in parts]
    total = sum(counts)
    offsets = np.fromiter(
        itertools.chain.from_iterable(offs for _, offs, _, _ in parts), dtype=np.int64, count=total
    )
    starts = np.cumsum([0, *counts[:-1]], dtype=np.int64) if counts else np.empty(0, np.int64)
    lows: list[int] = []
    highs: list[int] = []
    if total:
        at = starts[np.asarray(counts, dtype=np.int64) > 0]
        lows = np.minimum.reduceat(offsets, at).tolist()
        highs = np.maximum.reduceat(offsets, at).tolist()
    seen: set[int] = set()
    signals: list[SignalDef] = []
    ranked = 0  # index into lows/highs: the non-empty columns so far
    for (column, _, double_values, string_values), times in zip(parts, counts, strict=True):
        signal = catalog.signals.get(column.signal_id)
        if signal is None:
            raise BatchRejected(
                f"{label}: signal id {column.signal_id} is not in catalog {catalog.catalog_id}"
            )
        where = f"{label}: column for signal {signal.signal_id} ({signal.name})"
        if signal.signal_id in seen:
            raise BatchRejected(f"{where} appears twice")
        seen.add(signal.signal_id)
        budget.take(label, times, limits.max_batch_samples)
        if signal.kind is ValueKind.DOUBLE:
            if string_values:
                raise BatchRejected(f"{where} is DOUBLE but carries {len(string_values)} string values")
            values = len(double_values)
        else:
            if double_values:
                raise BatchRejected(f"{where} is STRING but carries {len(double_values)} double values")
            values = len(string_values)
            for text in string_values:
                if len(text.encode("utf-8")) > limits.max_string_bytes:
                    raise BatchRejected(
                        f"{where} has a string value longer than {limits.max_string_bytes} bytes"
                    )
        if times != values:
            raise BatchRejected(f"{where} has {times} times but {values} values")
        if times:
            low, high = base_ns + lows[ranked], base_ns + highs[ranked]
            ranked += 1
            if window is None:
                if not (low >= INT64_MIN and high <= INT64_MAX):
                    raise BatchRejected(
                        f"{where}: base_time_ns {base_ns} + t_offset_ns leaves the int64 range"
                    )
            elif low < window[0] or high > window[1]:
                bad = low if low < window[0] else high
                raise BatchRejected(
                    f"{where}: sample time {bad} (start_ns + t_offset_ns) is outside the event's"
                    f" [start_ns {window[0]}, end_ns {window[1]}]"
                )
        signals.append(signal)
    # Every column is valid: every absolute time fits int64 (checked above), so does the sum.
    t_ns = offsets + np.int64(base_ns) if total else offsets
    doubles = np.fromiter(
        itertools.chain.from_iterable(d for _, _, d, _ in parts),
        dtype=np.float64,
        count=sum(len(d) for _, _, d, _ in parts),
    )
    columns: list[Column] = []
    at_double = 0
    no_doubles = doubles[:0]
    for (_, _, _, string_values), signal, start, times in zip(
        parts, signals, starts.tolist(), counts, strict=True
    ):
        if signal.kind is ValueKind.DOUBLE:
            kept = doubles[at_double : at_double + times]
            at_double += times
            texts: list[str] = []
        else:
            kept = no_doubles
            texts = list(string_values)
        columns.append(
            Column(signal=signal, t_ns=t_ns[start : start + times], double_values=kept, string_values=texts)
        )
    return tuple(columns)


def _frames(
    label: str, event: telemetry_pb.CapturedEvent, limits: Limits, *, budget: _Budget
) -> tuple[FrameSeries, ...]:
    """Check an event's raw CAN frames and make their times absolute (``start_ns + offset``).

    Each frame counts as one sample against ``max_batch_samples``. Per entry: a bus
    name, one payload (at most 64 bytes) per time, every time in ``[start_ns, end_ns]``,
    each ``(bus, arbitration_id)`` once.
    """
    start_ns, end_ns = event.start_ns, event.end_ns
    seen: set[tuple[str, int]] = set()
    out: list[FrameSeries] = []
    for index, frames in enumerate(event.frames):
        where = f"{label}: raw frames #{index} (bus {frames.bus!r} id 0x{frames.arbitration_id:X})"
        _check_text(f"{where}: bus", frames.bus, limits, required=True)
        key = (frames.bus, frames.arbitration_id)
        if key in seen:
            raise BatchRejected(f"{where} appear twice")
        seen.add(key)
        times, payloads = len(frames.t_offset_ns), len(frames.data)
        budget.take(label, times, limits.max_batch_samples)
        if times != payloads:
            raise BatchRejected(f"{where} have {times} times but {payloads} payloads")
        for i, payload in enumerate(frames.data):
            if len(payload) > MAX_FRAME_PAYLOAD_BYTES:
                raise BatchRejected(
                    f"{where}: frame #{i} has a payload of {len(payload)} bytes,"
                    f" more than {MAX_FRAME_PAYLOAD_BYTES}"
                )
        offsets = frames.t_offset_ns
        if times:
            low, high = start_ns + min(offsets), start_ns + max(offsets)
            if low < start_ns or high > end_ns:
                bad = low if low < start_ns else high
                raise BatchRejected(
                    f"{where}: frame time {bad} (start_ns + t_offset_ns) is outside the event's"
                    f" [start_ns {start_ns}, end_ns {end_ns}]"
                )
        out.append(
            FrameSeries(
                bus=frames.bus,
                arbitration_id=frames.arbitration_id,
                t_ns=[start_ns + offset for offset in offsets],
                data=list(frames.data),
                dropped=frames.dropped,
            )
        )
    return tuple(out)
