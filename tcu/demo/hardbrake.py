"""``tcu demo --scenario hard-brake``: a condition campaign captures every hard braking.

The simulator brakes hard (7.5 m/s²) at scripted times; the agent runs the
campaign "the 10 s before and 5 s after every deceleration beyond 6 m/s²"
beside the default periodic campaign. Afterwards the events the ingest holds
are compared with the simulator's ground truth: one event per braking (the
expected triggers are computed from the encoded acceleration with the
campaign's own rule: rising edge, minimum interval), and each event's window
must hold exactly the encoded samples of its signals in [trigger − 10 s,
trigger + 5 s]. The campaign also captures the raw frames of ``ESP_Speed``
(``raw_frames``): each event must carry exactly the frames of that id the
simulator sent in its window, same times and payloads (``frame_errors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.demo.scenario import Scenario, ScenarioContext, register
from tcu.demo.verify import load_ground_truth

__all__ = ["HardBrakeScenario"]

THRESHOLD_MPS2 = -6.0
PRE_MS, POST_MS, MIN_INTERVAL_MS = 10_000, 5_000, 5_000
CAPTURED = {
    "Vehicle.Speed": "ESP_Speed.VehicleSpeed",
    "Vehicle.Acceleration.Longitudinal": "ESP_Speed.LongitudinalAccel",
    "Vehicle.Chassis.Brake.PedalPosition": "VCU_Drive.BrakePedalPosition",
}

RAW_FRAME_ID = 0xA0  # ESP_Speed in sim/data/tcu_sim.dbc, every 20 ms

CAMPAIGNS = f"""\
# Written by tcu demo --scenario hard-brake.
[[campaign]]
name = "hard_braking"
version = 1
priority = 50
signals = {list(CAPTURED)!r}
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < {THRESHOLD_MPS2:g}"
trigger = "rising_edge"
min_trigger_interval_ms = {MIN_INTERVAL_MS}
pre_trigger_ms = {PRE_MS}
post_trigger_ms = {POST_MS}
raw_frames = [{{bus = "BUS", arbitration_id = {RAW_FRAME_ID:#x}}}]
""".replace("'", '"')


class HardBrakeScenario(Scenario):
    def __init__(self) -> None:
        super().__init__(
            name="hard-brake",
            duration_s=130.0,
            sim_args=["--hard-brake-at", "30", "--hard-brake-at", "70", "--hard-brake-at", "110"],
        )

    def agent_toml(self, workdir: Path, ready: dict[str, Any]) -> str:
        (workdir / "campaigns.toml").write_text(CAMPAIGNS.replace('"BUS"', f'"{ready["channel"]}"'))
        return f'\n[campaigns]\nfile = "{workdir / "campaigns.toml"}"\ndefault_periodic = true\n'

    async def summarize(self, ctx: ScenarioContext) -> dict[str, Any]:
        truth = load_ground_truth(ctx.done["ground_truth"])
        t_acc, v_acc = truth[CAPTURED["Vehicle.Acceleration.Longitudinal"]]
        expected = _triggers(t_acc, v_acc)
        events = await _fetch_events(ctx)
        resolution = {s.name: s.resolution for s in ctx.catalog.signals}
        by_trigger = {e.trigger_ns: e for e in events}
        window_errors = 0
        for trigger in expected:
            event = by_trigger.get(trigger)
            if event is None or not _window_ok(event, trigger, truth, resolution):
                window_errors += 1
                ctx.say(f"event at {trigger} missing or its window differs from the ground truth")
        unexpected = len(set(by_trigger) - set(expected))
        sent_t, sent_data = _sent_frames(ctx.done["ground_truth"], RAW_FRAME_ID)
        frame_errors = 0
        frames_captured = 0
        for event in events:
            frames_captured += sum(len(f.t_ns) for f in event.frames)
            if not _frames_ok(event, str(ctx.ready["channel"]), sent_t, sent_data):
                frame_errors += 1
                ctx.say(f"event at {event.trigger_ns}: raw frames differ from the frames the simulator sent")
        ctx.say(
            f"hard braking: {len(expected)} expected, {len(events)} captured,"
            f" {frames_captured} raw frames of 0x{RAW_FRAME_ID:X}"
        )
        return {
            "events_expected": len(expected),
            "events_captured": len(events),
            "events_unexpected": unexpected,
            "window_errors": window_errors,
            "frames_captured": frames_captured,
            "frame_errors": frame_errors,
        }

    def ok(self, extra: dict[str, Any]) -> bool:
        return bool(
            extra["events_expected"] == extra["events_captured"] > 0
            and extra["window_errors"] == 0
            and extra["events_unexpected"] == 0
            and extra["frame_errors"] == 0
        )


def _triggers(t_ns: np.ndarray, values: np.ndarray) -> list[int]:
    """Rising edges of ``value < threshold``, at least MIN_INTERVAL_MS apart (the campaign's rule)."""
    out: list[int] = []
    previous = False
    for t, v in zip(t_ns.tolist(), values.tolist(), strict=True):
        now = v < THRESHOLD_MPS2
        if now and not previous and (not out or t - out[-1] >= MIN_INTERVAL_MS * 1_000_000):
            out.append(int(t))
        previous = now
    return out


def _window_ok(event: Any, trigger: int, truth: Any, resolution: dict[str, float]) -> bool:
    start, end = trigger - PRE_MS * 1_000_000, trigger + POST_MS * 1_000_000
    if (event.start_ns, event.end_ns) != (start, end) or event.truncated:
        return False
    series = {s.name: s for s in event.series}
    for name, key in CAPTURED.items():
        t, v = truth[key]
        inside = (t >= start) & (t <= end)
        got = series.get(name)
        if got is None or list(got.t_ns) != t[inside].tolist():
            return False
        tolerance = max(resolution.get(name, 0.0), 1e-9)
        if not np.all(np.abs(np.array(got.double_values) - v[inside]) <= tolerance):
            return False
    return True


def _sent_frames(path: str | Path, arbitration_id: int) -> tuple[np.ndarray, list[bytes]]:
    """Times (ns) and payloads of the frames of one id the simulator sent (its ground-truth file)."""
    with np.load(path, allow_pickle=False) as npz:
        rows = np.flatnonzero(npz["frame_arbitration_id"] == arbitration_id)
        rows = rows[np.argsort(npz["frame_t_us"][rows], kind="stable")]
        t_ns = npz["frame_t_us"][rows].astype(np.int64) * 1000
        dlc, data = npz["frame_dlc"][rows], npz["frame_data"][rows]
    return t_ns, [bytes(row[:n]) for row, n in zip(data, dlc.tolist(), strict=True)]


def _frames_ok(event: Any, bus: str, sent_t: np.ndarray, sent_data: list[bytes]) -> bool:
    """The event carries exactly the frames of RAW_FRAME_ID sent in [start_ns, end_ns], nothing else."""
    lo = int(np.searchsorted(sent_t, event.start_ns, side="left"))
    hi = int(np.searchsorted(sent_t, event.end_ns, side="right"))
    if [(f.bus, f.arbitration_id, f.dropped) for f in event.frames] != [(bus, RAW_FRAME_ID, 0)]:
        return False
    (frames,) = event.frames
    return hi > lo and list(frames.t_ns) == sent_t[lo:hi].tolist() and list(frames.data) == sent_data[lo:hi]


async def _fetch_events(ctx: ScenarioContext) -> list[Any]:
    events: list[Any] = []
    async with ctx.channel() as channel:
        request = fleet_pb.QueryRequest(vehicle_id=ctx.vehicle_id, include_events=True)
        async for update in fleet_grpc.FleetStub(channel).Query(request):
            events.extend(update.events)
    return events


register("hard-brake", HardBrakeScenario)
