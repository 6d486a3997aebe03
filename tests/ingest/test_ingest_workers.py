"""``tcu ingest --workers 2``: one port, two processes, one database. A vehicle's connections land on
both workers (the kernel picks, SO_REUSEPORT); every batch is stored once, each ack carries the
vehicle's durable watermark wherever it was stored, and what needs every stream is refused."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import ack_of, batch, hello

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc

REPO = Path(__file__).resolve().parents[2]
VIN = "veh-workers"


async def _start(tmp_path: Path) -> tuple[asyncio.subprocess.Process, int]:
    port_file = tmp_path / "port"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tcu.cli.main", "ingest", "--workers", "2", "--insecure",
        "--listen", "127.0.0.1:0", "--db", str(tmp_path / "w.db"), "--port-file", str(port_file),
        cwd=REPO, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    for _ in range(600):
        if port_file.exists():
            return proc, int(port_file.read_text())
        if proc.returncode is not None:
            break
        await asyncio.sleep(0.05)
    proc.kill()
    _, err = await proc.communicate()
    raise AssertionError(f"tcu ingest --workers 2 did not start: {err.decode()}")


async def _connection(port: int, seqs: range) -> tuple[int, list[tuple[int, bool, int]]]:
    """One new connection: Hello, the batches, their acks; (worker index, [(seq, duplicate, acked)])."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call: Any = ingest_grpc.IngestStub(channel).Upload(timeout=30)
        await call.write(hello(VIN))
        worker = int(dict(await call.initial_metadata())["tcu-ingest-worker"])
        acks = []
        for seq in seqs:
            await call.write(batch(VIN, seq, speed=((seq * 1000, float(seq)), (seq * 1000 + 1, seq + 0.5))))
            ack = await ack_of(call)
            acks.append((ack.batch_seq, ack.duplicate, ack.acked_seq))
        await call.done_writing()
        return worker, acks


def _switches(workers: list[int]) -> int:
    return sum(a != b for a, b in itertools.pairwise(workers))


async def test_two_workers_one_vehicle_nothing_lost_or_doubled(tmp_path: Path) -> None:
    proc, port = await _start(tmp_path)
    try:
        workers: list[int] = []
        stored = 0  # highest seq sent; each connection resends its predecessor's last two
        for _ in range(60):  # new connections until the vehicle went to the other worker and back
            first = max(1, stored - 1)
            worker, acks = await _connection(port, range(first, stored + 4))
            workers.append(worker)
            for seq, duplicate, acked in acks:
                assert duplicate == (seq <= stored), (seq, duplicate, workers)
                assert acked == max(seq, stored), (seq, acked, workers)  # the watermark, from either worker
            stored += 3
            if _switches(workers) >= 2:
                break
        assert _switches(workers) >= 2, workers  # e.g. 0, 1, 0: back on a worker that served it before
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            fleet: Any = fleet_grpc.FleetStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await fleet.ListVehicles(fleet_pb.ListVehiclesRequest())
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "2 worker processes" in (refused.value.details() or "")
            times = []
            async for update in fleet.Query(fleet_pb.QueryRequest(vehicle_id=VIN, signals=["Vehicle.Speed"])):
                times += [t for series in update.series for t in series.t_ns]
        assert len(times) == 2 * stored  # Query (on either worker) reads every batch once
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    conn = sqlite3.connect(tmp_path / "w.db")
    try:
        assert conn.execute("SELECT seq FROM batches ORDER BY seq").fetchall() == [
            (s,) for s in range(1, stored + 1)
        ]
        assert conn.execute("SELECT acked_seq FROM epochs").fetchall() == [(stored,)]
        assert conn.execute("SELECT batches, samples FROM vehicles").fetchall() == [(stored, 2 * stored)]
        assert conn.execute("SELECT count(DISTINCT chunk_id), count(*) FROM chunks").fetchone() == (
            stored,
            stored,
        )
    finally:
        conn.close()


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [
        int(pid)
        for pid in children
        if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()  # not the resource tracker
    ]


async def test_a_worker_that_dies_stops_the_ingest_loudly(tmp_path: Path) -> None:
    proc, _port = await _start(tmp_path)
    try:
        pids = _worker_pids(proc.pid)
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    assert "ended by itself (exit code -9); stopped the others" in err.decode()
    assert not any(_alive(pid) for pid in pids)
