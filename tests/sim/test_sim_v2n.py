"""The V2N fleet scenario: vehicles on one road, and the ground truth of who must be warned."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path

import can
import pytest

from sim.canbus import Drive, DriveConfig
from sim.groundtruth import GroundTruth
from sim.groundtruth import load as load_ground_truth
from sim.v2n import (
    DEFAULT_RULES,
    Comparison,
    Rules,
    TriggerRule,
    bearing_deg,
    compute_truth,
    distance_m,
    drive_config,
    launch,
    v2n_fleet,
)
from tcu.errors import ConfigError

START_US = 1_800_000_000_000_000
DURATION_S = 14.0


@pytest.fixture(scope="module")
def truths() -> dict[str, GroundTruth]:
    out = {}
    for v in v2n_fleet(1):
        drive = Drive(drive_config(v, DURATION_S, None, start_epoch_us=START_US))
        for _ in drive.frames():
            pass
        out[v.name] = drive.ground_truth()
    return out


def test_distance_and_bearing_on_known_points() -> None:
    # One minute of latitude is one nautical mile on the simulator's sphere (to 0.1 %).
    assert distance_m(49.0, 6.0, 49.0 + 1 / 60, 6.0) == pytest.approx(1853.2, rel=1e-3)
    assert bearing_deg(49.0, 6.0, 49.1, 6.0) == pytest.approx(0.0, abs=1e-9)
    assert bearing_deg(49.0, 6.0, 48.9, 6.0) == pytest.approx(180.0, abs=1e-9)
    assert bearing_deg(49.0, 6.0, 49.0, 6.1) == pytest.approx(90.0, abs=0.1)


def test_the_leader_triggers_eebl_then_stationary_and_both_end(truths: dict[str, GroundTruth]) -> None:
    truth = compute_truth(v2n_fleet(1), truths, DEFAULT_RULES)
    assert truth["ambiguous"] == []
    assert [e["id"] for e in truth["events"]] == ["leader/eebl/1", "leader/stationary/1"]
    eebl, stationary = truth["events"]
    # EEBL from the ESP_Speed frame where the deceleration passes 6 m/s² (braking starts at 3 s), at once.
    assert eebl["on_message"] == "ESP_Speed"
    assert 3.0 < (eebl["on_us"] - START_US) / 1e6 < 3.5
    assert eebl["new_us"] == eebl["on_us"]
    # Cancelled 1 s (release) after the condition ended, before the stationary vehicle begins.
    assert eebl["cancel_us"] - eebl["off_us"] >= 1_000_000
    assert eebl["cancel_us"] < stationary["on_us"]
    # Stationary vehicle from the BCM_Lights frame that first shows the hazard lights, due 1 s later (hold).
    assert stationary["on_message"] == "BCM_Lights"
    assert 1_000_000 <= stationary["new_us"] - stationary["on_us"] < 1_020_000
    assert 3.5 < (stationary["off_us"] - stationary["on_us"]) / 1e6 < 4.5
    assert stationary["off_us"] < stationary["cancel_us"] < truth["end_us"]


def test_who_must_be_warned(truths: dict[str, GroundTruth]) -> None:
    eebl, stationary = compute_truth(v2n_fleet(1), truths, DEFAULT_RULES)["events"]
    # EEBL reaches 500 m: the followers at 50 and 150 m, not the one at 700 m.
    assert eebl["must_warn"] == ["follower-150", "follower-50"]
    assert eebl["receivers"]["follower-700"]["reason"].endswith("> 500 m")
    # The oncoming car is 100 m away with the braking ahead of it: only its heading rules it out.
    opposite = eebl["receivers"]["opposite"]
    assert opposite["distance_m"] < 150 and opposite["ahead_off_deg"] < 10
    assert "other direction" in opposite["reason"]
    # A stationary vehicle reaches 1 km: all three followers. It stands, so its DENM carries the
    # heading it had while moving (355°, the road's); the oncoming car has passed it by then.
    assert stationary["must_warn"] == ["follower-150", "follower-50", "follower-700"]
    assert stationary["must_hear_cancellation"] == stationary["must_warn"]
    assert stationary["heading_deg"] is not None and abs(stationary["heading_deg"] - 355.0) < 5
    assert "behind or beside" in stationary["receivers"]["opposite"]["reason"]
    for event in (eebl, stationary):
        r = event["receivers"]
        assert "leader" not in r  # its own message
        assert "behind or beside" in r["ahead-150"]["reason"]
        assert r["far-5km"]["distance_m"] > 4_500


def test_without_the_standstill_rule_the_stationary_event_has_a_heading(
    truths: dict[str, GroundTruth],
) -> None:
    truth = compute_truth(v2n_fleet(1), truths, dataclasses.replace(DEFAULT_RULES, standstill_kmh=None))
    assert truth["ambiguous"] == []
    _, stationary = truth["events"]
    assert stationary["heading_deg"] is not None
    assert stationary["must_warn"] == ["follower-150", "follower-50", "follower-700"]


def test_followers_stop_behind_the_leader(truths: dict[str, GroundTruth]) -> None:
    def north(name: str) -> float:  # the road runs north (355°): latitude orders the cars
        _, lat = truths[name].series("GNSS_Position", "Latitude")
        return float(lat[-1])

    order = ["follower-700", "follower-150", "follower-50", "leader", "ahead-150"]
    final = [north(n) for n in order]
    assert final == sorted(final)
    gap = distance_m(north("follower-50"), 6.16, north("leader"), 6.16)
    assert gap > 5.0
    # None of the followers brakes hard enough for an EEBL of its own (checked by the events above);
    # and all three stand at the end.
    for name, at_most_kmh in (("follower-50", 0.0), ("follower-150", 0.0), ("follower-700", 0.0)):
        _, speed = truths[name].series("ESP_Speed", "VehicleSpeed")
        assert speed[-1] <= at_most_kmh


def test_thin_margins_are_reported_as_ambiguous(truths: dict[str, GroundTruth]) -> None:
    # With an EEBL reach of 700 m the follower 700 m behind is too close to call: the check must say so.
    rule = dataclasses.replace(DEFAULT_RULES.triggers[0], relevance_m=700.0)
    rules = dataclasses.replace(DEFAULT_RULES, triggers=(rule, DEFAULT_RULES.triggers[1]))
    truth = compute_truth(v2n_fleet(1), truths, rules)
    assert any("leader/eebl/1 → follower-700" in a for a in truth["ambiguous"])


def test_rules_round_trip_through_json() -> None:
    rules = Rules(
        (TriggerRule("x", (Comparison("ESP_Speed", "VehicleSpeed", ">=", 3.0),), 500.0),), ahead_max_deg=45.0
    )
    assert Rules.from_json(json.loads(json.dumps(rules.to_json()))) == rules


def test_fleet_serves_every_vehicle_over_socketcand(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sim.v2n",
            "--out",
            str(tmp_path),
            "--duration",
            "2",
            "--wait-go",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    buses: list[can.BusABC] = []
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready"
        assert [v["name"] for v in ready["vehicles"]] == [v.name for v in v2n_fleet(1)]
        assert (
            len({v["station_id"] for v in ready["vehicles"]})
            == len({v["port"] for v in ready["vehicles"]})
            == 7
        )
        for v in ready["vehicles"]:
            buses.append(
                can.Bus(interface="socketcand", channel=v["channel"], host=v["host"], port=v["port"])
            )
        # Every vehicle has its client: the fleet stands parked, sending, until the go (SIGUSR1).
        clients = json.loads(proc.stdout.readline())
        assert (clients["event"], clients["clients"]) == ("clients", 7)
        first = [bus.recv(5.0) for bus in buses]
        assert all(m is not None for m in first)
        proc.send_signal(signal.SIGUSR1)
        started = json.loads(proc.stdout.readline())
        assert started["event"] == "started" and started["go_us"] > clients["start_us"]
        done = json.loads(proc.stdout.readline())
        assert done["event"] == "done" and not done["interrupted"]
        truth = json.loads(Path(done["truth"]).read_text())
        assert truth["events"] == []  # two seconds after the go: nobody has braked yet
        assert done["go_us"] == started["go_us"] and done["end_us"] >= done["go_us"] + 1_900_000
        gt = load_ground_truth(done["ground_truth"]["leader"])
        assert gt.frames == done["frames"]["leader"] > 0
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        for bus in buses:
            bus.shutdown()
    assert proc.returncode == 0


def test_fleet_vehicles_leave_out_the_100_hz_chassis_messages(truths: dict[str, GroundTruth]) -> None:
    gt = truths["leader"]
    sent = {key[0] for key in sorted(gt.keys())}
    assert sent.isdisjoint({"ESP_WheelSpeeds", "VCU_Drive", "EPS_Steering"})
    assert {"ESP_Speed", "BCM_Lights", "GNSS_Position", "GNSS_Status", "BMS_PackStatus"} <= sent
    assert 115 * DURATION_S <= gt.frames <= 125 * DURATION_S  # 120 frames/s instead of 420
    with pytest.raises(ConfigError, match="NoSuchMessage"):
        Drive(DriveConfig(skip_messages=frozenset({"NoSuchMessage"})))


def test_a_parked_fleet_set_going_later_gives_the_same_warnings() -> None:
    # python -m sim.v2n --wait-go: parked until the go, then the same scenario from there.
    go_s = 3.0
    fleet = v2n_fleet(1, parked=True)
    truths = {}
    for v in fleet:
        drive = Drive(drive_config(v, go_s + DURATION_S, None, start_epoch_us=START_US))
        for _ in drive.frames():
            if drive.vehicle is not None and drive.vehicle.t_s == 0.0:
                launch(drive.vehicle, v.name, go_s)
        truths[v.name] = drive.ground_truth()
    _, speed = truths["leader"].series("ESP_Speed", "VehicleSpeed")
    t, _ = truths["leader"].series("ESP_Speed", "VehicleSpeed")
    assert set(speed[(t - START_US) < go_s * 1e6 - 20_000].tolist()) == {0.0}  # parked before the go
    truth = compute_truth(fleet, truths, DEFAULT_RULES)
    assert truth["ambiguous"] == []
    assert [e["id"] for e in truth["events"]] == ["leader/eebl/1", "leader/stationary/1"]
    assert [e["must_warn"] for e in truth["events"]] == [
        ["follower-150", "follower-50"],
        ["follower-150", "follower-50", "follower-700"],
    ]
    assert go_s + 3.0 < (truth["events"][0]["on_us"] - START_US) / 1e6 < go_s + 3.5
