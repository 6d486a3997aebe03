"""A batch with malformed content goes to quarantine: kept with its bytes and reason, acked, deduplicated;
later batches of the vehicle are stored; problems of the stream still end it."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any

import grpc
import pytest
from ingest_helpers import rows

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.cli.main import main
from tcu.ingest import IngestConfig
from tcu.uplink.client import wrap_batch

UPLOAD = "/tcu.api.v1.Ingest/Upload"


def length_mismatch(kit: Any, vehicle: str, seq: int) -> ingest_pb.UploadRequest:
    request = kit.batch(vehicle, seq, speed=[(0, 1.0), (1, 2.0)])
    del request.batch.columns[0].double_values[-1]
    return request


async def test_poison_batch_is_quarantined_and_the_rest_is_stored(config: IngestConfig, kit: Any) -> None:
    running = await kit.start(config)
    call = await running.open_upload("veh-1")
    requests = [kit.batch("veh-1", seq, base_ns=kit.base_ns + seq * 10**9) for seq in (1, 2, 4, 5)]
    poison = length_mismatch(kit, "veh-1", 3)
    requests.insert(2, poison)
    for request in requests:  # pipelined: written without waiting for acks
        await call.write(request)
    acks = [await kit.ack_of(call) for _ in range(5)]
    reason = "batch seq 3: column for signal 1 (Vehicle.Speed) has 2 times but 1 values"
    assert [(a.batch_seq, a.acked_seq, a.duplicate) for a in acks] == [
        (1, 1, False),
        (2, 2, False),
        (3, 3, False),
        (4, 4, False),
        (5, 5, False),
    ]
    assert [[(q.seq, q.reason) for q in a.quarantined] for a in acks] == [[], [], [(3, reason)], [], []]

    db = config.db_path
    assert rows(db, "SELECT seq FROM batches ORDER BY seq") == [(1,), (2,), (4,), (5,)]
    assert rows(db, "SELECT DISTINCT seq FROM sample_rows ORDER BY seq") == [(1,), (2,), (4,), (5,)]
    kept = rows(
        db, "SELECT vehicle_id, boot_epoch, seq, reason, catalog_id, received_ns, payload FROM quarantine"
    )
    assert len(kept) == 1
    assert kept[0][:5] == ("veh-1", 1, 3, reason, "cat-test-1")
    assert kept[0][5] > 0
    # The bytes as they were sent: they decode to the batch the vehicle wrote.
    assert kept[0][6] == poison.batch.SerializeToString()
    assert rows(db, "SELECT acked_seq FROM epochs") == [(5,)]

    # A resend (the ack was lost) is a duplicate: one row, still reported as quarantined.
    await call.write(poison)
    again = await kit.ack_of(call)
    assert (again.batch_seq, again.acked_seq, again.duplicate) == (3, 5, True)
    assert [(q.seq, q.reason) for q in again.quarantined] == [(3, reason)]
    await call.done_writing()
    assert rows(db, "SELECT count(*) FROM quarantine") == [(1,)]

    vehicles = (await running.fleet.ListVehicles(fleet_pb.ListVehiclesRequest())).vehicles
    assert [(v.vehicle_id, v.batches, v.quarantined_batches) for v in vehicles] == [("veh-1", 4, 1)]
    assert [(q.seq, q.reason) for q in await running.server.sink.quarantined("veh-1")] == [(3, reason)]
    await kit.finish(running)

    # After a restart the quarantined seq still counts: a resend stores nothing, nothing is acked again.
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE epochs SET acked_seq = 2")  # as if the epoch row lagged
    conn.close()
    second = await kit.start(config)
    try:
        call = await second.open_upload("veh-1")
        await call.write(poison)
        ack = await kit.ack_of(call)
        assert (ack.batch_seq, ack.acked_seq, ack.duplicate, len(ack.quarantined)) == (3, 5, True, 1)
        await call.done_writing()
    finally:
        await kit.finish(second)
    assert rows(db, "SELECT count(*) FROM quarantine") == [(1,)]


def _string_on_double(kit: Any) -> ingest_pb.UploadRequest:
    request = kit.batch("veh-1", 2, speed=())
    request.batch.columns.add(signal_id=kit.speed, t_offset_ns=[0], string_values=["fast"])
    return request


def _unknown_signal(kit: Any) -> ingest_pb.UploadRequest:
    request = kit.batch("veh-1", 2)
    request.batch.columns.add(signal_id=42, t_offset_ns=[0], double_values=[1.0])
    return request


def _twice(kit: Any) -> ingest_pb.UploadRequest:
    request = kit.batch("veh-1", 2)
    request.batch.columns.add(signal_id=kit.speed, t_offset_ns=[5], double_values=[1.0])
    return request


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (_unknown_signal, "batch seq 2: signal id 42 is not in catalog cat-test-1"),
        (
            _string_on_double,
            "batch seq 2: column for signal 1 (Vehicle.Speed) is DOUBLE but carries 1 string values",
        ),
        (_twice, "batch seq 2: column for signal 1 (Vehicle.Speed) appears twice"),
        (
            lambda kit: kit.batch("veh-1", 2, speed=[(i, 1.0) for i in range(9)]),
            "batch seq 2: more than 8 samples",
        ),
        (
            lambda kit: kit.batch("veh-1", 2, base_ns=2**63 - 10, speed=[(100, 1.0)]),
            f"batch seq 2: column for signal 1 (Vehicle.Speed): base_time_ns {2**63 - 10}"
            " + t_offset_ns leaves the int64 range",
        ),
    ],
    ids=["unknown-signal", "string-on-double", "column-twice", "oversize", "time-overflow"],
)
async def test_each_content_problem_is_quarantined_with_its_reason(
    config: IngestConfig, kit: Any, bad: Any, reason: str
) -> None:
    running = await kit.start(dataclasses.replace(config, max_batch_samples=8))
    try:
        call = await running.open_upload("veh-1")
        for request in (kit.batch("veh-1", 1), bad(kit), kit.batch("veh-1", 3)):
            await call.write(request)
        acks = [await kit.ack_of(call) for _ in range(3)]
        assert [a.acked_seq for a in acks] == [1, 2, 3]
        assert [(q.seq, q.reason) for q in acks[1].quarantined] == [(2, reason)]
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    finally:
        await kit.finish(running)
    assert rows(config.db_path, "SELECT seq FROM batches ORDER BY seq") == [(1,), (3,)]
    assert rows(config.db_path, "SELECT seq, reason FROM quarantine") == [(2, reason)]


async def test_undecodable_batch_is_quarantined_under_the_uplinks_stamp(running: Any, kit: Any) -> None:
    """Bytes that do not decode (a corrupt spool record) are kept as they arrived, identified by the
    (boot_epoch, seq) the uplink appends to every batch; bytes without that stamp end the stream."""
    call = running.channel.stream_stream(
        UPLOAD, request_serializer=lambda b: b, response_deserializer=ingest_pb.UploadResponse.FromString
    )(timeout=30)
    await call.write(kit.hello("veh-1").SerializeToString())
    good = kit.batch("veh-1", 0).batch.SerializeToString()  # identity comes from the stamp, as in the agent
    corrupt = b"\x0f\xff" + good  # wire type 7 does not exist
    await call.write(wrap_batch(good, boot_epoch=1, seq=1))
    await call.write(wrap_batch(corrupt, boot_epoch=1, seq=2))
    await call.write(wrap_batch(good, boot_epoch=1, seq=3))
    acks = [(await call.read()).ack for _ in range(3)]
    assert [(a.batch_seq, a.acked_seq) for a in acks] == [(1, 1), (2, 2), (3, 3)]
    assert [q.seq for q in acks[1].quarantined] == [2]
    assert "does not decode as a TelemetryBatch" in acks[1].quarantined[0].reason
    stamped = corrupt + b"\x10\x01\x18\x02"
    assert rows(running.config.db_path, "SELECT seq, payload FROM quarantine") == [(2, stamped)]

    await call.write(b"\x12\x03\x0f\xff\x00")  # a batch field without a stamp
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not decode and carries no (boot_epoch, seq)" in (caught.value.details() or "")
    assert rows(running.config.db_path, "SELECT count(*) FROM quarantine") == [(1,)]


async def test_problem_of_the_stream_is_not_quarantined(running: Any, kit: Any) -> None:
    call = await running.open_upload("veh-1")
    await call.write(kit.batch("veh-other", 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "batch seq 1: vehicle_id 'veh-other' is not the stream's vehicle 'veh-1'"
    headless = running.ingest.Upload(timeout=10)
    await headless.write(length_mismatch(kit, "veh-1", 1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await headless.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "the first message of an Upload stream must be a Hello, got batch"
    assert rows(running.config.db_path, "SELECT count(*) FROM quarantine") == [(0,)]


async def test_cli_lists_and_exports_quarantined_batches(
    config: IngestConfig, kit: Any, tmp_path: Any, capsys: Any
) -> None:
    running = await kit.start(config)
    try:
        call = await running.open_upload("veh-1")
        poison = length_mismatch(kit, "veh-1", 2)
        for request in (kit.batch("veh-1", 1), poison):
            await call.write(request)
        assert [len((await kit.ack_of(call)).quarantined) for _ in range(2)] == [0, 1]
        await call.done_writing()
        # Read-only, while the ingest is running.
        assert main(["ingest", "quarantine", "--db", str(config.db_path), "--json"]) == 0
    finally:
        await kit.finish(running)
    reason = "batch seq 2: column for signal 1 (Vehicle.Speed) has 2 times but 1 values"
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["vehicle_id"], x["boot_epoch"], x["seq"], x["reason"]) for x in listed] == [
        ("veh-1", 1, 2, reason)
    ]
    out = tmp_path / "export"
    assert main(["ingest", "quarantine", "--db", str(config.db_path), "--export", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"veh-1 1/2 {listed[0]['received']} {len(poison.batch.SerializeToString())} B: {reason}"
    ]
    [manifest] = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    assert manifest["file"] == "veh-1/1-2.pb"
    assert (out / "veh-1" / "1-2.pb").read_bytes() == poison.batch.SerializeToString()
    assert main(["ingest", "quarantine", "--db", str(config.db_path), "--vehicle", "veh-2", "--json"]) == 0
    assert capsys.readouterr().out == ""


async def test_batch_over_the_size_limit_still_ends_the_stream(config: IngestConfig, kit: Any) -> None:
    """Known limit: gRPC refuses a message above max_message_bytes before the servicer sees it, so
    such a batch cannot be quarantined; the stream ends as before."""
    running = await kit.start(dataclasses.replace(config, max_message_bytes=4096))
    try:
        call = await running.open_upload("veh-1")
        await call.write(kit.batch("veh-1", 1, speed=[(i, float(i)) for i in range(1000)]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await kit.finish(running)
    assert rows(config.db_path, "SELECT count(*) FROM quarantine") == [(0,)]
