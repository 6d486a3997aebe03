"""One hand-off per tick for all buses, and frames dropped at a full bus buffer reported as DataLoss."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import uuid
from pathlib import Path

import can
import grpc
from agent_helpers import agent_config, wait_until

from tcu.agent import Agent
from tcu.agent.metrics import agent_snapshot
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.config import BusConfig
from tcu.frames import FrameBatch
from tcu.ingest import IngestServer


def _send(channel: str, n: int, arbitration_id: int = 256) -> None:
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        for i in range(n):
            sender.send(
                can.Message(arbitration_id=arbitration_id, is_extended_id=False, data=bytes([i % 256]) * 8)
            )
    finally:
        sender.shutdown()


async def test_frames_of_all_buses_reach_the_pipeline_in_one_batch_per_tick(
    ingest: IngestServer, small_dbc: Path, small_mapping: Path
) -> None:
    channels = [f"tick-a-{uuid.uuid4().hex}", f"tick-b-{uuid.uuid4().hex}"]
    config = agent_config(channels[0], ingest.bound_port, small_dbc, small_mapping)
    config = dataclasses.replace(
        config,
        buses=(config.buses[0], BusConfig(name="can1", interface="virtual", channel=channels[1], dbc=())),
        tick_ms=300,
    )
    agent = Agent(config)
    fed: list[FrameBatch] = []
    feed = agent.pipeline.feed

    async def recording_feed(frames: FrameBatch) -> None:
        fed.append(frames)
        await feed(frames)

    agent.pipeline.feed = recording_feed  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_until(lambda: all(r.opened for r in agent.readers))
        _send(channels[0], 20)
        _send(channels[1], 30, arbitration_id=0x555)
        await wait_until(lambda: sum(len(b) for b in fed) >= 50)
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 20)
    assert all(b.channels == ("can0", "can1") for b in fed)
    both = [b for b in fed if set(b.channel.tolist()) == {0, 1}]
    assert both, "no tick carried both buses' frames"
    assert len(fed) <= stats.ticks  # at most one hand-off per tick, whatever the number of buses
    assert stats.frames == 50 and agent.pipeline.stats.frames == 50
    assert agent.decoder.counts.decoded == 20  # can0 Dyn frames; can1 has no DBC
    assert agent.decoder.counts.unknown == 30 and agent.decoder.counts.unknown_ids == {("can1", 0x555)}
    assert stats.frames_dropped_overflow == 0


async def test_a_full_bus_buffer_drops_counted_frames_and_reports_a_data_loss(
    ingest: IngestServer, small_dbc: Path, small_mapping: Path, tmp_path: Path
) -> None:
    """The loss is caused on purpose: a 5-frame buffer and a 1 s tick against a burst of 300 frames."""
    channel = f"tick-overflow-{uuid.uuid4().hex}"
    config = agent_config(channel, ingest.bound_port, small_dbc, small_mapping)
    config = dataclasses.replace(config, tick_ms=1000, frame_buffer_frames=5, reader_batch_frames=2)
    agent = Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await wait_until(lambda: all(r.opened for r in agent.readers))
        await asyncio.sleep(1.1)  # just after a tick: the burst lands in one tick's buffer
        _send(channel, 300)
        await wait_until(lambda: agent.stats().frames >= 300)
        await wait_until(lambda: agent.uplink.stats.batches_acked >= 2, timeout_s=20)
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 20)
    dropped = stats.frames_dropped_overflow
    assert 0 < dropped <= 296
    assert agent.readers[0].stats.overflow_frames == dropped
    assert agent.pipeline.stats.frames == 300 - dropped  # what was not dropped was decoded
    family = next(f for f in agent_snapshot(agent) if f.name == "tcu_agent_frames_dropped")
    assert (("can0", "buffer"), float(dropped)) in family.samples
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.bound_port}") as ch:
        info = (await fleet_grpc.FleetStub(ch).ListVehicles(fleet_pb.ListVehiclesRequest())).vehicles[0]
    assert info.lost_batches >= 1
    with sqlite3.connect(tmp_path / "ingest.sqlite") as conn:  # the ingest fixture's database
        reasons = [
            r for (r,) in conn.execute("SELECT loss_reason FROM batches WHERE loss_reason IS NOT NULL")
        ]
    assert reasons and all(r.startswith("frames-overflow: ") for r in reasons)
    assert sum(int(r.split()[1]) for r in reasons) == dropped
    assert all("can0 " in r for r in reasons)
