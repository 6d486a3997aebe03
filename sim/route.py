"""Routes: real waypoints, per-segment speed limits, great-circle positions.

A :class:`Route` is a polyline of :class:`Waypoint` s on the WGS84 sphere
(mean Earth radius). ``Route.pose_at(distance_m)`` gives the position by
great-circle interpolation inside the segment, the course over ground (blended
smoothly across each waypoint so that the heading is continuous), the
interpolated altitude, the country and the speed limit of the segment.

The default route, :func:`metz_luxembourg_trier`, follows the A31 from Metz to
the French/Luxembourg border at Zoufftgen/Dudelange, the Luxembourg A3 and A1
round the south and east of Luxembourg City to Wasserbillig, crosses the Sauer
into Germany and follows the B49 along the Moselle into Trier. Coordinates are
hand-entered approximations of points on those roads (not surveyed; expect
errors up to about a kilometre); countries and speed limits are realistic.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from tcu.errors import ConfigError

__all__ = ["EARTH_RADIUS_M", "Pose", "Route", "Waypoint", "metz_luxembourg_trier"]

EARTH_RADIUS_M = 6_371_008.8
"""Mean Earth radius (IUGG) used for all great-circle computations."""


@dataclass(frozen=True, slots=True)
class Waypoint:
    """One point of a route. ``limit_kmh`` applies from this point to the next."""

    lat_deg: float
    lon_deg: float
    country: str
    limit_kmh: float
    altitude_m: float
    name: str = ""


@dataclass(frozen=True, slots=True)
class Pose:
    """Where the vehicle is at a distance along a route."""

    distance_m: float
    lat_deg: float
    lon_deg: float
    heading_deg: float
    altitude_m: float
    country: str
    limit_kmh: float
    segment: int


def _unit(lat_deg: float, lon_deg: float) -> tuple[float, float, float]:
    lat, lon = math.radians(lat_deg), math.radians(lon_deg)
    return (math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat))


def _bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def _angle_diff_deg(to_deg: float, from_deg: float) -> float:
    """Signed smallest rotation from ``from_deg`` to ``to_deg`` in (-180, 180]."""
    d = (to_deg - from_deg + 180.0) % 360.0 - 180.0
    return 180.0 if d == -180.0 else d


class Route:
    """A polyline route; immutable after construction."""

    __slots__ = (
        "_blend_m",
        "_cum_m",
        "_delta_rad",
        "_half_m",
        "_sin_delta",
        "_turn_rad",
        "_units",
        "name",
        "waypoints",
    )

    def __init__(self, waypoints: Sequence[Waypoint], *, name: str = "", blend_m: float = 120.0) -> None:
        if len(waypoints) < 2:
            raise ConfigError(f"a route needs at least 2 waypoints, got {len(waypoints)}", key="waypoints")
        for i, wp in enumerate(waypoints):
            if not (-90.0 <= wp.lat_deg <= 90.0 and -180.0 <= wp.lon_deg <= 180.0):
                raise ConfigError(f"waypoint {i} ({wp.name}) is not a lat/lon: {wp}", key="waypoints")
            if wp.limit_kmh <= 0:
                raise ConfigError(f"waypoint {i} ({wp.name}) has limit_kmh {wp.limit_kmh}", key="waypoints")
        self.name = name
        self.waypoints: tuple[Waypoint, ...] = tuple(waypoints)
        self._units = [_unit(w.lat_deg, w.lon_deg) for w in self.waypoints]
        self._delta_rad: list[float] = []
        self._sin_delta: list[float] = []
        cum = [0.0]
        for a, b in zip(self._units, self._units[1:], strict=False):
            dot = max(-1.0, min(1.0, a[0] * b[0] + a[1] * b[1] + a[2] * b[2]))
            cross = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
            delta = math.atan2(math.sqrt(cross[0] ** 2 + cross[1] ** 2 + cross[2] ** 2), dot)
            if delta <= 0.0:
                raise ConfigError(f"waypoints {len(cum) - 1} and {len(cum)} coincide", key="waypoints")
            self._delta_rad.append(delta)
            self._sin_delta.append(math.sin(delta))
            cum.append(cum[-1] + delta * EARTH_RADIUS_M)
        self._cum_m = cum
        self._blend_m = blend_m
        n = len(self.waypoints)
        self._turn_rad = [0.0] + [math.radians(self.turn_deg(i)) for i in range(1, n - 1)] + [0.0]
        self._half_m = [0.0] + [self._blend_half_m(i) for i in range(1, n - 1)] + [0.0]

    @property
    def length_m(self) -> float:
        return self._cum_m[-1]

    @property
    def waypoint_distances_m(self) -> tuple[float, ...]:
        """Distance along the route of each waypoint."""
        return tuple(self._cum_m)

    def countries(self) -> list[str]:
        """Countries in driving order, each run of equal countries listed once."""
        out: list[str] = []
        for wp in self.waypoints:
            if not out or out[-1] != wp.country:
                out.append(wp.country)
        return out

    def segment_at(self, distance_m: float) -> int:
        d = min(max(distance_m, 0.0), self.length_m)
        return min(bisect.bisect_right(self._cum_m, d) - 1, len(self.waypoints) - 2)

    def _course_in_segment(self, seg: int, lat: float, lon: float, frac: float) -> float:
        a, b = self.waypoints[seg], self.waypoints[seg + 1]
        if frac >= 0.999:
            # course at the end of the segment: reverse of the bearing from the end back to here
            return (_bearing_deg(b.lat_deg, b.lon_deg, a.lat_deg, a.lon_deg) + 180.0) % 360.0
        return _bearing_deg(lat, lon, b.lat_deg, b.lon_deg)

    def _segment_point(self, seg: int, frac: float) -> tuple[float, float]:
        delta, sd = self._delta_rad[seg], self._sin_delta[seg]
        ua, ub = self._units[seg], self._units[seg + 1]
        wa = math.sin((1.0 - frac) * delta) / sd
        wb = math.sin(frac * delta) / sd
        x, y, z = (wa * ua[i] + wb * ub[i] for i in range(3))
        return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))

    def _course_at(self, seg: int, frac: float) -> float:
        lat, lon = self._segment_point(seg, frac)
        return self._course_in_segment(seg, lat, lon, frac)

    def _blend_half_m(self, i: int) -> float:
        """Half-length of the heading blend zone around inner waypoint ``i``."""
        len_in = self._cum_m[i] - self._cum_m[i - 1]
        len_out = self._cum_m[i + 1] - self._cum_m[i]
        return min(self._blend_m, 0.4 * len_in, 0.4 * len_out)

    def turn_deg(self, i: int) -> float:
        """Signed heading change at inner waypoint ``i`` (positive: to the right)."""
        if i <= 0 or i >= len(self.waypoints) - 1:
            return 0.0
        return _angle_diff_deg(self._course_at(i, 0.0), self._course_at(i - 1, 1.0))

    def pose_at(self, distance_m: float) -> Pose:
        """Pose at ``distance_m`` along the route (clamped to [0, length])."""
        d = min(max(distance_m, 0.0), self.length_m)
        seg = self.segment_at(d)
        seg_len = self._cum_m[seg + 1] - self._cum_m[seg]
        frac = (d - self._cum_m[seg]) / seg_len
        lat, lon = self._segment_point(seg, frac)
        heading = self._course_in_segment(seg, lat, lon, frac)
        # blend across the nearest inner waypoint so that the heading has no step
        for i in (seg, seg + 1):
            if 0 < i < len(self.waypoints) - 1:
                half = self._blend_half_m(i)
                off = d - self._cum_m[i]
                if -half < off < half:
                    w = (off + half) / (2.0 * half)
                    w = w * w * (3.0 - 2.0 * w)
                    h_in = self._course_at(i - 1, 1.0)
                    heading = (h_in + w * _angle_diff_deg(self._course_at(i, 0.0), h_in)) % 360.0
                    break
        a, b = self.waypoints[seg], self.waypoints[seg + 1]
        return Pose(
            distance_m=d,
            lat_deg=lat,
            lon_deg=lon,
            heading_deg=heading,
            altitude_m=a.altitude_m + frac * (b.altitude_m - a.altitude_m),
            country=a.country if frac < 1.0 else b.country,
            limit_kmh=a.limit_kmh,
            segment=seg,
        )

    def curvature_at(self, distance_m: float) -> float:
        """Curvature of the driven path in rad/m (positive: turning right), from the heading blend."""
        d = min(max(distance_m, 0.0), self.length_m)
        seg = self.segment_at(d)
        for i in (seg, seg + 1):
            half = self._half_m[i] if 0 < i < len(self.waypoints) - 1 else 0.0
            if half > 0.0:
                off = d - self._cum_m[i]
                if -half < off < half:
                    w = (off + half) / (2.0 * half)
                    return self._turn_rad[i] * 6.0 * w * (1.0 - w) / (2.0 * half)
        return 0.0

    def corner_ahead(self, distance_m: float, horizon_m: float) -> list[tuple[float, float, float]]:
        """``(distance to blend start in m, turn in rad, blend length in m)`` of turns ahead.

        A turn whose blend zone the vehicle is already in is reported with distance 0.
        """
        seg = self.segment_at(distance_m)
        out: list[tuple[float, float, float]] = []
        for i in range(max(seg, 1), len(self.waypoints) - 1):
            half = self._half_m[i]
            start = self._cum_m[i] - half - distance_m
            if start > horizon_m:
                break
            if self._cum_m[i] + half - distance_m <= 0.0:
                continue
            out.append((max(start, 0.0), self._turn_rad[i], 2.0 * half))
        return out

    def slope_at(self, distance_m: float) -> float:
        """Road slope (rise over run) of the segment at ``distance_m``, from waypoint altitudes."""
        seg = self.segment_at(distance_m)
        a, b = self.waypoints[seg], self.waypoints[seg + 1]
        return (b.altitude_m - a.altitude_m) / (self._cum_m[seg + 1] - self._cum_m[seg])

    def limits_ahead(self, distance_m: float, horizon_m: float) -> list[tuple[float, float]]:
        """``(distance to segment start in m, limit_kmh)`` of segments starting within the horizon."""
        seg = self.segment_at(distance_m)
        out: list[tuple[float, float]] = []
        for i in range(seg + 1, len(self.waypoints) - 1):
            ahead = self._cum_m[i] - distance_m
            if ahead > horizon_m:
                break
            out.append((ahead, self.waypoints[i].limit_kmh))
        return out

    def next_waypoint(self, distance_m: float) -> tuple[int, float]:
        """Index of the next waypoint and the distance to it in m."""
        seg = self.segment_at(distance_m)
        return seg + 1, self._cum_m[seg + 1] - distance_m


_DEFAULT: tuple[Waypoint, ...] = (
    Waypoint(49.11520, 6.17520, "FR", 50, 180, "Metz, Place de la République"),
    Waypoint(49.13000, 6.18000, "FR", 70, 172, "Metz, Boulevard de Trèves"),
    Waypoint(49.14800, 6.17000, "FR", 90, 168, "A31 Metz-Nord / Woippy"),
    Waypoint(49.21000, 6.16200, "FR", 110, 166, "A31 Maizières-lès-Metz"),
    Waypoint(49.24800, 6.17000, "FR", 110, 164, "A31 Hagondange"),
    Waypoint(49.28000, 6.17200, "FR", 130, 162, "A31 Richemont"),
    Waypoint(49.34500, 6.15000, "FR", 110, 160, "A31 Thionville"),
    Waypoint(49.38000, 6.13800, "FR", 110, 170, "A31 Thionville-Nord / Metzange"),
    Waypoint(49.40800, 6.14500, "FR", 130, 200, "A31 Hettange-Grande"),
    Waypoint(49.44000, 6.14200, "FR", 130, 250, "A31 Entrange"),
    Waypoint(49.46600, 6.13100, "FR", 110, 280, "A31 Zoufftgen (border)"),
    Waypoint(49.47200, 6.12900, "LU", 130, 285, "A3 Dudelange / Frisange"),
    Waypoint(49.50600, 6.12000, "LU", 130, 290, "A3 Bettembourg junction"),
    Waypoint(49.53100, 6.12300, "LU", 130, 300, "A3 Livange"),
    Waypoint(49.57600, 6.12300, "LU", 90, 320, "Croix de Gasperich"),
    Waypoint(49.58200, 6.14800, "LU", 90, 310, "A1 Howald"),
    Waypoint(49.59000, 6.17500, "LU", 110, 300, "A1 Hesperange / Irrgarten"),
    Waypoint(49.61800, 6.20000, "LU", 90, 340, "A1 Sandweiler"),
    Waypoint(49.63800, 6.22000, "LU", 130, 370, "A1 Senningerberg / Findel"),
    Waypoint(49.64500, 6.27500, "LU", 130, 350, "A1 Munsbach / Niederanven"),
    Waypoint(49.66500, 6.34000, "LU", 130, 330, "A1 Flaxweiler"),
    Waypoint(49.68000, 6.40000, "LU", 130, 300, "A1 Potaschberg"),
    Waypoint(49.68800, 6.43000, "LU", 130, 250, "A1 Grevenmacher"),
    Waypoint(49.70200, 6.47500, "LU", 90, 180, "A1 Mertert"),
    Waypoint(49.71500, 6.49800, "LU", 70, 150, "Wasserbillig, Sauer bridge"),
    Waypoint(49.71850, 6.50400, "DE", 100, 148, "Wasserbilligerbrück (B49)"),
    Waypoint(49.70850, 6.55200, "DE", 70, 140, "B49 Igel"),
    Waypoint(49.72800, 6.59200, "DE", 70, 138, "B49 Trier-Zewen"),
    Waypoint(49.74700, 6.62400, "DE", 50, 136, "Trier, Konrad-Adenauer-Brücke"),
    Waypoint(49.75970, 6.64410, "DE", 50, 135, "Trier, Porta Nigra"),
)


def metz_luxembourg_trier() -> Route:
    """Metz (FR) → Luxembourg (LU) → Trier (DE) along the A31, A3/A1 and B49."""
    return Route(_DEFAULT, name="metz-luxembourg-trier")
