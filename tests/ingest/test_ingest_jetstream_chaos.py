"""The cluster chaos schedule of issue 14, on real processes: three nats-server nodes, two
``tcu ingest --sink jetstream`` replicas and ``tcu ingest archive``, while three vehicles
upload (reconnecting to the other replica and resending what is unacked on any error):
SIGKILL an ingest replica and start it again, SIGKILL the stream's leader node, SIGKILL the
archive and start it again. Then every acked batch must be archived exactly once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import nats
from test_ingest_jetstream import STREAM, Ledger, archived, upload

from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc
from tcu.demo.nats import NatsCluster, free_port
from tcu.ingest.archive import audit_archive


class Replica:
    """A ``tcu ingest --sink jetstream`` process on a fixed port (the same one after a restart)."""

    def __init__(self, work: Path, name: str, urls: list[str], kit: Any) -> None:
        self.port = free_port()
        self.name = name
        self.work = work
        self.urls = urls
        self.kit = kit
        self.process: subprocess.Popen[bytes] | None = None
        self.channels: list[grpc.aio.Channel] = []

    def start(self) -> None:
        nats_args = [arg for url in self.urls for arg in ("--nats", url)]
        command = [sys.executable, "-m", "tcu.cli.main", "ingest", "--sink", "jetstream", *nats_args]
        command += ["--stream-replicas", "3", "--db", str(self.work / "archive.db"), "--insecure"]
        command += ["--listen", f"127.0.0.1:{self.port}", "--publish-retry", "20"]
        with (self.work / f"{self.name}.log").open("ab") as log:
            self.process = subprocess.Popen(command, stderr=log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)

    async def open_upload(self, vehicle_id: str, boot_epoch: int = 1) -> Any:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.channels.append(channel)
        call = ingest_grpc.IngestStub(channel).Upload(timeout=60)
        await call.write(self.kit.hello(vehicle_id, boot_epoch))
        return call

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def acked_at_least(ledger: Ledger, count: int) -> None:
    for _ in range(6000):
        if len(ledger.acked) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(ledger.acked)} of {count} acks")


async def test_the_cluster_chaos_schedule_loses_and_duplicates_nothing(
    nats_cluster: NatsCluster, tmp_path: Path, kit: Any
) -> None:
    urls = nats_cluster.urls
    replicas = [Replica(tmp_path, name, urls, kit) for name in ("a", "b")]
    for replica in replicas:
        replica.start()
    db, archive_log = tmp_path / "archive.db", tmp_path / "archive.log"
    archive = _archive(db, urls, archive_log)
    ledger = Ledger()
    steps: list[str] = []
    try:
        await asyncio.sleep(2.0)  # the replicas listen
        uploads = asyncio.gather(
            *(upload(replicas, kit, f"VIN{n}", 150, ledger, pace_s=0.01) for n in (1, 2, 3))
        )
        await acked_at_least(ledger, 60)
        replicas[0].kill()
        steps.append(f"replica a killed at {len(ledger.acked)} acks")
        await acked_at_least(ledger, 120)
        nc = await nats.connect(servers=urls)
        try:
            leader = (await nc.jetstream(timeout=10).stream_info(STREAM)).cluster.leader  # type: ignore[union-attr]
        finally:
            await nc.close()
        victim = next(node for node in nats_cluster.nodes if node.name == leader)
        victim.kill()
        replicas[0].start()  # while the cluster replaces the leader
        steps.append(f"nats {leader} killed, replica a restarted at {len(ledger.acked)} acks")
        await acked_at_least(ledger, 240)
        archive.kill()
        archive.wait()
        steps.append(f"archive killed at {len(ledger.acked)} acks with {archived(db)} archived")
        archive = _archive(db, urls, archive_log)
        streams = await uploads
        # The replica started while the leader was being replaced is serving (it waited for the cluster).
        restarted = replicas[0].process
        assert restarted is not None and restarted.poll() is None, (tmp_path / "a.log").read_text()[-2000:]
        victim.start()
        for _ in range(1200):
            if archived(db) >= 450:
                break
            await asyncio.sleep(0.05)
    finally:
        for replica in replicas:
            replica.stop()
            await replica.close()
        archive.terminate()
        archive.wait(20)
    assert len(ledger.acked) == 450, steps
    audit = audit_archive(db, ledger.sent, ledger.acked)
    assert audit.ok and audit.checked == 450, (audit, steps, streams)
    assert max(streams) > 1, steps  # the vehicles did reconnect


def _archive(db: Path, urls: list[str], log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tcu.cli.main", "ingest", "archive", "--db", str(db)]
    command += [arg for url in urls for arg in ("--nats", url)] + ["--stream-replicas", "3"]
    with log.open("ab") as stderr:
        return subprocess.Popen([*command, "--fetch-batch", "8", "--ack-wait", "1"], stderr=stderr)
