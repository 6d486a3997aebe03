"""Fleet.SendCommand over a real server: delivery on the Upload stream, results, timeouts, bounds;
check-ins and connection state in ListVehicles."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.ingest import IngestConfig
from tcu.pki.commands import sign_command


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def signed(command_id: str, target: str, kind: str = "campaigns.replace") -> bytes:
    return sign_command(
        ed25519.Ed25519PrivateKey.generate(), command_id=command_id, kind=kind, target=target, payload=b"{}"
    )


def send(running: Any, vehicle_id: str, command_id: str, *, timeout_ms: int = 5000, kind: str = "x.y") -> Any:
    request = fleet_pb.SendCommandRequest(
        vehicle_id=vehicle_id,
        command_id=command_id,
        kind=kind,
        signed_command=signed(command_id, vehicle_id, kind),
        timeout_ms=timeout_ms,
    )
    return asyncio.ensure_future(running.fleet.SendCommand(request, timeout=30))


async def command_of(call: Any) -> ingest_pb.VehicleCommand:
    response = await asyncio.wait_for(call.read(), 5)
    assert response is not grpc.aio.EOF, "stream ended instead of a command"
    assert response.WhichOneof("kind") == "command", response
    command: ingest_pb.VehicleCommand = response.command
    return command


async def vehicles(running: Any) -> dict[str, Any]:
    response = await running.fleet.ListVehicles(fleet_pb.ListVehiclesRequest())
    return {v.vehicle_id: v for v in response.vehicles}


@pytest.mark.parametrize(
    ("executed", "reason", "status"),
    [(True, "", fleet_pb.COMMAND_STATUS_EXECUTED), (False, "expired", fleet_pb.COMMAND_STATUS_REJECTED)],
    ids=["executed", "rejected"],
)
async def test_command_is_delivered_on_the_stream_and_its_result_returned(
    running: Any, kit: Any, executed: bool, reason: str, status: int
) -> None:
    call = await running.open_upload("veh-1")
    await call.write(kit.batch("veh-1", 1))
    assert (await kit.ack_of(call)).batch_seq == 1
    await until(lambda: running.server.commands.connected("veh-1"))

    envelope = signed("cmd-1", "veh-1")
    pending = asyncio.ensure_future(
        running.fleet.SendCommand(
            fleet_pb.SendCommandRequest(
                vehicle_id="veh-1", command_id="cmd-1", kind="campaigns.replace", signed_command=envelope
            ),
            timeout=30,
        )
    )
    command = await command_of(call)
    assert (command.command_id, command.kind, command.payload) == ("cmd-1", "campaigns.replace", envelope)
    await until(lambda: running.server.commands.pending("veh-1") == 1)
    assert not pending.done()
    # Batches and results interleave on the same stream; acks keep flowing.
    await call.write(kit.batch("veh-1", 2))
    await call.write(
        ingest_pb.UploadRequest(
            command_result=ingest_pb.CommandResult(command_id="cmd-1", executed=executed, reason=reason)
        )
    )
    assert (await kit.ack_of(call)).batch_seq == 2
    response = await asyncio.wait_for(pending, 5)
    assert (response.command_id, response.status, response.reason) == ("cmd-1", status, reason)
    assert running.server.commands.pending("veh-1") == 0
    await call.write(kit.batch("veh-1", 3))
    assert (await kit.ack_of(call)).acked_seq == 3
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF


async def test_not_connected_when_no_stream_appears(running: Any) -> None:
    started = time.monotonic()
    response = await send(running, "veh-absent", "cmd-1", timeout_ms=200)
    elapsed = time.monotonic() - started
    assert response.status == fleet_pb.COMMAND_STATUS_NOT_CONNECTED
    assert "veh-absent" in response.reason
    assert 0.2 <= elapsed < 3
    assert running.server.commands.pending("veh-absent") == 0
    assert running.server.commands._arrivals == {}  # nothing kept for a vehicle nobody waits for


async def test_waiting_commands_end_unavailable_when_the_server_stops(config: IngestConfig, kit: Any) -> None:
    running = await kit.start(config)
    try:
        waiting = send(running, "veh-1", "cmd-1", timeout_ms=20_000)
        await until(lambda: running.server.commands.pending("veh-1") == 1)
        await running.server.stop(1.0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(waiting, 5)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "ingest is shutting down; send the command again"
    finally:
        await kit.finish(running)


async def test_command_waits_for_a_stream_to_open(running: Any, kit: Any) -> None:
    pending = send(running, "veh-late", "cmd-late", timeout_ms=5000)
    await until(lambda: running.server.commands.pending("veh-late") == 1)
    await asyncio.sleep(0.1)
    call = await running.open_upload("veh-late")
    command = await command_of(call)
    assert command.command_id == "cmd-late"
    await call.write(
        ingest_pb.UploadRequest(command_result=ingest_pb.CommandResult(command_id="cmd-late", executed=True))
    )
    assert (await asyncio.wait_for(pending, 5)).status == fleet_pb.COMMAND_STATUS_EXECUTED
    call.cancel()


async def test_timeout_when_the_vehicle_never_answers(running: Any, kit: Any) -> None:
    call = await running.open_upload("veh-mute")
    await until(lambda: running.server.commands.connected("veh-mute"))
    pending = send(running, "veh-mute", "cmd-1", timeout_ms=300)
    assert (await command_of(call)).command_id == "cmd-1"
    response = await asyncio.wait_for(pending, 5)
    assert response.status == fleet_pb.COMMAND_STATUS_TIMEOUT
    assert "did not answer" in response.reason
    # A late answer is ignored; the stream goes on.
    await call.write(
        ingest_pb.UploadRequest(command_result=ingest_pb.CommandResult(command_id="cmd-1", executed=True))
    )
    await call.write(kit.batch("veh-mute", 1))
    assert (await kit.ack_of(call)).acked_seq == 1
    call.cancel()


async def test_newest_stream_gets_the_command_and_results_only_count_for_their_vehicle(
    running: Any, kit: Any
) -> None:
    old = await running.open_upload("veh-1", channel=running.new_channel())
    other = await running.open_upload("veh-2", channel=running.new_channel())
    await until(
        lambda: running.server.commands.connected("veh-1") and running.server.commands.connected("veh-2")
    )
    new = await running.open_upload("veh-1", channel=running.new_channel())
    await until(lambda: len(running.server.commands._links.get("veh-1", ())) == 2)
    pending = send(running, "veh-1", "cmd-9")
    assert (await command_of(new)).command_id == "cmd-9"
    # Another vehicle cannot answer veh-1's command.
    await other.write(
        ingest_pb.UploadRequest(command_result=ingest_pb.CommandResult(command_id="cmd-9", executed=True))
    )
    await other.write(kit.batch("veh-2", 1))
    assert (await kit.ack_of(other)).acked_seq == 1
    assert not pending.done()
    # The old stream of veh-1 got nothing but its ack.
    await old.write(kit.batch("veh-1", 1))
    assert (await kit.ack_of(old)).batch_seq == 1
    await new.write(
        ingest_pb.UploadRequest(
            command_result=ingest_pb.CommandResult(command_id="cmd-9", reason="bad_signature")
        )
    )
    response = await asyncio.wait_for(pending, 5)
    assert (response.status, response.reason) == (fleet_pb.COMMAND_STATUS_REJECTED, "bad_signature")
    for call in (old, other, new):
        call.cancel()


async def test_pending_commands_are_bounded_per_vehicle(config: IngestConfig, kit: Any) -> None:
    running = await kit.start(replace(config, max_pending_commands=1))
    try:
        first = send(running, "veh-1", "cmd-1", timeout_ms=3000)
        await until(lambda: running.server.commands.pending("veh-1") == 1)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await send(running, "veh-1", "cmd-2", timeout_ms=3000)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_pending_commands=1" in (info.value.details() or "")
        # Another vehicle is not affected.
        other = send(running, "veh-2", "cmd-1", timeout_ms=100)
        assert (await other).status == fleet_pb.COMMAND_STATUS_NOT_CONNECTED
        first.cancel()
        await until(lambda: running.server.commands.pending("veh-1") == 0)
    finally:
        await kit.finish(running)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("command_id", "", "command_id is empty"),
        ("vehicle_id", "", "vehicle_id is empty"),
        ("kind", "", "kind is empty"),
        ("signed_command", b"", "signed_command is empty"),
        ("signed_command", b"x" * (64 * 1024 + 1), "more than 65536"),
    ],
)
async def test_malformed_send_command_is_invalid_argument(
    running: Any, field: str, value: Any, problem: str
) -> None:
    request = fleet_pb.SendCommandRequest(
        vehicle_id="veh-1", command_id="c", kind="k", signed_command=b"env", timeout_ms=100
    )
    setattr(request, field, value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await running.fleet.SendCommand(request, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (info.value.details() or "")


async def test_same_command_id_twice_is_already_exists(running: Any) -> None:
    first = send(running, "veh-1", "cmd-1", timeout_ms=3000)
    await until(lambda: running.server.commands.pending("veh-1") == 1)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send(running, "veh-1", "cmd-1", timeout_ms=100)
    assert info.value.code() is grpc.StatusCode.ALREADY_EXISTS
    first.cancel()
    await until(lambda: running.server.commands.pending("veh-1") == 0)


async def test_checkin_and_connection_show_in_list_vehicles_and_survive_restart(
    config: IngestConfig, kit: Any
) -> None:
    running = await kit.start(config)
    try:
        assert await vehicles(running) == {}
        call = await running.open_upload("veh-1")
        await until(lambda: running.server.commands.connected("veh-1"))
        listed = await vehicles(running)
        assert listed["veh-1"].connected and listed["veh-1"].batches == 0  # connected, nothing stored yet
        checkin = ingest_pb.CheckIn(
            campaigns=[
                ingest_pb.CampaignVersion(name="default", version=3),
                ingest_pb.CampaignVersion(name="harsh-brake", version=1),
            ]
        )
        await call.write(ingest_pb.UploadRequest(checkin=checkin))
        await call.write(kit.batch("veh-1", 1))
        assert (await kit.ack_of(call)).acked_seq == 1  # read after the check-in was stored
        info = (await vehicles(running))["veh-1"]
        assert [(c.name, c.version) for c in info.campaigns] == [("default", 3), ("harsh-brake", 1)]
        assert info.connected and info.batches == 1
        # A newer check-in replaces the old one.
        await call.write(ingest_pb.UploadRequest(checkin=ingest_pb.CheckIn(campaigns=[checkin.campaigns[1]])))
        await call.write(kit.batch("veh-1", 2))
        assert (await kit.ack_of(call)).acked_seq == 2
        await call.done_writing()
        assert await call.read() is grpc.aio.EOF
        await until(lambda: not running.server.commands.connected("veh-1"))
        info = (await vehicles(running))["veh-1"]
        assert not info.connected
        assert [(c.name, c.version) for c in info.campaigns] == [("harsh-brake", 1)]
    finally:
        await kit.finish(running)
    running = await kit.start(config)
    try:
        info = (await vehicles(running))["veh-1"]
        assert [(c.name, c.version) for c in info.campaigns] == [("harsh-brake", 1)]
        assert not info.connected and info.batches == 2
    finally:
        await kit.finish(running)


async def test_malformed_checkin_ends_the_stream(running: Any) -> None:
    call = await running.open_upload("veh-1")
    await call.write(
        ingest_pb.UploadRequest(
            checkin=ingest_pb.CheckIn(
                campaigns=[
                    ingest_pb.CampaignVersion(name="a"),
                    ingest_pb.CampaignVersion(name="a", version=2),
                ]
            )
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "check-in of vehicle veh-1: campaign 'a' is named twice"
