"""The simulator side of the border scenario: radio along the route, policy data, `python -m sim --modem`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tty
from itertools import groupby
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from sim.border import PROFILES, TUNNEL, BorderRadio, conditions_at, route_starting_at
from sim.canbus import Drive
from sim.cellular import DOWNLOAD_MATCHING_ID, DOWNLOAD_REPLACES, DOWNLOADED
from tcu.demo.border import BORDER_START_AT, EXPECTED_ROLLBACKS, EXPECTED_SWITCHES, roaming_policy_toml
from tcu.demo.border import DOWNLOAD_MATCHING_ID as DEMO_MATCHING_ID
from tcu.demo.border import PROFILES as DEMO_PROFILES
from tcu.errors import ConfigError
from tcu.esim import parse_policy
from tcu.modem import parse_nmea

T0_US = 1_830_000_000_000_000


def _drain(fd: int) -> list[str]:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return [line for line in data.decode().split("\r\n") if line]


def test_radio_follows_the_car_across_two_borders_and_a_tunnel() -> None:
    route = route_starting_at(BORDER_START_AT)
    car = SimpleNamespace(distance_m=0.0, speed_mps=30.0, t_s=0.0)
    drive = SimpleNamespace(vehicle=car, start_us=T0_US, route=route)
    radio = BorderRadio(cast(Drive, drive))
    fd = os.open(radio.port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    states: list[tuple[str, bool]] = []
    try:
        for step in range(int(route.length_m // 100) + 1):
            car.distance_m, car.t_s = step * 100.0, step * 100.0 / 30.0
            radio.update()
            states.append((radio.modem.country, radio.modem.coverage))
            lines = _drain(fd)
            rmc = parse_nmea(next(x for x in lines if x.startswith("$GPRMC")))
            assert rmc is not None and rmc.valid
            pose = route.pose_at(car.distance_m)
            assert rmc.lat_deg == pytest.approx(pose.lat_deg, abs=1e-5)
            assert rmc.lon_deg == pytest.approx(pose.lon_deg, abs=1e-5)
            stamp = T0_US // 1_000_000 + int(car.t_s)
            assert rmc.utc_time[:6] == f"{stamp // 3600 % 24:02d}{stamp // 60 % 60:02d}{stamp % 60:02d}"
    finally:
        radio.stop()
        os.close(fd)
    runs = [key for key, _ in groupby(states)]
    assert runs == [("FR", True), ("LU", True), ("LU", False), ("LU", True), ("DE", True)]
    assert [c for _, c, _ in radio.changes] == ["LU", "LU", "LU", "DE"]
    hole = [d for d in range(0, int(route.length_m), 50) if not conditions_at(route, float(d))[1]]
    assert 1100 <= hole[-1] - hole[0] <= 1250, TUNNEL


def test_a_tunnel_passed_between_two_updates_is_still_a_coverage_hole() -> None:
    """A late radio thread (GIL shared with the drive) must not skip the tunnel's outage."""
    route = route_starting_at(BORDER_START_AT)
    before = next(d for d in range(0, int(route.length_m), 50) if not conditions_at(route, float(d))[1]) - 100
    car = SimpleNamespace(distance_m=float(before), speed_mps=30.0, t_s=0.0)
    drive = SimpleNamespace(vehicle=car, start_us=T0_US, route=route)
    radio = BorderRadio(cast(Drive, drive))
    try:
        radio.update()
        assert radio.modem.coverage and conditions_at(route, car.distance_m)[1]
        car.distance_m += 2000.0  # beyond the 1.2 km tunnel in one step
        assert conditions_at(route, car.distance_m)[1]
        radio.update()
        assert [covered for _, _, covered in radio.changes][-2:] == [False, True]
        assert radio.modem.coverage
        changes = len(radio.changes)
        radio.update()  # no second outage for the same tunnel
        assert len(radio.changes) == changes
    finally:
        radio.stop()


def test_demo_policy_matches_the_simulated_card() -> None:
    # the demo's card (with the SM-DP+'s credentials) lacks the German profile and downloads de-ts48
    on_card = {p.label: p.iccid for p in PROFILES if p.label != DOWNLOAD_REPLACES}
    assert on_card | {DOWNLOADED.label: DOWNLOADED.iccid} == DEMO_PROFILES
    assert DOWNLOAD_MATCHING_ID == DEMO_MATCHING_ID
    policy = parse_policy(roaming_policy_toml())
    assert set(policy.profiles.values()) == set(DEMO_PROFILES.values())
    assert policy.countries["DE"].preferred == DOWNLOADED.iccid
    assert policy.countries["DE"].download == f"LPA:1$testsmdpplus1.example.com${DOWNLOAD_MATCHING_ID}"
    assert set(EXPECTED_SWITCHES) | set(EXPECTED_ROLLBACKS) <= set(DEMO_PROFILES)
    # while unregistered the policy takes the country from the boxes: they agree with the
    # route's countries except within a kilometre of a border
    route = route_starting_at(BORDER_START_AT)
    changes = [route.pose_at(d).distance_m for d in range(0, int(route.length_m), 100)]
    borders = [
        changes[i]
        for i in range(1, len(changes))
        if route.pose_at(changes[i]).country != route.pose_at(changes[i - 1]).country
    ]
    assert len(borders) == 2
    for distance in range(0, int(route.length_m), 200):
        pose = route.pose_at(float(distance))
        boxed = next(r.country for r in policy.countries.values() if r.contains((pose.lat_deg, pose.lon_deg)))
        if all(abs(distance - b) > 1000 for b in borders):
            assert boxed == pose.country, (distance, pose)


def test_unknown_start_waypoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="start_at: no waypoint 'Paris'"):
        route_starting_at("Paris")


def test_sim_cli_names_a_working_modem_in_the_ready_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim", "--duration", "5", "--modem", "--start-at", BORDER_START_AT],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready" and ready["modem"].startswith("/dev/")
        fd = os.open(ready["modem"], os.O_RDWR | os.O_NOCTTY)
        tty.setraw(fd)
        try:
            deadline = time.monotonic() + 10
            answer = b""
            while b"+CEREG: 0,1" not in answer and time.monotonic() < deadline:
                time.sleep(0.1)  # the modem attaches after its attach delay
                os.write(fd, b"AT+CEREG?\r")
                answer = b""
                while b"OK\r\n" not in answer:  # the radio's NMEA may follow the OK in one read
                    answer += os.read(fd, 4096)
            assert b"+CEREG: 0,1" in answer  # home on the French profile in France
        finally:
            os.close(fd)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
