"""Fleet API over a real gRPC server: live Subscribe with filters and overflow, Query, ListVehicles."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.ingest import IngestConfig, UpdateHub
from tcu.ingest.hub import SubscriberOverflow
from tcu.ingest.model import Batch, Catalog, Column, SignalDef, ValueKind

SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
OPERATOR = "Vehicle.Connectivity.OperatorName"


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def upload(running: Any, kit: Any, vehicle_id: str, *batches: Any) -> None:
    call = await running.open_upload(vehicle_id)
    for request in batches:
        await call.write(request)
        await kit.ack_of(call)
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


async def test_subscribe_receives_live_updates_with_filters(running: Any, kit: Any) -> None:
    filtered = running.fleet.Subscribe(
        fleet_pb.SubscribeRequest(vehicle_ids=["veh-1"], signals=[SPEED, OPERATOR])
    )
    everything = running.fleet.Subscribe(fleet_pb.SubscribeRequest())
    await until(lambda: len(running.server.hub) == 2)

    await upload(running, kit, "veh-2", kit.batch("veh-2", 1, speed=[(0, 99.0)]))
    await upload(
        running,
        kit,
        "veh-1",
        kit.batch("veh-1", 1, speed=[(0, 10.0), (5, 12.5)], soc=[(1, 80.0)]),
        kit.batch("veh-1", 2, speed=[], soc=[(2, 79.5)]),  # nothing the filtered subscriber wants
        kit.batch("veh-1", 3, speed=[], operator=[(3, "Vodafone.de")]),
    )
    update = await asyncio.wait_for(filtered.read(), 5)
    assert (update.vehicle_id, update.boot_epoch, update.seq) == ("veh-1", 1, 1)
    assert [(s.name, s.unit, list(s.t_ns), list(s.double_values)) for s in update.series] == [
        (SPEED, "km/h", [kit.base_ns, kit.base_ns + 5], [10.0, 12.5])
    ]
    update = await asyncio.wait_for(filtered.read(), 5)
    assert update.seq == 3
    assert [(s.name, list(s.string_values), list(s.double_values)) for s in update.series] == [
        (OPERATOR, ["Vodafone.de"], [])
    ]
    seen = [await asyncio.wait_for(everything.read(), 5) for _ in range(4)]
    assert [(u.vehicle_id, u.seq, sorted(s.name for s in u.series)) for u in seen] == [
        ("veh-2", 1, [SPEED]),
        ("veh-1", 1, sorted([SPEED, SOC])),
        ("veh-1", 2, [SOC]),
        ("veh-1", 3, [OPERATOR]),
    ]
    # A duplicate is not published again.
    await upload(running, kit, "veh-1", kit.batch("veh-1", 1, speed=[(0, 10.0)]))
    await upload(running, kit, "veh-1", kit.batch("veh-1", 4, speed=[(9, 1.0)]))
    assert (await asyncio.wait_for(everything.read(), 5)).seq == 4
    filtered.cancel()
    everything.cancel()
    await until(lambda: len(running.server.hub) == 0)


def _big_batch(seq: int, samples: int) -> Batch:
    speed = SignalDef(signal_id=1, name=SPEED, unit="km/h", kind=ValueKind.DOUBLE)
    catalog = Catalog(catalog_id="c", signals={1: speed})
    column = Column(signal=speed, t_ns=list(range(samples)), double_values=[1.5] * samples, string_values=[])
    return Batch("veh-1", 1, seq, catalog, 0, 0, (column,))


async def test_slow_subscriber_is_ended_with_resource_exhausted(tmp_path: Any, kit: Any) -> None:
    config = IngestConfig(
        insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "ingest.db", subscriber_queue=4
    )
    r = await kit.start(config)
    try:
        slow = r.fleet.Subscribe(fleet_pb.SubscribeRequest())
        await until(lambda: len(r.server.hub) == 1)
        # The client reads nothing: HTTP/2 windows fill, then the subscriber's queue of 4.
        big = [_big_batch(seq, 50_000) for seq in range(1, 201)]
        published = 0
        for b in big:
            r.server.hub.publish(b)
            published += 1
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while True:
                update = await asyncio.wait_for(slow.read(), 10)
                assert update is not grpc.aio.EOF
                assert update.seq == received + 1  # no silent gaps before the end
                received += 1
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = caught.value.details() or ""
        assert "fell behind by more than its queue of 4 updates" in details
        missed = int(details.split("missed ")[1].split(" ")[0])
        assert missed > 0
        assert received + missed <= published
        assert len(r.server.hub) == 0
    finally:
        await kit.finish(r)


async def test_subscriber_that_never_reads_is_ended_within_its_byte_budget(tmp_path: Any, kit: Any) -> None:
    """Issue 10 item 6: a subscriber that never reads held up to its whole queue of updates (1024, of
    any size) and was never ended while its handler was blocked sending. Now the hub drops its queue
    once its bytes would pass the budget and ends the stream at once, without the client reading."""
    budget = 2 * 1024 * 1024
    config = IngestConfig(
        insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "ingest.db", subscriber_max_bytes=budget
    )
    r = await kit.start(config)
    try:
        slow = r.fleet.Subscribe(fleet_pb.SubscribeRequest())
        await until(lambda: len(r.server.hub) == 1)
        (sub,) = r.server.hub.subscriptions
        published = 0
        for seq in range(1, 101):  # about 600 KB each: 60 MB in all
            r.server.hub.publish(_big_batch(seq, 50_000))
            published += 1
            await asyncio.sleep(0)
        assert sub.peak_bytes <= budget
        assert sub.missed > 0
        # Ended by the ingest while the client has not read a byte.
        await until(lambda: len(r.server.hub) == 0)
        assert r.server.hub.overflows == 1
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            while True:
                update = await asyncio.wait_for(slow.read(), 10)
                assert update is not grpc.aio.EOF
                assert update.seq == received + 1  # no silent gaps before the end
                received += 1
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value
        details = caught.value.details() or ""
        assert f"or {budget} bytes and missed" in details
        missed = int(details.split("missed ")[1].split(" ")[0])
        assert missed > 0
        assert received + missed <= published
    finally:
        await kit.finish(r)


async def test_hub_policy_counts_missed_updates() -> None:
    hub = UpdateHub(queue_size=2)
    sub = hub.subscribe(vehicle_ids=["veh-1"])
    other = hub.subscribe(vehicle_ids=["veh-9"])
    for seq in range(1, 6):
        hub.publish(_big_batch(seq, 3))
    with pytest.raises(SubscriberOverflow) as caught:
        await sub.get()
    assert caught.value.missed == 5  # the 2 queued are dropped with the 3rd: what it holds stays bounded
    assert str(caught.value).startswith(
        "subscriber fell behind by more than its queue of 2 updates or 33554432 bytes and missed 5"
    )
    sub.close()
    other_task = asyncio.create_task(other.get())
    await asyncio.sleep(0)
    hub.close()
    assert await asyncio.wait_for(other_task, 1) is None
    assert len(hub) == 0


async def test_query_returns_exactly_the_stored_samples_in_range(running: Any, kit: Any) -> None:
    base = kit.base_ns
    await upload(
        running,
        kit,
        "veh-1",
        kit.batch("veh-1", 2, speed=[(30, 3.0), (10, 1.0), (50, 5.0)], operator=[(20, "A")]),
        kit.batch("veh-1", 1, speed=[(20, 2.0), (40, 4.0), (60, 6.0)], soc=[(0, 90.0), (70, 80.0)]),
        kit.batch("veh-1", 3, speed=[(70, float("nan"))], operator=[(40, "B"), (80, "C")]),
    )
    await upload(running, kit, "veh-2", kit.batch("veh-2", 1, speed=[(35, 77.0)]))

    async def query(**kwargs: Any) -> list[Any]:
        return [u async for u in running.fleet.Query(fleet_pb.QueryRequest(vehicle_id="veh-1", **kwargs))]

    chunks = await query(
        signals=[SPEED, OPERATOR], start_ns=base + 20, end_ns=base + 70, max_samples_per_chunk=3
    )
    assert [sum(len(s.t_ns) for s in c.series) for c in chunks] == [3, 3, 1]
    assert all(c.vehicle_id == "veh-1" and c.seq == 0 for c in chunks)
    merged: dict[str, list[tuple[int, Any]]] = {}
    for chunk in chunks:
        for s in chunk.series:
            values = list(s.double_values) or list(s.string_values)
            merged.setdefault(s.name, []).extend(zip([t - base for t in s.t_ns], values, strict=True))
    assert merged == {
        OPERATOR: [(20, "A"), (40, "B")],
        SPEED: [(20, 2.0), (30, 3.0), (40, 4.0), (50, 5.0), (60, 6.0)],
    }
    # 0 means open-ended; everything of the vehicle, signals in name order, NaN kept.
    chunks = await query()
    assert len(chunks) == 1
    series = chunks[0].series
    assert [s.name for s in series] == [OPERATOR, SOC, SPEED]
    assert [s.unit for s in series] == ["", "percent", "km/h"]
    assert list(series[2].double_values)[:6] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert series[2].double_values[6] != series[2].double_values[6]  # NaN
    assert list(series[0].string_values) == ["A", "B", "C"]

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await query(start_ns=base + 5, end_ns=base + 5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [u async for u in running.fleet.Query(fleet_pb.QueryRequest(vehicle_id="veh-nobody"))]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "vehicle 'veh-nobody' has no stored batches"


async def test_list_vehicles(running: Any, kit: Any) -> None:
    assert (await running.fleet.ListVehicles(fleet_pb.ListVehiclesRequest())).vehicles == []
    before_ns = time.time_ns()
    await upload(
        running,
        kit,
        "veh-1",
        kit.batch("veh-1", 1, speed=[(0, 1.0), (10, 2.0)]),
        kit.batch("veh-1", 2, speed=[(-5, 1.0)], operator=[(100, "X")]),
    )
    await upload(running, kit, "veh-1", kit.batch("veh-1", 2))  # duplicate: not counted
    call = await running.open_upload("veh-1", boot_epoch=2)
    await call.write(kit.batch("veh-1", 1, boot_epoch=2, speed=[(50, 3.0)]))
    await kit.ack_of(call)
    await call.done_writing()
    await upload(running, kit, "veh-0", kit.batch("veh-0", 1, speed=[], soc=[(7, 55.0)]))

    vehicles = (await running.fleet.ListVehicles(fleet_pb.ListVehiclesRequest())).vehicles
    assert [v.vehicle_id for v in vehicles] == ["veh-0", "veh-1"]
    v1 = vehicles[1]
    assert (v1.boot_epoch, v1.batches, v1.samples) == (2, 3, 5)
    assert list(v1.signals) == [OPERATOR, SPEED]
    assert (v1.first_sample_ns, v1.last_sample_ns) == (kit.base_ns - 5, kit.base_ns + 100)
    assert before_ns <= v1.last_seen_ns <= time.time_ns()
    v0 = vehicles[0]
    assert (v0.batches, v0.samples, list(v0.signals)) == (1, 1, [SOC])
