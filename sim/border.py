"""The cross-border eSIM roaming scenario, simulator side: card, modem and radio along the route.

``python -m sim --modem`` uses this module. It builds a :class:`~sim.euicc.SimulatedEuicc`
with one bootstrap profile and one profile per country of the default route (Metz → Luxembourg
→ Trier), a :class:`~sim.modem.SimulatedModem` on a pty that knows the PLMNs of those
countries, and a :class:`BorderRadio` thread that keeps the modem in step with the drive:

* the country under the vehicle (from the route's waypoints) becomes the modem's country;
* a tunnel (:data:`TUNNEL`) is a coverage hole on a stretch of the route;
* the Luxembourg profile never attaches in Luxembourg (:data:`FAILING_ATTACH`), so the
  TCU's switch there fails and must be rolled back;
* NMEA ``$GPRMC``/``$GPGGA`` sentences carry the **simulated** time and position, so a
  TCU that takes its clock from GNSS measures dwell times and attach deadlines in
  simulated seconds even when the drive runs faster than real time;
* with ``data_proxy`` the modem also has a cellular data path (:mod:`sim.datalink`): a
  loopback TCP proxy to the ingest that cuts its connections whenever the modem loses
  registration (tunnel, profile switch, failed attach) and forwards again once registered.

The modem's own periodic NMEA (wall-clock time) is off; :class:`BorderRadio` writes the
sentences. Registration delays of the modem (``attach_delay_s``) are wall-clock seconds.

Scenario data (labels, ICCIDs, home PLMNs, tunnel, failing attach) is kept here so that the
demo's roaming policy (``tcu.demo.border``) and the simulator agree; ``tcu`` does not import
``sim``, so the demo repeats the ICCIDs and a test checks that both sides match.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sim.canbus import Drive
from sim.cellular import (
    COUNTRY_PLMNS,
    FAILING_ATTACH,
    INITIAL_PROFILE,
    PROFILES,
    BorderProfile,
    build_card,
    build_modem,
)
from sim.datalink import DataLinkProxy, has_data_connection
from sim.euicc import SimulatedEuicc
from sim.modem import SimulatedModem
from sim.modem_process import ModemProcess
from sim.route import Pose, Route, metz_luxembourg_trier
from tcu.errors import ConfigError
from tcu.modem.parse import nmea_sentence

__all__ = [
    "COUNTRY_PLMNS",
    "FAILING_ATTACH",
    "INITIAL_PROFILE",
    "PROFILES",
    "TUNNEL",
    "BorderProfile",
    "BorderRadio",
    "Tunnel",
    "build_card",
    "build_modem",
    "conditions_at",
    "nmea_fix",
    "route_starting_at",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tunnel:
    """A coverage hole from ``start_m`` to ``end_m`` after waypoint ``after_waypoint``."""

    name: str
    after_waypoint: str
    start_m: float
    end_m: float


#: About 1.2 km without coverage on the A1 east of Howald, where the motorway runs in
#: cuttings and tunnels round the south-east of Luxembourg City (position approximate).
TUNNEL = Tunnel("A1 tunnel east of Howald", "A1 Howald", 400.0, 1600.0)


def route_starting_at(waypoint: str, route: Route | None = None) -> Route:
    """``route`` (default: Metz → Luxembourg → Trier) from the first waypoint named ``waypoint``.

    ``python -m sim --start-at "A31 Thionville"`` uses it to shorten the drive to the borders.
    """
    base = route or metz_luxembourg_trier()
    names = [wp.name for wp in base.waypoints]
    if waypoint not in names:
        raise ConfigError(f"no waypoint {waypoint!r} on {base.name}; waypoints: {names}", key="start_at")
    index = names.index(waypoint)
    return Route(base.waypoints[index:], name=f"{base.name} from {waypoint}")


def _tunnel_span(route: Route, tunnel: Tunnel) -> tuple[float, float] | None:
    for wp, at_m in zip(route.waypoints, route.waypoint_distances_m, strict=True):
        if wp.name == tunnel.after_waypoint:
            return at_m + tunnel.start_m, at_m + tunnel.end_m
    return None


def conditions_at(route: Route, distance_m: float, tunnel: Tunnel | None = TUNNEL) -> tuple[Pose, bool]:
    """The pose at ``distance_m`` and whether there is radio coverage there."""
    pose = route.pose_at(distance_m)
    span = _tunnel_span(route, tunnel) if tunnel is not None else None
    covered = span is None or not span[0] <= pose.distance_m < span[1]
    return pose, covered


def _nmea_coord(value: float, positive: str, negative: str, degree_digits: int) -> str:
    hemi = positive if value >= 0 else negative
    value = abs(value)
    degrees = int(value)
    minutes = round((value - degrees) * 60.0, 4)
    if minutes >= 60.0:
        degrees, minutes = degrees + 1, 0.0
    return f"{degrees:0{degree_digits}d}{minutes:07.4f},{hemi}"


def nmea_fix(t_us: int, pose: Pose, speed_mps: float) -> tuple[str, str]:
    """``$GPRMC`` and ``$GPGGA`` for ``pose`` at UTC epoch ``t_us`` (time to 1/100 s)."""
    seconds, micros = divmod(t_us, 1_000_000)
    tm = time.gmtime(seconds)
    stamp = f"{tm.tm_hour:02d}{tm.tm_min:02d}{tm.tm_sec:02d}.{micros // 10_000:02d}"
    date = f"{tm.tm_mday:02d}{tm.tm_mon:02d}{tm.tm_year % 100:02d}"
    lat = _nmea_coord(pose.lat_deg, "N", "S", 2)
    lon = _nmea_coord(pose.lon_deg, "E", "W", 3)
    knots = speed_mps * 3600.0 / 1852.0
    rmc = nmea_sentence(f"GPRMC,{stamp},A,{lat},{lon},{knots:.1f},{pose.heading_deg:.1f},{date},,,A")
    gga = nmea_sentence(f"GPGGA,{stamp},{lat},{lon},1,09,0.9,{pose.altitude_m:.1f},M,47.0,M,,")
    return rmc, gga


class BorderRadio:
    """Keeps a :class:`SimulatedModem` in step with a :class:`Drive` (a daemon thread).

    With ``separate_process=True`` the modem and its card run in a child process
    (:class:`~sim.modem_process.ModemProcess`), as ``python -m sim --modem`` does.

    Every ``period_s`` of wall time it reads the vehicle's distance and simulated time,
    sets the modem's country and coverage, and writes an NMEA fix with the simulated time.
    Before the drive starts the car stands at the start of the route (wall-clock time).
    """

    def __init__(
        self,
        drive: Drive,
        *,
        period_s: float = 0.05,
        attach_delay_s: float = 0.2,
        tunnel: Tunnel | None = TUNNEL,
        separate_process: bool = False,
        data_proxy: tuple[str, int] | None = None,
        card_credentials: str | None = None,
        notification_address: str | None = None,
    ) -> None:
        """``card_credentials``: see :func:`sim.cellular.build_card` (the download drive)."""
        self.drive = drive
        self.period_s = period_s
        self.tunnel = tunnel
        self._tunnel_m = _tunnel_span(drive.route, tunnel) if tunnel is not None else None  # (start, end) m
        start_country = drive.route.pose_at(0.0).country
        self.card: SimulatedEuicc | None = None
        self.modem: SimulatedModem | ModemProcess
        self._proxy: DataLinkProxy | None = None
        if separate_process:  # python -m sim --modem: answers in time however busy the drive is
            self.modem = ModemProcess(
                country=start_country,
                attach_delay_s=attach_delay_s,
                data_proxy=data_proxy,
                card_credentials=card_credentials,
                notification_address=notification_address,
            )
        else:
            self.card = build_card(card_credentials, notification_address)
            modem = build_modem(self.card, country=start_country, attach_delay_s=attach_delay_s)
            self.modem = modem
            if data_proxy is not None:
                self._proxy = DataLinkProxy(lambda: has_data_connection(modem), data_proxy)
        self.changes: list[tuple[int, str, bool]] = []
        """(simulated t_us, country, covered) at every change, for logs and tests."""
        self._last_distance_m: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-border-radio", daemon=True)

    @property
    def port(self) -> str:
        return self.modem.port

    @property
    def data_proxy_port(self) -> int | None:
        """The modem's data path on 127.0.0.1 (:mod:`sim.datalink`), when ``data_proxy`` was given."""
        if isinstance(self.modem, ModemProcess):
            return self.modem.data_proxy_port
        return self._proxy.port if self._proxy is not None else None

    def data_link_stats(self) -> dict[str, Any] | None:
        """The data path's counters (:class:`sim.datalink.DataLinkStats` plus ``up``, ``open``)."""
        if isinstance(self.modem, ModemProcess):
            return self.modem.data_link_stats()
        return self._proxy.snapshot() if self._proxy is not None else None

    def start(self) -> BorderRadio:
        self.modem.start()
        if self._proxy is not None:
            self._proxy.start()
        self.update()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop following the drive and close the modem (and its data path); idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._proxy is not None:
            self._proxy.stop()
        self.modem.stop()

    def __enter__(self) -> BorderRadio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def update(self) -> None:
        """One step: country, coverage and an NMEA fix from the vehicle's current state."""
        vehicle, start_us = self.drive.vehicle, self.drive.start_us
        if vehicle is None or start_us is None:
            distance_m, speed_mps, t_us = 0.0, 0.0, time.time_ns() // 1000
        else:
            distance_m, speed_mps = vehicle.distance_m, vehicle.speed_mps
            t_us = start_us + round(vehicle.t_s * 1e6)
        pose, covered = conditions_at(self.drive.route, distance_m, self.tunnel)
        passed, self._last_distance_m = self._passed_tunnel(self._last_distance_m, distance_m), distance_m
        if passed and covered and self.modem.coverage:
            # The whole tunnel went by between two updates (the radio thread shares the GIL
            # with the drive and can be late by more than the tunnel's wall time): it is
            # still a coverage hole, just a short one (the modem re-attaches after it).
            log.info("t=%.0f s: passed the tunnel between two updates", (t_us - (start_us or t_us)) / 1e6)
            self.changes.append((t_us, self.modem.country, False))
            self.modem.set_coverage(False)
        if (pose.country, covered) != (self.modem.country, self.modem.coverage):
            log.info(
                "t=%.0f s, %.2f km: %s, %s",
                (t_us - (start_us or t_us)) / 1e6,
                distance_m / 1000.0,
                pose.country,
                "coverage" if covered else "no coverage (tunnel)",
            )
            self.changes.append((t_us, pose.country, covered))
            if pose.country in COUNTRY_PLMNS:
                self.modem.set_country(pose.country)
            self.modem.set_coverage(covered)
        self.modem.position = (pose.lat_deg, pose.lon_deg)
        for sentence in nmea_fix(t_us, pose, speed_mps):
            self.modem.emit_raw(b"\r\n" + sentence.encode() + b"\r\n")

    def _passed_tunnel(self, before_m: float | None, after_m: float) -> bool:
        """Whether the car went from before the tunnel to after it (``before_m`` → ``after_m``)."""
        span = self._tunnel_m
        return span is not None and before_m is not None and before_m < span[0] and after_m >= span[1]

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.update()
            except Exception:  # a glitch must not end the radio thread; logged
                log.exception("border radio update failed")
