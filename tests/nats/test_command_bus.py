"""Durable commands across ingest replicas on real nats-server processes (issue 14).

Two real ingest servers (gRPC on loopback; replica B a ``tcu ingest`` process where it must be
killed) share one JetStream. The vehicle is the agent's own command executor
(:class:`tcu.agent.commands.CommandHandler`: the signature verifier and its nonce store on
disk) on a real Upload stream; a test kind counts how often the vehicle really ran a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
import nats
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tcu.agent.commands import CommandHandler
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.config import CommandSettings
from tcu.demo.nats import NatsCluster, NatsNode
from tcu.ingest import IngestConfig, IngestServer
from tcu.ingest.command_bus import COMMANDS_STREAM, CommandBusConfig, JetStreamCommandRouter, command_subject
from tcu.ingest.config import JetStreamConfig
from tcu.ingest.metrics import RpcCounter, ingest_snapshot
from tcu.pki.commands import sign_command

REPO = Path(__file__).resolve().parents[2]
VIN = "WTCUSIM0000000001"
KIND = "test.count"
CATALOG = telemetry_pb.SignalCatalog(
    catalog_id="cat-cmd",
    signals=[
        telemetry_pb.SignalInfo(
            signal_id=1, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE
        )
    ],
)


@dataclass
class Keys:
    signing: ed25519.Ed25519PrivateKey
    verify_path: Path

    def sign(self, command_id: str, *, ttl_s: float = 60.0, target: str = VIN) -> bytes:
        return sign_command(self.signing, command_id=command_id, kind=KIND, target=target, ttl_s=ttl_s)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "command-verify.pem"
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Keys(key, path)


@dataclass
class Vehicle:
    """One vehicle: the agent's CommandHandler (verifier + nonce store) on an Upload stream."""

    keys: Keys
    nonce_store: Path | Literal["memory"]
    executed: list[str] = field(default_factory=list)
    on_execute: Callable[[str], Awaitable[None]] | None = None
    answers: list[ingest_pb.CommandResult] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _channel: grpc.aio.Channel | None = None
    _call: Any = None

    async def _count(self, payload: bytes, command_id: str) -> str | None:
        self.executed.append(command_id)
        if self.on_execute is not None:
            await self.on_execute(command_id)
        return None

    async def connect(self, port: int) -> None:
        """Open an Upload stream to the ingest on ``port`` (a new handler: as after an agent restart)."""
        await self.disconnect()
        outgoing: asyncio.Queue[ingest_pb.UploadRequest] = asyncio.Queue()

        def send(request: ingest_pb.UploadRequest) -> None:
            self.answers.append(request.command_result)
            outgoing.put_nowait(request)

        handler = CommandHandler(
            CommandSettings(verify_key=self.keys.verify_path, nonce_store=self.nonce_store), VIN, send
        )
        handler.register(KIND, self._count)
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call = ingest_grpc.IngestStub(self._channel).Upload()
        await call.write(
            ingest_pb.UploadRequest(hello=ingest_pb.Hello(vehicle_id=VIN, boot_epoch=1, catalog=CATALOG))
        )
        self._call = call

        async def read() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                async for response in call:
                    if response.WhichOneof("kind") == "command":
                        handler.on_command(response.command)

        async def write() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                while True:
                    await call.write(await outgoing.get())

        self._tasks = [asyncio.create_task(read()), asyncio.create_task(write())]

    async def disconnect(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close()
        self._call = self._channel = None


def bus(
    urls: list[str], *, replicas: int = 1, name: str = "A", max_skew_s: float = 30.0
) -> JetStreamCommandRouter:
    return JetStreamCommandRouter(
        CommandBusConfig(
            nats=JetStreamConfig(servers=tuple(urls), replicas=replicas),
            name=name,
            ack_wait_s=2.0,
            request_timeout_s=2.0,
            max_skew_s=max_skew_s,
        )
    )


@contextlib.asynccontextmanager
async def replica(
    tmp_path: Path, urls: list[str], name: str, *, replicas: int = 1, max_skew_s: float = 30.0
) -> AsyncIterator[IngestServer]:
    """An in-process ingest server on a free loopback port with durable commands."""
    server = IngestServer(
        IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / f"{name}.db"),
        commands=bus(urls, replicas=replicas, name=name, max_skew_s=max_skew_s),
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def replica_process(
    tmp_path: Path, url: str, name: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``tcu ingest --commands jetstream`` as its own process (so it can be SIGKILLed)."""
    port_file = tmp_path / f"{name}.port"
    log_file = (tmp_path / f"{name}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tcu.cli.main",
        "ingest",
        "--listen",
        "127.0.0.1:0",
        "--db",
        str(tmp_path / f"{name}.db"),
        "--port-file",
        str(port_file),
        "--insecure",
        "--commands",
        "jetstream",
        "--nats",
        url,
        "--commands-ack-wait",
        "2",
        stderr=log_file,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.returncode is None, (tmp_path / f"{name}.log").read_text()
            assert time.monotonic() < deadline, "no port file"
            await asyncio.sleep(0.05)
        yield proc, int(port_file.read_text().strip())
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        log_file.close()


async def send(port: int, envelope: bytes, command_id: str, timeout_ms: int) -> fleet_pb.SendCommandResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        response: fleet_pb.SendCommandResponse = await fleet_grpc.FleetStub(channel).SendCommand(
            fleet_pb.SendCommandRequest(
                vehicle_id=VIN,
                command_id=command_id,
                kind=KIND,
                signed_command=envelope,
                timeout_ms=timeout_ms,
            ),
            timeout=60,
        )
    return response


async def queued(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(COMMANDS_STREAM)).state.messages)
    finally:
        await nc.close()


async def test_offline_command_reaches_the_vehicle_on_another_replica_and_the_sender_gets_the_result(
    tmp_path: Path, nats_server: NatsNode, keys: Keys
) -> None:
    vehicle = Vehicle(keys, tmp_path / "nonces")
    async with replica(tmp_path, [nats_server.url], "A") as a, replica(tmp_path, [nats_server.url], "B") as b:
        sender = asyncio.create_task(send(a.bound_port, keys.sign("cmd-1"), "cmd-1", 20_000))
        await asyncio.sleep(1.0)  # the vehicle is offline: the command waits in JetStream
        assert not sender.done() and vehicle.executed == []
        assert await queued(nats_server.url) == 1
        await vehicle.connect(b.bound_port)
        response = await asyncio.wait_for(sender, 20)
        await vehicle.disconnect()
        families = {f.name: f.samples for f in ingest_snapshot(b, RpcCounter())}
    assert families["tcu_ingest_commands_delivered"] == [((), 1.0)]
    assert families["tcu_ingest_command_outcomes"] == [(("EXECUTED",), 1.0)]
    assert response.status == fleet_pb.COMMAND_STATUS_EXECUTED, response
    assert vehicle.executed == ["cmd-1"]
    assert await queued(nats_server.url) == 0  # acked: gone from the work queue


async def test_result_of_a_call_that_timed_out_is_retrieved_by_sending_again(
    tmp_path: Path, nats_server: NatsNode, keys: Keys
) -> None:
    vehicle = Vehicle(keys, tmp_path / "nonces")
    envelope = keys.sign("cmd-2")
    async with replica(tmp_path, [nats_server.url], "A") as a, replica(tmp_path, [nats_server.url], "B") as b:
        first = await send(a.bound_port, envelope, "cmd-2", 300)
        assert first.status == fleet_pb.COMMAND_STATUS_QUEUED, first
        await vehicle.connect(b.bound_port)
        deadline = time.monotonic() + 15
        while not vehicle.answers:
            assert time.monotonic() < deadline, "the vehicle never got the command"
            await asyncio.sleep(0.05)
        again = await send(a.bound_port, envelope, "cmd-2", 10_000)  # any replica: same answer
        via_b = await send(b.bound_port, envelope, "cmd-2", 10_000)
        await vehicle.disconnect()
        assert a.commands.stats.duplicates >= 1  # type: ignore[attr-defined]
    assert again.status == via_b.status == fleet_pb.COMMAND_STATUS_EXECUTED, (again, via_b)
    assert vehicle.executed == ["cmd-2"]  # queued once, executed once


async def test_expired_command_is_reported_to_the_sender_and_never_executed(
    tmp_path: Path, nats_server: NatsNode, keys: Keys
) -> None:
    vehicle = Vehicle(keys, tmp_path / "nonces")
    async with replica(tmp_path, [nats_server.url], "A") as a, replica(tmp_path, [nats_server.url], "B") as b:
        response = await send(a.bound_port, keys.sign("cmd-3", ttl_s=1.0), "cmd-3", 10_000)
        assert response.status == fleet_pb.COMMAND_STATUS_EXPIRED, response
        assert "never delivered" in response.reason
        await vehicle.connect(b.bound_port)  # connects after the expiry: the queued copy is dropped
        deadline = time.monotonic() + 10
        while await queued(nats_server.url):
            assert time.monotonic() < deadline, "the expired command stayed queued"
            await asyncio.sleep(0.1)
        again = await send(b.bound_port, keys.sign("cmd-3", ttl_s=1.0), "cmd-3", 1000)
        await vehicle.disconnect()
    assert again.status == fleet_pb.COMMAND_STATUS_EXPIRED
    assert vehicle.executed == [] and vehicle.answers == []


@pytest.mark.parametrize("nonce_store", ["disk", "memory"])
async def test_replica_killed_between_delivery_and_result_runs_the_command_once(
    tmp_path: Path, nats_server: NatsNode, keys: Keys, nonce_store: str
) -> None:
    """Replica B (a process) is SIGKILLed while the vehicle runs the command, before the result is
    recorded; JetStream redelivers it through replica A when the vehicle reconnects there.

    With its nonce store on disk the vehicle refuses the second delivery: executed once, outcome
    UNKNOWN saying so. The "memory" case is the check failing on purpose: a vehicle whose restarted
    agent forgot its nonces runs the command twice, and this harness sees it."""
    vehicle = Vehicle(keys, tmp_path / "nonces" if nonce_store == "disk" else "memory")
    async with (
        replica(tmp_path, [nats_server.url], "A") as a,
        replica_process(tmp_path, nats_server.url, "B") as (
            b_proc,
            b_port,
        ),
    ):

        async def kill_b(command_id: str) -> None:
            if b_proc.returncode is None:
                b_proc.send_signal(signal.SIGKILL)
                await b_proc.wait()

        vehicle.on_execute = kill_b
        await vehicle.connect(b_port)
        sender = asyncio.create_task(send(a.bound_port, keys.sign("cmd-4"), "cmd-4", 30_000))
        deadline = time.monotonic() + 15
        while b_proc.returncode is None:
            assert not sender.done(), sender.result()
            assert time.monotonic() < deadline, "B never delivered"
            await asyncio.sleep(0.05)
        vehicle.on_execute = None
        await vehicle.connect(a.bound_port)  # the vehicle reconnects to the other replica
        response = await asyncio.wait_for(sender, 30)
        await vehicle.disconnect()
        stats = a.commands.stats  # type: ignore[attr-defined]
    assert stats.redelivered == 1
    if nonce_store == "disk":
        assert vehicle.executed == ["cmd-4"]
        assert response.status == fleet_pb.COMMAND_STATUS_UNKNOWN, response
        assert "earlier delivery" in response.reason and "replayed" in response.reason
    else:
        assert vehicle.executed == ["cmd-4", "cmd-4"]  # the double execution is visible
        assert response.status == fleet_pb.COMMAND_STATUS_EXECUTED


async def test_cluster_offline_command_executes_via_another_replica_after_a_node_dies(
    tmp_path: Path, nats_cluster: NatsCluster, keys: Keys
) -> None:
    """3 nodes, streams with 3 replicas; replica A talks to node 0, B to node 1; node 2 dies while
    the command waits."""
    vehicle = Vehicle(keys, tmp_path / "nonces")
    urls = nats_cluster.urls
    async with (
        replica(tmp_path, [urls[0]], "A", replicas=3) as a,
        replica(tmp_path, [urls[1]], "B", replicas=3) as b,
    ):
        sender = asyncio.create_task(send(a.bound_port, keys.sign("cmd-5"), "cmd-5", 30_000))
        await asyncio.sleep(1.0)
        nats_cluster.nodes[2].kill()
        await vehicle.connect(b.bound_port)
        response = await asyncio.wait_for(sender, 30)
        await vehicle.disconnect()
    assert response.status == fleet_pb.COMMAND_STATUS_EXECUTED, response
    assert vehicle.executed == ["cmd-5"]


async def test_sending_replica_stops_while_waiting_and_the_outcome_is_kept(
    tmp_path: Path, nats_server: NatsNode, keys: Keys
) -> None:
    """The sender's replica goes away: its call ends UNAVAILABLE, the command stays queued, runs
    when the vehicle connects elsewhere, and the same command sent to that replica returns it."""
    vehicle = Vehicle(keys, tmp_path / "nonces")
    envelope = keys.sign("cmd-6")
    async with replica(tmp_path, [nats_server.url], "B") as b:
        async with replica(tmp_path, [nats_server.url], "A") as a:
            sender = asyncio.create_task(send(a.bound_port, envelope, "cmd-6", 30_000))
            await asyncio.sleep(0.5)
            await a.stop(1.0)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(sender, 10)
            assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        assert await queued(nats_server.url) == 1
        await vehicle.connect(b.bound_port)
        response = await send(b.bound_port, envelope, "cmd-6", 10_000)
        await vehicle.disconnect()
    assert response.status == fleet_pb.COMMAND_STATUS_EXECUTED, response
    assert vehicle.executed == ["cmd-6"]


async def test_a_foreign_message_on_the_command_subject_is_removed_loudly_and_commands_go_on(
    tmp_path: Path, nats_server: NatsNode, keys: Keys
) -> None:
    vehicle = Vehicle(keys, tmp_path / "nonces")
    async with replica(tmp_path, [nats_server.url], "A") as a:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().publish(command_subject(VIN), b"\xff not a command")
        finally:
            await nc.close()
        await vehicle.connect(a.bound_port)
        response = await send(a.bound_port, keys.sign("cmd-7"), "cmd-7", 10_000)
        await vehicle.disconnect()
        stats = a.commands.stats  # type: ignore[attr-defined]
    assert response.status == fleet_pb.COMMAND_STATUS_EXECUTED, response
    assert stats.malformed == 1 and vehicle.executed == ["cmd-7"]


async def test_cli_asks_again_with_the_command_id_of_a_queued_answer(
    tmp_path: Path, nats_server: NatsNode, keys: Keys
) -> None:
    """``tcu fleet command``: a QUEUED answer names the id; the same --command-id later gets the outcome."""
    signing = tmp_path / "command-signing.key"
    signing.write_bytes(
        keys.signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    vehicle = Vehicle(keys, tmp_path / "nonces")

    async def fleet_command(port: int, timeout_s: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tcu.cli.main", "fleet", "command", VIN, KIND, "--payload", "x"),
            *("--target", f"127.0.0.1:{port}", "--insecure", "--signing-key", str(signing)),
            *("--timeout", timeout_s, "--command-id", "cli-1"),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    async with replica(tmp_path, [nats_server.url], "A") as a, replica(tmp_path, [nats_server.url], "B") as b:
        code, first = await fleet_command(a.bound_port, "0.5")
        assert code == 1 and first.startswith(f"{VIN}: QUEUED: ") and "--command-id cli-1" in first, first
        await vehicle.connect(b.bound_port)
        code, again = await fleet_command(a.bound_port, "10")
        await vehicle.disconnect()
    assert (code, again.strip()) == (0, f"{VIN}: EXECUTED")
    assert vehicle.executed == ["cli-1"]


async def test_redelivery_after_the_expiry_is_not_delivered_and_says_unknown(
    tmp_path: Path, nats_server: NatsNode, keys: Keys
) -> None:
    """Replica B dies while the vehicle runs a short-lived command; when the vehicle reconnects to A
    the command has expired: A must not deliver it (the vehicle's "expired" would hide the first
    run) and records UNKNOWN."""
    vehicle = Vehicle(keys, tmp_path / "nonces")
    async with (
        replica(tmp_path, [nats_server.url], "A", max_skew_s=0.0) as a,
        replica_process(tmp_path, nats_server.url, "B") as (b_proc, b_port),
    ):

        async def kill_b(command_id: str) -> None:
            b_proc.send_signal(signal.SIGKILL)
            await b_proc.wait()

        vehicle.on_execute = kill_b
        await vehicle.connect(b_port)
        envelope = keys.sign("cmd-8", ttl_s=3.0)  # signed once B is up (its start may take seconds)
        sender = asyncio.create_task(send(a.bound_port, envelope, "cmd-8", 30_000))
        deadline = time.monotonic() + 15
        while b_proc.returncode is None:
            assert not sender.done(), sender.result()
            assert time.monotonic() < deadline, "B never delivered"
            await asyncio.sleep(0.05)
        await asyncio.sleep(3.0)  # past expires_ns
        await vehicle.connect(a.bound_port)
        response = await asyncio.wait_for(sender, 30)
        await vehicle.disconnect()
    assert response.status == fleet_pb.COMMAND_STATUS_UNKNOWN, response
    assert "can no longer run it" in response.reason
    assert vehicle.executed == ["cmd-8"] and len(vehicle.answers) == 1  # not delivered again


async def test_a_full_command_queue_refuses_the_next_command_loudly(
    tmp_path: Path, nats_server: NatsNode, keys: Keys
) -> None:
    server = IngestServer(
        IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "A.db"),
        commands=JetStreamCommandRouter(
            CommandBusConfig(nats=JetStreamConfig(servers=(nats_server.url,)), max_queued=1)
        ),
    )
    await server.start()
    try:
        first = await send(server.bound_port, keys.sign("q-1"), "q-1", 300)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await send(server.bound_port, keys.sign("q-2"), "q-2", 300)
    finally:
        await server.stop(0)
    assert first.status == fleet_pb.COMMAND_STATUS_QUEUED
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_queued" in str(refused.value.details())
