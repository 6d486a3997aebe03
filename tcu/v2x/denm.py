"""DENM lifecycle at the originating station, pure and driven by time (EN 302 637-3 clause 8).

The caller evaluates each trigger's condition (a boolean per trigger name, from the decoded
signals) and calls :meth:`DenmOriginator.step` with the source time, the vehicle's position,
heading and speed. The originator returns the DENMs to publish now:

* **new**: the condition has held for ``hold_ns``: a new ``ActionId`` (own station id,
  next sequence number), detectionTime = referenceTime = now, the event position and heading;
* **repetition**: the last new/update DENM unchanged (same referenceTime), every
  ``repetition_interval_ns`` while the event is active, so stations that subscribe late hear it;
  receivers drop repetitions by (actionId, referenceTime);
* **update**: same ActionId, new detectionTime and referenceTime, sent every
  ``update_interval_ns`` (so that the validity never runs out while the condition holds) or
  when the event position moved more than ``update_distance_m`` (a vehicle still braking);
* **cancellation**: the condition has been false for ``release_ns``: termination
  ``isCancellation``, new referenceTime, sent once (QoS 1 carries it) and repeated
  ``cancel_repetitions`` times at the repetition interval.

All times are ITS milliseconds in the messages (:func:`~tcu.v2x.messages.its_time_ms` of the
source time in ns). Each transmission's kind is in :attr:`DenmOriginator.sent`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from tcu.v2x.geo import distance_m
from tcu.v2x.messages import (
    CAUSE_ADVERSE_WEATHER_ADHESION,
    CAUSE_DANGEROUS_SITUATION,
    CAUSE_STATIONARY_VEHICLE,
    SUB_CAUSE_EEBL,
    ActionId,
    Denm,
    StationPosition,
    its_time_ms,
)

__all__ = ["DEFAULT_TRIGGERS", "DenmOriginator", "DenmTrigger", "Outgoing"]


@dataclass(frozen=True, slots=True)
class DenmTrigger:
    """One configurable trigger: the condition is named ``name``; the rest fills the DENM."""

    name: str
    cause_code: int
    sub_cause_code: int = 0
    validity_s: int = 60
    relevance_distance_m: float = 500.0
    relevance_traffic_direction: str = "upstreamTraffic"
    information_quality: int = 3
    hold_ns: int = 0
    release_ns: int = 1_000_000_000
    repetition_interval_ns: int = 1_000_000_000
    update_interval_ns: int = 20_000_000_000
    update_distance_m: float = 20.0
    cancel_repetitions: int = 2

    def __post_init__(self) -> None:
        if self.update_interval_ns >= self.validity_s * 1_000_000_000:
            raise ValueError(f"trigger {self.name}: updates must come before the validity ends")
        if self.repetition_interval_ns <= 0 or self.hold_ns < 0 or self.release_ns < 0:
            raise ValueError(f"trigger {self.name}: intervals must be positive")


DEFAULT_TRIGGERS: tuple[DenmTrigger, ...] = (
    # Emergency electronic brake lights: dangerousSituation(99) / emergencyElectronicBrakeEngaged(1).
    DenmTrigger(
        "hard_braking",
        CAUSE_DANGEROUS_SITUATION,
        SUB_CAUSE_EEBL,
        validity_s=20,
        relevance_distance_m=500.0,
        release_ns=1_000_000_000,
        update_interval_ns=10_000_000_000,
    ),
    # Stationary vehicle with hazard lights: stationaryVehicle(94), sub-cause unavailable(0).
    DenmTrigger(
        "stationary_hazard",
        CAUSE_STATIONARY_VEHICLE,
        0,
        validity_s=120,
        relevance_distance_m=1000.0,
        hold_ns=3_000_000_000,
        release_ns=2_000_000_000,
        update_interval_ns=30_000_000_000,
    ),
    # Adverse road conditions, adhesion (6), from wheel slip / ESP activity; sub-cause unavailable(0).
    DenmTrigger(
        "low_adhesion",
        CAUSE_ADVERSE_WEATHER_ADHESION,
        0,
        validity_s=600,
        relevance_distance_m=1000.0,
        release_ns=5_000_000_000,
        update_interval_ns=120_000_000_000,
    ),
)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A DENM to publish now, the trigger it comes from and the kind of transmission."""

    denm: Denm
    trigger: str
    kind: str  # "new", "repetition", "update", "cancellation"


@dataclass(slots=True)
class _Event:
    action: ActionId
    started_ns: int
    last_update_ns: int
    last_sent_ns: int
    denm: Denm
    false_since_ns: int | None = None
    cancel_left: int = 0
    cancelled: Denm | None = None


@dataclass(slots=True)
class DenmOriginator:
    """The DENM state machines of one station, one per trigger."""

    station_id: int
    triggers: Sequence[DenmTrigger] = DEFAULT_TRIGGERS
    station_type: int = 5
    next_sequence: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    _true_since: dict[str, int] = field(default_factory=dict)
    _events: dict[str, _Event] = field(default_factory=dict)
    _cancelling: dict[str, _Event] = field(default_factory=dict)
    _heading_confidence_deg: float | None = None

    def step(
        self,
        now_ns: int,
        conditions: Mapping[str, bool],
        position: StationPosition | None,
        heading_deg: float | None = None,
        speed_mps: float | None = None,
        *,
        heading_confidence_deg: float | None = None,
    ) -> list[Outgoing]:
        """Advance every trigger to ``now_ns``; conditions missing from the mapping are false.

        Without a position no new event starts (its position would be unknown); running
        events keep their last position. ``heading_confidence_deg`` goes into the DENM with the
        heading (None: unavailable).
        """
        self._heading_confidence_deg = heading_confidence_deg
        out: list[Outgoing] = []
        for trigger in self.triggers:
            active = bool(conditions.get(trigger.name, False))
            out.extend(
                self._step_one(
                    trigger=trigger,
                    now_ns=now_ns,
                    active=active,
                    position=position,
                    heading_deg=heading_deg,
                    speed_mps=speed_mps,
                )
            )
        for item in out:
            self.sent[item.kind] += 1
        return out

    @property
    def active(self) -> dict[str, ActionId]:
        """Trigger name → ActionId of the events not yet cancelled."""
        return {name: e.action for name, e in self._events.items()}

    def _new_action(self) -> ActionId:
        action = ActionId(self.station_id, self.next_sequence)
        self.next_sequence = (self.next_sequence + 1) % 65536
        return action

    def _denm(
        self,
        *,
        trigger: DenmTrigger,
        action: ActionId,
        now_ns: int,
        position: StationPosition,
        heading_deg: float | None,
        speed_mps: float | None,
    ) -> Denm:
        now = its_time_ms(now_ns)
        return Denm(
            station_id=self.station_id,
            action_id=action,
            detection_time_ms=now,
            reference_time_ms=now,
            event_position=position,
            station_type=self.station_type,
            relevance_distance_m=trigger.relevance_distance_m,
            relevance_traffic_direction=trigger.relevance_traffic_direction,
            validity_s=trigger.validity_s,
            transmission_interval_ms=min(10000, max(1, trigger.repetition_interval_ns // 1_000_000)),
            cause_code=trigger.cause_code,
            sub_cause_code=trigger.sub_cause_code,
            information_quality=trigger.information_quality,
            event_speed_mps=speed_mps,
            event_heading_deg=heading_deg,
            event_heading_confidence_deg=None if heading_deg is None else self._heading_confidence_deg,
        )

    def _step_one(
        self,
        *,
        trigger: DenmTrigger,
        now_ns: int,
        active: bool,
        position: StationPosition | None,
        heading_deg: float | None,
        speed_mps: float | None,
    ) -> list[Outgoing]:
        name = trigger.name
        out: list[Outgoing] = []
        ending = self._cancelling.get(name)
        if ending is not None:  # repetitions of a cancellation, independent of a new event
            if now_ns - ending.last_sent_ns >= trigger.repetition_interval_ns:
                ending.cancel_left -= 1
                ending.last_sent_ns = now_ns
                assert ending.cancelled is not None
                out.append(Outgoing(ending.cancelled, name, "repetition"))
            if ending.cancel_left <= 0:
                del self._cancelling[name]
        return out + self._step_event(
            trigger=trigger,
            now_ns=now_ns,
            active=active,
            position=position,
            heading_deg=heading_deg,
            speed_mps=speed_mps,
        )

    def _step_event(
        self,
        *,
        trigger: DenmTrigger,
        now_ns: int,
        active: bool,
        position: StationPosition | None,
        heading_deg: float | None,
        speed_mps: float | None,
    ) -> list[Outgoing]:
        name = trigger.name
        event = self._events.get(name)
        if active:
            self._true_since.setdefault(name, now_ns)
        else:
            self._true_since.pop(name, None)
        if event is None:
            since = self._true_since.get(name)
            if since is None or now_ns - since < trigger.hold_ns or position is None:
                return []
            action = self._new_action()
            denm = self._denm(
                trigger=trigger,
                action=action,
                now_ns=now_ns,
                position=position,
                heading_deg=heading_deg,
                speed_mps=speed_mps,
            )
            self._events[name] = _Event(action, now_ns, now_ns, now_ns, denm)
            return [Outgoing(denm, name, "new")]
        if not active:
            if event.false_since_ns is None:
                event.false_since_ns = now_ns
            if now_ns - event.false_since_ns >= trigger.release_ns:
                now = its_time_ms(now_ns)
                cancelled = replace(
                    event.denm,
                    termination="isCancellation",
                    reference_time_ms=max(now, event.denm.reference_time_ms + 1),
                    detection_time_ms=max(now, event.denm.reference_time_ms + 1),
                    cause_code=None,
                    event_speed_mps=None,
                    event_heading_deg=None,
                    event_heading_confidence_deg=None,
                )
                event.cancelled = cancelled
                event.cancel_left = trigger.cancel_repetitions
                event.last_sent_ns = now_ns
                del self._events[name]
                if event.cancel_left > 0:
                    self._cancelling[name] = event
                return [Outgoing(cancelled, name, "cancellation")]
        else:
            event.false_since_ns = None
            moved = (
                position is not None
                and distance_m(
                    event.denm.event_position.latitude_deg,
                    event.denm.event_position.longitude_deg,
                    position.latitude_deg,
                    position.longitude_deg,
                )
                > trigger.update_distance_m
            )
            if moved or now_ns - event.last_update_ns >= trigger.update_interval_ns:
                where = position if position is not None else event.denm.event_position
                denm = self._denm(
                    trigger=trigger,
                    action=event.action,
                    now_ns=now_ns,
                    position=where,
                    heading_deg=heading_deg,
                    speed_mps=speed_mps,
                )
                if denm.reference_time_ms <= event.denm.reference_time_ms:
                    denm = replace(
                        denm,
                        reference_time_ms=event.denm.reference_time_ms + 1,
                        detection_time_ms=event.denm.reference_time_ms + 1,
                    )
                event.denm, event.last_update_ns, event.last_sent_ns = denm, now_ns, now_ns
                return [Outgoing(denm, name, "update")]
        if now_ns - event.last_sent_ns >= trigger.repetition_interval_ns:
            event.last_sent_ns = now_ns
            return [Outgoing(event.denm, name, "repetition")]
        return []
