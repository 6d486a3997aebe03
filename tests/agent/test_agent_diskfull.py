"""The agent's spool on a full disk, with the ingest down (issue 10 item 1).

The disk is either a real 2 MiB tmpfs (needs root to mount; skipped with the reason otherwise)
or, without root, a directory whose writes are refused with ENOSPC once the files in it would
exceed 2 MiB: ``os.write``, ``os.pwrite`` and ``os.posix_fallocate`` are wrapped for the file
descriptors under that directory, which is where every write of the spool goes through.

Either way: the spool fills the disk, evicts by its stated policy (lowest priority, oldest
first), never crashes the agent (not on an append, not on the first ack), keeps at most its
configured backlog in RAM, and every batch the agent built reaches the ingest exactly once,
stored or as a counted ``DataLoss``. A restart with the disk still full keeps the spool's epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from agent_helpers import agent_config, drive, make_frames, wait_until

from tcu.agent import Agent
from tcu.agent.outbox import SpoolOutbox
from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.config import BatchConfig, SpoolSettings, UplinkConfig, load_agent_config
from tcu.errors import ConfigError
from tcu.ingest import IngestConfig, IngestServer
from tcu.signals.dbc import load_dbc
from tcu.spool import Spool, SpoolConfig, SpoolFullError
from tcu.uplink import Uplink

DISK_BYTES = 2 * 1024 * 1024
BACKLOG_BYTES = 256 * 1024
VEHICLE = "WTCUDISKFULL00001"
SAMPLES = 400  # about 4.5 KiB per batch
BATCHES = 1200  # about 5.4 MiB: more than twice the disk


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeFullDisk:
    """Refuse writes under ``root`` with ENOSPC once the files there would exceed ``capacity``."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = str(root.resolve())
        self.capacity = capacity
        self.refused = 0
        self._write: Callable[..., int] = os.write
        self._pwrite: Callable[..., int] = os.pwrite
        self._fallocate: Callable[..., None] = os.posix_fallocate

    def _path(self, fd: int) -> str | None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        return path if path.startswith(self.root + os.sep) else None

    def _used(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(dirpath, name)).st_size
        return total

    def _check(self, fd: int, end: int) -> None:
        if self._path(fd) is None:
            return
        growth = end - os.fstat(fd).st_size
        if growth > 0 and self._used() + growth > self.capacity:
            self.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, fd: int, data: bytes | memoryview) -> int:
        self._check(fd, os.lseek(fd, 0, os.SEEK_CUR) + len(data))
        return self._write(fd, data)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        self._check(fd, offset + len(data))
        return self._pwrite(fd, data, offset)

    def posix_fallocate(self, fd: int, offset: int, length: int) -> None:
        self._check(fd, offset + length)
        self._fallocate(fd, offset, length)


@pytest.fixture
def fake_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "disk"
    root.mkdir()
    disk = FakeFullDisk(root, DISK_BYTES)
    monkeypatch.setattr(os, "write", disk.write)
    monkeypatch.setattr(os, "pwrite", disk.pwrite)
    monkeypatch.setattr(os, "posix_fallocate", disk.posix_fallocate)
    yield root
    assert disk.refused > 0  # the disk did fill up


@contextlib.contextmanager
def _tmpfs(root: Path, size: int) -> Iterator[Path]:
    root.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the fake-disk variant of this test runs instead)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


@pytest.fixture
def tmpfs_disk(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path / "tmpfs", DISK_BYTES) as root:
        yield root


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path / "small-tmpfs", 128 * 1024) as root:
        yield root


def _batch(i: int) -> bytes:
    batch = telemetry_pb.TelemetryBatch(vehicle_id=VEHICLE, catalog_id="c1", base_time_ns=(i + 1) * 10**9)
    batch.columns.add(
        signal_id=1, t_offset_ns=list(range(SAMPLES)), double_values=[float(i + k) for k in range(SAMPLES)]
    )
    return batch.SerializeToString()


async def _deliver(outbox: SpoolOutbox, db: Path) -> tuple[fleet_pb.VehicleInfo, list[tuple[int, str, int]]]:
    catalog = telemetry_pb.SignalCatalog(catalog_id="c1")
    catalog.signals.add(signal_id=1, name="Vehicle.Speed", unit="km/h", type=telemetry_pb.VALUE_TYPE_DOUBLE)
    server = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=db))
    port = await server.start()
    uplink = Uplink(
        UplinkConfig(target=f"127.0.0.1:{port}", insecure=True, backoff_initial_s=0.05),
        hello=ingest_pb.Hello(vehicle_id=VEHICLE, boot_epoch=outbox.boot_epoch, catalog=catalog),
        outbox=outbox,
    )
    task = asyncio.create_task(uplink.run())
    try:
        uplink.notify()
        drained = await uplink.wait_drained(60)
        assert not task.done(), task.exception()  # acks on a full disk must not crash the uplink
        assert drained
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            info = (await fleet_grpc.FleetStub(ch).ListVehicles(fleet_pb.ListVehiclesRequest())).vehicles[0]
    finally:
        task.cancel()
        await server.stop(1.0)
    with sqlite3.connect(db) as conn:
        losses = conn.execute(
            "SELECT seq, loss_reason, loss_priority FROM batches WHERE loss_reason IS NOT NULL ORDER BY seq"
        ).fetchall()
    return info, losses


async def _offline_fill_then_deliver(directory: Path, db: Path) -> None:
    config = SpoolConfig(directory, durability="crash", segment_bytes=64 * 1024)  # max_bytes >> the disk
    spool = Spool.open(config)
    outbox = SpoolOutbox(spool, vehicle_id=VEHICLE, backlog_bytes=BACKLOG_BYTES)
    epoch = spool.boot_epoch
    high = set()
    for i in range(BATCHES):
        priority = 5 if i % 10 == 0 else 0  # the events: about 0.5 MiB, they fit on the disk
        if priority:
            high.add(i)
        outbox.append(_batch(i), priority=priority, created_ns=time.time_ns())
        assert outbox.backlog_bytes() <= BACKLOG_BYTES  # RAM stays bounded
        if i == BATCHES // 2:
            # The agent restarts with the disk still full: the same spool, the same epoch.
            spool.close()
            spool = Spool.open(config)
            assert spool.boot_epoch == epoch
            outbox = SpoolOutbox(spool, vehicle_id=VEHICLE, backlog_bytes=BACKLOG_BYTES)
    assert spool.stats().bytes <= DISK_BYTES
    try:
        info, losses = await _deliver(outbox, db)
    finally:
        spool.close()
    # Every batch built reached the ingest once: stored, or as a counted DataLoss in its place.
    assert info.batches == BATCHES
    assert info.lost_batches == len(losses) > 0
    assert info.samples == (BATCHES - len(losses)) * SAMPLES
    assert {priority for _seq, _reason, priority in losses} == {0}  # the events survived
    assert {reason for _seq, reason, _priority in losses} <= {"evicted", "unspooled"}


async def test_full_fake_disk_evicts_counts_and_delivers_everything(
    fake_full_disk: Path, tmp_path: Path
) -> None:
    await _offline_fill_then_deliver(fake_full_disk / "spool", tmp_path / "ingest.sqlite")


async def test_full_tmpfs_evicts_counts_and_delivers_everything(tmpfs_disk: Path, tmp_path: Path) -> None:
    await _offline_fill_then_deliver(tmpfs_disk / "spool", tmp_path / "ingest.sqlite")


async def test_disk_full_of_other_files_drops_from_the_bounded_backlog_and_reports_each_loss(
    fake_full_disk: Path, tmp_path: Path
) -> None:
    """Nothing of the spool's own can be evicted (the disk is full of someone else's file): the
    backlog stays within its bound by dropping its oldest batches, and each dropped batch still
    reaches the ingest as an "unspooled" DataLoss once the disk has room again."""
    config = SpoolConfig(fake_full_disk / "spool", durability="crash", segment_bytes=64 * 1024)
    spool = Spool.open(config)
    outbox = SpoolOutbox(spool, vehicle_id=VEHICLE, backlog_bytes=BACKLOG_BYTES)
    hog = fake_full_disk / "someone-elses.log"
    used = sum(p.stat().st_size for p in config.directory.iterdir() if p.is_file())
    with hog.open("wb") as fh:  # fills the rest of the disk (written outside the fake's wrapper)
        fh.write(b"\0" * (DISK_BYTES - used - 2048))
    built = 300
    for i in range(built):
        outbox.append(_batch(i), priority=0, created_ns=time.time_ns())
        assert outbox.backlog_bytes() <= BACKLOG_BYTES
    assert outbox.backlog_dropped > 0
    assert outbox.unacked() == built  # stored, waiting in memory, or a loss still to be written
    hog.unlink()  # the operator frees the disk
    try:
        info, losses = await _deliver(outbox, tmp_path / "ingest.sqlite")
    finally:
        spool.close()
    assert info.batches == built
    unspooled = [seq for seq, reason, _prio in losses if reason == "unspooled"]
    assert len(unspooled) == outbox.backlog_dropped
    assert info.lost_batches == len(losses)
    assert info.samples == (built - len(losses)) * SAMPLES


def test_the_ack_watermark_file_is_allocated_when_the_spool_is_created(tmp_path: Path) -> None:
    with Spool.open(SpoolConfig(tmp_path / "spool")) as spool:
        assert (tmp_path / "spool" / "ack").stat().st_size == 32  # both slots, before any ack
        assert (tmp_path / "spool" / "reserved").stat().st_size == 32
        assert spool.stats().headroom_bytes == 4 * 1024 * 1024 + 64 * 1024
        assert (tmp_path / "spool" / "headroom").stat().st_size == spool.stats().headroom_bytes


def test_spool_backlog_and_damage_settings_are_read_and_checked(
    tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    base = f'[vehicle]\nid = "WTCUCONF000000001"\n[signals]\nmapping = "{small_mapping}"\n'
    base += f'[[bus]]\nname = "can0"\ninterface = "virtual"\ndbc = ["{small_dbc}"]\n'
    base += '[uplink]\ntarget = "127.0.0.1:1"\ninsecure = true\n'
    path = tmp_path / "agent.toml"
    path.write_text(base + '[spool]\ndirectory = "s"\nbacklog_bytes = 1024\non_damage = "start-fresh"\n')
    spool = load_agent_config(path).spool
    assert spool is not None and (spool.backlog_bytes, spool.on_damage) == (1024, "start-fresh")
    path.write_text(base + '[spool]\ndirectory = "s"\non_damage = "ignore"\n')
    with pytest.raises(ConfigError, match=r"spool\.on_damage"):
        load_agent_config(path)


async def test_the_agent_on_a_full_tmpfs_keeps_running_and_every_batch_reaches_the_ingest(
    small_tmpfs: Path, tmp_path: Path, small_dbc: Path, small_mapping: Path
) -> None:
    """The whole agent (buses, catalogs next to the spool, spool health, a stats file on the
    same disk, uplink) on a 128 KiB tmpfs with the ingest down, then up: it does not stop, and
    every batch it built is stored or a DataLoss at the ingest."""
    spool_dir = small_tmpfs / "spool"
    port = _free_port()
    channel = f"tcu-test-{uuid.uuid4().hex}"
    config = dataclasses.replace(
        agent_config(channel, port, small_dbc, small_mapping),
        batch=BatchConfig(max_samples=10, max_age_ms=1000),
        spool=SpoolSettings(
            directory=spool_dir, durability="crash", segment_bytes=4096, backlog_bytes=16 * 1024
        ),
        uplink=UplinkConfig(
            target=f"127.0.0.1:{port}", insecure=True, backoff_initial_s=0.05, backoff_max_s=0.3
        ),
    )
    frames, _truth = make_frames(load_dbc(small_dbc), seconds=120.0)
    agent = Agent(config, stats_path=small_tmpfs / "stats.json")
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await drive(agent, channel, frames)
    assert not task.done()
    outbox = agent.outbox
    assert isinstance(outbox, SpoolOutbox)
    assert outbox.spool.stats().disk_full > 0  # the disk did fill up
    server = IngestServer(IngestConfig(insecure=True, listen=f"127.0.0.1:{port}", db_path=tmp_path / "i.db"))
    await server.start()
    try:
        await wait_until(lambda: outbox.unacked() == 0, timeout_s=60)
        stop.set()
        final = await asyncio.wait_for(task, 30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            info = (await fleet_grpc.FleetStub(ch).ListVehicles(fleet_pb.ListVehiclesRequest())).vehicles[0]
    finally:
        await server.stop(1.0)
    assert info.batches == final.batches_built
    assert 0 < info.lost_batches < info.batches


def test_losses_beyond_the_exact_list_are_merged_but_each_still_becomes_a_tombstone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool.open(SpoolConfig(tmp_path / "spool", durability="crash"))
    outbox = SpoolOutbox(spool, vehicle_id=VEHICLE, backlog_batches=1, max_pending_losses=3)
    now = time.time_ns()

    def refuse(*args: object, **kwargs: object) -> object:
        raise SpoolFullError(f"{tmp_path / 'spool'}: cannot append: No space left on device")

    with monkeypatch.context() as m:
        m.setattr(spool, "append", refuse)
        m.setattr(spool, "append_tombstone", refuse)
        for i in range(10):
            assert outbox.append(_batch(i), priority=i % 2, created_ns=now + i) == 0
        assert (outbox.backlog_dropped, outbox.pending_losses(), outbox.unacked()) == (9, 9, 10)
    sent = list(outbox.pending())  # a retry point (so are append and ack): all of it, in order
    records = list(spool.pending())
    assert [seq for seq, _payload in sent] == [r.seq for r in records]
    spool.close()
    assert [r.seq for r in records] == list(range(1, 11))
    assert all(r.tombstone == "unspooled" for r in records[:9]) and records[9].tombstone is None
    exact = [(r.priority, r.created_ns - now) for r in records[:3]]
    assert exact == [(0, 0), (1, 1), (0, 2)]
    merged = sorted((r.priority, r.created_ns - now) for r in records[3:9])
    assert merged == [(0, 4)] * 3 + [(1, 3)] * 3  # per priority, with the first one's time
    assert outbox.pending_losses() == 0
