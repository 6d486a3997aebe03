"""CAM generation rules (ETSI EN 302 637-2 v1.4.1 clause 6.1.3), pure and driven by time values.

A CAM is generated when at least ``min_interval_ns`` (T_GenCamMin 100 ms, or more: the
configurable ceiling on the rate that saves cellular data) has passed since the last one
and, compared with the last CAM sent,

* the heading changed by more than 4°, or
* the position moved more than 4 m, or
* the speed changed by more than 0.5 m/s;

or when ``max_interval_ns`` (T_GenCamMax, 1 s) has passed whatever the dynamics. The low
frequency container (vehicle role, exterior lights) goes with the first CAM and then at
most every 500 ms. Counters per reason are in :attr:`CamGenerator.reasons`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tcu.v2x.geo import angle_difference_deg, distance_m

__all__ = ["CamDecision", "CamGenerator", "CamRules", "Kinematics"]


@dataclass(frozen=True, slots=True)
class CamRules:
    """Thresholds of the generation rules; ``min_interval_ns`` is the rate ceiling (>= 100 ms)."""

    min_interval_ns: int = 100_000_000
    max_interval_ns: int = 1_000_000_000
    heading_deg: float = 4.0
    distance_m: float = 4.0
    speed_mps: float = 0.5
    low_frequency_interval_ns: int = 500_000_000

    def __post_init__(self) -> None:
        if self.min_interval_ns < 100_000_000:
            raise ValueError("the CAM interval cannot be below 100 ms (T_GenCamMin)")
        if not self.min_interval_ns <= self.max_interval_ns <= 1_000_000_000:
            raise ValueError("need 100 ms <= min interval <= max interval <= 1 s (T_GenCamMax)")


@dataclass(frozen=True, slots=True)
class Kinematics:
    """The vehicle state at ``time_ns`` (source time of the newest signal that went into it)."""

    time_ns: int
    latitude_deg: float
    longitude_deg: float
    heading_deg: float | None = None
    speed_mps: float | None = None


@dataclass(frozen=True, slots=True)
class CamDecision:
    """Send a CAM now: why (first, heading, position, speed, time) and with which containers."""

    reason: str
    include_low_frequency: bool


@dataclass(slots=True)
class CamGenerator:
    rules: CamRules = field(default_factory=CamRules)
    reasons: Counter[str] = field(default_factory=Counter)
    _last: Kinematics | None = None
    _last_low_ns: int | None = None

    def step(self, state: Kinematics) -> CamDecision | None:
        """Whether a CAM is due for ``state``; a returned decision counts as sent."""
        reason = self._reason(state)
        if reason is None:
            return None
        low = self._last_low_ns is None or (
            state.time_ns - self._last_low_ns >= self.rules.low_frequency_interval_ns
        )
        if low:
            self._last_low_ns = state.time_ns
        self._last = state
        self.reasons[reason] += 1
        return CamDecision(reason=reason, include_low_frequency=low)

    def _reason(self, state: Kinematics) -> str | None:  # noqa: PLR0911 - one return per rule
        last = self._last
        if last is None:
            return "first"
        elapsed = state.time_ns - last.time_ns
        if elapsed < self.rules.min_interval_ns:
            return None
        if (
            state.heading_deg is not None
            and last.heading_deg is not None
            and angle_difference_deg(state.heading_deg, last.heading_deg) > self.rules.heading_deg
        ):
            return "heading"
        moved = distance_m(last.latitude_deg, last.longitude_deg, state.latitude_deg, state.longitude_deg)
        if moved > self.rules.distance_m:
            return "position"
        if (
            state.speed_mps is not None
            and last.speed_mps is not None
            and abs(state.speed_mps - last.speed_mps) > self.rules.speed_mps
        ):
            return "speed"
        if elapsed >= self.rules.max_interval_ns:
            return "time"
        return None
