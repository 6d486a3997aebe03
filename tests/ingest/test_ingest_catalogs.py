"""Hello.previous_catalogs over a real gRPC server: spooled batches of an older catalog (before a
DBC or mapping update) are stored under that catalog's names and units; a batch of a catalog the
Hello did not announce still ends the stream; the count of previous catalogs is capped."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from ingest_helpers import rows

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc
from tcu.api.v1 import telemetry_pb2 as telemetry_pb

SPEED = "Vehicle.Speed"
OLD_NAME = "Vehicle.Speed.Legacy"  # what signal id 1 was called before the update, in mph

OLD = telemetry_pb.SignalCatalog(
    catalog_id="cat-old",
    signals=[
        telemetry_pb.SignalInfo(signal_id=1, name=OLD_NAME, unit="mph", type=telemetry_pb.VALUE_TYPE_DOUBLE),
        telemetry_pb.SignalInfo(
            signal_id=7, name="Vehicle.Cabin.Door.Row1.Left.IsOpen", type=telemetry_pb.VALUE_TYPE_STRING
        ),
    ],
)


def hello_with(kit: Any, vehicle_id: str, previous: list[telemetry_pb.SignalCatalog]) -> Any:
    request = kit.hello(vehicle_id)
    request.hello.previous_catalogs.extend(previous)
    return request


async def open_with(
    running: Any, kit: Any, vehicle_id: str, previous: list[telemetry_pb.SignalCatalog]
) -> Any:
    call = ingest_grpc.IngestStub(running.channel).Upload(timeout=30)
    await call.write(hello_with(kit, vehicle_id, previous))
    return call


async def refused_hello(running: Any, request: Any) -> str:
    call = ingest_grpc.IngestStub(running.channel).Upload(timeout=10)
    await call.write(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(caught.value.details())


async def test_batches_of_a_previous_catalog_are_stored_under_its_names_and_units(
    running: Any, kit: Any
) -> None:
    live = running.fleet.Subscribe(fleet_pb.SubscribeRequest(vehicle_ids=["veh-1"]))
    await _until(lambda: len(running.server.hub) == 1)
    call = await open_with(running, kit, "veh-1", [OLD])
    old = kit.batch("veh-1", 1, speed=[(0, 31.0), (10, 32.0)], catalog_id="cat-old")
    old.batch.columns.add(signal_id=7, t_offset_ns=[5], string_values=["true"])
    await call.write(old)
    await call.write(kit.batch("veh-1", 2, speed=[(20, 50.0)]))
    acks = [await kit.ack_of(call) for _ in range(2)]
    assert [(a.batch_seq, a.acked_seq, len(a.quarantined)) for a in acks] == [(1, 1, 0), (2, 2, 0)]
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF

    db = running.config.db_path
    assert rows(db, "SELECT seq, catalog_id FROM batches ORDER BY seq") == [(1, "cat-old"), (2, "cat-test-1")]
    assert rows(db, "SELECT signal, t_ns, value_double, value_text, seq FROM sample_rows ORDER BY t_ns") == [
        (OLD_NAME, kit.base_ns, 31.0, None, 1),
        ("Vehicle.Cabin.Door.Row1.Left.IsOpen", kit.base_ns + 5, None, "true", 1),
        (OLD_NAME, kit.base_ns + 10, 32.0, None, 1),
        (SPEED, kit.base_ns + 20, 50.0, None, 2),
    ]
    assert rows(
        db, "SELECT catalog_id, signal_id, name, unit FROM catalog_signals ORDER BY catalog_id, signal_id"
    ) == [
        ("cat-old", 1, OLD_NAME, "mph"),
        ("cat-old", 7, "Vehicle.Cabin.Door.Row1.Left.IsOpen", ""),
        ("cat-test-1", 1, SPEED, "km/h"),
        ("cat-test-1", 2, "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "percent"),
        ("cat-test-1", 3, "Vehicle.Connectivity.OperatorName", ""),
    ]
    # History and the live stream carry each batch's own names and units.
    history = [u async for u in running.fleet.Query(fleet_pb.QueryRequest(vehicle_id="veh-1"))]
    series = {(s.name, s.unit): list(s.double_values) for u in history for s in u.series}
    assert series[(OLD_NAME, "mph")] == [31.0, 32.0]
    assert series[(SPEED, "km/h")] == [50.0]
    first = await asyncio.wait_for(live.read(), 5)
    assert sorted((s.name, s.unit) for s in first.series) == [
        ("Vehicle.Cabin.Door.Row1.Left.IsOpen", ""),
        (OLD_NAME, "mph"),
    ]
    second = await asyncio.wait_for(live.read(), 5)
    assert [(s.name, s.unit) for s in second.series] == [(SPEED, "km/h")]
    live.cancel()


async def _until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_batch_of_an_unannounced_catalog_is_quarantined_and_the_stream_goes_on(
    running: Any, kit: Any
) -> None:
    """Ending the stream would make the agent resend it forever; its bytes are kept instead."""
    call = await open_with(running, kit, "veh-1", [OLD])
    await call.write(kit.batch("veh-1", 1, catalog_id="cat-old"))
    assert (await kit.ack_of(call)).acked_seq == 1
    await call.write(kit.batch("veh-1", 2, catalog_id="cat-other"))
    ack = await kit.ack_of(call)
    assert ack.acked_seq == 2
    assert [(q.seq, q.reason) for q in ack.quarantined] == [
        (2, "batch seq 2: catalog_id 'cat-other' is none of the announced catalogs ('cat-test-1', 'cat-old')")
    ]
    await call.write(kit.batch("veh-1", 3))
    assert (await kit.ack_of(call)).acked_seq == 3
    assert rows(running.config.db_path, "SELECT seq FROM batches ORDER BY seq") == [(1,), (3,)]
    assert rows(running.config.db_path, "SELECT seq, catalog_id FROM quarantine") == [(2, "cat-other")]

    # Without previous catalogs, a batch of the old one is quarantined the same way.
    plain = await running.open_upload("veh-2")
    await plain.write(kit.batch("veh-2", 1, catalog_id="cat-old"))
    ack = await kit.ack_of(plain)
    assert [(q.seq, q.reason) for q in ack.quarantined] == [
        (1, "batch seq 1: catalog_id 'cat-old' is not the announced catalog 'cat-test-1'")
    ]


async def test_a_malformed_batch_of_a_previous_catalog_is_quarantined_under_that_catalog(
    running: Any, kit: Any
) -> None:
    call = await open_with(running, kit, "veh-1", [OLD])
    bad = kit.batch("veh-1", 1, catalog_id="cat-old")
    bad.batch.columns.add(signal_id=2, t_offset_ns=[1], double_values=[80.0])  # id 2 is not in cat-old
    await call.write(bad)
    ack = await kit.ack_of(call)
    assert [(q.seq, q.reason) for q in ack.quarantined] == [
        (1, "batch seq 1: signal id 2 is not in catalog cat-old")
    ]
    await call.done_writing()
    assert rows(running.config.db_path, "SELECT seq, catalog_id FROM quarantine") == [(1, "cat-old")]


def _catalog(n: int) -> telemetry_pb.SignalCatalog:
    return telemetry_pb.SignalCatalog(
        catalog_id=f"cat-old-{n}",
        signals=[
            telemetry_pb.SignalInfo(signal_id=1, name=SPEED, unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE)
        ],
    )


async def test_at_most_16_previous_catalogs(running: Any, kit: Any) -> None:
    call = await open_with(running, kit, "veh-1", [_catalog(n) for n in range(16)])
    await call.write(kit.batch("veh-1", 1, catalog_id="cat-old-15"))
    assert (await kit.ack_of(call)).acked_seq == 1
    await call.done_writing()

    details = await refused_hello(running, hello_with(kit, "veh-2", [_catalog(n) for n in range(17)]))
    assert details == "hello from vehicle 'veh-2': 17 previous catalogs, more than 16"


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        (
            [_catalog(0), _catalog(0)],
            "hello: previous catalog #1: catalog cat-old-0 is announced twice",
        ),
        (
            [telemetry_pb.SignalCatalog(catalog_id="cat-test-1")],
            "hello: previous catalog #0: catalog cat-test-1 is announced twice",
        ),
        (
            [telemetry_pb.SignalCatalog()],
            "hello: previous catalog #0.catalog_id is empty",
        ),
        (
            [
                telemetry_pb.SignalCatalog(
                    catalog_id="cat-bad",
                    signals=[
                        telemetry_pb.SignalInfo(signal_id=1, name=SPEED, type=telemetry_pb.VALUE_TYPE_DOUBLE),
                        telemetry_pb.SignalInfo(signal_id=2, name=SPEED, type=telemetry_pb.VALUE_TYPE_DOUBLE),
                    ],
                )
            ],
            "hello: previous catalog #0 cat-bad signal #1 (id 2): name Vehicle.Speed is used twice",
        ),
    ],
    ids=["twice", "same-as-current", "no-id", "bad-signal"],
)
async def test_previous_catalogs_are_checked_like_the_catalog(
    running: Any, kit: Any, previous: list[telemetry_pb.SignalCatalog], message: str
) -> None:
    assert await refused_hello(running, hello_with(kit, "veh-1", previous)) == message
    assert rows(running.config.db_path, "SELECT count(*) FROM batches") == [(0,)]
