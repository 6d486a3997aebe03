"""The JetStream sink against real nats-server processes: acks after PubAck, stateless replicas
(watermark from the shared bucket, live data on every replica), the archive consumer."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from ingest_helpers import rows

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.demo.nats import NatsNode
from tcu.ingest import IngestConfig
from tcu.ingest.archive import Archive, audit_archive
from tcu.ingest.config import JetStreamConfig
from tcu.ingest.hub import SubscriberOverflow
from tcu.ingest.jetstream import JetStreamSink

STREAM = "TCU_TELEMETRY"


def js_config(tmp_path: Path, urls: list[str], name: str, *, replicas: int = 1, **kw: Any) -> IngestConfig:
    return IngestConfig(
        insecure=True,
        listen="127.0.0.1:0",
        db_path=tmp_path / "archive.db",
        sink="jetstream",
        jetstream=JetStreamConfig(servers=tuple(urls), replicas=replicas, **kw),
    )


async def stream_messages(url: str, subject: str = "tcu.v1.telemetry.>") -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(STREAM, subjects_filter=subject)
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


async def test_acks_come_after_the_pubacks(nats_server: NatsNode, tmp_path: Path, kit: Any) -> None:
    running = await kit.start(js_config(tmp_path, [nats_server.url], "a"))
    try:
        call = await running.open_upload("VIN1")
        for seq in (1, 2, 3):
            await call.write(kit.batch("VIN1", seq))
            ack = await kit.ack_of(call)
            assert (ack.batch_seq, ack.acked_seq, ack.duplicate) == (seq, seq, False)
            # The ack came: the batch is in the stream already.
            assert await stream_messages(nats_server.url) == seq
        await call.write(kit.batch("VIN1", 2))  # a resend: the watermark says it is stored
        ack = await kit.ack_of(call)
        assert (ack.batch_seq, ack.acked_seq, ack.duplicate) == (2, 3, True)
        assert await stream_messages(nats_server.url) == 3
        await call.done_writing()
        sink = running.server.sink
        assert isinstance(sink, JetStreamSink)
        assert (sink.stats.published, sink.stats.duplicates, sink.stats.failed) == (3, 1, 0)
    finally:
        await kit.finish(running)


async def test_no_puback_no_ack_counted(nats_server: NatsNode, tmp_path: Path, kit: Any) -> None:
    running = await kit.start(js_config(tmp_path, [nats_server.url], "a", publish_retry_s=0.3))
    try:
        call = await running.open_upload("VIN1")
        await call.write(kit.batch("VIN1", 1))
        assert (await kit.ack_of(call)).acked_seq == 1
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().delete_stream(STREAM)  # JetStream stops answering for the subjects
        finally:
            await nc.close()
        await call.write(kit.batch("VIN1", 2))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "batch 1/2 of VIN1: no PubAck" in (ended.value.details() or "")
        sink = running.server.sink
        assert isinstance(sink, JetStreamSink)
        assert sink.stats.failed == 1 and sink.stats.publish_errors >= 1
        assert sink.stats.published == 1
    finally:
        await kit.finish(running)


async def test_a_vehicle_resumes_on_another_replica(nats_server: NatsNode, tmp_path: Path, kit: Any) -> None:
    a = await kit.start(js_config(tmp_path, [nats_server.url], "a"))
    b = await kit.start(js_config(tmp_path, [nats_server.url], "b"))
    try:
        call = await a.open_upload("VIN1")
        for seq in (1, 2, 3):
            await call.write(kit.batch("VIN1", seq))
            await kit.ack_of(call)
        await call.write(kit.batch("VIN1", 5))  # out of order: stored above the watermark
        assert (await kit.ack_of(call)).acked_seq == 3
        call.cancel()
        # The vehicle reconnects to replica B, which has never seen it: its watermark is the bucket's.
        call = await b.open_upload("VIN1")
        await call.write(kit.batch("VIN1", 3))  # the resend of an acked batch
        ack = await kit.ack_of(call)
        assert (ack.batch_seq, ack.acked_seq, ack.duplicate) == (3, 3, True)
        await call.write(kit.batch("VIN1", 4))
        ack = await kit.ack_of(call)
        assert (ack.batch_seq, ack.acked_seq, ack.duplicate) == (4, 5, False)  # 5 came through A
        await call.write(kit.batch("VIN1", 5))
        ack = await kit.ack_of(call)
        assert (ack.acked_seq, ack.duplicate) == (5, True)
        await call.done_writing()
        assert await stream_messages(nats_server.url) == 5
    finally:
        await kit.finish(a)
        await kit.finish(b)


async def test_subscribe_on_one_replica_sees_uploads_to_another(
    nats_server: NatsNode, tmp_path: Path, kit: Any
) -> None:
    a = await kit.start(js_config(tmp_path, [nats_server.url], "a"))
    b = await kit.start(js_config(tmp_path, [nats_server.url], "b"))
    try:
        updates = b.fleet.Subscribe(fleet_pb.SubscribeRequest(vehicle_ids=["VIN1", "VIN2"]), timeout=20)
        for _ in range(500):  # until the subscription is registered
            if len(b.server.hub):
                break
            await asyncio.sleep(0.01)
        for vehicle, replica in (("VIN1", a), ("VIN2", b)):
            call = await replica.open_upload(vehicle)
            await call.write(kit.batch(vehicle, 1, speed=((0, 42.0),)))
            await kit.ack_of(call)
            await call.done_writing()
        seen = []
        for _ in range(2):
            update = await updates.read()
            seen.append((update.vehicle_id, update.seq, list(update.series[0].double_values)))
        assert sorted(seen) == [("VIN1", 1, [42.0]), ("VIN2", 1, [42.0])]  # each once, via the stream
        assert a.server.hub.overflows == b.server.hub.overflows == 0
        updates.cancel()
    finally:
        await kit.finish(a)
        await kit.finish(b)


async def test_a_slow_subscriber_is_ended_with_a_count(
    nats_server: NatsNode, tmp_path: Path, kit: Any
) -> None:
    config = dataclasses.replace(js_config(tmp_path, [nats_server.url], "a"), subscriber_queue=2)
    a = await kit.start(config)
    try:
        sub = a.server.hub.subscribe(["VIN1"])  # never read
        call = await a.open_upload("VIN1")
        for seq in range(1, 6):
            await call.write(kit.batch("VIN1", seq))
            await kit.ack_of(call)
        await call.done_writing()
        with pytest.raises(SubscriberOverflow) as ended:
            for _ in range(100):
                sub.get_nowait_check()
                await asyncio.sleep(0.02)
        assert ended.value.missed >= 1
        assert a.server.hub.overflows == 1
        sub.close()
    finally:
        await kit.finish(a)


Key = tuple[str, int, int]


@dataclasses.dataclass
class Ledger:
    """What a sender sent (key -> samples) and which keys it got acks for: the audit's reference."""

    sent: dict[Key, int] = dataclasses.field(default_factory=dict)
    acked: set[Key] = dataclasses.field(default_factory=set)


async def upload(
    replicas: list[Any], kit: Any, vehicle: str, count: int, ledger: Ledger, *, epoch: int = 1
) -> int:
    """Send batches 1..count, reconnecting (to the next replica) and resending what is unacked after
    any stream error, as the uplink does; returns how many streams it took."""
    acked_seq = 0
    streams = 0
    while acked_seq < count:
        replica = replicas[streams % len(replicas)]
        streams += 1
        try:
            call = await replica.open_upload(vehicle, epoch)

            async def write(call: Any = call, start: int = acked_seq + 1) -> None:
                for seq in range(start, count + 1):
                    request = kit.batch(
                        vehicle, seq, epoch, speed=((0, float(seq)), (1000, float(seq) + 0.5))
                    )
                    ledger.sent[(vehicle, epoch, seq)] = 2
                    await call.write(request)
                await call.done_writing()

            writer = asyncio.create_task(write())
            try:
                while acked_seq < count:
                    ack = await kit.ack_of(call)
                    acked_seq = max(acked_seq, ack.acked_seq)
                    ledger.acked.update((vehicle, epoch, s) for s in range(1, acked_seq + 1))
            finally:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
                call.cancel()
        except (grpc.aio.AioRpcError, AssertionError):
            await asyncio.sleep(0.2)
        if streams > 200:
            raise AssertionError(
                f"{vehicle}: still {count - acked_seq} batches unacked after {streams} streams"
            )
    return streams


async def archive_until(config: IngestConfig, count: int, **kw: Any) -> Archive:
    """Run the archive in this process until the database holds ``count`` batches, then stop it."""
    archive = Archive(config, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(archive.run(stop))
    try:
        for _ in range(400):
            if archive.stats.stored + archive.stats.quarantined >= count:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    return archive


async def test_archive_stores_each_batch_once(nats_server: NatsNode, tmp_path: Path, kit: Any) -> None:
    config = js_config(tmp_path, [nats_server.url], "a", duplicate_window_s=0.5)
    a, b = await kit.start(config), await kit.start(config)
    ledger = Ledger()
    try:
        await upload([a], kit, "VIN1", 4, ledger)
        await upload([b], kit, "VIN2", 3, ledger)
        # VIN1 resends 3 and 4 on replica B (acks lost): duplicates by the shared watermark.
        call = await b.open_upload("VIN1")
        for seq in (3, 4):
            await call.write(kit.batch("VIN1", seq, speed=((0, float(seq)), (1000, float(seq) + 0.5))))
            assert (await kit.ack_of(call)).duplicate
        await call.done_writing()
        # A copy past JetStream's dedup window (a replica that died between PubAck and watermark).
        nc = await nats.connect(nats_server.url)
        try:
            js = nc.jetstream()
            first = await js.get_msg(STREAM, 1)
            await asyncio.sleep(0.6)
            again = await js.publish(first.subject, first.data or b"", headers=first.headers)
            assert not again.duplicate
        finally:
            await nc.close()
        assert await stream_messages(nats_server.url) == 8
    finally:
        await kit.finish(a)
        await kit.finish(b)
    archive = await archive_until(config, 7)
    assert (archive.stats.stored, archive.stats.duplicates, archive.stats.unreadable) == (7, 1, 0)
    audit = audit_archive(config.db_path, ledger.sent, ledger.acked)
    assert audit.ok and audit.checked == 7, audit
    assert rows(config.db_path, "SELECT count(*) FROM chunks") == [(7,)]


def test_the_audit_sees_a_loss_and_a_duplicate(tmp_path: Path) -> None:
    """The check can fail: a batch deleted from the database is lost, a chunk written twice a duplicate."""
    import shutil
    import sqlite3

    from tcu.ingest.model import Batch, Catalog, Column, SignalDef, ValueKind
    from tcu.ingest.store import SqliteSink

    config = IngestConfig(insecure=True, db_path=tmp_path / "a.db")
    speed = SignalDef(signal_id=1, name="Vehicle.Speed", unit="km/h", kind=ValueKind.DOUBLE)

    async def fill() -> None:
        sink = await SqliteSink.open(config)
        for seq in (1, 2, 3):
            column = Column(signal=speed, t_ns=[seq, seq + 1], double_values=[1.0, 2.0], string_values=[])
            await sink.store(
                Batch(
                    "VIN1", 1, seq, Catalog("c", {1: speed}), base_time_ns=0, created_ns=0, columns=(column,)
                )
            )
        await sink.aclose()

    asyncio.run(fill())
    sent = {("VIN1", 1, seq): 2 for seq in (1, 2, 3)}
    acked = set(sent)
    assert audit_archive(config.db_path, sent, acked).ok
    lost, dup = tmp_path / "lost.db", tmp_path / "dup.db"
    shutil.copy(config.db_path, lost)
    shutil.copy(config.db_path, dup)
    with sqlite3.connect(lost) as conn:
        conn.execute("DELETE FROM batches WHERE seq = 2")
        conn.execute("DELETE FROM chunks WHERE seq = 2")
    with sqlite3.connect(dup) as conn:
        conn.execute(
            "INSERT INTO chunks SELECT series_id, t_first, chunk_id + 100, t_last, boot_epoch, seq, count,"
            " data FROM chunks WHERE seq = 3"
        )
    assert audit_archive(lost, sent, acked).lost == [("VIN1", 1, 2)]
    assert audit_archive(dup, sent, acked).duplicates == [("VIN1", 1, 3)]
