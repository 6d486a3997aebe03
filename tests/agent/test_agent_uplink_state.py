"""An unreachable ingest is not silent, and does not hold the agent's shutdown past its bound.

The uplink logs each change of its connection state (the target is a closed loopback port,
then an ingest comes up on it, then goes away); SIGTERM ends the agent within
``uplink.drain_timeout_s`` (plus the bus readers' last hand-off) even when the outbox is full.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import uuid
from pathlib import Path

import can
import pytest
from agent_helpers import agent_config, make_frames

from tcu.agent import Agent
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.config import BatchConfig, UplinkConfig
from tcu.ingest import IngestConfig, IngestServer
from tcu.signals.dbc import load_dbc
from tcu.uplink import MemoryOutbox, Uplink

VEHICLE = "WTCUSTATE00000001"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "tcu.uplink.client" and r.levelno >= logging.INFO
    ]


async def _until(predicate: object, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_connection_state_changes_are_logged_with_reason_and_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tcu.uplink.client")
    port = _closed_port()
    outbox = MemoryOutbox(max_batches=100, boot_epoch=1)
    catalog = telemetry_pb.SignalCatalog(catalog_id="c1")
    catalog.signals.add(signal_id=1, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE)
    batch = telemetry_pb.TelemetryBatch(vehicle_id=VEHICLE, catalog_id="c1", base_time_ns=10**9)
    batch.columns.add(signal_id=1, t_offset_ns=[0], double_values=[1.0])
    outbox.append(batch.SerializeToString(), priority=0, created_ns=0)
    uplink = Uplink(
        UplinkConfig(
            target=f"127.0.0.1:{port}",
            insecure=True,
            connect_timeout_s=2.0,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
        ),
        hello=ingest_pb.Hello(vehicle_id=VEHICLE, boot_epoch=1, catalog=catalog),
        outbox=outbox,
    )
    task = asyncio.create_task(uplink.run())
    server: IngestServer | None = None
    try:
        # Nothing listens: the first failure is logged with gRPC's reason and the delay.
        await _until(lambda: any("cannot connect to" in m for m in _messages(caplog)))
        failures = [m for m in _messages(caplog) if "cannot connect to" in m]
        assert f"127.0.0.1:{port}" in failures[0]
        assert "Connection refused" in failures[0] and "retrying in" in failures[0], failures[0]
        assert any(m.startswith(f"uplink: connecting to 127.0.0.1:{port}") for m in _messages(caplog))
        # Further attempts with the same reason are not a change of state: DEBUG only.
        await _until(lambda: uplink.stats.last_error != "" and _debug_attempts(caplog) >= 3)
        assert sum("cannot connect to" in m for m in _messages(caplog)) == 1, _messages(caplog)

        # The ingest comes up on that port: connected, batch acked.
        server = IngestServer(
            IngestConfig(insecure=True, listen=f"127.0.0.1:{port}", db_path=tmp_path / "i.db")
        )
        await server.start()
        uplink.notify()
        assert await uplink.wait_drained(20)
        assert any(m.startswith(f"uplink: connected to 127.0.0.1:{port}") for m in _messages(caplog))

        # It goes away: the end of the stream is logged with its reason and the delay.
        await server.stop(0.1)
        server = None
        await _until(lambda: any("stream to" in m and "ended" in m for m in _messages(caplog)))
        ended = next(m for m in _messages(caplog) if "stream to" in m and "ended" in m)
        assert "reconnecting in" in ended, ended
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if server is not None:
            await server.stop(0.1)


def _debug_attempts(caplog: pytest.LogCaptureFixture) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == "tcu.uplink.client" and r.levelno == logging.DEBUG and "failed" in r.getMessage()
    )


async def test_sigterm_with_a_full_outbox_and_no_ingest_ends_within_the_drain_timeout(
    tmp_path: Path, small_dbc: Path, small_mapping: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The pipeline blocked on a full in-memory outbox does not hold the shutdown past its bound,
    and what it held is logged and counted as lost."""
    channel = f"tcu-test-{uuid.uuid4().hex}"
    base = agent_config(channel, _closed_port(), small_dbc, small_mapping)
    drain_s = 1.0
    config = dataclasses.replace(
        base,
        uplink=dataclasses.replace(base.uplink, max_unacked_batches=2, drain_timeout_s=drain_s),
        batch=BatchConfig(max_samples=10, max_age_ms=50),
    )
    agent = Agent(config)
    frames, _truth = make_frames(load_dbc(small_dbc), 10.0)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    sender = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    try:
        await _until(lambda: all(r.opened for r in agent.readers))
        half = len(frames) // 2
        for i, msg in enumerate(frames[:half]):
            sender.send(msg)
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        await _until(lambda: agent.outbox.unacked() == 2 and agent.outbox.space() <= 0)
        for i, msg in enumerate(frames[half:]):
            sender.send(msg)
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        await _until(lambda: agent.stats().frames >= len(frames))
        await asyncio.sleep(0.5)  # decoded: the pipeline now waits for space in the outbox
        loop = asyncio.get_running_loop()
        began = loop.time()
        caplog.set_level(logging.INFO, logger="tcu.agent.app")
        stop.set()
        final = await asyncio.wait_for(task, drain_s + 5.0)
        took = loop.time() - began
    finally:
        sender.shutdown()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert took < drain_s + 5.0
    assert final.batches_unacked == 2
    assert final.samples_lost_at_stop > 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("lost at shutdown" in m and f"{final.samples_lost_at_stop} samples" in m for m in errors), (
        errors
    )
