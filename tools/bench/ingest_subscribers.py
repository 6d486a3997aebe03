"""Ingest memory with Fleet.Subscribe clients that never read (issue 10 item 6).

Starts ``tcu ingest`` as a process (insecure, loopback, port 0), opens ``--subscribers``
Subscribe streams that never read, and uploads ``--batches`` batches of about 600 KB (150
strings of 4000 bytes) from one vehicle, reading the acks every 16 batches. Reports the
ingest's RSS before, at its peak (sampled at each ack read) and after, the upload's wall
time, and how each subscriber stream ended (read only after the upload, 5 s each).

    .venv/bin/python tools/bench/ingest_subscribers.py --batches 600 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc
from tcu.api.v1 import telemetry_pb2 as telemetry_pb

_AIO: Any = grpc.aio  # grpc-stubs lacks aio.EOF


def _rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


async def run(batches: int, subscribers: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="tcu-bench-subs-"))
    port_file = work / "port"
    with (work / "ingest.log").open("w") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 - one child, waited for below
            [
                sys.executable,
                "-m",
                "tcu.cli.main",
                "ingest",
                "--insecure",
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(work / "i.db"),
                "--port-file",
                str(port_file),
                "--sqlite-synchronous",
                "NORMAL",
            ],
            stderr=log,
        )
    try:
        while not port_file.exists():  # noqa: ASYNC110 - another process writes it
            await asyncio.sleep(0.1)
        target = f"127.0.0.1:{int(port_file.read_text())}"
        channels: list[Any] = [grpc.aio.insecure_channel(target) for _ in range(subscribers + 1)]
        request = fleet_pb.SubscribeRequest()
        subs: list[Any] = [fleet_grpc.FleetStub(ch).Subscribe(request) for ch in channels[1:]]
        await asyncio.sleep(1)
        before = peak = _rss_mib(proc.pid)
        catalog = telemetry_pb.SignalCatalog(catalog_id="c")
        catalog.signals.add(signal_id=1, name="Vehicle.Text", type=telemetry_pb.VALUE_TYPE_STRING)
        call: Any = ingest_grpc.IngestStub(channels[0]).Upload()
        hello = ingest_pb.Hello(vehicle_id="V1", boot_epoch=1, catalog=catalog)
        await call.write(ingest_pb.UploadRequest(hello=hello))
        started = time.monotonic()
        for seq in range(1, batches + 1):
            batch = telemetry_pb.TelemetryBatch(
                vehicle_id="V1", boot_epoch=1, seq=seq, catalog_id="c", base_time_ns=seq * 10**9
            )
            batch.columns.add(signal_id=1, t_offset_ns=list(range(150)), string_values=["x" * 4000] * 150)
            await call.write(ingest_pb.UploadRequest(batch=batch))
            if seq % 16 == 0 or seq == batches:
                while (await call.read()).ack.batch_seq != seq:
                    pass
                peak = max(peak, _rss_mib(proc.pid))
        upload_s = time.monotonic() - started
        await asyncio.sleep(1)
        after = _rss_mib(proc.pid)
        ended: list[str] = []
        for sub in subs:
            try:
                while await asyncio.wait_for(sub.read(), 5) is not _AIO.EOF:
                    pass
                ended.append("EOF")
            except grpc.aio.AioRpcError as exc:
                ended.append(exc.code().name)
            except TimeoutError:
                ended.append("still open")
        for ch in channels:
            await ch.close()
    finally:
        proc.terminate()
        proc.wait()
    return {
        "batches": batches,
        "subscribers": subscribers,
        "rss_before_mib": before,
        "rss_peak_mib": max(peak, after),
        "rss_after_mib": after,
        "upload_s": round(upload_s, 1),
        "subscriber_ends": ended,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=600)
    parser.add_argument("--subscribers", type=int, default=4)
    parser.add_argument("--json", action="store_true", help="the result as one JSON line")
    args = parser.parse_args()
    result = asyncio.run(run(args.batches, args.subscribers))
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
