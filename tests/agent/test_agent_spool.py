"""The agent on the durable spool: nothing lost across an agent restart while offline;
priority eviction on a tiny spool, counted and delivered upstream when the link returns."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from agent_helpers import agent_config, drive, make_frames, stored_series, wait_until

from tcu.agent import Agent
from tcu.agent.app import open_outbox
from tcu.agent.outbox import SpoolOutbox
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.config import SpoolSettings, UplinkConfig
from tcu.demo.verify import expected_samples, verify_store
from tcu.ingest import IngestConfig, IngestServer
from tcu.signals.dbc import load_dbc
from tcu.spool import Spool, SpoolConfig, SpoolFullError, SpoolUnavailableError
from tcu.uplink import Uplink


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_batches_spooled_while_offline_survive_an_agent_restart(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    port = _free_port()  # nothing listens yet: the link is down
    channel = f"tcu-test-{uuid.uuid4().hex}"
    config = dataclasses.replace(
        agent_config(channel, port, small_dbc, small_mapping),
        spool=SpoolSettings(directory=tmp_path / "spool", durability="crash"),
        uplink=UplinkConfig(
            target=f"127.0.0.1:{port}",
            insecure=True,
            backoff_initial_s=0.05,
            backoff_max_s=0.3,
            drain_timeout_s=0.5,
        ),
    )
    db = load_dbc(small_dbc)
    frames, truth = make_frames(db, seconds=4.0)
    half = len(frames) // 2

    # First life: offline the whole time; stopped with batches still unacked.
    first = Agent(config)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await drive(first, channel, frames[:half])
    stop.set()
    final = await asyncio.wait_for(task, 30)
    assert final.batches_built >= 1 and final.batches_unacked == final.batches_built
    epoch = first.outbox.boot_epoch

    # The link comes back; a second life on the same spool sends the old batches first.
    server = IngestServer(
        IngestConfig(insecure=True, listen=f"127.0.0.1:{port}", db_path=tmp_path / "ingest.sqlite")
    )
    await server.start()
    try:
        second = Agent(config)
        assert second.outbox.boot_epoch == epoch  # same spool, same epoch: retries dedup
        stop2 = asyncio.Event()
        task2 = asyncio.create_task(second.run(stop2))
        await drive(second, channel, frames[half:])
        await wait_until(lambda: second.outbox.unacked() == 0)
        stop2.set()
        await asyncio.wait_for(task2, 30)
        stored = await stored_series(port, "WTCUTEST000000001")
    finally:
        await server.stop(1.0)
    # The agent's own Vehicle.Tcu.Spool.* signals are checked elsewhere; compare the CAN signals.
    can_names = {s.name for s in second.catalog.signals if not s.origin}
    stored = {name: series for name, series in stored.items() if name in can_names}
    assert len(stored) == len(can_names)
    result = verify_store(expected_samples(truth, second.catalog), stored, second.catalog)
    assert (result.samples_lost, result.samples_unexpected, result.value_errors) == (0, 0, 0)


def _batch(vehicle_id: str, catalog_id: str, t_ns: int, n: int) -> bytes:
    batch = telemetry_pb.TelemetryBatch(vehicle_id=vehicle_id, catalog_id=catalog_id, base_time_ns=t_ns)
    batch.columns.add(signal_id=1, t_offset_ns=list(range(n)), double_values=[float(i) for i in range(n)])
    return batch.SerializeToString()


async def test_tiny_spool_evicts_low_priority_first_and_the_ingest_learns_the_count(tmp_path: Path) -> None:
    vehicle = "WTCUEVICT00000001"
    catalog = telemetry_pb.SignalCatalog(catalog_id="c1")
    catalog.signals.add(signal_id=1, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE)
    spool = Spool.open(
        SpoolConfig(
            directory=tmp_path / "spool", durability="crash", max_bytes=64 * 1024, segment_bytes=8 * 1024
        )
    )
    outbox = SpoolOutbox(spool, vehicle_id=vehicle)
    # Offline: 20 batches of ~2.6 KiB alternate between priority 0 (bulk) and 5 (events): ~52 KiB
    # of high priority alone would fit, so eviction must take the low-priority ones.
    seqs = {}
    for i in range(40):
        priority = 5 if i % 2 else 0
        seqs[
            outbox.append(
                _batch(vehicle, "c1", 1_000_000_000 * (i + 1), 300), priority=priority, created_ns=i + 1
            )
        ] = priority
    stats = spool.stats()
    evicted = dict(stats.evicted_by_priority)
    assert evicted.get(0, 0) > 0
    assert evicted.get(5, 0) == 0  # nothing of the higher priority went while low priority remained
    tombstones = [s for s, _payload in outbox.pending() if s in seqs]
    assert len(tombstones) == 40

    server = IngestServer(
        IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "ingest.sqlite")
    )
    port = await server.start()
    uplink = Uplink(
        UplinkConfig(target=f"127.0.0.1:{port}", insecure=True, backoff_initial_s=0.05),
        hello=ingest_pb.Hello(vehicle_id=vehicle, boot_epoch=outbox.boot_epoch, catalog=catalog),
        outbox=outbox,
    )
    task = asyncio.create_task(uplink.run())
    try:
        uplink.notify()
        assert await uplink.wait_drained(20)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            info = (await fleet_grpc.FleetStub(ch).ListVehicles(fleet_pb.ListVehiclesRequest())).vehicles[0]
    finally:
        task.cancel()
        await server.stop(1.0)
        spool.close()
    assert info.batches == 40  # every sequence number arrived: the watermark moved past the lost ones
    assert info.lost_batches == evicted[0]
    assert info.samples == (40 - evicted[0]) * 300


async def test_a_spooled_batch_that_fails_its_checksum_when_sent_is_delivered_as_a_data_loss(
    tmp_path: Path,
) -> None:
    """Bit rot in a spooled batch, found when the uplink reads it: the stream goes on and the
    ingest counts the loss under the same seq, with the file and offset in its reason."""
    vehicle = "WTCUROT0000000001"
    catalog = telemetry_pb.SignalCatalog(catalog_id="c1")
    catalog.signals.add(signal_id=1, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE)
    spool = Spool.open(SpoolConfig(directory=tmp_path / "spool", durability="crash"))
    outbox = SpoolOutbox(spool, vehicle_id=vehicle)
    payloads = [_batch(vehicle, "c1", (i + 1) * 10**9, 50) for i in range(10)]
    for payload in payloads:
        outbox.append(payload, priority=0, created_ns=time.time_ns())
    (segment,) = (tmp_path / "spool").glob("seg-*.log")
    offset = sum(36 + len(p) for p in payloads[:3])  # seq 4
    data = bytearray(segment.read_bytes())
    data[offset + 36 + 5] ^= 0xFF
    segment.write_bytes(bytes(data))

    server = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "i.db"))
    port = await server.start()
    uplink = Uplink(
        UplinkConfig(target=f"127.0.0.1:{port}", insecure=True, backoff_initial_s=0.05),
        hello=ingest_pb.Hello(vehicle_id=vehicle, boot_epoch=outbox.boot_epoch, catalog=catalog),
        outbox=outbox,
    )
    task = asyncio.create_task(uplink.run())
    try:
        uplink.notify()
        drained = await uplink.wait_drained(15)
        assert not task.done(), task.exception()
        assert drained
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            info = (await fleet_grpc.FleetStub(ch).ListVehicles(fleet_pb.ListVehiclesRequest())).vehicles[0]
    finally:
        task.cancel()
        await server.stop(1.0)
        spool.close()
    assert (info.batches, info.lost_batches, info.samples) == (10, 1, 9 * 50)
    with sqlite3.connect(tmp_path / "i.db") as db:
        rows = db.execute("SELECT seq, loss_reason FROM batches WHERE loss_reason IS NOT NULL").fetchall()
    assert rows == [(4, f"corrupt: {segment} offset {offset}: fails its checksum on read")]


def test_unusable_spool_directory_refuses_to_start_and_says_where(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    """No silent fallback to memory when a spool is configured."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    config = dataclasses.replace(
        agent_config("unused", 1, small_dbc, small_mapping),
        spool=SpoolSettings(directory=blocker / "spool"),
    )
    with pytest.raises(SpoolUnavailableError, match=re.escape(f"{blocker / 'spool'}: cannot create")):
        open_outbox(config)


def test_lost_state_file_keeps_the_epoch_and_the_spooled_batches(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    config = dataclasses.replace(
        agent_config("unused", 1, small_dbc, small_mapping),
        spool=SpoolSettings(directory=tmp_path / "spool", durability="crash"),
    )
    first = open_outbox(config)
    assert isinstance(first, SpoolOutbox)
    for i in range(5):
        payload = _batch("WTCUTEST000000001", "c1", (i + 1) * 10**9, 3)
        first.append(payload, priority=0, created_ns=time.time_ns())
    epoch = first.boot_epoch
    first.spool.close()
    (tmp_path / "spool" / "state.json").unlink()
    second = open_outbox(config)
    assert isinstance(second, SpoolOutbox)
    assert second.boot_epoch == epoch
    assert [seq for seq, _payload in second.pending()] == [1, 2, 3, 4, 5]
    second.spool.close()


def test_a_second_agent_on_a_locked_spool_refuses_to_start_in_one_line(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    spool_dir = tmp_path / "spool"
    config_path = tmp_path / "agent.toml"
    config_path.write_text(
        f"""
[vehicle]
id = "WTCUTEST000000001"
[[bus]]
name = "can0"
interface = "virtual"
channel = "tcu-test-{uuid.uuid4().hex}"
dbc = ["{small_dbc}"]
[signals]
mapping = "{small_mapping}"
[uplink]
target = "127.0.0.1:1"
insecure = true
[spool]
directory = "{spool_dir}"
"""
    )
    with Spool.open(SpoolConfig(spool_dir)):  # the first agent holds the spool
        done = subprocess.run(
            [sys.executable, "-m", "tcu.cli.main", "agent", "--config", str(config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, done.stderr
    assert f"{spool_dir / 'LOCK'}: the spool is locked by another process (pid {os.getpid()})" in lines[0]
    assert "Traceback" not in done.stderr


async def test_a_restart_on_a_long_spool_sends_again(tmp_path: Path) -> None:
    """100 batches acked, 100 spooled while offline, then a new process on the same spool: the
    uplink sends at once (its window counts from the spool's ack watermark, not from 0, which
    waited forever for an ack: found by the chaos run)."""
    vehicle = "WTCURESTART000001"
    catalog = telemetry_pb.SignalCatalog(catalog_id="c1")
    catalog.signals.add(signal_id=1, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE)
    config = SpoolConfig(directory=tmp_path / "spool", durability="crash")
    server = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "i.db"))
    port = await server.start()

    async def upload(outbox: SpoolOutbox) -> Uplink:
        uplink = Uplink(
            UplinkConfig(target=f"127.0.0.1:{port}", insecure=True),
            hello=ingest_pb.Hello(vehicle_id=vehicle, boot_epoch=outbox.boot_epoch, catalog=catalog),
            outbox=outbox,
        )
        task = asyncio.create_task(uplink.run())
        try:
            uplink.notify()
            assert await uplink.wait_drained(15)
        finally:
            task.cancel()
        return uplink

    try:
        first = SpoolOutbox(Spool.open(config), vehicle_id=vehicle)
        for i in range(100):
            first.append(_batch(vehicle, "c1", (i + 1) * 10**9, 2), priority=0, created_ns=i + 1)
        await upload(first)
        for i in range(100, 200):  # offline
            first.append(_batch(vehicle, "c1", (i + 1) * 10**9, 2), priority=0, created_ns=i + 1)
        first.spool.close()
        second = SpoolOutbox(Spool.open(config), vehicle_id=vehicle)  # the next process
        assert second.acked_seq == 100
        uplink = await upload(second)
        second.spool.close()
    finally:
        await server.stop(0.5)
    assert uplink.stats.batches_sent == 100
    assert uplink.stats.acked_seq == 200


async def test_a_disk_that_refuses_writes_is_reported_as_telemetry(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    """A spool whose appends fail keeps the batches in memory and reports the condition upstream."""
    config = dataclasses.replace(
        agent_config("unused", 1, small_dbc, small_mapping),
        spool=SpoolSettings(directory=tmp_path / "spool", durability="crash"),
    )
    agent = Agent(config)
    outbox = agent.outbox
    assert isinstance(outbox, SpoolOutbox)

    def refuse(*args: object, **kwargs: object) -> object:
        raise SpoolFullError(f"{tmp_path / 'spool'}: cannot append: No space left on device")

    real_append = outbox.spool.append
    outbox.spool.append = refuse  # type: ignore[method-assign]
    assert outbox.append(b"x", priority=0, created_ns=1) == 0  # waits in memory
    health = next(s for s in agent.sources if s.name == "spool-health")
    health.sample(agent.emitter)  # type: ignore[attr-defined]
    outbox.spool.append = real_append  # type: ignore[method-assign]
    assert outbox.append(b"y", priority=0, created_ns=2) == 2  # both stored, in order
    payload, _ = agent.builder.build()
    batch = telemetry_pb.TelemetryBatch.FromString(payload)
    names = {s.signal_id: s.name for s in agent.catalog.signals}
    values = {names[c.signal_id]: (list(c.double_values), list(c.string_values)) for c in batch.columns}
    assert values["Vehicle.Tcu.Spool.AppendErrors"][0] == [1.0]
    assert "No space left on device" in values["Vehicle.Tcu.Spool.Error"][1][0]
    assert [seq for seq, _ in outbox.pending()] == [1, 2]
    outbox.spool.close()
