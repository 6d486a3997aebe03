"""The JetStream sink against real nats-server processes: acks after PubAck, stateless replicas
(watermark from the shared bucket, live data on every replica), the archive consumer."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from ingest_helpers import rows
from nats.aio.msg import Msg

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.demo.nats import NatsCluster, NatsNode
from tcu.fleet_client import query_series
from tcu.ingest import IngestConfig
from tcu.ingest.archive import Archive, audit_archive
from tcu.ingest.config import JetStreamConfig
from tcu.ingest.hub import SubscriberOverflow
from tcu.ingest.jetstream import JetStreamSink
from tcu.ingest.metrics import ingest_health

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
        assert ingest_health(running.server)["healthy"]
        await call.write(kit.batch("VIN1", 2))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await call.read()
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "batch 1/2 of VIN1: no PubAck" in (ended.value.details() or "")
        sink = running.server.sink
        assert isinstance(sink, JetStreamSink)
        assert sink.stats.failed == 1 and sink.stats.publish_errors >= 1
        assert sink.stats.published == 1
        health = ingest_health(running.server)  # /healthz and gRPC health follow the last failure
        assert not health["healthy"] and "no PubAck" in health["store"]["last_error"]
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
    replicas: list[Any],
    kit: Any,
    vehicle: str,
    count: int,
    ledger: Ledger,
    *,
    epoch: int = 1,
    pace_s: float = 0.0,
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
                    if pace_s:
                        await asyncio.sleep(pace_s)
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


async def archive_until(config: IngestConfig, count: int, *, duplicates: int = 0, **kw: Any) -> Archive:
    """Run the archive in this process until it stored ``count`` batches and saw ``duplicates``."""
    archive = Archive(config, **kw)
    stop = asyncio.Event()
    task = asyncio.create_task(archive.run(stop))
    try:
        for _ in range(400):
            stats = archive.stats
            if stats.stored + stats.quarantined >= count and stats.duplicates >= duplicates:
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
    archive = await archive_until(config, 7, duplicates=1)
    assert (archive.stats.stored, archive.stats.duplicates, archive.stats.unreadable) == (7, 1, 0)
    audit = audit_archive(config.db_path, ledger.sent, ledger.acked)
    assert audit.ok and audit.checked == 7, audit
    assert rows(config.db_path, "SELECT count(*) FROM chunks") == [(7,)]


def test_the_audit_sees_a_loss_and_a_duplicate(tmp_path: Path) -> None:
    """The check can fail: a batch deleted from the database is lost, a chunk written twice a duplicate."""
    import shutil

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


def archived(db: Path) -> int:
    """Batches in the archive's database now (0 before it exists)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM batches").fetchone()[0])
    except sqlite3.OperationalError:  # the tables are not there yet
        return 0
    finally:
        conn.close()


def start_archive(db: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tcu.cli.main", "ingest", "archive", "--db", str(db), "--nats", url]
    with log.open("ab") as stderr:
        return subprocess.Popen([*command, "--fetch-batch", "2", "--ack-wait", "1"], stderr=stderr)


async def test_a_killed_archive_restarts_without_loss_or_duplicates(
    nats_server: NatsNode, tmp_path: Path, kit: Any
) -> None:
    config = js_config(tmp_path, [nats_server.url], "a")
    a = await kit.start(config)
    ledger = Ledger()
    try:
        await asyncio.gather(*(upload([a], kit, f"VIN{n}", 150, ledger) for n in (1, 2)))
    finally:
        await kit.finish(a)
    total = len(ledger.acked)
    assert total == 300
    db, log = config.db_path, tmp_path / "archive.log"
    first = start_archive(db, nats_server.url, log)
    try:
        for _ in range(3000):  # kill -9 as soon as it has committed something
            if archived(db) > 0 or first.poll() is not None:
                break
            await asyncio.sleep(0.005)
        first.kill()
        first.wait()
        at_kill = archived(db)
        assert 0 < at_kill < total, (at_kill, log.read_text())
        second = start_archive(db, nats_server.url, log)
        try:
            for _ in range(600):
                if archived(db) >= total or second.poll() is not None:
                    break
                await asyncio.sleep(0.05)
        finally:
            second.terminate()
            assert second.wait(10) == 0, log.read_text()
    finally:
        if first.poll() is None:
            first.kill()
    audit = audit_archive(db, ledger.sent, ledger.acked)
    assert audit.ok and audit.checked == total, audit
    assert archived(db) == total
    assert "duplicates=" in log.read_text()  # the restarted archive's counters (redeliveries are duplicates)


class _Crash(BaseException):
    """Stands for the process dying between the SQLite commit and the JetStream ack."""


async def test_messages_committed_but_not_acked_come_again_and_are_stored_once(
    nats_server: NatsNode, tmp_path: Path, kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = js_config(tmp_path, [nats_server.url], "a")
    a = await kit.start(config)
    ledger = Ledger()
    try:
        await upload([a], kit, "VIN1", 20, ledger)
    finally:
        await kit.finish(a)

    async def crash(self: Any) -> None:
        raise _Crash

    with monkeypatch.context() as patch:
        patch.setattr(Msg, "ack", crash)
        first = Archive(config, fetch_batch=8, ack_wait_s=1.0)
        with pytest.raises(_Crash):
            await first.run(asyncio.Event())
    assert first.stats.stored == 8 and first.stats.acked == 0
    assert archived(config.db_path) == 8  # committed, not acked
    # The 8 unacked messages come again after the ack wait: duplicates, not second copies.
    second = await archive_until(config, 12, duplicates=8, fetch_batch=8, ack_wait_s=1.0)
    assert (second.stats.stored, second.stats.duplicates) == (12, 8)
    audit = audit_archive(config.db_path, ledger.sent, ledger.acked)
    assert audit.ok and audit.checked == 20, audit


async def test_a_cluster_node_killed_during_upload_loses_nothing(
    nats_cluster: NatsCluster, tmp_path: Path, kit: Any
) -> None:
    config = js_config(tmp_path, nats_cluster.urls, "a", replicas=3, publish_timeout_s=1.0)
    a, b = await kit.start(config), await kit.start(config)
    ledger = Ledger()
    try:
        uploads = asyncio.gather(*(upload([a, b], kit, f"VIN{n}", 120, ledger) for n in (1, 2)))
        for _ in range(2000):
            if len(ledger.acked) >= 60:
                break
            await asyncio.sleep(0.005)
        nc = await nats.connect(servers=nats_cluster.urls)
        try:
            leader = (await nc.jetstream().stream_info(STREAM)).cluster.leader  # type: ignore[union-attr]
        finally:
            await nc.close()
        victim = next(node for node in nats_cluster.nodes if node.name == leader)
        victim.kill()  # SIGKILL the stream's leader while both vehicles upload
        acked_at_kill = len(ledger.acked)
        streams = await uploads
        assert acked_at_kill < 240 and len(ledger.acked) == 240
        publish_errors = sum(r.server.sink.stats.publish_errors for r in (a, b))
    finally:
        await kit.finish(a)
        await kit.finish(b)
    victim.start()  # back in the cluster (it catches up from the others)
    archive = await archive_until(config, 240)
    audit = audit_archive(config.db_path, ledger.sent, ledger.acked)
    assert audit.ok and audit.checked == 240, (audit, streams, publish_errors)
    assert archive.stats.stored == 240
    # The check can fail: one acked batch taken out of the stream is reported lost.
    nc = await nats.connect(servers=nats_cluster.urls)
    try:
        js = nc.jetstream(timeout=10)
        gone = await js.get_msg(STREAM, 17)
        assert await js.delete_msg(STREAM, 17)
    finally:
        await nc.close()
    headers = gone.headers or {}
    key = next(k for k in ledger.sent if f"{k[0]}:{k[1]}:{k[2]}" == headers["Nats-Msg-Id"])
    other = dataclasses.replace(config, db_path=tmp_path / "second.db")
    await archive_until(other, 239, durable="second")
    assert audit_archive(other.db_path, ledger.sent, ledger.acked).lost == [key]


def _mixed_requests(kit: Any) -> list[ingest_pb.UploadRequest]:
    """Every kind of batch (plain, strings, event, DataLoss, malformed, a resend) and a check-in."""
    plain = kit.batch("VIN1", 1, soc=((0, 80.0), (50, 79.5)), operator=((0, "Telia"),))
    event = kit.batch("VIN1", 2)
    captured = event.batch.events.add(
        campaign="harsh-brake",
        campaign_version=2,
        trigger_ns=kit.base_ns + 1_000,
        start_ns=kit.base_ns + 500,
        end_ns=kit.base_ns + 1_500,
        history_incomplete=True,
    )
    captured.columns.add(signal_id=kit.speed, t_offset_ns=[0, 500, 1000], double_values=[50.0, 20.0, 5.0])
    loss = ingest_pb.UploadRequest(
        batch=telemetry_pb.TelemetryBatch(
            vehicle_id="VIN1",
            boot_epoch=1,
            seq=3,
            loss=telemetry_pb.DataLoss(reason="evicted", priority=2, created_ns=5, payload_bytes=99),
        )
    )
    malformed = kit.batch("VIN1", 4)
    malformed.batch.columns.add(signal_id=77, t_offset_ns=[0], double_values=[1.0])  # unknown signal id
    checkin = ingest_pb.UploadRequest(
        checkin=ingest_pb.CheckIn(campaigns=[ingest_pb.CampaignVersion(name="harsh-brake", version=2)])
    )
    return [plain, event, loss, malformed, kit.batch("VIN1", 1), kit.batch("VIN1", 5), checkin]


def _ack_view(ack: ingest_pb.Ack) -> tuple[Any, ...]:
    return (ack.batch_seq, ack.acked_seq, ack.duplicate, [(q.seq, q.reason) for q in ack.quarantined])


_TABLES = {  # every column but the ingest's clock (stored_ns, last_seen_ns, checkin_ns, received_ns)
    "batches": "SELECT vehicle_id, boot_epoch, seq, catalog_id, base_time_ns, created_ns, samples,"
    " loss_reason, loss_priority, loss_created_ns, loss_bytes FROM batches ORDER BY 1, 2, 3",
    "samples": "SELECT * FROM sample_rows ORDER BY 1, 2, 3",
    "events": "SELECT vehicle_id, boot_epoch, seq, idx, campaign, campaign_version, trigger_ns, start_ns,"
    " end_ns, truncated, history_incomplete, samples, body FROM events ORDER BY 1, 2, 3, 4",
    "quarantine": "SELECT vehicle_id, boot_epoch, seq, reason, catalog_id, agent_version, payload"
    " FROM quarantine",
    "checkins": "SELECT vehicle_id, campaigns FROM checkins",
    "catalogs": "SELECT * FROM catalog_signals ORDER BY 1, 2, 3",
    "vehicles": "SELECT vehicle_id, boot_epoch, batches, samples, first_sample_ns, last_sample_ns,"
    " lost_batches FROM vehicles",
}


async def test_the_archive_holds_what_the_sqlite_sink_holds(
    nats_server: NatsNode, tmp_path: Path, kit: Any
) -> None:
    """The same uploads through the SQLite sink and through a replica + the archive: same acks, same rows."""
    results: dict[str, tuple[list[Any], dict[str, Any], list[Any]]] = {}
    for name in ("sqlite", "jetstream"):
        if name == "sqlite":
            config = IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "sqlite.db")
        else:
            config = js_config(tmp_path, [nats_server.url], "a")
        running = await kit.start(config)
        try:
            call = await running.open_upload("VIN1")
            acks = []
            for request in _mixed_requests(kit):
                await call.write(request)
                if request.WhichOneof("kind") == "batch":
                    acks.append(_ack_view(await kit.ack_of(call)))
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
            if name == "jetstream":
                await archive_until(config, 4)
                for _ in range(100):  # the check-in follows the batches in the stream
                    if rows(config.db_path, "SELECT count(*) FROM checkins") == [(1,)]:
                        break
                    await asyncio.sleep(0.05)
            listed = await running.fleet.ListVehicles(fleet_pb.ListVehiclesRequest())
            vehicles = [
                (v.vehicle_id, v.batches, v.samples, v.lost_batches, v.quarantined_batches, list(v.signals))
                for v in listed.vehicles
            ]
            series = await query_series(running.channel, "VIN1")  # a replica answers from the archive
            tables = {table: rows(config.db_path, sql) for table, sql in _TABLES.items()}
            tables["query"] = sorted(
                (n, s.t_ns.tolist(), s.values.tolist(), s.strings) for n, s in series.items()
            )
            results[name] = (acks, tables, vehicles)
        finally:
            await kit.finish(running)
    sqlite, jetstream = results["sqlite"], results["jetstream"]
    assert jetstream[0] == sqlite[0]
    assert [seq for seq, _, _, quarantined in sqlite[0] if quarantined] == [4]
    for table in (*_TABLES, "query"):
        assert jetstream[1][table] == sqlite[1][table], table
    assert sqlite[1]["events"] and sqlite[1]["quarantine"] and sqlite[1]["checkins"]
    assert jetstream[2] == sqlite[2] and sqlite[2][0][1:5] == (4, 9, 1, 1)


async def test_replicas_started_together_share_a_new_database(nats_server: NatsNode, tmp_path: Path) -> None:
    """Several processes creating the archive's database at once (a fleet start): none fails."""
    config = js_config(tmp_path, [nats_server.url], "a")
    sinks = await asyncio.gather(*(JetStreamSink.open(config) for _ in range(4)))
    for sink in sinks:
        assert await sink.list_vehicles() == []
        await sink.aclose()


def test_jetstream_settings_are_checked() -> None:
    from tcu.errors import ConfigError
    from tcu.ingest.config import NatsTls

    with pytest.raises(ConfigError, match=r"jetstream\.servers"):
        JetStreamConfig(servers=("127.0.0.1:4222",))
    with pytest.raises(ConfigError, match=r"jetstream\.replicas"):
        JetStreamConfig(replicas=0)
    with pytest.raises(ConfigError, match=r"jetstream\.stream"):
        JetStreamConfig(stream="A.B")
    with pytest.raises(ConfigError, match=r"jetstream\.tls"):
        JetStreamConfig(tls=NatsTls(ca=Path("ca.pem"), cert=Path("c.pem")))
    with pytest.raises(ConfigError, match=r"ingest\.sink"):
        IngestConfig(insecure=True, db_path=Path("x.db"), sink="jetstream")


def test_subjects_and_keys_hold_any_vehicle_id() -> None:
    from tcu.ingest import _jsformat as fmt

    assert fmt.subject("tcu.v1", "telemetry", "WTCU0000000000001") == "tcu.v1.telemetry.WTCU0000000000001"
    assert fmt.token("a.b c>*") == "a=2Eb=20c=3E=2A"  # no subject wildcards or separators survive
    assert fmt.token("") == "="
    assert fmt.msg_id("V 1", 7, 9) == "V=201:7:9"
