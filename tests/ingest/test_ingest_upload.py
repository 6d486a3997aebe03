"""Upload over a real gRPC server: acks after commit, dedup, high-water mark, rejections, identity."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import grpc
import pytest
from ingest_helpers import rows

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.ingest import IngestConfig


async def test_upload_is_acked_after_commit_and_in_the_file(running: Any, kit: Any) -> None:
    call = await running.open_upload("veh-1")
    await call.write(
        kit.batch("veh-1", 1, speed=[(0, 50.5), (10_000_000, 51.0)], operator=[(5, "Telekom.de")])
    )
    ack = await kit.ack_of(call)
    assert (ack.vehicle_id, ack.boot_epoch, ack.acked_seq, ack.batch_seq, ack.duplicate) == (
        "veh-1",
        1,
        1,
        1,
        False,
    )
    # The ack came after the commit: a separate connection to the file sees the rows now.
    db = running.config.db_path
    assert rows(db, "SELECT vehicle_id, boot_epoch, seq, catalog_id, samples FROM batches") == [
        ("veh-1", 1, 1, "cat-test-1", 3)
    ]
    assert rows(
        db,
        "SELECT vehicle_id, signal, t_ns, value_double, value_text, boot_epoch, seq"
        " FROM sample_rows ORDER BY t_ns",
    ) == [
        ("veh-1", "Vehicle.Speed", kit.base_ns, 50.5, None, 1, 1),
        ("veh-1", "Vehicle.Connectivity.OperatorName", kit.base_ns + 5, None, "Telekom.de", 1, 1),
        ("veh-1", "Vehicle.Speed", kit.base_ns + 10_000_000, 51.0, None, 1, 1),
    ]
    assert rows(
        db, "SELECT count(*) FROM catalog_signals WHERE vehicle_id='veh-1' AND catalog_id='cat-test-1'"
    ) == [(3,)]
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_duplicate_batch_is_acked_as_duplicate_and_stored_once(running: Any, kit: Any) -> None:
    call = await running.open_upload("veh-1")
    await call.write(kit.batch("veh-1", 1))
    assert not (await kit.ack_of(call)).duplicate
    await call.write(kit.batch("veh-1", 1))
    ack = await kit.ack_of(call)
    assert (ack.batch_seq, ack.acked_seq, ack.duplicate) == (1, 1, True)
    await call.done_writing()
    # A retry on a new stream (the agent reconnected) is a duplicate too.
    again = await running.open_upload("veh-1")
    await again.write(kit.batch("veh-1", 1, speed=[(0, 99.0)]))
    assert (await kit.ack_of(again)).duplicate
    await again.done_writing()
    db = running.config.db_path
    assert rows(db, "SELECT count(*) FROM batches") == [(1,)]
    assert rows(db, "SELECT value_double FROM sample_rows ORDER BY t_ns") == [(10.0,), (11.0,)]


async def test_out_of_order_seqs_advance_the_high_water_mark(running: Any, kit: Any) -> None:
    call = await running.open_upload("veh-1")
    acks = []
    for seq in (3, 1, 2, 5, 4):
        await call.write(kit.batch("veh-1", seq, base_ns=kit.base_ns + seq * 1_000_000_000))
        acks.append(await kit.ack_of(call))
    assert [(a.batch_seq, a.acked_seq, a.duplicate) for a in acks] == [
        (3, 0, False),
        (1, 1, False),
        (2, 3, False),
        (5, 3, False),
        (4, 5, False),
    ]
    await call.done_writing()
    assert rows(running.config.db_path, "SELECT acked_seq FROM epochs WHERE vehicle_id='veh-1'") == [(5,)]


async def test_pipelined_stream_acks_every_batch_in_arrival_order(running: Any, kit: Any) -> None:
    call = await running.open_upload("veh-1")
    order = [*range(1, 41), 45, 41, 42, 43, 44]
    for seq in order:  # written without waiting for any ack
        await call.write(kit.batch("veh-1", seq, base_ns=kit.base_ns + seq))
    await call.done_writing()
    acks = [response.ack async for response in call]
    assert [a.batch_seq for a in acks] == order
    assert [a.acked_seq for a in acks[-5:]] == [40, 41, 42, 43, 45]
    assert all(not a.duplicate for a in acks)
    assert await call.code() == grpc.StatusCode.OK


async def test_stream_keeps_reading_while_a_commit_is_pending(running: Any, kit: Any) -> None:
    """Pipelining: while the writer waits for a lock, later batches of the same stream are read and queued,
    then committed together (a read→commit→ack loop would have one batch per transaction)."""
    sink = running.server.sink
    call = await running.open_upload("veh-1")
    await call.write(kit.batch("veh-1", 1))
    await kit.ack_of(call)
    groups_before = sink.stats.groups
    blocker = sqlite3.connect(running.config.db_path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        for seq in range(2, 32):
            await call.write(kit.batch("veh-1", seq))
        deadline = asyncio.get_running_loop().time() + 10
        # The first batches sit in the blocked transaction; the later ones must queue behind it.
        while sink.queued + sink.writing < 30:
            read = sink.queued + sink.writing
            assert asyncio.get_running_loop().time() < deadline, f"only {read} batches read"
            await asyncio.sleep(0.01)
    finally:
        blocker.rollback()
        blocker.close()
    acks = [await kit.ack_of(call) for _ in range(30)]
    assert [a.batch_seq for a in acks] == list(range(2, 32))
    assert acks[-1].acked_seq == 31
    # 30 batches in at most 3 transactions: a read→commit→ack loop would have needed 30.
    assert sink.stats.groups - groups_before <= 3
    assert sink.stats.largest_group >= 10
    await call.done_writing()


async def test_new_boot_epoch_starts_again(running: Any, kit: Any) -> None:
    call = await running.open_upload("veh-1", boot_epoch=7)
    for seq in (1, 2):
        await call.write(kit.batch("veh-1", seq, boot_epoch=7))
        await kit.ack_of(call)
    await call.done_writing()
    rebooted = await running.open_upload("veh-1", boot_epoch=8)
    await rebooted.write(kit.batch("veh-1", 1, boot_epoch=8))
    ack = await kit.ack_of(rebooted)
    assert (ack.boot_epoch, ack.batch_seq, ack.acked_seq, ack.duplicate) == (8, 1, 1, False)
    # A spooled batch of the old epoch can still follow on the new stream; it is acked in its epoch.
    await rebooted.write(kit.batch("veh-1", 3, boot_epoch=7))
    ack = await kit.ack_of(rebooted)
    assert (ack.boot_epoch, ack.batch_seq, ack.acked_seq) == (7, 3, 3)
    await rebooted.done_writing()
    assert rows(running.config.db_path, "SELECT boot_epoch, acked_seq FROM epochs ORDER BY boot_epoch") == [
        (7, 3),
        (8, 1),
    ]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            lambda kit: kit.batch("veh-bad", 0),
            "batch seq 0: seq must be 1 or more",
        ),
        (
            lambda kit: kit.batch("veh-other", 2),
            "batch seq 2: vehicle_id 'veh-other' is not the stream's vehicle 'veh-bad'",
        ),
        (
            lambda kit: kit.hello("veh-bad"),
            "only the first message may be a Hello; got hello after it",
        ),
    ],
    ids=["seq-zero", "other-vehicle", "second-hello"],
)
async def test_problem_of_the_stream_aborts_only_its_stream(
    running: Any, kit: Any, bad: Any, message: str
) -> None:
    """Problems of the stream (not of one batch's content) still end it; content problems are
    quarantined instead (tests/ingest/test_ingest_quarantine.py)."""
    good = await running.open_upload("veh-good", channel=running.new_channel())
    await good.write(kit.batch("veh-good", 1))
    assert (await kit.ack_of(good)).acked_seq == 1

    call = await running.open_upload("veh-bad")
    await call.write(kit.batch("veh-bad", 1))
    assert (await kit.ack_of(call)).acked_seq == 1
    await call.write(bad(kit))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message

    # The other vehicle's stream on the same server carries on.
    await good.write(kit.batch("veh-good", 2))
    assert (await kit.ack_of(good)).acked_seq == 2
    await good.done_writing()
    assert rows(running.config.db_path, "SELECT vehicle_id, seq FROM batches ORDER BY vehicle_id, seq") == [
        ("veh-bad", 1),
        ("veh-good", 1),
        ("veh-good", 2),
    ]


async def test_stream_without_hello_is_rejected(running: Any, kit: Any) -> None:
    call = running.ingest.Upload(timeout=10)
    await call.write(kit.batch("veh-1", 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "the first message of an Upload stream must be a Hello, got batch"

    empty = running.ingest.Upload(timeout=10)
    await empty.done_writing()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await empty.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "stream ended before its Hello"


async def test_bad_hello_is_rejected(running: Any, kit: Any) -> None:
    request = kit.hello("veh-1")
    request.hello.catalog.signals[1].signal_id = 1
    call = running.ingest.Upload(timeout=10)
    await call.write(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        "hello: catalog cat-test-1 signal #1 (id 1)"
        " (Vehicle.Powertrain.TractionBattery.StateOfCharge.Current): signal id is used twice"
    )


async def test_identity_hook_refuses_other_vehicles(config: IngestConfig, kit: Any) -> None:
    seen: list[str] = []

    def identity(context: Any) -> str:
        seen.append(context.peer())
        return "veh-cert"

    r = await kit.start(config, identity=identity)
    try:
        call = await r.open_upload("veh-cert")
        await call.write(kit.batch("veh-cert", 1))
        assert (await kit.ack_of(call)).acked_seq == 1
        await call.write(kit.batch("veh-else", 2))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (
            caught.value.details()
            == "batch seq 2 for vehicle 'veh-else' on a connection of vehicle 'veh-cert'"
        )

        other = await r.open_upload("veh-else")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await other.read()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert caught.value.details() == "hello for vehicle 'veh-else' on a connection of vehicle 'veh-cert'"
        assert len(seen) == 2 and seen[0].startswith("ipv4:127.0.0.1:")
    finally:
        await kit.finish(r)


async def test_stop_is_idempotent_and_high_water_mark_survives_restart(
    config: IngestConfig, kit: Any
) -> None:
    first = await kit.start(config)
    call = await first.open_upload("veh-1")
    for seq in (1, 2, 4):
        await call.write(kit.batch("veh-1", seq))
        await kit.ack_of(call)
    subscriber = first.fleet.Subscribe(fleet_pb.SubscribeRequest())
    deadline = asyncio.get_running_loop().time() + 5
    while len(first.server.hub) == 0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    # Stopping with streams open: they are told to reconnect, then the store closes.
    await first.server.stop(1.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await subscriber.read()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "ingest is shutting down; subscribe again"
    await first.server.stop(1.0)  # again: nothing happens
    await asyncio.gather(first.server.stop(0), first.server.stop(0))
    await kit.finish(first)

    second = await kit.start(config)
    try:
        call = await second.open_upload("veh-1")
        await call.write(kit.batch("veh-1", 2))
        ack = await kit.ack_of(call)
        assert (ack.batch_seq, ack.acked_seq, ack.duplicate) == (2, 2, True)
        await call.write(kit.batch("veh-1", 3))
        ack = await kit.ack_of(call)
        assert (ack.batch_seq, ack.acked_seq, ack.duplicate) == (3, 4, False)
        await call.done_writing()
    finally:
        await kit.finish(second)


async def test_high_water_mark_is_recomputed_from_batches(config: IngestConfig, kit: Any) -> None:
    """Even if the epochs row lags (e.g. rows restored from a backup), stored seqs are not acked again."""
    first = await kit.start(config)
    call = await first.open_upload("veh-1")
    for seq in (1, 2, 3, 5):
        await call.write(kit.batch("veh-1", seq))
        await kit.ack_of(call)
    await call.done_writing()
    await kit.finish(first)
    conn = sqlite3.connect(config.db_path)
    with conn:
        conn.execute("UPDATE epochs SET acked_seq = 1")
    conn.close()

    second = await kit.start(config)
    try:
        call = await second.open_upload("veh-1")
        await call.write(kit.batch("veh-1", 4))
        ack = await kit.ack_of(call)
        assert (ack.acked_seq, ack.duplicate) == (5, False)
        await call.write(kit.batch("veh-1", 3))
        assert (await kit.ack_of(call)).duplicate
        await call.done_writing()
    finally:
        await kit.finish(second)
