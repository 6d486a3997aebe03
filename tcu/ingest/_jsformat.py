"""How the JetStream sink lays batches out on NATS: subjects, headers, keys, and reading them back.

One message per accepted item, on ``<prefix>.<kind>.<vehicle token>``:

* ``telemetry``: a batch's bytes as received (``Batch.payload``, a ``TelemetryBatch`` with its
  ``(boot_epoch, seq)`` stamp), header ``Tcu-Catalog`` naming the catalog its columns are read
  against (for a ``DataLoss`` batch the stream's current catalog), ``Nats-Msg-Id`` the batch key.
* ``quarantine``: a malformed batch's bytes as received; headers carry its key, reason, receive
  time, catalog id and agent version. Same ``Nats-Msg-Id`` as a batch of that key, so a
  quarantined retry of a stored batch is a JetStream duplicate, as it is a duplicate in SQLite.
* ``checkin``: the campaigns as JSON ``[[name, version], ...]``.

Every message carries ``Tcu-Vehicle`` (the vehicle id itself; the subject token escapes
characters a subject cannot hold). Catalogs travel once per (vehicle, catalog id), as
``SignalCatalog`` bytes in the ``<stream>_CATALOGS`` bucket under :func:`catalog_key`, written
before the first batch that names them is published.

The archive and every replica's live feed read a message back with :func:`read_message`,
which validates a batch with the same code the Upload stream used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import BatchRejected, IngestError
from tcu.ingest.model import Batch, CampaignRef, Catalog, QuarantinedBatch, ValueKind
from tcu.ingest.validate import Limits, Session, validate_batch

__all__ = [
    "CATALOG",
    "VEHICLE",
    "CheckInMessage",
    "catalog_key",
    "catalog_pb",
    "msg_id",
    "read_message",
    "subject",
    "token",
    "watermark_key",
]

VEHICLE: Final = "Tcu-Vehicle"
CATALOG: Final = "Tcu-Catalog"
_EPOCH: Final = "Tcu-Boot-Epoch"
_SEQ: Final = "Tcu-Seq"
_REASON: Final = "Tcu-Reason"
_RECEIVED: Final = "Tcu-Received-Ns"
_AGENT: Final = "Tcu-Agent-Version"

_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

# The batch was validated by the replica with its own limits; reading it back must not refuse it
# for a smaller one.
_READ_LIMITS: Final = Limits(
    max_catalog_signals=2**31,
    max_batch_columns=2**31,
    max_batch_samples=2**62,
    max_string_bytes=2**31,
)

_KINDS: Final = {
    ValueKind.DOUBLE: telemetry_pb.VALUE_TYPE_DOUBLE,
    ValueKind.STRING: telemetry_pb.VALUE_TYPE_STRING,
}


def token(text: str) -> str:
    """``text`` as one subject token and key part: ``[A-Za-z0-9_-]`` kept, anything else ``=XX`` (UTF-8)."""
    if text and all(c in _SAFE for c in text):
        return text
    return "".join(c if c in _SAFE else "".join(f"={b:02X}" for b in c.encode()) for c in text) or "="


def subject(prefix: str, kind: str, vehicle_id: str) -> str:
    return f"{prefix}.{kind}.{token(vehicle_id)}"


def msg_id(vehicle_id: str, boot_epoch: int, seq: int) -> str:
    """The batch key as JetStream's dedup id (the same for a batch and a quarantined batch)."""
    return f"{token(vehicle_id)}:{boot_epoch}:{seq}"


def watermark_key(vehicle_id: str, boot_epoch: int) -> str:
    return f"{token(vehicle_id)}.{boot_epoch}"


def catalog_key(vehicle_id: str, catalog_id: str) -> str:
    return f"{token(vehicle_id)}.{token(catalog_id)}"


def catalog_pb(catalog: Catalog) -> telemetry_pb.SignalCatalog:
    """The validated catalog as the ``SignalCatalog`` it was announced as."""
    return telemetry_pb.SignalCatalog(
        catalog_id=catalog.catalog_id,
        signals=[
            telemetry_pb.SignalInfo(
                signal_id=s.signal_id,
                name=s.name,
                unit=s.unit,
                type=_KINDS[s.kind],
                source=s.source,
                resolution=s.resolution,
                period_ms=s.period_ms,
            )
            for s in catalog.signals.values()
        ],
    )


def batch_headers(batch: Batch) -> dict[str, str]:
    return {
        "Nats-Msg-Id": msg_id(batch.vehicle_id, batch.boot_epoch, batch.seq),
        VEHICLE: batch.vehicle_id,
        CATALOG: batch.catalog.catalog_id,
    }


def quarantine_headers(batch: QuarantinedBatch) -> dict[str, str]:
    return {
        "Nats-Msg-Id": msg_id(batch.vehicle_id, batch.boot_epoch, batch.seq),
        VEHICLE: batch.vehicle_id,
        CATALOG: batch.catalog_id,
        _EPOCH: str(batch.boot_epoch),
        _SEQ: str(batch.seq),
        _REASON: batch.reason.replace("\r", " ").replace("\n", " "),
        _RECEIVED: str(batch.received_ns),
        _AGENT: batch.agent_version,
    }


def checkin_body(campaigns: tuple[CampaignRef, ...]) -> bytes:
    return json.dumps([[c.name, c.version] for c in campaigns]).encode()


@dataclass(frozen=True, slots=True)
class CheckInMessage:
    vehicle_id: str
    campaigns: tuple[CampaignRef, ...]


def kind_of(prefix: str, subject_: str) -> str:
    """``telemetry``, ``quarantine`` or ``checkin`` (or what else the subject names)."""
    rest = subject_[len(prefix) + 1 :] if subject_.startswith(prefix + ".") else subject_
    return rest.partition(".")[0]


def read_message(
    prefix: str, subject_: str, headers: dict[str, str] | None, data: bytes, catalog: Catalog | None
) -> Batch | QuarantinedBatch | CheckInMessage:
    """One stream message as the item the replica accepted.

    ``catalog`` is the one ``Tcu-Catalog`` names (None for other kinds). Raises
    :class:`~tcu.errors.IngestError` naming the problem when the message is not one of ours.
    """
    headers = headers or {}
    vehicle = headers.get(VEHICLE)
    if not vehicle:
        raise IngestError(f"message on {subject_}: no {VEHICLE} header")
    kind = kind_of(prefix, subject_)
    if kind == "checkin":
        try:
            items = json.loads(data)
            return CheckInMessage(vehicle, tuple(CampaignRef(name=str(n), version=int(v)) for n, v in items))
        except (ValueError, TypeError) as exc:
            raise IngestError(f"check-in of {vehicle} on {subject_} does not read: {exc}") from exc
    if kind == "quarantine":
        try:
            return QuarantinedBatch(
                vehicle_id=vehicle,
                boot_epoch=int(headers[_EPOCH]),
                seq=int(headers[_SEQ]),
                reason=headers.get(_REASON, ""),
                received_ns=int(headers.get(_RECEIVED, "0")),
                payload=data,
                catalog_id=headers.get(CATALOG, ""),
                agent_version=headers.get(_AGENT, ""),
            )
        except (KeyError, ValueError) as exc:
            raise IngestError(
                f"quarantined batch of {vehicle} on {subject_}: header {exc} missing or bad"
            ) from exc
    if kind != "telemetry":
        raise IngestError(f"message on {subject_}: unknown kind {kind!r}")
    if catalog is None:
        raise IngestError(f"batch of {vehicle} on {subject_}: catalog {headers.get(CATALOG)!r} is not known")
    try:
        message = telemetry_pb.TelemetryBatch.FromString(data)
    except Exception as exc:  # DecodeError; the replica decoded these very bytes
        raise IngestError(f"batch of {vehicle} on {subject_} does not decode: {exc}") from exc
    session = Session(
        vehicle_id=vehicle,
        boot_epoch=message.boot_epoch,
        catalog=catalog,
        agent_version="",
        catalogs={catalog.catalog_id: catalog},
    )
    try:
        batch = validate_batch(session, message, _READ_LIMITS)
    except BatchRejected as exc:  # StreamRejected included
        raise IngestError(
            f"batch {message.boot_epoch}/{message.seq} of {vehicle} does not read back: {exc}"
        ) from exc
    return Batch(
        vehicle_id=batch.vehicle_id,
        boot_epoch=batch.boot_epoch,
        seq=batch.seq,
        catalog=batch.catalog,
        base_time_ns=batch.base_time_ns,
        created_ns=batch.created_ns,
        columns=batch.columns,
        loss=batch.loss,
        events=batch.events,
        payload=data,
    )


def parse_catalog(vehicle_id: str, data: bytes) -> Catalog:
    """A catalog from its bucket entry, checked as a Hello's catalog is."""
    from tcu.api.v1 import ingest_pb2 as ingest_pb
    from tcu.ingest.validate import validate_hello

    limits = Limits(
        max_catalog_signals=2**31, max_string_bytes=2**31, max_hello_bytes=2**31, max_vehicle_signals=2**31
    )
    try:
        message = telemetry_pb.SignalCatalog.FromString(data)
        return validate_hello(ingest_pb.Hello(vehicle_id=vehicle_id, catalog=message), limits).catalog
    except BatchRejected as exc:
        raise IngestError(f"catalog of {vehicle_id} in the bucket does not read: {exc}") from exc
    except Exception as exc:  # DecodeError
        raise IngestError(f"catalog of {vehicle_id} in the bucket does not decode: {exc}") from exc
