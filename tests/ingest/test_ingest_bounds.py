"""Issue 10 item 6: what one vehicle or client can make the ingest hold is bounded, and each bound acts:
Hello size, signals per vehicle, concurrent streams per identity and overall, fair group commits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.ingest import IngestConfig


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        response = await asyncio.wait_for(call.read(), 10)
        raise AssertionError(f"not refused: {response}")
    return caught.value


async def test_oversize_hello_is_refused(tmp_path: Path, kit: Any) -> None:
    config = IngestConfig(
        insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "h.db", max_hello_bytes=64 * 1024
    )
    r = await kit.start(config)
    try:
        big = kit.hello("veh-big")
        for index in range(4000):  # about 150 KB of catalog
            big.hello.catalog.signals.add(
                signal_id=100 + index,
                name=f"Vehicle.Custom.Signal{index:05d}",
                unit="km/h",
                type=telemetry_pb.VALUE_TYPE_DOUBLE,
            )
        call = r.ingest.Upload(timeout=10)
        await call.write(big)
        error = await _refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "hello of" in (error.details() or "") and "more than max_hello_bytes 65536" in (
            error.details() or ""
        )
        small = await r.open_upload("veh-small")  # the same ingest takes a normal Hello
        await small.write(kit.batch("veh-small", 1))
        assert (await kit.ack_of(small)).acked_seq == 1
    finally:
        await kit.finish(r)


async def test_signals_per_vehicle_are_bounded_over_all_announced_catalogs(tmp_path: Path, kit: Any) -> None:
    config = IngestConfig(
        insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "s.db", max_vehicle_signals=8
    )
    r = await kit.start(config)
    try:
        hello = kit.hello("veh-1")  # 3 signals in the current catalog ...
        for n in range(2):  # ... and 3 in each of two previous ones: 9 > 8
            previous = hello.hello.previous_catalogs.add()
            previous.CopyFrom(hello.hello.catalog)
            previous.catalog_id = f"cat-old-{n}"
        call = r.ingest.Upload(timeout=10)
        await call.write(hello)
        error = await _refused(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "9 signals in its catalogs, more than max_vehicle_signals 8" in (error.details() or "")
    finally:
        await kit.finish(r)


async def test_streams_beyond_the_caps_are_refused(tmp_path: Path, kit: Any) -> None:
    config = IngestConfig(
        insecure=True,
        listen="127.0.0.1:0",
        db_path=tmp_path / "c.db",
        max_streams_per_identity=2,
        max_streams=4,
    )
    r = await kit.start(config)
    try:
        first = [await r.open_upload("veh-1", channel=r.new_channel()) for _ in range(2)]
        for n, call in enumerate(first, start=1):
            await call.write(kit.batch("veh-1", n))
            assert (await kit.ack_of(call)).batch_seq == n
        third = await r.open_upload("veh-1", channel=r.new_channel())
        error = await _refused(third)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "vehicle veh-1 has 2 streams open, max_streams_per_identity" in (error.details() or "")
        assert dict(error.trailing_metadata() or ()).get("retry-after-ms")
        # Another vehicle is not affected by veh-1's cap ...
        other = await r.open_upload("veh-2", channel=r.new_channel())
        await other.write(kit.batch("veh-2", 1))
        assert (await kit.ack_of(other)).acked_seq == 1
        subscriber = r.fleet.Subscribe(fleet_pb.SubscribeRequest())  # the 4th stream overall
        await asyncio.sleep(0.2)
        # ... but the overall cap is: a 5th stream of anyone is refused.
        fifth = ingest_grpc.IngestStub(r.new_channel()).Upload(timeout=10)  # refused at its start
        error = await _refused(fifth)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "4 streams open, max_streams" in (error.details() or "")
        # Closing one makes room again.
        await first[0].done_writing()
        assert await first[0].read() is grpc.aio.EOF
        again = await r.open_upload("veh-1", channel=r.new_channel())
        await again.write(kit.batch("veh-1", 3))
        assert (await kit.ack_of(again)).acked_seq == 3
        subscriber.cancel()
    finally:
        await kit.finish(r)


def _samples_batch(vehicle_id: str, seq: int, samples: int) -> Any:
    from tcu.ingest.model import Batch, Catalog, Column, SignalDef, ValueKind

    speed = SignalDef(signal_id=1, name="Vehicle.Speed", unit="km/h", kind=ValueKind.DOUBLE)
    t = [seq * 10_000_000 + i for i in range(samples)]
    column = Column(signal=speed, t_ns=t, double_values=[1.0] * samples, string_values=[])
    return Batch(vehicle_id, 1, seq, Catalog("c", {1: speed}), 0, 0, (column,))


async def test_a_vehicle_with_huge_batches_cannot_starve_a_small_one(tmp_path: Path) -> None:
    """The writer serves vehicles round-robin with a sample budget per group commit: a small
    vehicle's batch, queued behind 10 big ones of another vehicle, is committed after at most one of
    them (before: all 10 and it went into one group, in arrival order)."""
    import sqlite3

    from tcu.ingest.store import SqliteSink

    config = IngestConfig(
        insecure=True, db_path=tmp_path / "f.db", sqlite_busy_timeout_s=30, commit_max_samples=25_000
    )
    sink = await SqliteSink.open(config)
    order: list[str] = []
    try:
        blocker = sqlite3.connect(config.db_path, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        warm = asyncio.create_task(sink.store(_samples_batch("veh-warm", 1, 1)))
        while sink.writing == 0:  # noqa: ASYNC110 - the writer is a thread: nothing to await
            await asyncio.sleep(0.01)

        async def store(name: str, batch: Any) -> None:
            await sink.store(batch)
            order.append(name)

        big = [
            asyncio.create_task(store(f"big-{s}", _samples_batch("veh-big", s, 20_000))) for s in range(1, 11)
        ]
        await asyncio.sleep(0.05)
        small = [asyncio.create_task(store(f"small-{s}", _samples_batch("veh-small", s, 10))) for s in (1, 2)]
        await asyncio.sleep(0.05)
        assert sink.queued == 12
        blocker.rollback()
        blocker.close()
        await asyncio.gather(warm, *big, *small)
    finally:
        await sink.aclose()
    assert order.index("small-1") <= 1, order  # behind at most one big batch
    assert order.index("small-2") <= 3, order
    assert [n for n in order if n.startswith("big")] == [
        f"big-{s}" for s in range(1, 11)
    ]  # its own order kept
    assert sink.stats.groups >= 10  # the big batches were not written in one transaction


def test_cli_limit_flags_reach_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tcu.cli.main import main

    argv = ["ingest", "--insecure", "--db", str(tmp_path / "x.db"), "--listen", "127.0.0.1:0"]
    assert main([*argv, "--max-streams-per-identity", "0"]) == 1
    assert (
        "tcu ingest: error: ingest.max_streams_per_identity: must be at least 1, got 0"
        in capsys.readouterr().err
    )
    assert main([*argv, "--max-connection-age", "-1"]) == 1
    assert "ingest.max_connection_age_s: must be positive" in capsys.readouterr().err


async def test_small_vehicle_is_acked_between_the_big_batches_of_another(tmp_path: Path, kit: Any) -> None:
    """End to end over gRPC: one vehicle pipelines 8 batches over the group-commit sample budget, then
    a small vehicle sends one; its ack comes before all but at most two of the big vehicle's acks
    (order of service, not timings)."""
    config = IngestConfig(
        insecure=True,
        listen="127.0.0.1:0",
        db_path=tmp_path / "e.db",
        commit_max_samples=20_000,
        sqlite_busy_timeout_s=30,
    )
    r = await kit.start(config)
    order: list[str] = []
    try:
        big = await r.open_upload("veh-big", channel=r.new_channel())
        small = await r.open_upload("veh-small", channel=r.new_channel())
        samples = [(i, float(i)) for i in range(30_000)]
        import sqlite3

        blocker = sqlite3.connect(config.db_path, timeout=0)  # hold the writer until all is queued
        blocker.execute("BEGIN IMMEDIATE")
        try:
            await big.write(kit.batch("veh-big", 1, speed=samples))
            while r.server.sink.writing == 0:  # noqa: ASYNC110 - the writer is a thread
                await asyncio.sleep(0.01)
            for seq in range(2, 9):
                await big.write(kit.batch("veh-big", seq, base_ns=kit.base_ns + seq * 10**9, speed=samples))
            while r.server.sink.queued < 7:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            await small.write(kit.batch("veh-small", 1))
            while r.server.sink.queued < 8:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        finally:
            blocker.rollback()
            blocker.close()

        async def acks(name: str, call: Any, count: int) -> None:
            for _ in range(count):
                ack = await kit.ack_of(call)
                order.append(f"{name}-{ack.batch_seq}")

        await asyncio.wait_for(asyncio.gather(acks("big", big, 8), acks("small", small, 1)), 60)
    finally:
        await kit.finish(r)
    # big-1 was being written when the rest arrived; then small-1 is served after at most one more.
    assert order.index("small-1") <= 2, order


async def test_streams_without_a_hello_count_and_time_out(tmp_path: Path, kit: Any) -> None:
    config = IngestConfig(
        insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "n.db", max_streams=2, hello_timeout_s=1.0
    )
    r = await kit.start(config)
    try:
        silent = [r.ingest.Upload(timeout=30) for _ in range(2)]  # they never send their Hello
        while r.server.streams.total < 2:  # noqa: ASYNC110 - counted by the server
            await asyncio.sleep(0.01)
        late = ingest_grpc.IngestStub(r.new_channel()).Upload(timeout=10)  # refused before it could write
        error = await _refused(late)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 streams open, max_streams is 2" in (error.details() or "")
        for call in silent:  # ended by the ingest, the client does nothing
            error = await _refused(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "no Hello within hello_timeout_s 1 s" in (error.details() or "")
        assert r.server.streams.total == 0
        ok = await r.open_upload("veh-1", channel=r.new_channel())
        await ok.write(kit.batch("veh-1", 1))
        assert (await kit.ack_of(ok)).acked_seq == 1
    finally:
        await kit.finish(r)
