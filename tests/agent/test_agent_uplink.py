"""The uplink against a real ingest: throttling with retry-after, credit, max_connection_age, quarantine."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc

from tcu.agent.outbox import SpoolOutbox
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.config import UplinkConfig
from tcu.ingest import IngestConfig, IngestServer
from tcu.spool import Spool, SpoolConfig
from tcu.uplink import MemoryOutbox, Uplink
from tcu.uplink.client import channel_options

VEHICLE = "WTCUUPLINK0000001"


def _hello(outbox: MemoryOutbox) -> ingest_pb.Hello:
    catalog = telemetry_pb.SignalCatalog(catalog_id="c1")
    catalog.signals.add(signal_id=1, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE)
    return ingest_pb.Hello(vehicle_id=VEHICLE, boot_epoch=outbox.boot_epoch, catalog=catalog)


def _append(outbox: MemoryOutbox, i: int) -> None:
    batch = telemetry_pb.TelemetryBatch(vehicle_id=VEHICLE, catalog_id="c1", base_time_ns=(i + 1) * 10**9)
    batch.columns.add(signal_id=1, t_offset_ns=[0], double_values=[float(i)])
    outbox.append(batch.SerializeToString(), priority=0, created_ns=i)


async def test_throttled_vehicle_waits_as_told_and_loses_nothing(tmp_path: Path) -> None:
    server = IngestServer(
        IngestConfig(
            insecure=True,
            listen="127.0.0.1:0",
            db_path=tmp_path / "i.db",
            max_batches_per_s=4.0,
            batch_burst=2,
            throttle_max_wait_s=0.0,  # never pace: answer RESOURCE_EXHAUSTED with a retry-after at once
        )
    )
    port = await server.start()
    outbox = MemoryOutbox(max_batches=100, boot_epoch=1)
    for i in range(5):
        _append(outbox, i)
    uplink = Uplink(
        UplinkConfig(target=f"127.0.0.1:{port}", insecure=True, backoff_initial_s=0.01, backoff_max_s=0.01),
        hello=_hello(outbox),
        outbox=outbox,
    )
    task = asyncio.create_task(uplink.run())
    try:
        uplink.notify()
        assert await uplink.wait_drained(20)
    finally:
        task.cancel()
        await server.stop(0.5)
    assert uplink.stats.throttled >= 1
    # Every throttling answer was followed by exactly the wait it asked for (about 250 ms at 4/s),
    # not by the 10 ms backoff.
    assert uplink.stats.retry_after_waits == uplink.stats.throttled
    assert 0.05 < uplink.stats.last_retry_after_s <= 0.3
    assert uplink.stats.acked_seq == 5


async def test_stream_ended_by_max_connection_age_resumes_without_loss(tmp_path: Path) -> None:
    server = IngestServer(
        IngestConfig(
            insecure=True,
            listen="127.0.0.1:0",
            db_path=tmp_path / "i.db",
            max_connection_age_s=0.3,
            max_connection_age_grace_s=0.2,
        )
    )
    port = await server.start()
    outbox = MemoryOutbox(max_batches=1000, boot_epoch=2)
    uplink = Uplink(
        UplinkConfig(target=f"127.0.0.1:{port}", insecure=True, backoff_initial_s=0.02, backoff_max_s=0.1),
        hello=_hello(outbox),
        outbox=outbox,
    )
    task = asyncio.create_task(uplink.run())
    try:
        for i in range(60):
            _append(outbox, i)
            uplink.notify()
            await asyncio.sleep(0.03)
        assert await uplink.wait_drained(20)
    finally:
        task.cancel()
        await server.stop(0.5)
    assert uplink.stats.connects >= 2
    assert uplink.stats.acked_seq == 60
    assert uplink.stats.credit >= 1
    # Each ended stream had made progress, so the backoff started over every time.
    assert uplink.stats.backoff_attempt == 1


def test_grpc_reconnect_backoff_follows_the_uplink_config() -> None:
    """While the link is down gRPC's reconnect backoff applies (wait_for_ready): not its 120 s default."""
    config = UplinkConfig(target="127.0.0.1:1", backoff_initial_s=0.5, backoff_max_s=5.0)
    options = dict(channel_options(config))
    assert options["grpc.initial_reconnect_backoff_ms"] == 500
    assert options["grpc.max_reconnect_backoff_ms"] == 5000


async def test_vehicle_over_its_rate_is_paced_without_errors(tmp_path: Path) -> None:
    server = IngestServer(
        IngestConfig(
            insecure=True,
            listen="127.0.0.1:0",
            db_path=tmp_path / "i.db",
            max_batches_per_s=40.0,
            batch_burst=5,
        )
    )
    port = await server.start()
    outbox = MemoryOutbox(max_batches=100, boot_epoch=3)
    for i in range(25):
        _append(outbox, i)
    uplink = Uplink(
        UplinkConfig(target=f"127.0.0.1:{port}", insecure=True), hello=_hello(outbox), outbox=outbox
    )
    started = time.monotonic()
    task = asyncio.create_task(uplink.run())
    try:
        uplink.notify()
        assert await uplink.wait_drained(20)
    finally:
        task.cancel()
        await server.stop(0.5)
    # 5 at once, then 20 at 40/s: about 0.5 s, on one stream, without a throttling error.
    assert time.monotonic() - started >= 0.4
    assert (uplink.stats.connects, uplink.stats.throttled, uplink.stats.acked_seq) == (1, 0, 25)


async def test_poison_batch_is_quarantined_and_leaves_the_spool(tmp_path: Path, caplog: Any) -> None:
    """Batches 1..5 from a real spool, 3 malformed: the ingest stores 1, 2, 4, 5, keeps 3 in quarantine,
    the watermark reaches 5, the spool is empty and the uplink logged and counted the quarantine."""
    vehicle = "WTCUPOISON0000001"
    spool = Spool.open(SpoolConfig(directory=tmp_path / "spool", durability="crash"))
    outbox = SpoolOutbox(spool, vehicle_id=vehicle)
    for i in range(5):
        batch = telemetry_pb.TelemetryBatch(vehicle_id=vehicle, catalog_id="c1", base_time_ns=(i + 1) * 10**9)
        batch.columns.add(signal_id=1, t_offset_ns=[0, 1], double_values=[1.0] if i == 2 else [1.0, 2.0])
        outbox.append(batch.SerializeToString(), priority=0, created_ns=time.time_ns())
    catalog = telemetry_pb.SignalCatalog(catalog_id="c1")
    catalog.signals.add(signal_id=1, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE)
    server = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "i.db"))
    port = await server.start()
    uplink = Uplink(
        UplinkConfig(target=f"127.0.0.1:{port}", insecure=True, backoff_initial_s=0.01, backoff_max_s=0.05),
        hello=ingest_pb.Hello(vehicle_id=vehicle, boot_epoch=outbox.boot_epoch, catalog=catalog),
        outbox=outbox,
    )
    caplog.set_level(logging.ERROR, logger="tcu.uplink.client")
    task = asyncio.create_task(uplink.run())
    try:
        uplink.notify()
        assert await uplink.wait_drained(20)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            response = await fleet_grpc.FleetStub(channel).ListVehicles(fleet_pb.ListVehiclesRequest())
    finally:
        task.cancel()
        await server.stop(0.5)
    stats = spool.stats()
    spool.close()
    reason = "batch seq 3: column for signal 1 (Vehicle.Speed) has 2 times but 1 values"
    assert (stats.acked_seq, stats.records, stats.tombstones, outbox.unacked()) == (5, 0, 0, 0)
    assert (uplink.stats.acked_seq, uplink.stats.connects, uplink.stats.quarantined) == (5, 1, 1)
    assert uplink.stats.last_quarantine == f"{outbox.boot_epoch}/3: {reason}"
    errors = [
        r.getMessage() for r in caplog.records if r.name == "tcu.uplink.client" and r.levelno >= logging.ERROR
    ]
    assert errors == [
        f"uplink: batch {outbox.boot_epoch}/3 is malformed; the ingest keeps it in quarantine: {reason}"
    ]
    [info] = response.vehicles
    assert (info.vehicle_id, info.batches, info.quarantined_batches, info.samples) == (vehicle, 4, 1, 8)
    with sqlite3.connect(tmp_path / "i.db") as conn:
        kept = conn.execute("SELECT boot_epoch, seq, reason, payload FROM quarantine").fetchall()
    assert [(e, s, r) for e, s, r, _ in kept] == [(outbox.boot_epoch, 3, reason)]
    # The bytes kept are the spooled record as sent, identity stamp included: it decodes to batch 3.
    assert telemetry_pb.TelemetryBatch.FromString(kept[0][3]).base_time_ns == 3 * 10**9
