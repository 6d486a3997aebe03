"""The server as a whole: health, reflection, group commit, the CLI, configuration errors."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

import tcu.ingest
from tcu.errors import ClosedResourceError, ConfigError, IngestError
from tcu.ingest import IngestConfig, IngestServer, SqliteSink
from tcu.ingest.model import Batch, Catalog, Column, SignalDef, ValueKind
from tcu.ingest.store import load_sample_rows

REPO = Path(__file__).resolve().parents[2]


async def test_health_reports_serving(running: Any) -> None:
    stub = health_pb2_grpc.HealthStub(running.channel)
    for service in ("", "tcu.api.v1.Ingest", "tcu.api.v1.Fleet"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(service="tcu.api.v1.Nothing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def _reflect(port: int) -> tuple[list[str], list[str]]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        from google.protobuf.descriptor_pool import DescriptorPool

        pool = DescriptorPool(db)
        upload = pool.FindServiceByName("tcu.api.v1.Ingest").FindMethodByName("Upload")
        methods = [upload.input_type.full_name, upload.output_type.full_name]
        return services, methods


async def test_reflection_lists_the_services(running: Any) -> None:
    services, methods = await asyncio.to_thread(_reflect, running.port)
    assert services == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "tcu.api.v1.Fleet",
        "tcu.api.v1.Ingest",
    ]
    assert methods == ["tcu.api.v1.UploadRequest", "tcu.api.v1.UploadResponse"]


def _reflect_v1(port: int) -> tuple[list[str], list[str]]:
    """Reflection through ``grpc.reflection.v1`` as grpcurl asks it (the messages are v1alpha's bytes)."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as pb

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=pb.ServerReflectionRequest.SerializeToString,
            response_deserializer=pb.ServerReflectionResponse.FromString,
        )
        requests = [
            pb.ServerReflectionRequest(list_services=""),
            pb.ServerReflectionRequest(file_containing_symbol="tcu.api.v1.Fleet"),
            pb.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        ]
        listed, fleet, own = list(call(iter(requests), timeout=10))
        services = [s.name for s in listed.list_services_response.service]
        files = []
        for reply in (fleet, own):
            assert reply.HasField("file_descriptor_response"), reply
            first = descriptor_pb2.FileDescriptorProto.FromString(
                reply.file_descriptor_response.file_descriptor_proto[0]
            )
            files.append(first.name)
        return services, files


async def test_reflection_v1_lists_and_describes_the_services(running: Any) -> None:
    services, files = await asyncio.to_thread(_reflect_v1, running.port)
    assert services == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "tcu.api.v1.Fleet",
        "tcu.api.v1.Ingest",
    ]
    assert files == ["tcu/api/v1/fleet.proto", "grpc/reflection/v1/reflection.proto"]


def _batch(vehicle_id: str, seq: int) -> Batch:
    speed = SignalDef(signal_id=1, name="Vehicle.Speed", unit="km/h", kind=ValueKind.DOUBLE)
    column = Column(signal=speed, t_ns=[seq * 10, seq * 10 + 1], double_values=[1.0, 2.0], string_values=[])
    return Batch(vehicle_id, 1, seq, Catalog("c", {1: speed}), 0, 0, (column,))


async def test_sink_group_commits_concurrent_batches(tmp_path: Path) -> None:
    config = IngestConfig(
        insecure=True, db_path=tmp_path / "s.db", commit_max_batches=64, write_queue_batches=100
    )
    sink = await SqliteSink.open(config)
    try:
        results = await asyncio.gather(*(sink.store(_batch(f"veh-{i % 4}", i // 4 + 1)) for i in range(400)))
        assert [r.acked_seq for r in results[-4:]] == [100, 100, 100, 100]
        assert not any(r.duplicate for r in results)
        assert sink.stats.batches == 400
        assert sink.stats.groups < 400 // 2  # many batches per transaction
        assert 1 < sink.stats.largest_group <= 64
        # Duplicates inside one group: both answered, stored once.
        again = await asyncio.gather(sink.store(_batch("veh-x", 1)), sink.store(_batch("veh-x", 1)))
        assert sorted(r.duplicate for r in again) == [False, True]
    finally:
        await sink.aclose()
        await sink.aclose()
    with pytest.raises(ClosedResourceError):
        await sink.store(_batch("veh-0", 1))
    conn = sqlite3.connect(config.db_path)
    assert conn.execute("SELECT count(*) FROM batches").fetchone() == (401,)
    load_sample_rows(conn)  # the samples are packed by columns: one row per sample here
    assert conn.execute("SELECT count(*) FROM sample_rows").fetchone() == (802,)
    conn.close()


async def test_store_failure_is_not_acked_and_the_stream_is_told(tmp_path: Path, kit: Any) -> None:
    config = IngestConfig(
        insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "f.db", sqlite_busy_timeout_s=0.3
    )
    r = await kit.start(config)
    try:
        call = await r.open_upload("veh-1")
        await call.write(kit.batch("veh-1", 1))
        assert (await kit.ack_of(call)).acked_seq == 1
        # Another process holds the write lock longer than the busy timeout: the batch cannot commit.
        blocker = sqlite3.connect(config.db_path, timeout=0)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            await call.write(kit.batch("veh-1", 2))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
        finally:
            blocker.rollback()
            blocker.close()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "batch seq 2:" in (caught.value.details() or "")
        assert "database is locked" in (caught.value.details() or "")
        # Nothing of it was stored; the retry (as the agent would do) succeeds.
        retry = await r.open_upload("veh-1")
        await retry.write(kit.batch("veh-1", 2))
        ack = await kit.ack_of(retry)
        assert (ack.acked_seq, ack.duplicate) == (2, False)
        await retry.done_writing()
    finally:
        await kit.finish(r)


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ingest\.listen: expected host:port, got 'nowhere'"):
        IngestConfig(insecure=True, db_path=tmp_path / "x.db", listen="nowhere")
    with pytest.raises(ConfigError, match=r"ingest\.subscriber_queue: must be at least 1, got 0"):
        IngestConfig(insecure=True, db_path=tmp_path / "x.db", subscriber_queue=0)


async def test_unusable_database_is_an_ingest_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    server = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "dir.db"))
    with pytest.raises(IngestError, match=r"dir\.db: cannot open the ingest database"):
        await server.start()
    await server.stop(0)


def test_public_api_is_curated() -> None:
    assert sorted(tcu.ingest.__all__) == sorted(
        [
            "SERVICE_NAMES",
            "Batch",
            "CampaignRef",
            "Capture",
            "Catalog",
            "Column",
            "CommandConflict",
            "CommandOutcome",
            "CommandRouter",
            "CommandState",
            "CommandsExhausted",
            "HistoryQuery",
            "Identity",
            "IngestConfig",
            "IngestServer",
            "IngestTls",
            "Limits",
            "LossRecord",
            "Series",
            "Session",
            "SignalDef",
            "Sink",
            "SqliteSink",
            "StoreResult",
            "SubscriberOverflow",
            "Subscription",
            "UpdateHub",
            "ValueKind",
            "VehicleNotFound",
            "VehicleSummary",
            "WriterStats",
            "no_identity",
            "serve",
            "validate_batch",
            "validate_checkin",
            "validate_hello",
        ]
    )
    for name in tcu.ingest.__all__:
        assert getattr(tcu.ingest, name) is not None
    assert isinstance(SqliteSink.__new__(SqliteSink), tcu.ingest.Sink)


async def test_cli_serves_writes_port_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "ingest.port"
    db = tmp_path / "cli.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcu.cli.main",
        "ingest",
        "--listen",
        "127.0.0.1:0",
        "--db",
        str(db),
        "--port-file",
        str(port_file),
        "--insecure",
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.returncode is None, "tcu ingest exited early"
            assert time.monotonic() < deadline, "no port file"
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().strip())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    text = stderr.decode()
    assert f"tcu ingest: listening on 127.0.0.1:{port}" in text
    assert "ingest stopped" in text
    assert db.exists()


async def test_second_ingest_on_a_port_in_use_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 10 item 12: gRPC's SO_REUSEPORT let a second ingest share the port (vehicles split
    across two databases). Now it is refused, in the API and in the CLI, unless asked for."""
    first = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "a.db"))
    port = await first.start()
    try:
        second = IngestServer(
            IngestConfig(insecure=True, listen=f"127.0.0.1:{port}", db_path=tmp_path / "b.db")
        )
        with pytest.raises(
            IngestError, match=rf"ingest.listen: cannot listen on 127.0.0.1:{port}: address in use"
        ):
            await second.start()
        from tcu.cli.main import main

        capsys.readouterr()
        argv = ["ingest", "--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "c.db"), "--insecure"]
        assert await asyncio.to_thread(main, argv) == 1
        stderr = capsys.readouterr().err
        lines = [line for line in stderr.splitlines() if "error" in line.lower()]
        assert lines == [
            f"tcu ingest: error: ingest.listen: cannot listen on 127.0.0.1:{port}: address in use"
            " (another process listens there; --reuse-port shares the port on purpose)"
        ]
        assert "Traceback" not in stderr
        # Explicitly asked for: the second one shares the port.
        first_reuse = IngestServer(
            IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "e.db", reuse_port=True)
        )
        reuse_port = await first_reuse.start()
        try:
            again = IngestServer(
                IngestConfig(
                    insecure=True,
                    listen=f"127.0.0.1:{reuse_port}",
                    db_path=tmp_path / "f.db",
                    reuse_port=True,
                )
            )
            assert await again.start() == reuse_port
            await again.stop(0)
        finally:
            await first_reuse.stop(0)
    finally:
        await first.stop(0)
