"""Captured events over a real server: validated, stored with their batch (once), published live,
returned by Query only with include_events."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import grpc

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import ingest_pb2 as ingest_pb

SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
OPERATOR = "Vehicle.Connectivity.OperatorName"
T0 = 1_763_000_000_000_000_000


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def with_event(
    request: ingest_pb.UploadRequest,
    *,
    campaign: str = "harsh-brake",
    trigger_ns: int = T0 + 1_000,
    pre_ns: int = 500,
    post_ns: int = 500,
    speed: list[tuple[int, float]] | None = None,
    operator: list[tuple[int, str]] | None = None,
    truncated: bool = False,
) -> ingest_pb.UploadRequest:
    """Add an event to a batch request; sample times are offsets from the event's start."""
    event = request.batch.events.add(
        campaign=campaign,
        campaign_version=2,
        trigger_ns=trigger_ns,
        start_ns=trigger_ns - pre_ns,
        end_ns=trigger_ns + post_ns,
        truncated=truncated,
        history_incomplete=True,
    )
    if speed is None:
        speed = [(0, 50.0), (500, 20.0), (1000, 5.0)]
    event.columns.add(signal_id=1, t_offset_ns=[t for t, _ in speed], double_values=[v for _, v in speed])
    if operator:
        event.columns.add(
            signal_id=3, t_offset_ns=[t for t, _ in operator], string_values=[v for _, v in operator]
        )
    return request


def plain(event: fleet_pb.Event) -> tuple[Any, ...]:
    return (
        event.campaign,
        event.campaign_version,
        event.trigger_ns,
        event.start_ns,
        event.end_ns,
        event.truncated,
        event.history_incomplete,
        [(s.name, s.unit, list(s.t_ns), list(s.double_values), list(s.string_values)) for s in event.series],
    )


async def upload(running: Any, kit: Any, vehicle_id: str, *requests: Any) -> list[ingest_pb.Ack]:
    call = await running.open_upload(vehicle_id)
    acks = []
    for request in requests:
        await call.write(request)
        acks.append(await kit.ack_of(call))
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    return acks


async def query(running: Any, **kwargs: Any) -> list[fleet_pb.SignalUpdate]:
    return [u async for u in running.fleet.Query(fleet_pb.QueryRequest(vehicle_id="veh-1", **kwargs))]


async def test_events_are_stored_published_and_queried(running: Any, kit: Any) -> None:
    everything = running.fleet.Subscribe(fleet_pb.SubscribeRequest())
    only_operator = running.fleet.Subscribe(fleet_pb.SubscribeRequest(signals=[OPERATOR]))
    only_soc = running.fleet.Subscribe(fleet_pb.SubscribeRequest(signals=[SOC]))
    await until(lambda: len(running.server.hub) == 3)

    first = with_event(kit.batch("veh-1", 1, speed=[(0, 1.0)]), operator=[(100, "Telekom.de")])
    second = with_event(
        kit.batch("veh-1", 2, speed=[]), campaign="low-soc", trigger_ns=T0 + 10_000, truncated=True
    )
    await upload(running, kit, "veh-1", first, second)

    expected_first = (
        "harsh-brake",
        2,
        T0 + 1_000,
        T0 + 500,
        T0 + 1_500,
        False,
        True,
        [
            (SPEED, "km/h", [T0 + 500, T0 + 1_000, T0 + 1_500], [50.0, 20.0, 5.0], []),
            (OPERATOR, "", [T0 + 600], [], ["Telekom.de"]),
        ],
    )
    update = await asyncio.wait_for(everything.read(), 5)
    assert update.seq == 1 and [s.name for s in update.series] == [SPEED]
    assert [plain(e) for e in update.events] == [expected_first]
    update = await asyncio.wait_for(everything.read(), 5)  # a batch with only an event is published too
    assert update.seq == 2 and not update.series
    assert [(e.campaign, e.truncated, e.trigger_ns) for e in update.events] == [
        ("low-soc", True, T0 + 10_000)
    ]
    # A signal filter applies to event columns: only events with a wanted column, only those columns.
    update = await asyncio.wait_for(only_operator.read(), 5)
    assert update.seq == 1 and not update.series
    assert [[s.name for s in e.series] for e in update.events] == [[OPERATOR]]
    await upload(running, kit, "veh-1", kit.batch("veh-1", 3, soc=[(0, 70.0)], speed=[]))
    update = await asyncio.wait_for(only_soc.read(), 5)
    assert update.seq == 3 and not update.events  # the event batches had nothing for it

    # Query: no events unless asked; then after the sample chunks, by trigger time, in range.
    updates = await query(running)
    assert updates and all(not u.events for u in updates)
    updates = await query(running, include_events=True)
    assert [bool(u.series) for u in updates] == [True, False]
    assert plain(updates[-1].events[0]) == expected_first
    assert [e.campaign for e in updates[-1].events] == ["harsh-brake", "low-soc"]
    updates = await query(running, include_events=True, start_ns=T0 + 1_001, end_ns=T0 + 10_001)
    assert [e.campaign for u in updates for e in u.events] == ["low-soc"]
    updates = await query(running, include_events=True, start_ns=T0 + 1_000, end_ns=T0 + 10_000)
    assert [e.campaign for u in updates for e in u.events] == ["harsh-brake"]  # end is exclusive
    updates = await query(running, include_events=True, signals=[OPERATOR])
    assert [[s.name for s in e.series] for u in updates for e in u.events] == [[OPERATOR]]
    # Chunks of about max_samples_per_chunk samples: one event (3 or 4 samples) per update here.
    updates = await query(running, include_events=True, signals=[SPEED], max_samples_per_chunk=2)
    assert [len(u.events) for u in updates if u.events] == [1, 1]
    for call in (everything, only_operator, only_soc):
        call.cancel()


async def test_duplicate_batch_with_events_stores_them_once(running: Any, kit: Any) -> None:
    request = with_event(kit.batch("veh-1", 1))
    acks = await upload(running, kit, "veh-1", request)
    acks += await upload(running, kit, "veh-1", request)
    assert [a.duplicate for a in acks] == [False, True]
    updates = await query(running, include_events=True)
    assert [e.campaign for u in updates for e in u.events] == ["harsh-brake"]
    with sqlite3.connect(running.config.db_path) as conn:
        rows = conn.execute(
            "SELECT vehicle_id, boot_epoch, seq, idx, campaign, samples FROM events"
        ).fetchall()
    assert rows == [("veh-1", 1, 1, 0, "harsh-brake", 3)]


async def test_malformed_event_is_quarantined_and_nothing_is_stored(running: Any, kit: Any) -> None:
    """An event's samples outside its window are the batch's own content: the batch is kept in
    quarantine (acked, the stream goes on), none of its events or samples are stored."""
    request = with_event(kit.batch("veh-1", 1), speed=[(0, 1.0), (501, 2.0)], post_ns=500)
    request.batch.events[0].columns[0].t_offset_ns[1] = 1_001  # beyond end_ns
    call = await running.open_upload("veh-1")
    await call.write(request)
    response = await call.read()
    assert (response.ack.batch_seq, response.ack.acked_seq) == (1, 1)
    assert [(q.seq, q.reason) for q in response.ack.quarantined] == [
        (
            1,
            "batch seq 1: event #0 (harsh-brake v2): column for signal 1 (Vehicle.Speed): sample time"
            f" {T0 + 1_501} (start_ns + t_offset_ns) is outside the event's"
            f" [start_ns {T0 + 500}, end_ns {T0 + 1_500}]",
        )
    ]
    await call.done_writing()
    assert await call.code() is grpc.StatusCode.OK
    with sqlite3.connect(running.config.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM batches").fetchone() == (0,)
        assert conn.execute("SELECT seq FROM quarantine").fetchall() == [(1,)]
