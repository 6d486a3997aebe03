"""Fuzz target ``ingest``: :func:`tcu.ingest.validate.validate_hello` and
:func:`~tcu.ingest.validate.validate_batch` on random and mutated ``UploadRequest`` bytes.

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
"""

from __future__ import annotations

import contextlib
from functools import cache

from google.protobuf.message import DecodeError

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import BatchRejected, StreamRejected
from tcu.ingest.servicer import RawUpload, read_upload_request, stamped_identity
from tcu.ingest.validate import Limits, Session, check_batch_identity, validate_batch, validate_hello

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


def _validate(session: Session, batch: telemetry_pb.TelemetryBatch, limits: Limits) -> None:
    try:
        validate_batch(session, batch, limits)
    except StreamRejected:
        return
    except BatchRejected as exc:
        # A content problem: the batch must have a key to be quarantined (and acked) under.
        try:
            check_batch_identity(session, batch)
        except StreamRejected as identity:
            raise AssertionError(f"quarantined without an identity: {exc}; {identity}") from identity


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
    for limits in _LIMITS:
        sessions = [_seed_session()]
        if first is not None and first.HasField("hello"):
            with contextlib.suppress(BatchRejected):
                sessions.append(validate_hello(first.hello, limits))
        for request in (first, second):
            if request is None or not request.HasField("batch"):
                continue
            for session in sessions:
                _validate(session, request.batch, limits)
        if second is not None and second.HasField("hello"):
            with contextlib.suppress(BatchRejected):
                validate_hello(second.hello, limits)
