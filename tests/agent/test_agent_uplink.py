"""The uplink against a real ingest: throttling with retry-after, credit, max_connection_age."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.config import UplinkConfig
from tcu.ingest import IngestConfig, IngestServer
from tcu.uplink import MemoryOutbox, Uplink

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
