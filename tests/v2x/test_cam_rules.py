"""ETSI CAM generation rules driven by time values."""

from __future__ import annotations

import pytest

from tcu.v2x.cam_rules import CamGenerator, CamRules, Kinematics
from tcu.v2x.geo import destination

MS = 1_000_000


def _k(
    t_ms: int, lat: float = 48.0, lon: float = 9.0, heading: float = 90.0, speed: float = 10.0
) -> Kinematics:
    return Kinematics(t_ms * MS, lat, lon, heading, speed)


def test_first_then_each_rule() -> None:
    gen = CamGenerator()
    first = gen.step(_k(0))
    assert first is not None and first.reason == "first" and first.include_low_frequency
    assert gen.step(_k(50, heading=120)) is None  # under 100 ms, whatever changed
    turn = gen.step(_k(100, heading=94.5))
    assert turn is not None and turn.reason == "heading" and not turn.include_low_frequency
    assert gen.step(_k(200, heading=98.0)) is None  # 3.5° since the last CAM: not over 4°
    moved = destination(48.0, 9.0, 90.0, 4.5)
    pos = gen.step(_k(300, *moved, heading=98.0))
    assert pos is not None and pos.reason == "position"
    speed = gen.step(_k(400, *moved, heading=98.0, speed=10.6))
    assert speed is not None and speed.reason == "speed"
    assert gen.step(_k(1300, *moved, heading=98.0, speed=10.6)) is None
    late = gen.step(_k(1400, *moved, heading=98.0, speed=10.6))
    assert late is not None and late.reason == "time" and late.include_low_frequency
    assert dict(gen.reasons) == {"first": 1, "heading": 1, "position": 1, "speed": 1, "time": 1}


def test_rate_ceiling_holds_back_dynamic_cams() -> None:
    gen = CamGenerator(CamRules(min_interval_ns=500 * MS))
    assert gen.step(_k(0)) is not None
    sent = [t for t in range(100, 3000, 100) if gen.step(_k(t, heading=90 + t / 10)) is not None]
    assert sent == [500, 1000, 1500, 2000, 2500]


def test_invalid_rules_refused() -> None:
    with pytest.raises(ValueError):
        CamRules(min_interval_ns=50 * MS)
    with pytest.raises(ValueError):
        CamRules(min_interval_ns=100 * MS, max_interval_ns=2000 * MS)
