"""Signals the agent produces itself travel beside CAN signals, with their types."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from agent_helpers import agent_config, drive, make_frames, wait_until

from tcu.agent import Agent
from tcu.agent.sources import Emitter
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.errors import MappingError, TcuError
from tcu.ingest import IngestServer
from tcu.signals.dbc import load_dbc
from tcu.signals.mapping import ExtraSignal


class FakeModem:
    name = "fake-modem"
    signals = (
        ExtraSignal("Vehicle.Connectivity.Iccid", "", "string", "modem"),
        ExtraSignal("Vehicle.Connectivity.SignalStrength", "dBm", "double", "modem"),
    )

    def __init__(self) -> None:
        self.done = asyncio.Event()

    async def run(self, emit: Emitter) -> None:
        emit.emit("Vehicle.Connectivity.Iccid", "89000123456789012341", t_ns=1_000)
        emit.emit("Vehicle.Connectivity.SignalStrength", -71.0, t_ns=2_000)
        with pytest.raises(TcuError, match="numeric"):
            emit.emit("Vehicle.Connectivity.SignalStrength", "strong")
        with pytest.raises(TcuError, match="not declared"):
            emit.emit("Vehicle.Nope", 1.0)
        self.done.set()
        await asyncio.Event().wait()


async def test_source_signals_are_announced_typed_and_stored(
    ingest: IngestServer, small_dbc: Path, small_mapping: Path
) -> None:
    channel = f"tcu-test-{uuid.uuid4().hex}"
    source = FakeModem()
    agent = Agent(agent_config(channel, ingest.bound_port, small_dbc, small_mapping), sources=[source])
    kinds = {s.name: s.value_type for s in agent.catalog.signals}
    assert kinds["Vehicle.Connectivity.Iccid"] == "string"
    assert kinds["Vehicle.Speed"] == "double"
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    frames, _truth = make_frames(load_dbc(small_dbc), seconds=0.5)
    await drive(agent, channel, frames)
    await wait_until(source.done.is_set)
    stop.set()
    await asyncio.wait_for(task, 30)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.bound_port}") as ch:
        series = {}
        async for update in fleet_grpc.FleetStub(ch).Query(
            fleet_pb.QueryRequest(vehicle_id="WTCUTEST000000001")
        ):
            for s in update.series:
                series[s.name] = s
    assert list(series["Vehicle.Connectivity.Iccid"].string_values) == ["89000123456789012341"]
    assert list(series["Vehicle.Connectivity.Iccid"].t_ns) == [1_000]
    assert list(series["Vehicle.Connectivity.SignalStrength"].double_values) == [-71.0]
    assert "Vehicle.Speed" in series


def test_a_source_signal_may_not_shadow_a_can_signal(small_dbc: Path, small_mapping: Path) -> None:
    class Clash:
        name = "clash"
        signals = (ExtraSignal("Vehicle.Speed", "km/h", "double", "clash"),)

        async def run(self, emit: Emitter) -> None:
            return None

    with pytest.raises(MappingError, match="also mapped from CAN"):
        Agent(agent_config("x", 1, small_dbc, small_mapping), sources=[Clash()])
