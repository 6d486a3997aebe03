"""The vehicle model: ranges over a long drive, determinism, scenario."""

from __future__ import annotations

import cantools
import pytest

from sim import DEFAULT_DBC_PATH, Route, Vehicle, VehicleConfig, Waypoint, metz_luxembourg_trier
from sim.vehicle import SIGNAL_NAMES


@pytest.fixture(scope="module")
def ranges() -> dict[str, tuple[float, float]]:
    db = cantools.database.load_file(str(DEFAULT_DBC_PATH), strict=True)
    assert isinstance(db, cantools.database.can.Database)
    return {s.name: (float(s.minimum or 0), float(s.maximum or 0)) for m in db.messages for s in m.signals}


def test_every_dbc_signal_but_the_multiplexer_is_modelled(ranges: dict[str, tuple[float, float]]) -> None:
    assert set(SIGNAL_NAMES) == set(ranges) - {"TpmsWheel"}
    assert set(Vehicle(metz_luxembourg_trier()).signals()) == set(SIGNAL_NAMES)


def test_thirty_minutes_stay_in_dbc_ranges(ranges: dict[str, tuple[float, float]]) -> None:
    route = metz_luxembourg_trier()
    vehicle = Vehicle(route, VehicleConfig(seed=11))
    seen_lo: dict[str, float] = {}
    seen_hi: dict[str, float] = {}
    soc_prev = 101.0
    countries = set()
    for step in range(1, 30 * 60 * 100 + 1):  # 30 simulated minutes at 10 ms
        vehicle.step()
        if step % 20:
            continue
        values = vehicle.signals()
        for name, value in values.items():
            lo, hi = ranges[name]
            assert lo <= value <= hi, (step, name, value)
            seen_lo[name] = min(seen_lo.get(name, value), value)
            seen_hi[name] = max(seen_hi.get(name, value), value)
        kmh = values["VehicleSpeed"]
        limit = route.pose_at(vehicle.distance_m).limit_kmh
        assert kmh <= limit * 1.08 + 1.0, (step, kmh, limit)
        if kmh > 0.5:
            assert values["GearPosition"] == 3
            assert values["DoorFrontLeft"] == values["DoorFrontRight"] == 0
            assert values["DoorRearLeft"] == values["DoorRearRight"] == values["Trunk"] == 0
        if step % 6000 == 0:  # SoC falls while driving
            assert values["StateOfCharge"] < soc_prev
            soc_prev = values["StateOfCharge"]
        countries.add(route.pose_at(vehicle.distance_m).country)
    assert countries == {"FR", "LU"}  # the border is ~40 km from Metz
    assert seen_hi["VehicleSpeed"] > 120.0  # reached motorway speed
    assert seen_lo["LongitudinalAccel"] < -0.5 < 0.5 < seen_hi["LongitudinalAccel"]
    assert seen_lo["SteeringWheelAngle"] < -5.0 and seen_hi["SteeringWheelAngle"] > 5.0
    assert seen_hi["IndicatorLeft"] == 1.0 and seen_hi["IndicatorRight"] == 1.0
    assert seen_hi["BrakeLight"] == 1.0
    assert seen_hi["TripMeter"] > 40.0


def test_same_seed_same_values_regardless_of_sampling() -> None:
    a = Vehicle(metz_luxembourg_trier(), VehicleConfig(seed=5))
    b = Vehicle(metz_luxembourg_trier(), VehicleConfig(seed=5))
    c = Vehicle(metz_luxembourg_trier(), VehicleConfig(seed=6))
    for step in range(3000):
        a.step()
        b.step()
        c.step()
        if step % 7 == 0:
            a.signals()  # reading must not change the model
    assert a.signals() == b.signals()
    assert a.signals() != c.signals()


def test_parks_drives_and_stops_at_the_end() -> None:
    short = Route(
        [Waypoint(49.6000, 6.1000, "LU", 50, 300), Waypoint(49.6030, 6.1000, "LU", 50, 300)], name="short"
    )
    vehicle = Vehicle(short, VehicleConfig(seed=1, park_s=3.0))
    vehicle.step()
    start = vehicle.signals()
    assert start["GearPosition"] == 0 and start["DoorFrontLeft"] == 1 and start["VehicleSpeed"] == 0
    while vehicle.arrived_t_s is None:
        vehicle.step()
        assert vehicle.t_s < 120, "never arrived"
    assert short.length_m - vehicle.distance_m < 3.0
    for _ in range(400):  # 4 s after stopping
        vehicle.step()
    end = vehicle.signals()
    assert end["VehicleSpeed"] == 0 and end["GearPosition"] == 0
    assert end["DoorFrontLeft"] == 1 and end["CentralLock"] == 0
