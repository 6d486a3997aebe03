"""What a receiving vehicle does with DENMs: dedup, updates, cancellations, expiry, relevance.

Pure and driven by time (ITS milliseconds, :func:`~tcu.v2x.messages.its_time_ms`).
:meth:`DenmReceiver.receive` returns a :class:`WarningChange` or None and counts every outcome
in :attr:`DenmReceiver.counters` (one key per reason; nothing is dropped without a count):

``own``            the vehicle's own message (station id or originating station is ours)
``duplicate``      same actionId and referenceTime as the one held (a repetition)
``stale``          an older referenceTime than the one held (out of order)
``expired``        detectionTime + validity is already past on arrival
``future``         referenceTime more than ``max_future_ms`` ahead of our clock
``not_relevant``   too far (beyond its relevance distance), behind the vehicle, or on the other
                   carriageway (event heading not within ``same_direction_deg`` of ours)
``cancel_unknown`` a termination for an event this vehicle never accepted
``after_end``      a copy of an event that arrives after its termination (a delayed retry); the
                   termination's own repetitions count as ``duplicate``
``evicted``        the table of held events was full; the one expiring first was dropped
``accepted`` / ``updated`` / ``cancelled`` / ``expired_held``   changes reported to the caller

Relevance: the event must be within its relevance distance (``default_relevance_m`` when the
DENM has none) and, when the vehicle's heading is known, *ahead*: the bearing from the vehicle
to the event within ±``ahead_deg`` of the heading. When both headings are known and the
DENM's relevance traffic direction is not ``allTrafficDirections``, the event's heading must be
within ``same_direction_deg`` of ours (``oppositeTraffic``: of the opposite direction), which
excludes the other carriageway. An update or cancellation of an accepted event is always
delivered (the vehicle was told, so it must hear the end).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tcu.v2x.geo import angle_difference_deg, bearing_deg, distance_m
from tcu.v2x.messages import ActionId, Denm

__all__ = ["DenmReceiver", "OwnState", "ReceiverConfig", "WarningChange"]


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    own_station_id: int
    ahead_deg: float = 60.0
    same_direction_deg: float = 60.0
    default_relevance_m: float = 1000.0
    max_future_ms: int = 10_000
    max_events: int = 4096


@dataclass(frozen=True, slots=True)
class OwnState:
    """The receiving vehicle's position and heading (None when unknown: it has not moved yet)."""

    latitude_deg: float
    longitude_deg: float
    heading_deg: float | None = None


@dataclass(frozen=True, slots=True)
class WarningChange:
    """A change the vehicle is told about: ``kind`` is accepted, updated, cancelled or expired."""

    kind: str
    denm: Denm
    distance_m: float | None = None


@dataclass(slots=True)
class DenmReceiver:
    config: ReceiverConfig
    counters: Counter[str] = field(default_factory=Counter)
    _held: dict[ActionId, Denm] = field(default_factory=dict)
    _ended: dict[ActionId, tuple[int, int]] = field(default_factory=dict)
    """Terminated events: actionId → (referenceTime of the termination, ITS ms to forget it)."""

    @property
    def held(self) -> dict[ActionId, Denm]:
        """The events currently accepted (not cancelled, not expired)."""
        return dict(self._held)

    def _relevant(self, denm: Denm, own: OwnState | None) -> tuple[bool, float | None]:
        if own is None:
            return False, None
        ev = denm.event_position
        dist = distance_m(own.latitude_deg, own.longitude_deg, ev.latitude_deg, ev.longitude_deg)
        limit = (
            denm.relevance_distance_m
            if denm.relevance_distance_m is not None
            else (self.config.default_relevance_m)
        )
        if dist > limit:
            return False, dist
        if own.heading_deg is not None:
            bearing = bearing_deg(own.latitude_deg, own.longitude_deg, ev.latitude_deg, ev.longitude_deg)
            if dist > 1.0 and angle_difference_deg(bearing, own.heading_deg) > self.config.ahead_deg:
                return False, dist
            direction = denm.relevance_traffic_direction
            if denm.event_heading_deg is not None and direction != "allTrafficDirections":
                diff = angle_difference_deg(denm.event_heading_deg, own.heading_deg)
                if direction == "oppositeTraffic":
                    diff = 180.0 - diff
                if diff > self.config.same_direction_deg:
                    return False, dist
        return True, dist

    def receive(  # noqa: PLR0911 - one return per outcome
        self, denm: Denm, now_ms: int, own: OwnState | None
    ) -> WarningChange | None:
        """Handle one received DENM at ITS time ``now_ms``; returns what changed for the vehicle."""
        me = self.config.own_station_id
        if me in (denm.station_id, denm.action_id.station_id):
            self.counters["own"] += 1
            return None
        if denm.reference_time_ms > now_ms + self.config.max_future_ms:
            self.counters["future"] += 1
            return None
        ended = self._ended.get(denm.action_id)
        if ended is not None and denm.reference_time_ms <= ended[0]:
            # A copy that was delayed past the end of its event (or the end's own repetition).
            self.counters["duplicate" if denm.reference_time_ms == ended[0] else "after_end"] += 1
            return None
        held = self._held.get(denm.action_id)
        if held is not None:
            if denm.reference_time_ms == held.reference_time_ms:
                self.counters["duplicate"] += 1
                return None
            if denm.reference_time_ms < held.reference_time_ms:
                self.counters["stale"] += 1
                return None
            if denm.termination is not None:
                del self._held[denm.action_id]
                self._remember_end(denm, held)
                self.counters["cancelled"] += 1
                return WarningChange("cancelled", denm)
        if denm.termination is not None:
            self.counters["cancel_unknown"] += 1
            return None
        if denm.expires_at_ms <= now_ms:
            self.counters["expired"] += 1
            return None
        if held is not None:
            self._held[denm.action_id] = denm
            self.counters["updated"] += 1
            _, dist = self._relevant(denm, own)
            return WarningChange("updated", denm, dist)
        relevant, dist = self._relevant(denm, own)
        if not relevant:
            self.counters["not_relevant"] += 1
            return None
        if len(self._held) >= self.config.max_events:
            first = min(self._held.values(), key=lambda d: d.expires_at_ms)
            del self._held[first.action_id]
            self.counters["evicted"] += 1
        self._held[denm.action_id] = denm
        self.counters["accepted"] += 1
        return WarningChange("accepted", denm, dist)

    def _remember_end(self, termination: Denm, held: Denm) -> None:
        forget_at = max(held.expires_at_ms, termination.expires_at_ms)
        self._ended[termination.action_id] = (termination.reference_time_ms, forget_at)
        while len(self._ended) > self.config.max_events:
            del self._ended[next(iter(self._ended))]  # the oldest end first (insertion order)

    def expire(self, now_ms: int) -> list[WarningChange]:
        """Drop held events whose validity has run out; each becomes an ``expired`` change."""
        for action in [a for a, (_, forget_at) in self._ended.items() if forget_at <= now_ms]:
            del self._ended[action]
        gone = [d for d in self._held.values() if d.expires_at_ms <= now_ms]
        for denm in gone:
            del self._held[denm.action_id]
            self.counters["expired_held"] += 1
        return [WarningChange("expired", d) for d in gone]
