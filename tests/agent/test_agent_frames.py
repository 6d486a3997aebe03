"""Raw CAN frames of condition captures: agent encode → real ingest on loopback → Subscribe and Query."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import can
import grpc
import numpy as np
import pytest
from agent_helpers import START_NS, agent_config, drive, wait_until

from tcu.agent import Agent
from tcu.agent.campaigns import encode_frames
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.cli.watch import format_update
from tcu.collect.engine import CapturedFrames
from tcu.config import CampaignSettings
from tcu.ingest import IngestServer
from tcu.signals.dbc import load_dbc

PRE_MS, POST_MS = 300, 200
DYN, MUX, SILENT = 0x100, 0x200, 0x300
CAMPAIGNS = f"""
[[campaign]]
name = "hard_braking"
version = 3
signals = ["Vehicle.Speed"]
[campaign.condition]
expression = "Vehicle.Acceleration.Longitudinal < -6"
pre_trigger_ms = {PRE_MS}
post_trigger_ms = {POST_MS}
min_trigger_interval_ms = 1000
raw_frames = [{{bus = "can0", arbitration_id = {DYN:#x}}}, {{bus = "can0", arbitration_id = {MUX:#x}}},
              {{bus = "can0", arbitration_id = {SILENT:#x}}}]
"""


def _drive_frames(db: Any) -> tuple[list[can.Message], list[int]]:
    """4 s of Dyn every 10 ms (two hard-braking episodes) and Mux every 50 ms; returns frames, triggers."""
    dyn, mux = db.get_message_by_name("Dyn"), db.get_message_by_name("Mux")
    frames, triggers = [], []
    for i in range(400):
        t_us = START_NS // 1000 + i * 10_000 + 137
        braking = 100 <= i < 130 or 250 <= i < 280
        if i in (100, 250):
            triggers.append(t_us * 1000)
        data = dyn.encode({"Speed": 80.0 - i * 0.1, "Accel": -7.5 if braking else 0.3, "Gear": i % 7})
        frames.append(can.Message(timestamp=t_us / 1e6, arbitration_id=DYN, is_extended_id=False, data=data))
        if i % 5 == 2:
            sel = (i // 5) % 2
            data = mux.encode({"Sel": sel, "PressFL" if sel == 0 else "PressFR": 200 + 2 * (i % 20)})
            frames.append(
                can.Message(timestamp=(t_us + 500) / 1e6, arbitration_id=MUX, is_extended_id=False, data=data)
            )
    return frames, triggers


def _frames_of(event: fleet_pb.Event) -> dict[int, tuple[list[int], list[bytes], int]]:
    assert all(f.bus == "can0" for f in event.frames)
    return {f.arbitration_id: (list(f.t_ns), list(f.data), f.dropped) for f in event.frames}


@pytest.fixture
def frames_dbc(tmp_path: Path, small_dbc: Path) -> Path:
    """The small DBC, plus a cycle time for Mux (frame rings are sized from it) and a message never sent."""
    dbc = tmp_path / "frames.dbc"
    dbc.write_text(
        small_dbc.read_text()
        + f'BA_ "GenMsgCycleTime" BO_ {MUX} 50;\n'
        + f'\nBO_ {SILENT} Silent: 1 ECU\n SG_ Flag : 0|1@1+ (1,0) [0|1] "" TCU\n'
        + f'BA_ "GenMsgCycleTime" BO_ {SILENT} 100;\n'
    )
    return dbc


async def test_event_frames_reach_subscribe_and_query_unchanged(
    ingest: IngestServer, tmp_path: Path, frames_dbc: Path, small_mapping: Path
) -> None:
    campaigns = tmp_path / "campaigns.toml"
    campaigns.write_text(CAMPAIGNS)
    bus_channel = f"tcu-test-{uuid.uuid4().hex}"
    config = dataclasses.replace(
        agent_config(bus_channel, ingest.bound_port, frames_dbc, small_mapping),
        campaigns=CampaignSettings(file=campaigns),
    )
    frames, triggers = _drive_frames(load_dbc(frames_dbc))
    sent: dict[int, list[tuple[int, bytes]]] = {}
    for m in frames:
        sent.setdefault(m.arbitration_id, []).append((round(m.timestamp * 1e6) * 1000, bytes(m.data)))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.bound_port}") as channel:
        fleet = fleet_grpc.FleetStub(channel)
        # A filtered subscriber gets an event with a wanted column, with all of its frames.
        live = fleet.Subscribe(fleet_pb.SubscribeRequest(signals=["Vehicle.Speed"]))
        await wait_until(lambda: len(ingest.hub) == 1)
        agent = Agent(config)
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await drive(agent, bus_channel, frames)
        stop.set()
        final = await asyncio.wait_for(task, 30)
        assert final.events_captured == 2 and final.batches_unacked == 0

        live_events: list[fleet_pb.Event] = []
        printed: list[str] = []
        while len(live_events) < 2:
            update = await asyncio.wait_for(live.read(), 10)
            live_events.extend(update.events)
            if update.events:
                printed.append(format_update(update))  # as `tcu watch` prints it
        live.cancel()
        queried = [
            e
            async for u in fleet.Query(
                fleet_pb.QueryRequest(vehicle_id=config.vehicle_id, include_events=True)
            )
            for e in u.events
        ]

    assert [e.trigger_ns for e in live_events] == [e.trigger_ns for e in queried] == triggers
    for live_event, stored_event in zip(live_events, queried, strict=True):
        start, end = live_event.trigger_ns - PRE_MS * 1_000_000, live_event.trigger_ns + POST_MS * 1_000_000
        assert (live_event.start_ns, live_event.end_ns) == (start, end)
        expected = {
            arb: (
                [t for t, _ in sent.get(arb, []) if start <= t <= end],
                [d for t, d in sent.get(arb, []) if start <= t <= end],
                0,
            )
            for arb in (DYN, MUX, SILENT)
        }
        assert len(expected[DYN][0]) == 51 and len(expected[MUX][0]) == 10 and expected[SILENT] == ([], [], 0)
        assert _frames_of(live_event) == expected
        assert _frames_of(stored_event) == expected
    assert len(printed) == 2
    for line in printed:  # 51 Dyn + 10 Mux frames
        assert " event hard_braking v3 at " in line and line.endswith(": 1 signals, 61 raw frames")


def _captured(n: int, arb: int, t0: int, step: int, size: int = 8) -> CapturedFrames:
    t = np.arange(n, dtype=np.int64) * step + t0
    return CapturedFrames("can0", arb, t, tuple(bytes([i % 256]) * size for i in range(n)))


def test_encode_keeps_the_earliest_frames_and_counts_the_rest() -> None:
    a = _captured(10, 0x10, 1_000, 10)  # 1000, 1010, ..., 1090
    b = _captured(10, 0x20, 1_005, 10, size=64)  # 1005, 1015, ..., 1095
    event = telemetry_pb.CapturedEvent(start_ns=1_000, end_ns=2_000)
    assert encode_frames(event, [a, b], 1_000) == 0
    assert [list(f.t_offset_ns) for f in event.frames] == [list(range(0, 100, 10)), list(range(5, 100, 10))]
    assert [list(f.data) for f in event.frames] == [list(a.data), list(b.data)]

    by_count = telemetry_pb.CapturedEvent(start_ns=1_000, end_ns=2_000)
    assert encode_frames(by_count, [a, b], 1_000, max_frames=7) == 13
    assert [(len(f.t_offset_ns), len(f.data), f.dropped) for f in by_count.frames] == [(4, 4, 6), (3, 3, 7)]
    assert list(by_count.frames[1].t_offset_ns) == [5, 15, 25]  # the earliest of all ids by time

    # 64-byte payloads cost 77 bytes, 8-byte ones 21: 21 + 77 + 21 + 77 = 196 <= 200 < 217.
    by_bytes = telemetry_pb.CapturedEvent(start_ns=1_000, end_ns=2_000)
    assert encode_frames(by_bytes, [a, b], 1_000, max_bytes=200) == 16
    assert [f.dropped for f in by_bytes.frames] == [8, 8]
    assert len(by_bytes.SerializeToString()) < 400
