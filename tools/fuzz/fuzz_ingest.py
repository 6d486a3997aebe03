"""Fuzz target ``ingest``: :func:`tcu.ingest.validate.validate_hello` and
:func:`~tcu.ingest.validate.validate_batch` on random and mutated ``UploadRequest`` bytes,
and then the store: every batch that validates (or is quarantined) is written to a real
:class:`~tcu.ingest.store.SqliteSink` in a scratch directory, commit included.

Input layout: one byte ``n``, then ``n`` bytes of a first ``UploadRequest`` (the Hello of
the stream), then a second ``UploadRequest`` (a batch). A first message that parses and
validates gives the session; the second is checked against it and, always, against the
session of a fixed seed Hello (so mutated batches reach deep checks). Both run with the
default :class:`~tcu.ingest.validate.Limits` and with small ones. Contract: parsing may
raise the protobuf library's ``DecodeError``; validation raises only
:class:`tcu.errors.BatchRejected`.

Quarantine contract (the ingest keeps a batch with malformed content instead of ending the
stream): a ``BatchRejected`` (content) is only raised for a batch whose identity is
usable (:func:`~tcu.ingest.validate.check_batch_identity` passes), so it can be stored and
acked under ``(vehicle, boot_epoch, seq)``; :func:`tcu.ingest.servicer.read_upload_request`
on the second message's bytes returns a ``RawUpload`` or raises ``DecodeError``, and an
undecodable batch's stamp is ``None`` or a seq of 1 or more.

Store contract (issue 10 item 5: a DataLoss with ``payload_bytes = 2**64-1`` passed
validation and then failed the whole group commit): every batch that validates is
*stored* by the sink (a result, not an exception, and not quarantined by the sink: that
would mean validation let through a value the database cannot hold); a batch quarantined
for its content is kept (``quarantined`` or a duplicate); a check-in that validates is
stored; and a good batch of another vehicle submitted together with them (so in the same
group commit, usually) is stored. The sink lives for the whole run, in one event loop,
and is replaced every ``_SINK_INPUTS`` inputs so that the database stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import time
from functools import cache

from google.protobuf.message import DecodeError

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import BatchRejected, StreamRejected
from tcu.ingest.config import IngestConfig
from tcu.ingest.model import (
    Batch,
    CampaignRef,
    Catalog,
    Column,
    QuarantinedBatch,
    SignalDef,
    StoreResult,
    ValueKind,
)
from tcu.ingest.servicer import RawUpload, read_upload_request, stamped_identity
from tcu.ingest.store import SqliteSink
from tcu.ingest.validate import (
    Limits,
    Session,
    check_batch_identity,
    validate_batch,
    validate_checkin,
    validate_hello,
)
from tools.fuzz._common import scratch_dir

__all__ = ["NAME", "one_input", "seeds"]

NAME = "ingest"
_LIMITS = (
    Limits(),
    Limits(max_catalog_signals=4, max_batch_columns=2, max_batch_samples=8, max_string_bytes=16),
)


def _hello() -> ingest_pb.UploadRequest:
    catalog = telemetry_pb.SignalCatalog(catalog_id="cat-1")
    catalog.signals.add(
        signal_id=1, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE, resolution=0.01
    )
    catalog.signals.add(
        signal_id=2,
        name="Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        unit="percent",
        type=telemetry_pb.VALUE_TYPE_DOUBLE,
        period_ms=1000,
    )
    catalog.signals.add(
        signal_id=7, name="Vehicle.Connectivity.Operator", type=telemetry_pb.VALUE_TYPE_STRING
    )
    hello = ingest_pb.Hello(vehicle_id="VIN0001", boot_epoch=3, catalog=catalog, agent_version="0.1")
    return ingest_pb.UploadRequest(hello=hello)


def _batches() -> list[ingest_pb.UploadRequest]:
    full = telemetry_pb.TelemetryBatch(
        vehicle_id="VIN0001", boot_epoch=3, seq=5, catalog_id="cat-1", base_time_ns=1_700_000_000_000_000_000
    )
    full.columns.add(signal_id=1, t_offset_ns=[0, 10_000_000, 20_000_000], double_values=[1.0, 2.5, -3.0])
    full.columns.add(signal_id=2, t_offset_ns=[-5], double_values=[80.5])
    full.columns.add(signal_id=7, t_offset_ns=[0, 1], string_values=["Telekom.de", "26201"])
    loss = telemetry_pb.TelemetryBatch(
        vehicle_id="VIN0001",
        boot_epoch=2,
        seq=9,
        loss=telemetry_pb.DataLoss(reason="evicted", priority=50, created_ns=1, payload_bytes=4096),
    )
    empty = telemetry_pb.TelemetryBatch(vehicle_id="VIN0001", boot_epoch=3, seq=1, catalog_id="cat-1")
    return [ingest_pb.UploadRequest(batch=b) for b in (full, loss, empty)]


@cache
def _seed_session() -> Session:
    return validate_hello(_hello().hello, Limits())


@cache
def seeds() -> list[bytes]:
    """The fixed Hello followed by each seed batch, and a batch alone after an empty first part."""
    hello = _hello().SerializeToString()
    out: list[bytes] = []
    for batch in _batches():
        body = batch.SerializeToString()
        out.append(bytes([len(hello)]) + hello + body)
        out.append(b"\x00" + body)
    return out


def _parse(data: bytes) -> ingest_pb.UploadRequest | None:
    try:
        return ingest_pb.UploadRequest.FromString(data)
    except DecodeError:
        return None


_SINK_INPUTS = 2000


class _Store:
    """One SqliteSink in a scratch directory, driven from one event loop (kept across inputs)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.sink: SqliteSink | None = None
        self.inputs = 0
        self.generation = 0
        self.seq = 0

    def open(self) -> SqliteSink:
        if self.sink is not None and self.inputs >= _SINK_INPUTS:
            self.loop.run_until_complete(self.sink.aclose())
            self.sink = None
            shutil.rmtree(scratch_dir() / f"ingest-{self.generation}", ignore_errors=True)
            self.generation += 1
        if self.sink is None:
            self.inputs = 0
            directory = scratch_dir() / f"ingest-{self.generation}"
            config = IngestConfig(insecure=True, db_path=directory / "fuzz.db", sqlite_synchronous="NORMAL")
            self.sink = self.loop.run_until_complete(SqliteSink.open(config))
        self.inputs += 1
        return self.sink

    def bystander(self) -> Batch:
        """A good batch of another vehicle, new each time (written in the same group as the fuzzed ones)."""
        self.seq += 1
        signal = SignalDef(signal_id=1, name="Vehicle.Speed", unit="km/h", kind=ValueKind.DOUBLE)
        column = Column(signal=signal, t_ns=[self.seq], double_values=[1.0], string_values=[])
        return Batch("\x00bystander", 1, self.seq, Catalog("by", {1: signal}), 0, 0, (column,), payload=b"-")


_STORE: _Store | None = None


def _store() -> _Store:
    global _STORE  # noqa: PLW0603 - one sink per process, created lazily
    if _STORE is None:
        _STORE = _Store()
    return _STORE


def _validate(
    session: Session, batch: telemetry_pb.TelemetryBatch, limits: Limits
) -> Batch | QuarantinedBatch | None:
    """What the servicer would hand to the sink for this batch (None: the stream would end)."""
    try:
        valid = validate_batch(session, batch, limits)
    except StreamRejected:
        return None
    except BatchRejected as exc:
        # A content problem: the batch must have a key to be quarantined (and acked) under.
        try:
            check_batch_identity(session, batch)
        except StreamRejected as identity:
            raise AssertionError(f"quarantined without an identity: {exc}; {identity}") from identity
        return QuarantinedBatch(
            vehicle_id=batch.vehicle_id,
            boot_epoch=batch.boot_epoch,
            seq=batch.seq,
            reason=str(exc),
            received_ns=time.time_ns(),
            payload=batch.SerializeToString(),
            catalog_id=batch.catalog_id,
        )
    return dataclasses.replace(valid, payload=batch.SerializeToString())


def _check_stored(item: Batch | QuarantinedBatch | str, result: StoreResult | BaseException) -> None:
    if isinstance(result, BaseException):
        raise AssertionError(f"the sink failed on {item!r:.300}: {result!r}") from result
    if isinstance(item, Batch) and result.quarantined and not result.duplicate:
        raise AssertionError(f"a batch that validated was quarantined by the sink: {result.reason}")
    if isinstance(item, QuarantinedBatch) and not (result.quarantined or result.duplicate):
        raise AssertionError(f"a batch with malformed content was not kept: {result!r}")


def _store_all(
    items: list[Batch | QuarantinedBatch], checkins: list[tuple[str, tuple[CampaignRef, ...]]]
) -> None:
    store = _store()
    sink = store.open()
    bystander = store.bystander()

    async def run() -> list[StoreResult | BaseException | None]:
        calls = [sink.store(i) if isinstance(i, Batch) else sink.quarantine(i) for i in items]
        stored: list[StoreResult | BaseException] = await asyncio.gather(
            sink.store(bystander), *calls, return_exceptions=True
        )
        done: list[StoreResult | BaseException | None] = list(stored)
        for vehicle_id, campaigns in checkins:
            try:
                await sink.store_checkin(vehicle_id, campaigns)
                done.append(None)
            except Exception as exc:
                done.append(exc)
        return done

    results = store.loop.run_until_complete(run())
    first = results[0]
    if isinstance(first, BaseException) or first is None or first.quarantined or first.duplicate:
        raise AssertionError(f"another vehicle's good batch, written with the fuzzed ones, failed: {first!r}")
    for item, result in zip(items, results[1 : 1 + len(items)], strict=True):
        assert result is not None
        _check_stored(item, result)
    for result in results[1 + len(items) :]:
        if isinstance(result, BaseException):
            raise AssertionError(f"the sink failed on a check-in that validated: {result!r}") from result


def _read_raw(data: bytes) -> None:
    try:
        raw = read_upload_request(data)
    except DecodeError:
        return
    assert isinstance(raw, RawUpload)
    if raw.message is None:
        identity = stamped_identity(raw.batch_bytes)
        assert identity is None or identity[1] >= 1


def one_input(data: bytes) -> None:
    if not data:
        return
    first = _parse(data[1 : 1 + data[0]])
    second = _parse(data[1 + data[0] :])
    _read_raw(data[1 + data[0] :])
    items: list[Batch | QuarantinedBatch] = []
    checkins: list[tuple[str, tuple[CampaignRef, ...]]] = []
    for limits in _LIMITS:
        sessions = [_seed_session()]
        if first is not None and first.HasField("hello"):
            with contextlib.suppress(BatchRejected):
                sessions.append(validate_hello(first.hello, limits))
        for request in (first, second):
            if request is None:
                continue
            for session in sessions:
                if request.HasField("batch"):
                    item = _validate(session, request.batch, limits)
                    if item is not None:
                        items.append(item)
                elif request.HasField("checkin"):
                    with contextlib.suppress(BatchRejected):
                        refs = validate_checkin(session, request.checkin, limits)
                        checkins.append((session.vehicle_id, refs))
        if second is not None and second.HasField("hello"):
            with contextlib.suppress(BatchRejected):
                validate_hello(second.hello, limits)
    if items or checkins:
        _store_all(items, checkins)
