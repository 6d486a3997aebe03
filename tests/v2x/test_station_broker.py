"""Stations over a real Mosquitto: who is warned, once; dedup, update, cancellation, expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from v2x_broker import V2xBroker

from tcu.v2x.client import V2xClient
from tcu.v2x.denm import DenmTrigger
from tcu.v2x.geo import destination
from tcu.v2x.station import StationSettings, StationWarning, V2xStation, VehicleState

A, B, C = "WDD2050461A000101", "WDD2050461A000102", "WDD2050461A000103"
LAT, LON, HEADING = 49.15, 6.17, 355.0
S = 1_000_000_000
WAIT_S = 10.0

BRAKE = DenmTrigger(
    "hard_braking",
    cause_code=99,
    sub_cause_code=1,
    validity_s=20,
    relevance_distance_m=500.0,
    release_ns=S // 2,
    repetition_interval_ns=S // 5,
    update_interval_ns=S,
    cancel_repetitions=1,
)


def _state(lat: float, lon: float, heading: float = HEADING, speed: float = 25.0) -> VehicleState:
    return VehicleState(
        time_ns=time.time_ns(), latitude_deg=lat, longitude_deg=lon, heading_deg=heading, speed_mps=speed
    )


async def _until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110 - polls what the clients' tasks update
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(*stations: V2xStation) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        for i, station in enumerate(stations):
            station.client.start(tg, name=f"test.station[{i}]")
        try:
            for station in stations:
                await station.client.wait_connected(WAIT_S)
            yield
        finally:
            for station in stations:
                station.client.stop()


def _station(
    broker: V2xBroker, vin: str, warnings: list[StationWarning], trigger: DenmTrigger = BRAKE
) -> V2xStation:
    client = V2xClient(broker.client_config(vin))
    settings = StationSettings(station_id=broker.vehicles[vin], triggers=(trigger,), send_cam=True)
    return V2xStation(settings, client, on_warning=warnings.append)


async def test_follower_is_warned_once_other_carriageway_is_not_and_the_end_arrives(
    v2x_broker: V2xBroker,
) -> None:
    leader_w: list[StationWarning] = []
    follower_w: list[StationWarning] = []
    oncoming_w: list[StationWarning] = []
    leader = _station(v2x_broker, A, leader_w)
    follower = _station(v2x_broker, B, follower_w)
    oncoming = _station(v2x_broker, C, oncoming_w)
    behind = destination(LAT, LON, HEADING + 180, 150.0)  # 150 m behind the leader, same way
    ahead_other_way = destination(LAT, LON, HEADING, 300.0)  # 300 m ahead, on the other carriageway
    async with running(leader, follower, oncoming):
        follower.update(_state(*behind), {})
        oncoming.update(_state(*ahead_other_way, heading=HEADING - 180), {})
        await _until(
            lambda: (
                follower.client.counters["subscribed"] == 9 and oncoming.client.counters["subscribed"] == 9
            )
        )
        trigger_ns = time.time_ns()
        sent = leader.update(VehicleState(trigger_ns, LAT, LON, HEADING, 20.0, -7.5), {"hard_braking": True})
        assert [o.kind for o in sent] == ["new"]
        for _ in range(12):  # braking for 1.2 s: repetitions every 200 ms, an update after 1 s
            await asyncio.sleep(0.1)
            follower.update(_state(*behind), {})
            leader.update(_state(LAT, LON, speed=10.0), {"hard_braking": True})
        for _ in range(8):  # braking ended: cancelled 0.5 s later
            await asyncio.sleep(0.1)
            leader.update(_state(LAT, LON, speed=0.0), {"hard_braking": False})
        await _until(lambda: any(w.kind == "cancelled" for w in follower_w))
        await asyncio.sleep(0.3)  # let the cancellation's repetition arrive too
    assert [w.kind for w in follower_w] == ["accepted", "updated", "cancelled"]
    first = follower_w[0]
    assert first.denm.cause_code == 99 and first.denm.sub_cause_code == 1
    assert first.distance_m is not None and 145 < first.distance_m < 155
    assert first.latency_ms is not None and 0 <= first.latency_ms < 1000
    assert follower.receiver.counters["duplicate"] >= 3  # repetitions deduplicated
    assert oncoming_w == [] and oncoming.receiver.counters["not_relevant"] >= 1
    assert leader_w == [] and leader.client.counters["denm_published"] >= 5
    assert leader.originator.sent["update"] == 1 and leader.originator.sent["cancellation"] == 1
    assert leader.client.publish_latency["denm"].summary()["max_ms"] < 1000


async def test_a_warning_expires_when_its_originator_goes_silent(v2x_broker: V2xBroker) -> None:
    short = DenmTrigger(
        "hard_braking",
        cause_code=99,
        sub_cause_code=1,
        validity_s=2,
        release_ns=S,
        repetition_interval_ns=10 * S,
        update_interval_ns=S,
        cancel_repetitions=0,
    )
    warnings: list[StationWarning] = []
    leader = _station(v2x_broker, A, [], short)
    follower = _station(v2x_broker, B, warnings)
    behind = destination(LAT, LON, HEADING + 180, 100.0)
    async with running(leader, follower):
        follower.update(_state(*behind), {})
        await _until(lambda: follower.client.counters["subscribed"] == 9)
        leader.update(_state(LAT, LON), {"hard_braking": True})
        await _until(lambda: len(warnings) == 1)
        # The leader's link dies: no update, no cancellation. The warning must go by itself.
        await asyncio.sleep(2.1)
        gone = follower.tick()
    assert [w.kind for w in warnings] == ["accepted", "expired"] and [w.kind for w in gone] == ["expired"]
