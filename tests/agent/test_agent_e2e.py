"""The agent in-process on a python-can virtual bus, uploading to a real ingest on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path

import can
import grpc
import pytest
from agent_helpers import START_NS, agent_config, drive, make_frames, stored_series, wait_until

from tcu.agent import Agent
from tcu.cli.watch import watch
from tcu.demo.verify import expected_samples, verify_store
from tcu.ingest import IngestConfig, IngestServer
from tcu.signals.dbc import load_dbc


async def test_stored_values_equal_ground_truth_with_source_timestamps(
    ingest: IngestServer, small_dbc: Path, small_mapping: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = load_dbc(small_dbc)
    frames, truth = make_frames(db, seconds=3.0)
    channel = f"tcu-test-{uuid.uuid4().hex}"
    agent = Agent(agent_config(channel, ingest.bound_port, small_dbc, small_mapping))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    # An OEM backend watching the live stream, as `tcu watch` does.
    target = f"127.0.0.1:{ingest.bound_port}"
    watcher = asyncio.create_task(watch(grpc.aio.insecure_channel(target), target, [], ["Vehicle.Speed"], 1))
    await wait_until(lambda: agent.uplink.stats.connected)
    await drive(agent, channel, frames)
    stop.set()
    final = await asyncio.wait_for(task, 30)
    assert await asyncio.wait_for(watcher, 10) == 1
    printed = capsys.readouterr().out
    assert "WTCUTEST000000001" in printed and "Vehicle.Speed=" in printed
    assert "Vehicle.TraveledDistance" not in printed  # filtered out

    stored = await stored_series(ingest.bound_port, "WTCUTEST000000001")
    expected = expected_samples(truth, agent.catalog)
    result = verify_store(expected, stored, agent.catalog)
    assert final.frames == len(frames)
    assert final.batches_unacked == 0
    assert result.samples_expected > 0
    assert (result.samples_lost, result.samples_unexpected, result.value_errors) == (0, 0, 0)
    assert result.samples_stored == result.samples_expected
    # Source timestamps survive end to end: speed samples sit on the 10 ms grid + 137 µs.
    speed_t = stored["Vehicle.Speed"][0]
    assert ((speed_t - START_NS) % 10_000_000 == 137_000).all()
    assert speed_t[0] == START_NS + 137_000


async def test_ingest_restart_mid_drive_loses_nothing(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    db_path = tmp_path / "ingest.sqlite"
    server = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=db_path))
    port = await server.start()
    db = load_dbc(small_dbc)
    frames, truth = make_frames(db, seconds=4.0)
    channel = f"tcu-test-{uuid.uuid4().hex}"
    agent = Agent(agent_config(channel, port, small_dbc, small_mapping))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await wait_until(lambda: agent.uplink.stats.connected)

    async def restart() -> None:
        nonlocal server
        await wait_until(lambda: agent.stats().batches_built >= 1)
        await server.stop(0.0)
        await asyncio.sleep(0.3)
        server = IngestServer(IngestConfig(insecure=True, listen=f"127.0.0.1:{port}", db_path=db_path))
        await server.start()

    try:
        await drive(agent, channel, frames, midway=restart)
        stop.set()
        final = await asyncio.wait_for(task, 30)
        stored = await stored_series(port, "WTCUTEST000000001")
    finally:
        await server.stop(1.0)
    result = verify_store(expected_samples(truth, agent.catalog), stored, agent.catalog)
    assert agent.uplink.stats.connects >= 2
    assert final.batches_unacked == 0
    assert (result.samples_lost, result.samples_unexpected, result.value_errors) == (0, 0, 0)


def _pin_to_can0(mapping: Path) -> Path:
    """The mapping with every signal on bus can0 (the other buses carry the same ids)."""
    text = mapping.read_text()
    for period in ("100", "50", "1000"):
        text = text.replace(f"period_ms = {period}\n", f'period_ms = {period}\nbus = "can0"\n')
    pinned = mapping.parent / "bus0_vss.toml"
    pinned.write_text(text)
    return pinned


async def test_more_buses_than_default_executor_workers_are_all_read(
    ingest: IngestServer, small_dbc: Path, small_mapping: Path
) -> None:
    """Each bus reader has a thread of its own: 10 buses (the default executor has cpus + 4 workers)."""
    base = agent_config("unused", ingest.bound_port, small_dbc, small_mapping)
    channels = [f"tcu-test-{uuid.uuid4().hex}" for _ in range(10)]
    buses = tuple(
        dataclasses.replace(base.buses[0], name=f"can{i}", channel=ch) for i, ch in enumerate(channels)
    )
    mapping = _pin_to_can0(small_mapping)
    agent = Agent(dataclasses.replace(base, buses=buses, mapping=mapping))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await wait_until(lambda: all(r.opened for r in agent.readers))
    frames, _truth = make_frames(load_dbc(small_dbc), seconds=0.1)
    senders = [can.Bus(interface="virtual", channel=ch, preserve_timestamps=True) for ch in channels]
    try:
        for sender in senders:
            for msg in frames:
                sender.send(msg)
        await wait_until(lambda: agent.stats().frames == len(frames) * len(channels))
    finally:
        for sender in senders:
            sender.shutdown()
        stop.set()
        await asyncio.wait_for(task, 30)
    assert [r.stats.frames for r in agent.readers] == [len(frames)] * len(channels)
