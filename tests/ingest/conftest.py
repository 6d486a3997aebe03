"""Fixtures of the ingest tests: a real IngestServer on 127.0.0.1 port 0 and real grpc.aio channels."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.ingest import IngestConfig, IngestServer

SPEED = 1
SOC = 2
OPERATOR = 3
BASE_NS = 1_763_000_000_000_000_000

CATALOG = telemetry_pb.SignalCatalog(
    catalog_id="cat-test-1",
    signals=[
        telemetry_pb.SignalInfo(
            signal_id=SPEED, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE
        ),
        telemetry_pb.SignalInfo(
            signal_id=SOC,
            name="Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
            unit="percent",
            type=telemetry_pb.VALUE_TYPE_DOUBLE,
        ),
        telemetry_pb.SignalInfo(
            signal_id=OPERATOR,
            name="Vehicle.Connectivity.OperatorName",
            unit="",
            type=telemetry_pb.VALUE_TYPE_STRING,
        ),
    ],
)


def hello(vehicle_id: str, boot_epoch: int = 1) -> ingest_pb.UploadRequest:
    return ingest_pb.UploadRequest(
        hello=ingest_pb.Hello(
            vehicle_id=vehicle_id, boot_epoch=boot_epoch, catalog=CATALOG, agent_version="t"
        )
    )


def batch(
    vehicle_id: str,
    seq: int,
    boot_epoch: int = 1,
    *,
    base_ns: int = BASE_NS,
    speed: Sequence[tuple[int, float]] = ((0, 10.0), (100, 11.0)),
    soc: Sequence[tuple[int, float]] = (),
    operator: Sequence[tuple[int, str]] = (),
    catalog_id: str = "cat-test-1",
) -> ingest_pb.UploadRequest:
    """A batch request; sample times are offsets from base_ns."""
    message = telemetry_pb.TelemetryBatch(
        vehicle_id=vehicle_id, boot_epoch=boot_epoch, seq=seq, catalog_id=catalog_id, base_time_ns=base_ns
    )
    if speed:
        message.columns.add(
            signal_id=SPEED, t_offset_ns=[t for t, _ in speed], double_values=[v for _, v in speed]
        )
    if soc:
        message.columns.add(signal_id=SOC, t_offset_ns=[t for t, _ in soc], double_values=[v for _, v in soc])
    if operator:
        message.columns.add(
            signal_id=OPERATOR, t_offset_ns=[t for t, _ in operator], string_values=[v for _, v in operator]
        )
    return ingest_pb.UploadRequest(batch=message)


@dataclass
class Running:
    """A started server, its config and a channel to it; ``open_upload`` starts an Upload stream."""

    server: IngestServer
    config: IngestConfig
    port: int
    channel: grpc.aio.Channel
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def ingest(self) -> Any:
        return ingest_grpc.IngestStub(self.channel)

    @property
    def fleet(self) -> Any:
        return fleet_grpc.FleetStub(self.channel)

    def new_channel(self) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.channels.append(channel)
        return channel

    async def open_upload(
        self, vehicle_id: str, boot_epoch: int = 1, *, channel: grpc.aio.Channel | None = None
    ) -> Any:
        call = ingest_grpc.IngestStub(channel or self.channel).Upload(timeout=30)
        await call.write(hello(vehicle_id, boot_epoch))
        return call


async def ack_of(call: Any) -> ingest_pb.Ack:
    response = await call.read()
    assert response is not grpc.aio.EOF, "stream ended instead of an ack"
    assert response.WhichOneof("kind") == "ack"
    ack: ingest_pb.Ack = response.ack
    return ack


async def start(config: IngestConfig, **kwargs: Any) -> Running:
    server = IngestServer(config, **kwargs)
    port = await server.start()
    return Running(server, config, port, grpc.aio.insecure_channel(f"127.0.0.1:{port}"))


async def finish(running: Running) -> None:
    for channel in [running.channel, *running.channels]:
        await channel.close()
    await running.server.stop(0)


@pytest.fixture
def config(tmp_path: Path) -> IngestConfig:
    return IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "ingest.db")


@pytest.fixture
async def running(config: IngestConfig) -> AsyncIterator[Running]:
    r = await start(config)
    try:
        yield r
    finally:
        await finish(r)


# Re-exported for the test modules (they cannot import conftest by name).
@dataclass(frozen=True)
class Kit:
    hello: Callable[..., ingest_pb.UploadRequest] = hello
    batch: Callable[..., ingest_pb.UploadRequest] = batch
    ack_of: Callable[[Any], Any] = ack_of
    start: Callable[..., Any] = start
    finish: Callable[[Running], Any] = finish
    base_ns: int = BASE_NS
    speed: int = SPEED
    soc: int = SOC
    operator: int = OPERATOR


@pytest.fixture
def kit() -> Kit:
    return Kit()
