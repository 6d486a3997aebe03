"""The chaos schedule: which fault happens at which simulated second, drawn from a seed.

Faults are laid on the drive's simulated timeline one after another, in an
order shuffled by the seed, with a random gap of ``gap_s`` (uniform in
``[min_gap_s, max_gap_s]``) before each: agent kills (SIGKILL), ingest restarts
(SIGTERM or SIGKILL, drawn), stream cut-offs and offline periods (the total
``offline_s`` split into ``offline_periods`` random lengths, each at least half
the mean). A kill drawn right after an offline period is moved, with
probability one half, into the middle of that period, so that agents are also
killed while their spool holds a backlog. Two phases take their place in the
shuffle too: a *disk-full* phase (``disk_full_s`` long: the agent's spool
filesystem is shrunk to what it holds plus a margin and the link is down, so the
spool fills) and a *spool-damage* phase (``damage_s`` of link down to build a
backlog, then the agent is killed, its spool damaged, ``variant`` ``"record"``
or ``"state"`` in turn, and a new agent started). The drive lasts until
``tail_s`` after the last fault. Same arguments, same schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["DAMAGE_VARIANTS", "Fault", "Schedule", "make_schedule"]

FaultKind = Literal["kill", "ingest_term", "ingest_kill", "cutoff", "offline", "disk_full", "damage"]
DAMAGE_VARIANTS = ("record", "state")


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float  # simulated seconds after the start of the drive
    kind: FaultKind
    duration_s: float = 0.0  # offline periods and phases
    variant: str = ""  # damage phases: "record" or "state"


@dataclass(frozen=True, slots=True)
class Schedule:
    faults: tuple[Fault, ...]
    duration_s: float

    def count(self, *kinds: FaultKind) -> int:
        return sum(1 for f in self.faults if f.kind in kinds)

    @property
    def offline_s(self) -> float:
        return sum(f.duration_s for f in self.faults if f.kind == "offline")


def _split(rng: random.Random, total_s: float, parts: int) -> list[float]:
    """``parts`` random lengths summing to ``total_s``, each at least half the mean."""
    if parts <= 0 or total_s <= 0:
        return []
    mean = total_s / parts
    weights = [rng.random() for _ in range(parts)]
    scale = sum(weights) or 1.0
    return [mean / 2 + (total_s / 2) * w / scale for w in weights]


def make_schedule(
    *,
    seed: int,
    kills: int,
    ingest_restarts: int,
    cutoffs: int,
    offline_s: float,
    offline_periods: int,
    lead_s: float = 10.0,
    min_gap_s: float = 5.0,
    max_gap_s: float = 15.0,
    tail_s: float = 60.0,
    disk_fulls: int = 0,
    disk_full_s: float = 120.0,
    damages: int = 0,
    damage_s: float = 40.0,
) -> Schedule:
    if min(kills, ingest_restarts, cutoffs, offline_periods, disk_fulls, damages) < 0 or offline_s < 0:
        raise ValueError("counts and offline_s must not be negative")
    if offline_s > 0 and offline_periods == 0:
        raise ValueError("offline_s > 0 needs at least one offline period")
    rng = random.Random(seed)
    kill: tuple[FaultKind, float] = ("kill", 0.0)
    cutoff: tuple[FaultKind, float] = ("cutoff", 0.0)
    items = [kill] * kills + [cutoff] * cutoffs
    restart_kinds: tuple[FaultKind, FaultKind] = ("ingest_term", "ingest_kill")
    items += [(rng.choice(restart_kinds), 0.0) for _ in range(ingest_restarts)]
    items += [("offline", d) for d in _split(rng, offline_s, offline_periods)]
    items += [("disk_full", disk_full_s)] * disk_fulls
    items += [("damage", damage_s)] * damages
    rng.shuffle(items)
    faults: list[Fault] = []
    t = lead_s
    previous: Fault | None = None
    n_damage = 0
    for kind, duration_s in items:
        if kind == "kill" and previous is not None and previous.kind == "offline" and rng.random() < 0.5:
            fault = Fault(previous.at_s + previous.duration_s / 2, "kill")
            faults.append(fault)
            previous = fault
            continue
        t += rng.uniform(min_gap_s, max_gap_s)
        variant = ""
        if kind == "damage":
            variant = DAMAGE_VARIANTS[n_damage % len(DAMAGE_VARIANTS)]
            n_damage += 1
        fault = Fault(round(t, 3), kind, round(duration_s, 3), variant)
        faults.append(fault)
        t += fault.duration_s
        previous = fault
    faults.sort(key=lambda f: f.at_s)
    return Schedule(tuple(faults), round(t + tail_s, 3))
