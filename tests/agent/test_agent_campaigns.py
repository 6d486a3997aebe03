"""Condition campaigns in the agent: events with exact pre/post windows, beside the periodic campaign."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path

import can
import numpy as np
from agent_helpers import START_NS, agent_config, drive

from tcu.agent import Agent
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.config import CampaignSettings
from tcu.signals.dbc import load_dbc

CAMPAIGNS = """
[[campaign]]
name = "hard_braking"
version = 2
priority = 40
signals = ["Vehicle.Speed", "Vehicle.Acceleration.Longitudinal"]
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < -6"
pre_trigger_ms = 300
post_trigger_ms = 200
min_trigger_interval_ms = 1000
"""


def _frames(db: object) -> tuple[list[can.Message], list[int], list[tuple[int, float, float]]]:
    """4 s of Dyn frames every 10 ms with two hard-braking episodes; returns frames, triggers, truth."""
    msg = db.get_message_by_name("Dyn")  # type: ignore[attr-defined]
    frames, triggers, truth = [], [], []
    braking_prev = False
    for i in range(400):
        t_ns = START_NS + i * 10_000_000
        braking = 100 <= i < 130 or 250 <= i < 280
        accel = -7.5 if braking else 0.3
        speed = 80.0 - (i % 100) * 0.1
        data = msg.encode({"Speed": speed, "Accel": accel, "Gear": 4})
        decoded = msg.decode(data, decode_choices=False)
        frames.append(
            can.Message(timestamp=t_ns / 1e9, arbitration_id=msg.frame_id, is_extended_id=False, data=data)
        )
        truth.append((t_ns, float(decoded["Speed"]), float(decoded["Accel"])))
        if braking and not braking_prev:
            triggers.append(t_ns)
        braking_prev = braking
    return frames, triggers, truth


async def test_each_braking_gives_one_event_with_exact_windows(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    campaigns = tmp_path / "campaigns.toml"
    campaigns.write_text(CAMPAIGNS)
    channel = f"tcu-test-{uuid.uuid4().hex}"
    config = dataclasses.replace(
        agent_config(channel, 1, small_dbc, small_mapping),  # nothing listens: batches stay in the outbox
        campaigns=CampaignSettings(file=campaigns),
    )
    config = dataclasses.replace(config, uplink=dataclasses.replace(config.uplink, drain_timeout_s=0.2))
    agent = Agent(config)
    frames, triggers, truth = _frames(load_dbc(small_dbc))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await drive(agent, channel, frames)
    stop.set()
    final = await asyncio.wait_for(task, 30)

    events, periodic_speed = [], 0
    for _seq, payload in agent.outbox.pending():
        batch = telemetry_pb.TelemetryBatch.FromString(payload)
        events.extend(batch.events)
        for c in batch.columns:
            if c.signal_id == agent.catalog.by_name()["Vehicle.Speed"].signal_id:
                periodic_speed += len(c.t_offset_ns)
    assert final.events_captured == 2
    assert [e.trigger_ns for e in events] == triggers
    ids = agent.catalog.by_name()
    for event in events:
        assert (event.campaign, event.campaign_version) == ("hard_braking", 2)
        assert event.start_ns == event.trigger_ns - 300_000_000
        assert event.end_ns == event.trigger_ns + 200_000_000
        assert not event.truncated
        expected = [(t, s, a) for t, s, a in truth if event.start_ns <= t <= event.end_ns]
        cols = {c.signal_id: c for c in event.columns}
        speed = cols[ids["Vehicle.Speed"].signal_id]
        accel = cols[ids["Vehicle.Acceleration.Longitudinal"].signal_id]
        assert [event.start_ns + o for o in speed.t_offset_ns] == [t for t, _, _ in expected]
        assert np.allclose(list(speed.double_values), [s for _, s, _ in expected])
        assert np.allclose(list(accel.double_values), [a for _, _, a in expected])
    # The default periodic campaign ran beside it: one speed sample per 100 ms window.
    assert periodic_speed == 40
