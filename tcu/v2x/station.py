"""One ITS station: CAM generation, DENM origination and DENM reception around a :class:`V2xClient`.

The caller (the agent, a simulator, a benchmark) feeds :meth:`V2xStation.update` with the
vehicle's state and its trigger conditions as they are decoded, with the *source* time of
the newest frame that went into them; the station decides what to publish (CAM rules, DENM
lifecycle), moves the tile subscriptions, and turns received DENMs into
:class:`StationWarning`\\ s (dedup, updates, cancellations, expiry, relevance) for
``on_warning``. :meth:`tick` expires held warnings; call it about once a second.

Times: DENM detection/reference times are the source times (ITS ms); the receiver judges
expiry and "future" by the local wall clock, so source time must be wall time (true on a
live bus; a replayed old log produces DENMs that have expired and are never sent).
Below ``standstill_mps`` the GNSS course is noise: a stopped vehicle keeps the last heading it
had while moving (its CAMs, its DENMs and its own relevance checks use it), flagged by the
heading confidence :data:`~tcu.v2x.messages.HELD_HEADING_CONFIDENCE_DEG` (ETSI ``outOfRange``),
so that a car on the other carriageway can still be ruled out. A vehicle that has not moved
since start has no heading: the relevance check then uses distance only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tcu.v2x.cam_rules import CamGenerator, CamRules, Kinematics
from tcu.v2x.client import Received, V2xClient
from tcu.v2x.denm import DEFAULT_TRIGGERS, DenmOriginator, DenmTrigger, Outgoing
from tcu.v2x.messages import (
    HELD_HEADING_CONFIDENCE_DEG,
    Cam,
    Denm,
    StationPosition,
    its_time_ms,
    unix_ns_from_its,
)
from tcu.v2x.receive import DenmReceiver, OwnState, ReceiverConfig, WarningChange

__all__ = ["StationSettings", "StationWarning", "V2xStation", "VehicleState"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VehicleState:
    """What the station knows of its vehicle at ``time_ns`` (source time); None: not known yet."""

    time_ns: int
    latitude_deg: float | None = None
    longitude_deg: float | None = None
    heading_deg: float | None = None
    speed_mps: float | None = None
    longitudinal_acceleration_mps2: float | None = None
    yaw_rate_dps: float | None = None
    exterior_lights: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class StationSettings:
    station_id: int
    station_type: int = 5  # passengerCar
    vehicle_role: str = "default"
    length_m: float | None = None
    width_m: float | None = None
    send_cam: bool = True
    cam_rules: CamRules = field(default_factory=CamRules)
    triggers: tuple[DenmTrigger, ...] = DEFAULT_TRIGGERS
    standstill_mps: float = 0.5
    ahead_deg: float = 60.0
    same_direction_deg: float = 60.0
    default_relevance_m: float = 1000.0


@dataclass(frozen=True, slots=True)
class StationWarning:
    """A warning change for this vehicle; ``latency_ms``: receive time minus the DENM referenceTime."""

    kind: str  # accepted, updated, cancelled, expired
    denm: Denm
    distance_m: float | None
    latency_ms: float | None
    received_ns: int | None


class V2xStation:
    def __init__(
        self,
        settings: StationSettings,
        client: V2xClient,
        *,
        on_warning: Callable[[StationWarning], None] | None = None,
        on_sent: Callable[[Outgoing], None] | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.settings = settings
        self.client = client
        client.on_message = self._on_received
        self._on_warning = on_warning
        self._on_sent = on_sent
        self._wall_ns = wall_ns
        self.cams = CamGenerator(settings.cam_rules)
        self.originator = DenmOriginator(
            station_id=settings.station_id, triggers=settings.triggers, station_type=settings.station_type
        )
        self.receiver = DenmReceiver(
            ReceiverConfig(
                own_station_id=settings.station_id,
                ahead_deg=settings.ahead_deg,
                same_direction_deg=settings.same_direction_deg,
                default_relevance_m=settings.default_relevance_m,
            )
        )
        self.state: VehicleState | None = None
        self._moving_heading: float | None = None  # the last heading while moving
        self._heading_now: tuple[float | None, float | None] = (None, None)
        self.warnings_by_kind: dict[str, int] = {}

    def _heading(self, state: VehicleState) -> tuple[float | None, float | None]:
        """Heading and its confidence: measured while moving, the last moving one when stopped."""
        if state.speed_mps is not None and state.speed_mps < self.settings.standstill_mps:
            held = self._moving_heading
            return held, None if held is None else HELD_HEADING_CONFIDENCE_DEG
        if state.heading_deg is not None:
            self._moving_heading = state.heading_deg
        return state.heading_deg, None

    def update(self, state: VehicleState, conditions: Mapping[str, bool]) -> list[Outgoing]:
        """Advance to ``state``: tiles, CAM if due, DENMs of the triggers. Returns the DENMs queued."""
        self.state = state
        position: StationPosition | None = None
        heading, confidence = self._heading_now = self._heading(state)
        if state.latitude_deg is not None and state.longitude_deg is not None:
            position = StationPosition(state.latitude_deg, state.longitude_deg)
            self.client.set_position(state.latitude_deg, state.longitude_deg)
        out = self.originator.step(
            state.time_ns, conditions, position, heading, state.speed_mps, heading_confidence_deg=confidence
        )
        for item in out:
            self.client.publish_denm(item.denm, source_ns=state.time_ns)
            if self._on_sent is not None and item.kind != "repetition":
                self._on_sent(item)
        if self.settings.send_cam and position is not None:
            decision = self.cams.step(
                Kinematics(
                    state.time_ns, position.latitude_deg, position.longitude_deg, heading, state.speed_mps
                )
            )
            if decision is not None:
                self.client.publish_cam(
                    Cam(
                        station_id=self.settings.station_id,
                        station_type=self.settings.station_type,
                        generation_delta_time_ms=its_time_ms(state.time_ns) % 65536,
                        position=position,
                        heading_deg=heading,
                        heading_confidence_deg=confidence,
                        speed_mps=state.speed_mps,
                        length_m=self.settings.length_m,
                        width_m=self.settings.width_m,
                        longitudinal_acceleration_mps2=state.longitudinal_acceleration_mps2,
                        yaw_rate_dps=state.yaw_rate_dps,
                        vehicle_role=self.settings.vehicle_role if decision.include_low_frequency else None,
                        exterior_lights=state.exterior_lights,
                    ),
                    source_ns=state.time_ns,
                )
        return out

    def own_state(self) -> OwnState | None:
        state = self.state
        if state is None or state.latitude_deg is None or state.longitude_deg is None:
            return None
        return OwnState(state.latitude_deg, state.longitude_deg, self._heading_now[0])

    def tick(self) -> list[StationWarning]:
        """Expire held warnings whose validity ended."""
        out = [self._warning(change, None) for change in self.receiver.expire(its_time_ms(self._wall_ns()))]
        for warning in out:
            self._deliver(warning)
        return out

    def _warning(self, change: WarningChange, received_ns: int | None) -> StationWarning:
        latency = None
        if received_ns is not None:
            latency = (received_ns - unix_ns_from_its(change.denm.reference_time_ms)) / 1e6
        return StationWarning(change.kind, change.denm, change.distance_m, latency, received_ns)

    def _deliver(self, warning: StationWarning) -> None:
        self.warnings_by_kind[warning.kind] = self.warnings_by_kind.get(warning.kind, 0) + 1
        if self._on_warning is not None:
            self._on_warning(warning)

    def _on_received(self, received: Received) -> None:
        message = received.message
        if not isinstance(message, Denm):
            return  # CAMs: awareness only (counted by the client)
        change = self.receiver.receive(message, its_time_ms(received.received_ns), self.own_state())
        if change is not None:
            self._deliver(self._warning(change, received.received_ns))
