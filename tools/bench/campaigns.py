"""Benchmark the campaign engine: CPU time per second of simulated CAN traffic.

Synthetic, fixed seed, no DBC: 200 messages with 4 signals each (800 signals) at
100 Hz (120 messages), 50 Hz (40) and 10 Hz (40): 14,400 frames/s, 57,600
samples/s. Values are random walks. The traffic is cut into 20 ms batches shaped
like :class:`tcu.signals.SignalDecoder` output (one column per signal per message,
the 4 signals of a message sharing their frame times), all built before timing.

The campaign set: 50 periodic campaigns of 10 random signals each (periods 100 ms,
1 s, 10 s or 60 s) and 30 condition campaigns (5 captured signals, pre-trigger 5 s,
post-trigger 2 s, min trigger interval 1 s) whose expressions cycle through five
shapes: a two-signal threshold, ``avg(sig, 2s)``, ``max - min`` over 500 ms,
``changed(sig)`` and ``abs(a - b)`` with ``is_null``.

Timed: only the ``engine.process(columns)`` calls, with ``time.process_time()`` (CPU
of this process) and ``time.perf_counter()`` (wall).

    .venv/bin/python tools/bench/campaigns.py --json                # 60 s of traffic
    .venv/bin/python tools/bench/campaigns.py --seconds 10 --json   # quick look

The last line printed is JSON: ``cpu_s_per_sim_s`` (CPU seconds the engine needs
per second of traffic; below 1 means it keeps up on one core) and the counts.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import numpy.typing as npt

from tcu.collect.campaign import parse_campaigns
from tcu.collect.engine import CampaignEngine
from tcu.signals.decoder import SignalColumns
from tcu.signals.mapping import Catalog, SignalSpec

MS = 1_000_000
SIGNALS_PER_MESSAGE = 4
MESSAGE_RATES_HZ = [100.0] * 120 + [50.0] * 40 + [10.0] * 40
BATCH_MS = 20


def build_catalog() -> tuple[Catalog, dict[int, float]]:
    specs: list[SignalSpec] = []
    rates: dict[int, float] = {}
    for m, rate in enumerate(MESSAGE_RATES_HZ):
        for k in range(SIGNALS_PER_MESSAGE):
            sid = len(specs) + 1
            specs.append(SignalSpec(sid, f"Vehicle.Bench.M{m}.S{k}", "", "can0", f"M{m}", f"S{k}", 100, 0.01))
            rates[sid] = rate
    return Catalog(tuple(specs), "bench"), rates


def build_batches(seconds: float, seed: int) -> tuple[list[SignalColumns], int, int]:
    rng = np.random.default_rng(seed)
    duration_ns = int(seconds * 1e9)
    per_message: list[tuple[npt.NDArray[np.int64], list[npt.NDArray[np.float64]]]] = []
    frames = 0
    for rate in MESSAGE_RATES_HZ:
        period_ns = int(1e9 / rate)
        t = np.arange(int(rng.integers(0, period_ns)), duration_ns, period_ns, dtype=np.int64)
        t += rng.integers(0, 200_000, len(t))  # up to 0.2 ms jitter, still increasing
        frames += len(t)
        values = [
            np.asarray(np.round(np.cumsum(rng.normal(0, 0.3, len(t))), 2), np.float64)
            for _ in range(SIGNALS_PER_MESSAGE)
        ]
        per_message.append((t, values))
    batch_ns = BATCH_MS * MS
    n_batches = -(-duration_ns // batch_ns)
    batches: list[SignalColumns] = [[] for _ in range(n_batches)]
    samples = 0
    for m, (t, values) in enumerate(per_message):
        cuts = np.searchsorted(t, np.arange(0, (n_batches + 1) * batch_ns, batch_ns))
        for b in range(n_batches):
            lo, hi = int(cuts[b]), int(cuts[b + 1])
            if hi > lo:
                for k in range(SIGNALS_PER_MESSAGE):
                    batches[b].append((m * SIGNALS_PER_MESSAGE + k + 1, t[lo:hi], values[k][lo:hi]))
                    samples += hi - lo
    return batches, frames, samples


def build_campaigns(catalog: Catalog, seed: int) -> str:
    rng = np.random.default_rng(seed + 1)
    names = [s.name for s in catalog.signals]

    def pick(n: int) -> list[str]:
        return [names[i] for i in rng.choice(len(names), n, replace=False)]

    parts: list[str] = []
    for i in range(50):
        period = [100, 1000, 10_000, 60_000][i % 4]
        parts.append(
            f'[[campaign]]\nname = "periodic_{i}"\nversion = 1\npriority = {i % 5}\n'
            f"signals = {json.dumps(pick(10))}\nperiodic = {{period_ms = {period}}}\n"
        )
    for i in range(30):
        a, b = pick(2)
        expression = [
            f"{a} < -3 and {b} > 2",
            f"avg({a}, 2s) > 4",
            f"max({a}, 500ms) - min({a}, 500ms) > 1.5",
            f"changed({a}) and {b} > 0",
            f"not is_null({b}) and abs({a} - {b}) > 8",
        ][i % 5]
        parts.append(
            f'[[campaign]]\nname = "condition_{i}"\nversion = 1\npriority = 10\n'
            f"signals = {json.dumps(pick(5))}\n[campaign.condition]\n"
            f'expression = "{expression}"\nmin_trigger_interval_ms = 1000\n'
            "pre_trigger_ms = 5000\npost_trigger_ms = 2000\n"
        )
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated traffic (default 60 s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the JSON result line last")
    args = parser.parse_args()

    catalog, rates = build_catalog()
    batches, frames, samples = build_batches(args.seconds, args.seed)
    campaigns = parse_campaigns(build_campaigns(catalog, args.seed), path="<bench>")
    engine = CampaignEngine(campaigns, catalog, rates, 64 * 1024 * 1024)

    events = 0
    kept = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for columns in batches:
        out = engine.process(columns)
        events += len(out.events)
        kept += sum(len(t) for _, t, _ in out.samples)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    events += len(engine.flush())

    result = {
        "bench": "campaigns",
        "simulated_s": args.seconds,
        "frames_per_s": round(frames / args.seconds),
        "samples_per_s": round(samples / args.seconds),
        "batches": len(batches),
        "batch_ms": BATCH_MS,
        "periodic_campaigns": 50,
        "condition_campaigns": 30,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "cpu_s_per_sim_s": round(cpu / args.seconds, 4),
        "us_per_batch": round(cpu / len(batches) * 1e6, 1),
        "evaluations": engine.stats.evaluations,
        "events": events,
        "samples_kept": kept,
        "buffer_bytes": engine.buffer_plan.total_bytes,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if not args.json:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
