"""One vehicle cannot break the others: out-of-range values are refused at validation, and a batch the
writer fails to store is isolated (its group's other batches commit, it is quarantined with the reason)."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import pytest
from ingest_helpers import rows

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import BatchRejected
from tcu.ingest import IngestConfig
from tcu.ingest.model import Batch, Capture, Catalog, Column, LossRecord, SignalDef, ValueKind
from tcu.ingest.store import SqliteSink
from tcu.ingest.validate import Limits, validate_batch, validate_hello

SPEED = SignalDef(signal_id=1, name="Vehicle.Speed", unit="km/h", kind=ValueKind.DOUBLE)
ODO = SignalDef(signal_id=2, name="Vehicle.TraveledDistance", unit="km", kind=ValueKind.DOUBLE)
CATALOG = Catalog("c", {1: SPEED, 2: ODO})


def _good(vehicle_id: str, seq: int, signal: SignalDef = SPEED) -> Batch:
    column = Column(signal=signal, t_ns=[seq * 10, seq * 10 + 1], double_values=[1.0, 2.0], string_values=[])
    return Batch(vehicle_id, 1, seq, CATALOG, 0, 0, (column,), payload=b"good")


def _overflowing_loss(vehicle_id: str, seq: int) -> Batch:
    """What validation let through before: a DataLoss whose uint64 payload_bytes SQLite cannot hold."""
    loss = LossRecord(reason="evicted", priority=0, created_ns=0, payload_bytes=2**64 - 1)
    return Batch(vehicle_id, 1, seq, CATALOG, 0, 0, (), loss=loss, payload=b"poison")


async def test_validation_refuses_integers_sqlite_cannot_hold() -> None:
    hello = validate_hello(
        telemetry_pb_hello(resolution=0.5),
        Limits(),
    )
    loss = telemetry_pb.TelemetryBatch(
        vehicle_id="veh-1",
        boot_epoch=1,
        seq=1,
        loss=telemetry_pb.DataLoss(reason="evicted", payload_bytes=2**64 - 1),
    )
    with pytest.raises(
        BatchRejected, match=r"batch seq 1: DataLoss payload_bytes 18446744073709551615 is above"
    ):
        validate_batch(hello, loss, Limits())
    loss.loss.payload_bytes = 2**63 - 1
    assert validate_batch(hello, loss, Limits()).loss is not None
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(BatchRejected, match=r"resolution .* is not a finite number"):
            validate_hello(telemetry_pb_hello(resolution=bad), Limits())


def telemetry_pb_hello(*, resolution: float) -> Any:
    from tcu.api.v1 import ingest_pb2 as ingest_pb

    catalog = telemetry_pb.SignalCatalog(catalog_id="c")
    catalog.signals.add(
        signal_id=1, name="Vehicle.Speed", type=telemetry_pb.VALUE_TYPE_DOUBLE, resolution=resolution
    )
    return ingest_pb.Hello(vehicle_id="veh-1", boot_epoch=1, catalog=catalog)


async def test_poison_dataloss_is_quarantined_and_another_vehicle_is_unaffected(
    running: Any, kit: Any
) -> None:
    poison_call = await running.open_upload("veh-bad")
    other_call = await running.open_upload("veh-good", channel=running.new_channel())
    poison = kit.batch("veh-bad", 1, speed=())
    poison.batch.catalog_id = ""
    poison.batch.loss.reason = "evicted"
    poison.batch.loss.payload_bytes = 2**64 - 1
    await poison_call.write(poison)
    for seq in (1, 2, 3):
        await other_call.write(kit.batch("veh-good", seq, base_ns=kit.base_ns + seq * 10**9))
    ack = await kit.ack_of(poison_call)
    assert (ack.batch_seq, ack.acked_seq) == (1, 1)
    assert [q.seq for q in ack.quarantined] == [1]
    assert "payload_bytes 18446744073709551615 is above" in ack.quarantined[0].reason
    assert [(await kit.ack_of(other_call)).acked_seq for _ in range(3)] == [1, 2, 3]
    # The poison vehicle's stream goes on too.
    await poison_call.write(kit.batch("veh-bad", 2))
    assert (await kit.ack_of(poison_call)).acked_seq == 2
    db = running.config.db_path
    assert rows(db, "SELECT vehicle_id, seq FROM batches ORDER BY 1, 2") == [
        ("veh-bad", 2),
        ("veh-good", 1),
        ("veh-good", 2),
        ("veh-good", 3),
    ]
    assert rows(db, "SELECT vehicle_id, seq FROM quarantine") == [("veh-bad", 1)]


async def test_hello_with_a_nan_resolution_ends_only_that_stream(running: Any, kit: Any) -> None:
    bad = kit.hello("veh-nan")
    bad.hello.catalog.signals[0].resolution = math.nan
    call = running.ingest.Upload(timeout=10)
    await call.write(bad)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "resolution nan is not a finite number" in (caught.value.details() or "")
    good = await running.open_upload("veh-ok", channel=running.new_channel())
    await good.write(kit.batch("veh-ok", 1))
    assert (await kit.ack_of(good)).acked_seq == 1


async def _hold_writer(sink: SqliteSink, db: Path) -> tuple[sqlite3.Connection, asyncio.Task[Any]]:
    """Block the writer inside its first group (a lock held by another connection), so that every
    batch submitted next lands in one later group."""
    blocker = sqlite3.connect(db, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    first = asyncio.create_task(sink.store(_good("veh-warm", 1)))
    while sink.writing == 0:  # noqa: ASYNC110 - the writer is a thread: nothing to await
        await asyncio.sleep(0.01)
    return blocker, first


async def test_a_batch_the_writer_fails_on_does_not_fail_its_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = IngestConfig(insecure=True, db_path=tmp_path / "g.db", sqlite_busy_timeout_s=30)
    sink = await SqliteSink.open(config)
    try:
        blocker, first = await _hold_writer(sink, config.db_path)
        good = [asyncio.create_task(sink.store(_good(f"veh-{i}", 1))) for i in range(5)]
        poison = [asyncio.create_task(sink.store(_overflowing_loss("veh-bad", seq))) for seq in range(1, 21)]
        # A batch that fails half-way: its new series row is rolled back, so must the writer's cache be.
        half = _good("veh-half", 1, ODO)
        half = Batch(
            half.vehicle_id,
            1,
            1,
            CATALOG,
            0,
            0,
            half.columns,
            payload=b"half",
            events=(Capture("c", 1, 2**70, 0, 2**70, ()),),
        )
        half_task = asyncio.create_task(sink.store(half))
        after_half = asyncio.create_task(sink.store(_good("veh-half", 2, ODO)))
        await asyncio.sleep(0.1)
        with caplog.at_level(logging.WARNING, logger="tcu.ingest.store"):
            blocker.rollback()
            blocker.close()
            results = await asyncio.gather(first, *good, *poison, half_task, after_half)
    finally:
        await sink.aclose()
    assert sink.stats.largest_group >= 27  # all of them were written in one transaction
    first_result, good_results = results[0], results[1:6]
    poison_results, half_result, after_result = results[6:26], results[26], results[27]
    assert not first_result.quarantined
    assert [(r.acked_seq, r.quarantined) for r in good_results] == [(1, False)] * 5
    assert [r.quarantined for r in poison_results] == [True] * 20
    assert poison_results[-1].acked_seq == 20
    assert "could not be stored" in poison_results[0].reason
    assert "OverflowError" in poison_results[0].reason
    assert half_result.quarantined and not after_result.quarantined
    db = config.db_path
    assert rows(db, "SELECT count(*) FROM batches WHERE vehicle_id LIKE 'veh-_'") == [(5,)]
    kept = rows(db, "SELECT vehicle_id, seq, payload FROM quarantine ORDER BY 1, 2")
    assert [k[:2] for k in kept] == [("veh-bad", s) for s in range(1, 21)] + [("veh-half", 1)]
    assert kept[0][2] == b"poison"
    # Batch 2 of veh-half is readable: its series row exists (not a rolled-back id from the cache).
    assert rows(db, "SELECT seq, count(*) FROM sample_rows WHERE vehicle_id = 'veh-half' GROUP BY seq") == [
        (2, 2)
    ]
    lines = [r for r in caplog.records if "veh-bad" in r.getMessage()]
    assert 1 <= len(lines) <= 6, [r.getMessage() for r in lines]  # rate-limited, not one per batch
    assert not any(r.exc_info for r in caplog.records)


def _raw_upload(running: Any) -> Any:
    return running.channel.stream_stream(
        "/tcu.api.v1.Ingest/Upload",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb.UploadResponse.FromString,
    )(timeout=10)


async def test_undecodable_first_message_is_invalid_argument(running: Any, kit: Any) -> None:
    for first in (b"\x0f\xff\x00", b"\x0a\x05\x0f\xff"):  # a broken envelope; a Hello that does not decode
        call = _raw_upload(running)
        await call.write(first)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
        assert "the first message of an Upload stream does not decode" in (caught.value.details() or "")
    # A later message that is not a batch and does not decode ends the stream the same way.
    call = _raw_upload(running)
    await call.write(kit.hello("veh-1").SerializeToString())
    await call.write(b"\x1a\x02\x0f\xff")  # field 3 (command_result) with broken bytes
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert "does not decode" in (caught.value.details() or "")


async def test_undecodable_batch_with_an_out_of_range_stamp_ends_the_stream(running: Any, kit: Any) -> None:
    from tcu.uplink.client import wrap_batch

    call = _raw_upload(running)
    await call.write(kit.hello("veh-1").SerializeToString())
    corrupt = b"\x0f\xff" + kit.batch("veh-1", 0).batch.SerializeToString()
    await call.write(wrap_batch(corrupt, boot_epoch=2**64 + 5, seq=1))  # beyond uint64
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert "is above 9223372036854775807" in (caught.value.details() or "")
