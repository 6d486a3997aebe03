"""``tcu demo --scenario fleet``: the border drive on a 3-node NATS JetStream cluster, two ingest
replicas and the archive, the vehicle moving between the replicas, and a durable command.

The cloud side (:meth:`FleetScenario.start_cloud`): a local 3-node cluster
(:class:`tcu.demo.nats.NatsCluster`, streams with 3 replicas), ``tcu ingest archive`` (the
stream into ``archive.sqlite``, which serves ``Fleet.Query``), and two ``tcu ingest --sink
jetstream`` replicas A and B. The simulated modem's cellular data path leads to a handover
(:class:`Handover`): each new connection of the vehicle goes to the other replica, and every
``move_s`` of wall time the open connection is cut, besides the cuts of the border drive's own
coverage holes and profile switches, so the vehicle uploads through A and B in turn.

Before the agent starts (the vehicle is offline) a signed ``campaigns.replace`` is sent through
replica B with a 1 s timeout: the answer must be ``QUEUED``. The vehicle receives it from
whichever replica it connects to first and runs it (a condition campaign that never fires, so
the samples the drive is checked against do not change). After the drive the same command is
sent again through replica A: the answer must be ``EXECUTED`` (the outcome JetStream kept), and
``ListVehicles`` must show the new campaign from the vehicle's check-in.

Checked for exit 0, besides everything the border scenario checks (no CAN sample lost,
duplicated or wrong, through the archive): the vehicle was connected through both replicas
(``handover_connections``), moved at least twice between them (``handover_moves``), and the
command outcome is as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from tcu.demo.border import BorderScenario
from tcu.demo.nats import NatsCluster
from tcu.demo.procs import Proc, spawn, wait_file
from tcu.demo.scenario import CloudContext, ScenarioContext, register
from tcu.errors import TcuError

__all__ = ["FLEET_COMMAND_ID", "FleetScenario", "Handover"]

FLEET_COMMAND_ID = "fleet-demo-campaign-1"
_CAMPAIGN = """# Pushed by tcu demo --scenario fleet as a durable command: a condition that never fires.
[[campaign]]
name = "fleet_demo_watch"
version = 1
priority = 10
signals = ["Vehicle.Speed"]
[campaign.condition]
expression = "Vehicle.Speed > 1000"
trigger = "rising_edge"
"""


class Handover:
    """A loopback TCP forwarder: new connections go to the replicas in turn, and every ``move_s``
    the open ones are cut (the vehicle reconnects, to the next replica)."""

    def __init__(self, ports: list[int], move_s: float) -> None:
        self._ports = ports
        self._move_s = move_s
        self._next = 0
        self._last: int | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._mover: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.connections = [0] * len(ports)
        """Connections forwarded to each replica."""
        self.moves = 0
        """Connections that went to another replica than the one before."""
        self.cuts = 0
        """Connections the handover cut."""

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._mover = asyncio.create_task(self._move(), name="tcu.demo.fleet.handover")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _move(self) -> None:
        while True:
            await asyncio.sleep(self._move_s)
            for writer in list(self._open):
                self.cuts += 1
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self._next % len(self._ports)
        self._next += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._ports[index])
        except OSError:
            writer.close()
            return
        self.connections[index] += 1
        if self._last is not None and self._last != index:
            self.moves += 1
        self._last = index
        self._open.update((writer, up_writer))
        pipes = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for w in (writer, up_writer):
                self._open.discard(w)
                w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def aclose(self) -> None:
        if self._mover is not None:
            self._mover.cancel()
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            writer.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def _wait_log(proc: Proc, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in await asyncio.to_thread(proc.log_path.read_text, errors="replace"):
        if proc.proc.returncode is not None:
            raise proc.failed(f"exited with status {proc.proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise proc.failed(f"did not say {text!r} within {timeout_s:.0f} s")
        await asyncio.sleep(0.1)


class FleetScenario(BorderScenario):
    """``--scenario fleet``: the border drive on a NATS cluster with two replicas (module docstring)."""

    def __init__(self, *, move_s: float = 8.0) -> None:
        super().__init__()
        self.name = "fleet"
        self.move_s = move_s
        self._cluster: NatsCluster | None = None
        self._procs: list[Proc] = []
        self._handover: Handover | None = None
        self._handover_port = 0
        self._replicas: list[str] = []
        self._cloud: CloudContext | None = None
        self._envelope = b""
        self._first: dict[str, Any] = {}

    # -- the cloud side ---------------------------------------------------------------------------

    async def start_cloud(self, ctx: CloudContext) -> str | None:
        self._cloud = ctx
        workdir = ctx.workdir
        cluster = NatsCluster(home=workdir / "nats", size=3)
        self._cluster = cluster
        await asyncio.to_thread(cluster.start)
        ctx.say(f"NATS cluster of 3 nodes with JetStream: {', '.join(cluster.urls)}")
        nats_args = [arg for url in cluster.urls for arg in ("--nats", url)] + ["--stream-replicas", "3"]
        tcu = [sys.executable, "-m", "tcu.cli.main", "ingest"]
        archive_db = workdir / "archive.sqlite"
        archive = await spawn("archive", [*tcu, "archive", "--db", str(archive_db), *nats_args], workdir)
        self._procs.append(archive)
        await _wait_log(archive, "tcu ingest archive: consuming", ctx.startup_timeout_s)
        ports = []
        for name in ("a", "b"):
            port_file = workdir / f"ingest-{name}.port"
            port_file.unlink(missing_ok=True)
            replica = await spawn(
                f"ingest-{name}",
                [
                    *tcu,
                    "--sink",
                    "jetstream",
                    *nats_args,
                    "--db",
                    str(archive_db),
                    "--listen",
                    "127.0.0.1:0",
                    "--port-file",
                    str(port_file),
                    "--commands-ack-wait",
                    "5",
                    *ctx.security_args,
                ],
                workdir,
            )
            self._procs.append(replica)
            ports.append(int(await wait_file(port_file, replica, ctx.startup_timeout_s)))
        self._replicas = [f"127.0.0.1:{port}" for port in ports]
        ctx.say(f"ingest replicas A {self._replicas[0]} and B {self._replicas[1]}; archive into {archive_db}")
        self._handover = Handover(ports, self.move_s)
        self._handover_port = await self._handover.start()
        ctx.say(f"handover on 127.0.0.1:{self._handover_port}: the vehicle moves between A and B")
        self._envelope = await asyncio.to_thread(self._sign, ctx)
        self._first = await self._send(self._replicas[1], timeout_ms=1000)
        ctx.say(
            f"command {FLEET_COMMAND_ID} (campaigns.replace) sent through B while the vehicle is offline:"
            f" {self._first['status']}"
        )
        return self._replicas[0]

    def _keys(self, ctx: CloudContext) -> Path:
        if ctx.command_keys is not None:
            return ctx.command_keys
        from tcu.pki import DevPki

        keys = ctx.workdir / "command-keys"
        keys.mkdir(exist_ok=True)
        DevPki(keys).create_command_keys(force=True)
        return keys

    def _sign(self, ctx: CloudContext) -> bytes:
        from tcu.pki import load_signing_key, sign_command

        keys = self._keys(ctx)
        return sign_command(
            load_signing_key(keys / "command-signing.key"),
            command_id=FLEET_COMMAND_ID,
            kind="campaigns.replace",
            target=ctx.vehicle_id,
            payload=_CAMPAIGN.encode(),
            ttl_s=3600.0,
        )

    async def _send(self, target: str, *, timeout_ms: int) -> dict[str, Any]:
        import grpc

        from tcu.api.v1 import fleet_pb2 as fleet_pb
        from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc

        assert self._cloud is not None
        request = fleet_pb.SendCommandRequest(
            vehicle_id=self._cloud.vehicle_id,
            command_id=FLEET_COMMAND_ID,
            kind="campaigns.replace",
            signed_command=self._envelope,
            timeout_ms=timeout_ms,
        )
        async with self._cloud.channel(target) as channel:
            try:
                reply = await fleet_grpc.FleetStub(channel).SendCommand(
                    request, timeout=timeout_ms / 1000 + 10
                )
            except grpc.aio.AioRpcError as exc:
                return {"status": exc.code().name, "reason": str(exc.details())}
        return {
            "status": fleet_pb.CommandStatus.Name(reply.status).removeprefix("COMMAND_STATUS_"),
            "reason": reply.reason,
        }

    def ingest_sim_args(self, ingest_target: str) -> list[str]:
        """The border drive's arguments (the card's SM-DP+ credentials too), with the modem's data
        path leading to the handover (and so to A or B)."""
        return super().ingest_sim_args(f"127.0.0.1:{self._handover_port}")

    def agent_toml(self, workdir: Path, ready: dict[str, Any]) -> str:
        """The border agent, plus ``[commands]`` with the backend's verify key."""
        assert self._cloud is not None
        keys = self._keys(self._cloud) if self._cloud.command_keys is None else self._cloud.command_keys
        return (
            super().agent_toml(workdir, ready)
            + "\n[commands]\n"
            + f"verify_key = {json.dumps(str(keys / 'command-verify.pem'))}\n"
            + f"nonce_store = {json.dumps(str(workdir / 'spool' / 'nonces'))}\n"
        )

    async def settle(self) -> None:
        """Wait until the archive has every message of the stream (Query reads the archive)."""
        import nats

        assert self._cluster is not None and self._cloud is not None
        nc = await nats.connect(servers=self._cluster.urls)
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 60
            while True:
                info = await js.consumer_info("TCU_TELEMETRY", "tcu-archive")
                if not info.num_pending and not info.num_ack_pending:
                    return
                if time.monotonic() > deadline:
                    raise TcuError(
                        f"the archive did not catch up within 60 s: {info.num_pending} messages pending,"
                        f" {info.num_ack_pending} unacknowledged"
                    )
                await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def summarize(self, ctx: ScenarioContext) -> dict[str, Any]:
        from tcu.api.v1 import fleet_pb2 as fleet_pb
        from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc

        extra = await super().summarize(ctx)
        problems: list[str] = extra["scenario_problems"]
        handover = self._handover
        assert handover is not None
        again = await self._send(self._replicas[0], timeout_ms=10_000)
        async with ctx.channel() as channel:
            vehicles = await fleet_grpc.FleetStub(channel).ListVehicles(fleet_pb.ListVehiclesRequest())
        campaigns = sorted(
            f"{c.name} v{c.version}"
            for v in vehicles.vehicles
            if v.vehicle_id == ctx.vehicle_id
            for c in v.campaigns
        )
        if self._first.get("status") != "QUEUED":
            problems.append(
                f"the command sent while the vehicle was offline answered {self._first}, not QUEUED"
            )
        if again.get("status") != "EXECUTED":
            problems.append(f"the command sent again after the drive answered {again}, not EXECUTED")
        if "fleet_demo_watch v1" not in campaigns:
            problems.append(
                f"ListVehicles shows the campaigns {campaigns}, not the pushed fleet_demo_watch v1"
            )
        if min(handover.connections) < 1 or handover.moves < 2:
            problems.append(
                f"the vehicle did not move between the replicas: connections {handover.connections},"
                f" moves {handover.moves}"
            )
        ctx.say(
            f"handover: {handover.connections[0]} connections through A, {handover.connections[1]} through B,"
            f" {handover.moves} moves, {handover.cuts} cut by the handover"
        )
        ctx.say(f"command {FLEET_COMMAND_ID}: {self._first['status']} while offline, {again['status']} after")
        for problem in problems[-4:]:
            ctx.say(f"fleet scenario: {problem}")
        extra.update(
            nats_nodes=3,
            ingest_replicas=2,
            handover_connections=list(handover.connections),
            handover_moves=handover.moves,
            handover_cuts=handover.cuts,
            command_while_offline=self._first.get("status"),
            command_after_drive=again.get("status"),
            command_reason=again.get("reason", ""),
            campaigns=campaigns,
        )
        return extra

    async def aclose(self) -> None:
        if self._handover is not None:
            await self._handover.aclose()
        for proc in reversed(self._procs):
            await proc.stop()
        if self._cluster is not None:
            await asyncio.to_thread(self._cluster.stop)


register("fleet", FleetScenario)
