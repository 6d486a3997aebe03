"""Routes: waypoints, great-circle interpolation, countries."""

from __future__ import annotations

import math

import pytest

from sim import Route, Waypoint, metz_luxembourg_trier
from sim.route import EARTH_RADIUS_M
from tcu.errors import ConfigError


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def test_default_route_crosses_fr_lu_de() -> None:
    route = metz_luxembourg_trier()
    assert len(route.waypoints) >= 20
    assert route.countries() == ["FR", "LU", "DE"]
    start, end = route.waypoints[0], route.waypoints[-1]
    assert haversine_m(start.lat_deg, start.lon_deg, 49.1193, 6.1757) < 2_000  # Metz centre
    assert haversine_m(end.lat_deg, end.lon_deg, 49.7596, 6.6439) < 500  # Porta Nigra, Trier
    assert 85_000 < route.length_m < 115_000
    countries = [route.pose_at(d).country for d in range(0, int(route.length_m), 500)]
    first = {c: countries.index(c) for c in ("FR", "LU", "DE")}
    assert first["FR"] < first["LU"] < first["DE"]
    assert all(30 <= w.limit_kmh <= 130 for w in route.waypoints)


def test_pose_lies_on_the_great_circle() -> None:
    route = metz_luxembourg_trier()
    dists = route.waypoint_distances_m
    for seg in (2, 13, 25):
        a, b = route.waypoints[seg], route.waypoints[seg + 1]
        seg_len = dists[seg + 1] - dists[seg]
        assert haversine_m(a.lat_deg, a.lon_deg, b.lat_deg, b.lon_deg) == pytest.approx(seg_len, abs=0.01)
        for frac in (0.25, 0.5, 0.8):
            p = route.pose_at(dists[seg] + frac * seg_len)
            d_a = haversine_m(a.lat_deg, a.lon_deg, p.lat_deg, p.lon_deg)
            d_b = haversine_m(p.lat_deg, p.lon_deg, b.lat_deg, b.lon_deg)
            assert d_a == pytest.approx(frac * seg_len, abs=0.01)
            assert d_b == pytest.approx((1 - frac) * seg_len, abs=0.01)
            assert p.segment == seg and p.limit_kmh == a.limit_kmh


def test_heading_is_continuous_and_matches_course() -> None:
    route = metz_luxembourg_trier()
    prev = route.pose_at(0.0).heading_deg
    for d in range(5, int(route.length_m), 5):
        h = route.pose_at(float(d)).heading_deg
        assert 0.0 <= h < 360.0
        step = (h - prev + 180.0) % 360.0 - 180.0
        assert abs(step) < 3.0, d
        prev = h
    # due north along a meridian, due east along the equator
    north = Route([Waypoint(0.0, 0.0, "XX", 50, 0), Waypoint(1.0, 0.0, "XX", 50, 0)])
    east = Route([Waypoint(0.0, 0.0, "XX", 50, 0), Waypoint(0.0, 1.0, "XX", 50, 0)])
    assert north.pose_at(10_000).heading_deg == pytest.approx(0.0, abs=1e-6)
    assert east.pose_at(10_000).heading_deg == pytest.approx(90.0, abs=1e-6)
    assert north.length_m == pytest.approx(math.radians(1.0) * EARTH_RADIUS_M)


def test_curvature_integrates_to_the_turn() -> None:
    route = metz_luxembourg_trier()
    i = 14  # Croix de Gasperich
    at = route.waypoint_distances_m[i]
    total = sum(route.curvature_at(at + k + 0.5) for k in range(-300, 300))
    assert math.degrees(total) == pytest.approx(route.turn_deg(i), abs=0.1)


def test_route_rejects_bad_waypoints() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        Route([Waypoint(49.0, 6.0, "FR", 50, 0)])
    with pytest.raises(ConfigError, match="coincide"):
        Route([Waypoint(49.0, 6.0, "FR", 50, 0), Waypoint(49.0, 6.0, "FR", 50, 0)])
    with pytest.raises(ConfigError, match="limit_kmh"):
        Route([Waypoint(49.0, 6.0, "FR", 0, 0), Waypoint(49.1, 6.0, "FR", 50, 0)])
