"""The simulator's DBC and its DBC→VSS mapping file."""

from __future__ import annotations

import re
import tomllib

import cantools
import pytest

from sim import DEFAULT_DBC_PATH, DEFAULT_MAPPING_PATH

VSS_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*(\.[A-Za-z0-9_]+)+$")


@pytest.fixture(scope="module")
def db() -> cantools.database.can.Database:
    database = cantools.database.load_file(str(DEFAULT_DBC_PATH), strict=True)
    assert isinstance(database, cantools.database.can.Database)
    return database


@pytest.fixture(scope="module")
def mapping() -> list[dict[str, object]]:
    doc = tomllib.loads(DEFAULT_MAPPING_PATH.read_text(encoding="utf-8"))
    assert doc["version"] == 1
    return list(doc["signal"])


def test_dbc_counts_and_features(db: cantools.database.can.Database) -> None:
    messages = db.messages
    signals = [s for m in messages for s in m.signals]
    assert len(messages) >= 14
    assert len(signals) >= 50
    assert [m.name for m in messages if m.is_multiplexed()] == ["TPMS_Status"]
    ext = [m for m in messages if m.is_extended_frame]
    assert [m.name for m in ext] == ["GNSS_Position"]
    assert ext[0].frame_id > 0x7FF
    cycles = {m.cycle_time or 0 for m in messages}
    assert 0 not in cycles
    assert min(cycles) == 10 and max(cycles) == 1000
    assert {10, 20, 50, 100, 250, 500, 1000} <= cycles
    assert any(s.byte_order == "big_endian" for s in signals)
    assert any(s.byte_order == "little_endian" for s in signals)
    assert any(s.is_signed for s in signals) and any(not s.is_signed for s in signals)
    for s in signals:
        assert s.minimum is not None and s.maximum is not None and s.minimum < s.maximum, s.name
    lat = db.get_message_by_name("GNSS_Position").get_signal_by_name("Latitude")
    assert (lat.length, lat.is_signed, lat.scale) == (32, True, 1e-7)


def test_dbc_choice_tables(db: cantools.database.can.Database) -> None:
    def choices(message: str, signal: str) -> dict[int, str]:
        sig = db.get_message_by_name(message).get_signal_by_name(signal)
        assert sig.choices is not None
        return {int(k): str(v) for k, v in sig.choices.items()}

    assert choices("VCU_Drive", "GearPosition")[0] == "P"
    assert choices("VCU_Drive", "GearPosition")[3] == "D"
    assert choices("BCM_Doors", "DoorFrontLeft")[1] == "Open"
    assert choices("BCM_Lights", "LightSwitch")[1] == "Auto"
    assert choices("TPMS_Status", "TpmsWheel") == {
        0: "FrontLeft",
        1: "FrontRight",
        2: "RearLeft",
        3: "RearRight",
    }


def test_mapping_covers_every_signal_once(
    db: cantools.database.can.Database, mapping: list[dict[str, object]]
) -> None:
    names = [str(e["name"]) for e in mapping]
    assert len(names) == len(set(names)) >= 50
    for name in names:
        assert VSS_NAME.match(name), name
    pairs = [(str(e["message"]), str(e["signal"])) for e in mapping]
    dbc_pairs = {(m.name, s.name) for m in db.messages for s in m.signals}
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == dbc_pairs
    for entry in mapping:
        assert set(entry) <= {"name", "message", "signal", "period_ms", "bus", "unit"}
        cycle = db.get_message_by_name(str(entry["message"])).cycle_time
        period = entry["period_ms"]
        assert cycle is not None and isinstance(period, int) and period >= cycle, entry


def test_mapping_uses_standard_vss_names(mapping: list[dict[str, object]]) -> None:
    by_name = {str(e["name"]): (e["message"], e["signal"]) for e in mapping}
    assert by_name["Vehicle.Speed"] == ("ESP_Speed", "VehicleSpeed")
    assert by_name["Vehicle.CurrentLocation.Latitude"] == ("GNSS_Position", "Latitude")
    assert by_name["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"] == (
        "BMS_PackStatus",
        "StateOfCharge",
    )
    assert by_name["Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"] == ("TPMS_Status", "TirePressureFL")
    assert by_name["Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"] == ("BCM_Doors", "DoorFrontLeft")
    assert by_name["Vehicle.Body.Lights.Beam.Low.IsOn"] == ("BCM_Lights", "LowBeam")
    assert by_name["Vehicle.Acceleration.Longitudinal"] == ("ESP_Speed", "LongitudinalAccel")
