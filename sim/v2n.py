"""Several simulated vehicles on one road, for V2N (vehicle → network → vehicle) hazard warnings.

The road is the A31 north of Metz between the Metz-Nord/Woippy and Maizières-lès-Metz
junctions (:func:`sim.route.metz_luxembourg_trier`, a straight 6.9 km stretch heading 355°,
limit 90 km/h). Every vehicle drives the :class:`~sim.vehicle.Vehicle` model at 90 km/h from
the start and produces the CAN frames of ``sim/data/tcu_sim.dbc`` over its own socketcand
server, so that each can run a real ``tcu agent``:

* ``leader`` brakes hard (7.5 m/s²) :data:`BRAKE_AT_S` after the start down to a standstill,
  stands in its lane with the hazard lights on for 4 s, then drives on: an emergency electronic
  brake light (EEBL) condition, then a stationary-vehicle condition, each ending;
* ``follower-50``, ``follower-150``, ``follower-700`` follow 50, 150 and 700 m behind and
  stop behind it (braking at 4.5, 3 and 3 m/s², below any hard-braking threshold);
* ``ahead-150`` drives 150 m in front of the leader (the hazards are behind it);
* ``far-5km`` drives 5 km behind (outside any relevance distance used here);
* ``opposite`` drives the other carriageway towards the leader (260 m in front of it at
  the start): about 100 m from the leader when it brakes, the braking ahead of it but on the
  other carriageway (opposite heading); it has passed the leader when the leader stops.

Positions carry a lateral offset of 5 m to the right of each vehicle's direction of travel,
so the two carriageways are 10 m apart.

**Ground truth** (:func:`compute_truth`) says which vehicle must be warned of which event,
from the encoded signals alone (what the agents decode), by rules given as data
(:class:`Rules`): a trigger is a conjunction of comparisons on DBC signals, evaluated like the
campaign engine (at every frame time of one of its signals, on the latest values; rising
edge), and ends at the first frame at which it no longer holds (the cancellation). The event
position and heading are the source's latest GNSS values at the trigger. A receiver must be
warned when, within ``acceptance_window_s`` after the trigger, it is within the event's
relevance distance, the event lies ahead of it (bearing within ``ahead_max_deg`` of its
heading) and it travels the same way as the event (headings within ``heading_max_deg``).
Decisions whose margin to a threshold is thin, that change within the acceptance window, or
that turn relevant later during the event (a repetition would then warn the vehicle) are
listed in ``ambiguous``: the scenario is built so that there are none. None of this uses
``tcu.v2x``.

``python -m sim.v2n`` runs the fleet; stdout carries the JSON protocol (one object a line)::

    {"event": "ready", "vehicles": [{"name": ..., "station_id": ..., "vin": ..., "host": ...,
     "port": P, "channel": "can0"}, ...], "dbc": ..., "mapping": ...}
    {"event": "clients", "clients": 7, "start_us": T}       (with --wait-go)
    {"event": "started", "start_us": T, "go_us": G}
    {"event": "done", "frames": {name: N}, "truth": PATH, "ground_truth": {name: PATH}, ...}

The drive starts when every vehicle's socketcand client has opened its channel; all drives
share one simulated start time (the wall clock then, so CAN time is wall time at
``--speed 1``). With ``--wait-go`` the cars first stand parked where the scenario starts
(GNSS, CAN traffic, no movement) until SIGUSR1, so that every agent can connect, subscribe
and send its first CAM before anything happens; then all set off at 90 km/h at one simulated
time (``go_us``) and ``--duration`` counts from there (:func:`launch`). The wall time at which
each frame was handed to the socket is recorded per batch; the truth file gives it for the
frames that made each DENM and its cancellation due (``new_wall_ns``, ``cancel_wall_ns``),
the start of the hazard latencies. After ``done`` the simulator idles until SIGTERM.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from sim.canbus import DEFAULT_DBC_PATH, DEFAULT_MAPPING_PATH, Drive, DriveConfig
from sim.groundtruth import GroundTruth
from sim.route import EARTH_RADIUS_M, Route, metz_luxembourg_trier
from sim.socketcand import SocketcandConfig, SocketcandServer
from sim.vehicle import ScriptedStop, Vehicle, VehicleConfig
from tcu.errors import ConfigError, TcuError

__all__ = [
    "BRAKE_AT_S",
    "DEFAULT_DURATION_S",
    "DEFAULT_RULES",
    "Comparison",
    "FleetVehicle",
    "Rules",
    "TriggerRule",
    "bearing_deg",
    "compute_truth",
    "distance_m",
    "drive_config",
    "launch",
    "main",
    "scripted_stops",
    "v2n_fleet",
]

log = logging.getLogger("sim.v2n")

#: Where the leader is at t = 0: 9.9 km from Metz on the straight A31 (Woippy 3.8 km → Maizières 10.7 km).
LEADER_START_M = 9_900.0
CRUISE_KMH = 90.0
#: When the leader brakes hard (simulated s): time for every agent to connect and subscribe first.
BRAKE_AT_S = 3.0
#: How long the leader stands after its standstill (hazard lights from 0.5 s after it until the end).
LEADER_HOLD_S = 4.5
DEFAULT_DURATION_S = 14.0
LANE_OFFSET_M = 5.0
FOLLOWER_HOLD_S = 3600.0  # followers stay behind the leader for the rest of the drive
#: The 100 Hz chassis messages (wheel speeds, drive, steering) are left out: 120 instead of 420
#: frames/s per vehicle keeps seven agents in real time on a small machine. V2N needs ESP_Speed,
#: BCM_Lights, GNSS_Position and GNSS_Status; the rest is ordinary telemetry.
LEFT_OUT = frozenset({"ESP_WheelSpeeds", "VCU_Drive", "EPS_Steering"})


@dataclass(frozen=True, slots=True)
class FleetVehicle:
    """One vehicle of the fleet: who it is and how it drives."""

    name: str
    role: str
    station_id: int
    vin: str
    route: Route
    config: VehicleConfig


def v2n_fleet(seed: int = 1, *, parked: bool = False) -> tuple[FleetVehicle, ...]:
    """The V2N scenario's vehicles (see the module docstring); seeds ``seed``, ``seed + 1``, ...

    Driving at 90 km/h from t = 0 with the leader braking at :data:`BRAKE_AT_S`, or ``parked``
    at the same places until :func:`launch` sets them going (``python -m sim.v2n --wait-go``).
    """
    base = metz_luxembourg_trier()
    reverse = Route(tuple(reversed(base.waypoints)), name=f"{base.name} reversed")
    stops = scripted_stops(BRAKE_AT_S)
    lead = LEADER_START_M
    cars = (
        ("leader", "brakes hard, then stands with hazard lights", lead, base),
        ("follower-50", "50 m behind", lead - 50.0, base),
        ("follower-150", "150 m behind", lead - 150.0, base),
        ("follower-700", "700 m behind", lead - 700.0, base),
        ("ahead-150", "150 m in front", lead + 150.0, base),
        ("far-5km", "5 km behind", lead - 5_000.0, base),
        ("opposite", "other carriageway, oncoming", reverse.length_m - (lead + 260.0), reverse),
    )
    out = []
    for i, (name, role, start_m, route) in enumerate(cars):
        config = VehicleConfig(
            seed=seed + i,
            park_s=_PARKED_S if parked else 0.0,
            initial_speed_kmh=0.0 if parked else CRUISE_KMH,
            cruise_kmh=CRUISE_KMH,
            start_distance_m=start_m,
            lateral_offset_m=LANE_OFFSET_M,
            stops=() if parked else stops.get(name, ()),
        )
        out.append(FleetVehicle(name, role, 1001 + i, f"WTCUV2N{i + 1:010d}", route, config))
    return tuple(out)


_PARKED_S = 1e9  # "parked until launched"


def scripted_stops(brake_at_s: float) -> dict[str, tuple[ScriptedStop, ...]]:
    """The leader's hard braking at ``brake_at_s`` (simulated s) and the followers' stops behind it."""

    def follow(reaction_s: float, decel_mps2: float, jerk_mps3: float) -> tuple[ScriptedStop, ...]:
        return (ScriptedStop(brake_at_s + reaction_s, decel_mps2, FOLLOWER_HOLD_S, jerk_mps3=jerk_mps3),)

    return {
        "leader": (ScriptedStop(brake_at_s, 7.5, LEADER_HOLD_S, hazard_lights=True),),
        "follower-50": follow(0.5, 4.5, 20.0),
        "follower-150": follow(1.0, 3.0, 10.0),
        "follower-700": follow(2.0, 3.0, 10.0),
    }


def launch(vehicle: Vehicle, name: str, go_s: float) -> None:
    """Set a parked fleet vehicle going at ``go_s`` (90 km/h), its scripted stops relative to that."""
    vehicle.launch_at(go_s, CRUISE_KMH, scripted_stops(go_s + BRAKE_AT_S).get(name, ()))


def drive_config(vehicle: FleetVehicle, duration_s: float, speed: float | None, **kw: Any) -> DriveConfig:
    """The :class:`~sim.canbus.DriveConfig` of one fleet vehicle (without the 100 Hz chassis messages)."""
    return DriveConfig(
        duration_s=duration_s,
        seed=vehicle.config.seed,
        speed=speed,
        route=vehicle.route,
        vehicle=vehicle.config,
        skip_messages=LEFT_OUT,
        **kw,
    )


# ---------------------------------------------------------------------------------- rules


_OPS = {"<": float.__lt__, "<=": float.__le__, ">": float.__gt__, ">=": float.__ge__}


@dataclass(frozen=True, slots=True)
class Comparison:
    """``<message>.<signal> <op> <value>`` on a DBC signal's physical value."""

    message: str
    signal: str
    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ConfigError(f"unknown comparison {self.op!r}, use one of {sorted(_OPS)}", key="op")

    def holds(self, x: float) -> bool:
        return _OPS[self.op](float(x), float(self.value))


@dataclass(frozen=True, slots=True)
class TriggerRule:
    """An event kind: the conjunction of comparisons that triggers it, its reach and its timing.

    As the agent's DENM originator: a new DENM once the condition has held for ``hold_s``,
    its cancellation once it has been false for ``release_s``.
    """

    kind: str
    all_of: tuple[Comparison, ...]
    relevance_m: float
    hold_s: float = 0.0
    release_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Rules:
    """What the agents are configured to do, as data (the demo writes it from the agents' config).

    A receiver is warned when the event is within its relevance distance and, if the receiver's
    heading is known, ahead of it (bearing within ``ahead_max_deg`` of its heading) and, if the
    event's heading is known too, travelling the same way (within ``heading_max_deg``). Below
    ``standstill_kmh`` a vehicle's heading is the one it had at its last speed sample at or over
    it, as the agents keep it (unknown if it never moved; ``None``: the measured heading always).
    """

    triggers: tuple[TriggerRule, ...]
    ahead_max_deg: float = 60.0
    heading_max_deg: float = 60.0
    standstill_kmh: float | None = None
    acceptance_window_s: float = 1.0
    margin_fraction: float = 0.1  # a distance within 10 % of the limit is too close to call
    margin_deg: float = 10.0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rules:
        try:
            triggers = tuple(
                TriggerRule(
                    kind=str(t["kind"]),
                    all_of=tuple(
                        Comparison(str(c["message"]), str(c["signal"]), str(c["op"]), float(c["value"]))
                        for c in t["all"]
                    ),
                    relevance_m=float(t["relevance_m"]),
                    hold_s=float(t.get("hold_s", 0.0)),
                    release_s=float(t.get("release_s", 0.0)),
                )
                for t in data["triggers"]
            )
            names = (
                "ahead_max_deg",
                "heading_max_deg",
                "acceptance_window_s",
                "margin_fraction",
                "margin_deg",
            )
            extra: dict[str, Any] = {k: float(data[k]) for k in names if k in data}
            if data.get("standstill_kmh") is not None:
                extra["standstill_kmh"] = float(data["standstill_kmh"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"bad V2N rules: {exc!r}", key="triggers") from exc
        return cls(triggers, **extra)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["triggers"] = [
            {
                "kind": t.kind,
                "all": [dataclasses.asdict(c) for c in t.all_of],
                "relevance_m": t.relevance_m,
                "hold_s": t.hold_s,
                "release_s": t.release_s,
            }
            for t in self.triggers
        ]
        return out


DEFAULT_RULES = Rules(
    triggers=(
        TriggerRule(
            "eebl",
            (
                Comparison("ESP_Speed", "LongitudinalAccel", "<", -6.0),
                Comparison("ESP_Speed", "VehicleSpeed", ">", 20.0),
            ),
            relevance_m=500.0,
            release_s=1.0,
        ),
        TriggerRule(
            "stationary",
            (
                Comparison("ESP_Speed", "VehicleSpeed", "<", 1.0),
                Comparison("BCM_Lights", "HazardLights", ">", 0.5),
            ),
            relevance_m=1000.0,
            hold_s=1.0,
            release_s=1.0,
        ),
    ),
    standstill_kmh=1.8,
)
"""Rules that match the scenario: EEBL relevant within 500 m, a stationary vehicle within 1 km,
below 0.5 m/s the last heading while moving (as :class:`tcu.v2x.station.StationSettings`)."""


# ------------------------------------------------------------------------------- geometry


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine, the simulator's Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2.0 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def bearing_deg(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Initial great-circle bearing from point 1 to point 2, clockwise from north in [0, 360)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    y = math.sin(dl) * math.cos(p2)
    x = math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    return math.degrees(math.atan2(y, x)) % 360.0


def _angle_off(a: float, b: float) -> float:
    """Unsigned smallest angle between two headings, in [0, 180]."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


# ---------------------------------------------------------------------------- ground truth

_Pose = tuple[float, float, float | None]  # latitude, longitude, heading (None: unknown)


class _Track:
    """A vehicle's decoded signals as step functions of CAN time (latest value at or before t)."""

    def __init__(self, gt: GroundTruth, standstill_kmh: float | None) -> None:
        self.gt = gt
        self.standstill_kmh = standstill_kmh
        self._series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def series(self, message: str, signal: str) -> tuple[list[int], list[float]]:
        key = (message, signal)
        if key not in self._series:
            t, v = self.gt.series(message, signal)
            self._series[key] = (t.tolist(), v.tolist())
        return self._series[key]

    def at(self, message: str, signal: str, t_us: int) -> float | None:
        t, v = self.series(message, signal)
        i = bisect.bisect_right(t, t_us) - 1
        return v[i] if i >= 0 else None

    def pose(self, t_us: int) -> _Pose | None:
        lat = self.at("GNSS_Position", "Latitude", t_us)
        lon = self.at("GNSS_Position", "Longitude", t_us)
        heading = self.at("GNSS_Status", "GnssHeading", t_us)
        if lat is None or lon is None:
            return None
        if self.standstill_kmh is not None:
            speed = self.at("ESP_Speed", "VehicleSpeed", t_us)
            if speed is None or speed < self.standstill_kmh:
                heading = self._moving_heading(t_us)
        return lat, lon, heading

    def _moving_heading(self, t_us: int) -> float | None:
        """The heading at the last speed sample at or before ``t_us`` at or over the standstill speed."""
        assert self.standstill_kmh is not None
        t, v = self.series("ESP_Speed", "VehicleSpeed")
        i = bisect.bisect_right(t, t_us) - 1
        while i >= 0 and v[i] < self.standstill_kmh:
            i -= 1
        return None if i < 0 else self.at("GNSS_Status", "GnssHeading", t[i])

    def gnss_times(self, lo_us: int, hi_us: int) -> list[int]:
        t, _ = self.series("GNSS_Position", "Latitude")
        return t[bisect.bisect_left(t, lo_us) : bisect.bisect_right(t, hi_us)]


@dataclass(frozen=True, slots=True)
class _Occurrence:
    """One event of a rule: when its condition turned true and false, and when the DENMs are due."""

    on_us: int  # the frame at which the condition first held
    on_message: str
    new_us: int  # the frame at which it had held for hold_s: the new DENM
    off_us: int | None  # the frame at which it stopped holding (None: still at the end)
    cancel_us: int | None  # the frame at which it had been false for release_s: the cancellation


def _occurrences(track: _Track, rule: TriggerRule) -> list[_Occurrence]:
    """Every occurrence of the rule on this vehicle's frames, with the originator's hold and release."""
    first: dict[int, str] = {}
    for c in rule.all_of:
        for t in track.series(c.message, c.signal)[0]:
            first.setdefault(t, c.message)
    times = sorted(first)
    truth = []
    for t in times:
        values = [track.at(c.message, c.signal, t) for c in rule.all_of]
        truth.append(all(v is not None and c.holds(v) for c, v in zip(rule.all_of, values, strict=True)))
    hold_us, release_us = round(rule.hold_s * 1e6), round(rule.release_s * 1e6)
    out: list[_Occurrence] = []
    on: tuple[int, str] | None = None  # start of the current true run
    event: tuple[int, str, int] | None = None  # (on_us, message, new_us) of the open event
    off: int | None = None  # when the open event's condition went false
    for t, now in zip(times, truth, strict=True):
        if now:
            if on is None:
                on = (t, first[t])
            off = None
            if event is None and t - on[0] >= hold_us:
                event = (on[0], on[1], t)
        else:
            on = None
            if event is not None:
                if off is None:
                    off = t
                if t - off >= release_us:
                    out.append(_Occurrence(event[0], event[1], event[2], off, t))
                    event, off = None, None
    if event is not None:
        out.append(_Occurrence(event[0], event[1], event[2], off, None))
    return out


def _wall_ns(batches: tuple[list[int], list[int]] | None, t_us: int | None) -> int | None:
    """Wall time (ns) at which the batch holding the frame at ``t_us`` was handed to the socket."""
    if batches is None or t_us is None:
        return None
    last_us, wall = batches
    i = bisect.bisect_left(last_us, t_us)
    return wall[i] if i < len(wall) else None


def compute_truth(
    vehicles: Sequence[FleetVehicle],
    truths: Mapping[str, GroundTruth],
    rules: Rules,
    send_walls: Mapping[str, tuple[list[int], list[int]]] | None = None,
) -> dict[str, Any]:
    """Who must be warned of what: events from every vehicle's signals, relevance from geometry.

    ``send_walls`` maps a vehicle to its batches' (last frame time in µs, wall ns when sent),
    which gives the events' ``*_wall_ns`` (when the frame that made the DENM due was sent).
    """
    tracks = {v.name: _Track(truths[v.name], rules.standstill_kmh) for v in vehicles}
    walls = send_walls or {}
    end_us = max(gt.end_us for gt in truths.values())
    events: list[dict[str, Any]] = []
    ambiguous: list[str] = []
    for source in vehicles:
        track = tracks[source.name]
        for rule in rules.triggers:
            for n, occ in enumerate(_occurrences(track, rule), start=1):
                event_id = f"{source.name}/{rule.kind}/{n}"
                pose = track.pose(occ.new_us)
                if pose is None:
                    ambiguous.append(f"{event_id}: no GNSS position when the DENM is due")
                    continue
                if occ.cancel_us is None:
                    ambiguous.append(f"{event_id}: not cancelled before the drive ends")
                receivers: dict[str, dict[str, Any]] = {}
                for rx in vehicles:
                    if rx.name == source.name:
                        continue
                    verdict = _judge(
                        tracks[rx.name],
                        pose,
                        rule,
                        rules,
                        source=track,
                        t0=occ.new_us,
                        t_end=occ.cancel_us or end_us,
                    )
                    receivers[rx.name] = verdict
                    if verdict["ambiguous"]:
                        ambiguous.append(f"{event_id} → {rx.name}: {verdict['ambiguous']}")
                src_walls = walls.get(source.name)
                events.append(
                    {
                        "id": event_id,
                        "kind": rule.kind,
                        "source": source.name,
                        "station_id": source.station_id,
                        "vin": source.vin,
                        "on_us": occ.on_us,
                        "on_message": occ.on_message,
                        "off_us": occ.off_us,
                        "new_us": occ.new_us,
                        "new_wall_ns": _wall_ns(src_walls, occ.new_us),
                        "cancel_us": occ.cancel_us,
                        "cancel_wall_ns": _wall_ns(src_walls, occ.cancel_us),
                        "latitude_deg": pose[0],
                        "longitude_deg": pose[1],
                        "heading_deg": pose[2],
                        "relevance_m": rule.relevance_m,
                        "must_warn": sorted(k for k, r in receivers.items() if r["warned"]),
                        "must_not_warn": sorted(k for k, r in receivers.items() if not r["warned"]),
                        # a warned vehicle must hear the end too (an update or cancellation of an
                        # accepted event is delivered whatever the geometry then)
                        "must_hear_cancellation": sorted(k for k, r in receivers.items() if r["warned"]),
                        "receivers": receivers,
                    }
                )
    events.sort(key=lambda e: (e["new_us"], e["id"]))
    return {
        "version": 1,
        "start_us": min(gt.start_us for gt in truths.values()),
        "end_us": end_us,
        "rules": rules.to_json(),
        "vehicles": [
            {
                "name": v.name,
                "role": v.role,
                "station_id": v.station_id,
                "vin": v.vin,
                "frames": truths[v.name].frames,
            }
            for v in vehicles
        ],
        "events": events,
        "ambiguous": ambiguous,
    }


@dataclass(frozen=True, slots=True)
class _Geometry:
    distance_m: float
    ahead_off_deg: float | None  # None: the receiver's heading is unknown
    heading_off_deg: float | None  # None: a heading is unknown


def _geometry(rx: _Pose, event: _Pose) -> _Geometry:
    lat, lon, heading = rx
    e_lat, e_lon, e_heading = event
    d = distance_m(lat, lon, e_lat, e_lon)
    if heading is None:
        return _Geometry(d, None, None)
    ahead = _angle_off(bearing_deg(lat, lon, e_lat, e_lon), heading) if d > 1.0 else 0.0
    same = _angle_off(e_heading, heading) if e_heading is not None else None
    return _Geometry(d, ahead, same)


def _decide(g: _Geometry, rule: TriggerRule, rules: Rules) -> tuple[bool, str]:
    if g.distance_m > rule.relevance_m:
        return False, f"{g.distance_m:.0f} m away > {rule.relevance_m:.0f} m"
    if g.ahead_off_deg is not None and g.ahead_off_deg > rules.ahead_max_deg:
        return False, f"event {g.ahead_off_deg:.0f}° off its heading (behind or beside it)"
    if g.heading_off_deg is not None and g.heading_off_deg > rules.heading_max_deg:
        return False, f"heading {g.heading_off_deg:.0f}° from the event's (other direction)"
    return True, f"{g.distance_m:.0f} m ahead" if g.ahead_off_deg is not None else f"{g.distance_m:.0f} m"


def _thin(g: _Geometry, rule: TriggerRule, rules: Rules) -> str:
    """Why this geometry is too close to a threshold to call ('' when it is not)."""
    if abs(g.distance_m - rule.relevance_m) < rules.margin_fraction * rule.relevance_m:
        return f"distance {g.distance_m:.0f} m too close to the {rule.relevance_m:.0f} m limit"
    if g.distance_m > rule.relevance_m:
        return ""  # out of reach: the angles do not matter
    if (
        g.ahead_off_deg is not None
        and g.distance_m > 20.0
        and abs(g.ahead_off_deg - rules.ahead_max_deg) < rules.margin_deg
    ):
        return f"bearing {g.ahead_off_deg:.0f}° too close to the {rules.ahead_max_deg:.0f}° limit"
    if g.heading_off_deg is not None and abs(g.heading_off_deg - rules.heading_max_deg) < rules.margin_deg:
        return f"heading {g.heading_off_deg:.0f}° too close to the {rules.heading_max_deg:.0f}° limit"
    return ""


def _judge(
    track: _Track,
    event: _Pose,
    rule: TriggerRule,
    rules: Rules,
    *,
    source: _Track,
    t0: int,
    t_end: int,
) -> dict[str, Any]:
    """Whether the receiver must accept the DENM due at ``t0``, and whether that is clear-cut."""
    window_us = round(rules.acceptance_window_s * 1e6)
    decisions: list[tuple[bool, str, _Geometry]] = []
    for t in [t0, *track.gnss_times(t0 + 1, t0 + window_us)]:
        pose = track.pose(t)
        if pose is None:
            decisions.append((False, "no GNSS position", _Geometry(math.inf, None, None)))
            continue
        g = _geometry(pose, event)
        decisions.append((*_decide(g, rule, rules), g))
    warned, reason, geo = decisions[0]
    problem = ""
    if any(d[0] != warned for d in decisions):
        problem = "relevance changes within the acceptance window"
    for _ok, _why, g in decisions:
        problem = problem or _thin(g, rule, rules)
    if not warned and not problem:
        # A later repetition (same position) or update (the source's position then) must not warn it either.
        for t in track.gnss_times(t0 + window_us + 1, t_end):
            pose, now = track.pose(t), source.pose(t)
            if pose is None:
                continue
            for where in (event, now):
                if where is not None and _decide(_geometry(pose, where), rule, rules)[0]:
                    problem = (
                        f"turns relevant {(t - t0) / 1e6:.1f} s after the DENM (a later one would warn it)"
                    )
                    break
            if problem:
                break
    out: dict[str, Any] = {"warned": warned, "reason": reason, "ambiguous": problem}
    out["distance_m"] = round(geo.distance_m, 1)
    out["ahead_off_deg"] = None if geo.ahead_off_deg is None else round(geo.ahead_off_deg, 1)
    out["heading_off_deg"] = None if geo.heading_off_deg is None else round(geo.heading_off_deg, 1)
    return out


# ------------------------------------------------------------------------------ the run


@dataclass(slots=True)
class _Car:
    spec: FleetVehicle
    drive: Drive
    server: SocketcandServer
    batch_last_us: list[int] = field(default_factory=list)
    batch_wall_ns: list[int] = field(default_factory=list)
    error: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    launched: bool = False


@dataclass(slots=True)
class _Go:
    """``--wait-go``: the parked fleet's launch, decided once for all cars (simulated s from the start)."""

    duration_s: float
    start_us: int = 0
    requested: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    go_s: float | None = None
    end_us: int | None = None

    def decide(self, t_s: float) -> None:
        with self.lock:
            if self.go_s is None:
                go_s = math.ceil((t_s + 0.5) * 100.0) / 100.0  # half a second ahead, on the 10 ms step
                self.end_us = self.start_us + round((go_s + self.duration_s) * 1e6)
                self.go_s = go_s
                _emit(
                    {
                        "event": "started",
                        "start_us": self.start_us,
                        "go_us": self.start_us + round(go_s * 1e6),
                    }
                )


def _emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _drive_car(car: _Car, barrier: threading.Barrier, go: _Go | None) -> None:
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        return
    try:
        for batch in car.drive.batches(car.stop):
            wall = time.time_ns()  # before the write: latencies count the socket write too
            car.server.send_frames(batch)
            last_us = round(batch[-1].timestamp * 1e6)
            car.batch_last_us.append(last_us)
            car.batch_wall_ns.append(wall)
            vehicle = car.drive.vehicle
            if go is None or vehicle is None:
                continue
            if go.requested.is_set() and go.go_s is None:
                go.decide(vehicle.t_s)
            if go.go_s is not None and not car.launched:
                launch(vehicle, car.spec.name, go.go_s)
                car.launched = True
            if go.end_us is not None and last_us >= go.end_us:
                car.stop.set()
    except TcuError as exc:
        if not car.stop.is_set():
            car.error = str(exc)
            log.error("%s: %s", car.spec.name, exc)


def _speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--speed must be 'max' or a positive number, got {text!r}"
        ) from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--speed must be 'max' or a positive number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sim.v2n",
        description="Seven simulated vehicles on the A31 (a leader that brakes hard and stops with hazard "
        "lights, followers, one ahead, one far behind, one oncoming), each on its own socketcand server.",
        epilog="example: python -m sim.v2n --out v2n-truth --rules rules.json",
    )
    p.add_argument("--out", type=Path, required=True, help="directory for the ground truth files")
    p.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="simulated seconds (default 14)"
    )
    p.add_argument("--speed", type=_speed, default=1.0, help="'max' or a factor of real time (default 1)")
    p.add_argument("--seed", type=int, default=1, help="seed of the first vehicle (default 1)")
    p.add_argument(
        "--rules", type=Path, help="JSON rules for the ground truth (default: sim.v2n.DEFAULT_RULES)"
    )
    p.add_argument("--client-timeout", type=float, default=120.0, help="wait this long for all clients (s)")
    p.add_argument(
        "--wait-go",
        action="store_true",
        help="park the fleet once every client is there (say so), set it going on SIGUSR1 "
        "(--duration counts from then): agents warm up before anything happens",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s sim.v2n %(levelname)s %(name)s: %(message)s",
    )
    try:
        rules = DEFAULT_RULES
        if args.rules is not None:
            rules = Rules.from_json(json.loads(args.rules.read_text(encoding="utf-8")))
    except (OSError, ValueError, TcuError) as exc:
        log.error("--rules %s: %s", args.rules, exc)
        return 2
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        fleet = v2n_fleet(args.seed, parked=args.wait_go)
        cars = [
            _Car(
                spec,
                # parked until the go: the drive may last until the client timeout, then the duration
                Drive(
                    drive_config(
                        spec, args.duration + (args.client_timeout if args.wait_go else 0.0), args.speed
                    )
                ),
                SocketcandServer(SocketcandConfig()),
            )
            for spec in fleet
        ]
        ports = [car.server.start() for car in cars]
    except (OSError, ValueError, TcuError) as exc:
        log.error("%s", exc)
        return 2
    return _run(args, rules, fleet, cars, ports)


def _wait_clients(cars: list[_Car], args: argparse.Namespace, stop: threading.Event) -> int | None:
    """Until every car has its client; an exit status if that does not happen."""
    deadline = time.monotonic() + args.client_timeout
    for car in cars:
        while not car.server.wait_for_client(0.5):
            if stop.is_set():
                return 0
            if time.monotonic() > deadline:
                log.error("%s: no socketcand client within %.0f s", car.spec.name, args.client_timeout)
                return 1
    return None


def _run(
    args: argparse.Namespace, rules: Rules, fleet: Sequence[FleetVehicle], cars: list[_Car], ports: list[int]
) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        for car in cars:
            car.stop.set()
            car.server.close()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    go = _Go(args.duration) if args.wait_go else None
    if go is not None:
        signal.signal(signal.SIGUSR1, lambda _n, _f: go.requested.set())
    _emit(
        {
            "event": "ready",
            "vehicles": [
                {
                    "name": c.spec.name,
                    "role": c.spec.role,
                    "station_id": c.spec.station_id,
                    "vin": c.spec.vin,
                    "host": c.server.config.host,
                    "port": port,
                    "channel": c.server.config.channel,
                }
                for c, port in zip(cars, ports, strict=True)
            ],
            "dbc": str(DEFAULT_DBC_PATH),
            "mapping": str(DEFAULT_MAPPING_PATH),
        }
    )
    failed_start = _wait_clients(cars, args, stop)
    if failed_start is not None:
        return failed_start
    start_us = (time.time_ns() + 500) // 1000
    for car in cars:
        car.drive.config = dataclasses.replace(car.drive.config, start_epoch_us=start_us)
    barrier = threading.Barrier(len(cars))
    threads = [
        threading.Thread(
            target=_drive_car, args=(car, barrier, go), name=f"sim.v2n[{car.spec.name}]", daemon=True
        )
        for car in cars
    ]
    for t in threads:
        t.start()
    if go is None:
        _emit({"event": "started", "start_us": start_us, "go_us": start_us})
        log.info("driving %d vehicles for %.1f s", len(cars), args.duration)
    else:
        go.start_us = start_us
        _emit({"event": "clients", "clients": len(cars), "start_us": start_us})
        log.info("%d vehicles parked until SIGUSR1, then driving %.1f s", len(cars), args.duration)
    for t in threads:
        t.join()
    failed = [c.spec.name for c in cars if c.error]
    truths = {c.spec.name: c.drive.ground_truth() for c in cars}
    paths: dict[str, str] = {}
    try:
        for car in cars:
            paths[car.spec.name] = str(
                car.drive.save_ground_truth(args.out / f"{car.spec.name}.npz").resolve()
            )
        truth = compute_truth(
            fleet, truths, rules, {c.spec.name: (c.batch_last_us, c.batch_wall_ns) for c in cars}
        )
        truth_path = (args.out / "v2n_truth.json").resolve()
        truth_path.write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    except (OSError, TcuError) as exc:
        log.error("%s", exc)
        return 1
    for problem in truth["ambiguous"]:
        log.warning("ground truth: %s", problem)
    _emit(
        {
            "event": "done",
            "frames": {name: gt.frames for name, gt in truths.items()},
            "ground_truth": paths,
            "truth": str(truth_path),
            "start_us": start_us,
            "go_us": start_us if go is None else go.start_us + round((go.go_s or 0.0) * 1e6),
            "end_us": truth["end_us"],
            "events": [e["id"] for e in truth["events"]],
            "ambiguous": len(truth["ambiguous"]),
            "interrupted": stop.is_set() or bool(failed) or (go is not None and go.go_s is None),
            "failed": failed,
        }
    )
    if failed:
        return 1
    while not stop.wait(1.0):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
