"""Benchmark the durable spool: append + ack throughput per durability mode and compression.

Every case runs on the same machine in one run, against a fresh spool directory, with the
same pre-built payloads: realistic columnar ``TelemetryBatch`` protobufs of 2-20 KiB
(a few dozen signals, jittered CAN timestamps, values quantised to their DBC resolution).
The loop appends one batch at a time and acks every ``--ack-every`` batches, as the agent
does with a live link, so the spool stays small and segments are created and deleted.

    .venv/bin/python tools/bench/spool.py --json              # ~20 s, JSON line last
    .venv/bin/python tools/bench/spool.py --seconds 1 --json  # quick look

Reported per case: batches/s, MB/s of payload (MB = 10^6 bytes, before compression),
bytes on disk per batch, and append latency percentiles. The file system type of the spool
directory is reported, since fsync cost depends entirely on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.spool import Spool, SpoolConfig

CASES: list[tuple[str, str]] = [
    ("power-loss", "none"),
    ("power-loss", "zstd"),
    ("crash", "none"),
    ("crash", "zstd"),
]


def build_payloads(count: int, seed: int) -> list[bytes]:
    """Columnar batches like the agent builds; sizes spread over roughly 2-20 KiB."""
    rng = random.Random(seed)
    payloads: list[bytes] = []
    base_ns = time.time_ns()
    for i in range(count):
        batch = telemetry_pb.TelemetryBatch(
            vehicle_id="WVWZZZ1JZXW000001", catalog_id="9f2c4e1a", base_time_ns=base_ns + i * 10**9
        )
        signals = rng.randint(12, 40)
        samples = rng.randint(12, 38)
        for signal_id in range(signals):
            period_ns = rng.choice([10, 20, 100, 1000]) * 1_000_000
            resolution = rng.choice([0.01, 0.1, 1.0, 0.00390625])
            value = rng.uniform(0, 200)
            column = batch.columns.add(signal_id=signal_id)
            t_ns = 0
            for _ in range(samples):
                t_ns += period_ns + rng.randint(-50_000, 50_000)
                value += rng.gauss(0, 2)
                column.t_offset_ns.append(t_ns)
                column.double_values.append(round(value / resolution) * resolution)
        payloads.append(batch.SerializeToString())
    return payloads


def file_system_of(path: Path) -> str:
    """The type of the mount holding ``path`` (longest mount point prefix in /proc/mounts)."""
    best, fs_type = "", "unknown"
    real = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount_point = fields[1]
                inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) > len(best):
                    best, fs_type = mount_point, fields[2]
    except OSError:
        pass
    return fs_type


def run_case(
    directory: Path,
    *,
    durability: str,
    compression: str,
    payloads: list[bytes],
    seconds: float,
    ack_every: int,
) -> dict[str, Any]:
    config = SpoolConfig(
        directory,
        durability=durability,  # type: ignore[arg-type]
        compression=compression,  # type: ignore[arg-type]
        segment_bytes=4 * 1024 * 1024,
        max_bytes=256 * 1024 * 1024,
    )
    latencies_ns: list[int] = []
    payload_bytes = 0
    batches = 0
    with Spool.open(config) as spool:
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            payload = payloads[batches % len(payloads)]
            t0 = time.perf_counter_ns()
            record = spool.append(payload, priority=1, created_ns=time.time_ns())
            latencies_ns.append(time.perf_counter_ns() - t0)
            batches += 1
            payload_bytes += len(payload)
            if batches % ack_every == 0:
                spool.ack(record.seq)
                if time.perf_counter() >= deadline:
                    break
        elapsed = time.perf_counter() - start
    # Bytes on disk per batch, measured separately on a fixed sample (no acks).
    sample_dir = directory.with_name(directory.name + "-size")
    with Spool.open(SpoolConfig(sample_dir, durability="crash", compression=compression)) as spool:  # type: ignore[arg-type]
        for payload in payloads:
            spool.append(payload, priority=1, created_ns=time.time_ns())
        on_disk = spool.stats().bytes
    shutil.rmtree(sample_dir)
    latencies_ns.sort()

    def pct(q: float) -> float:
        return round(latencies_ns[min(len(latencies_ns) - 1, int(q * len(latencies_ns)))] / 1000, 1)

    return {
        "durability": durability,
        "compression": compression,
        "batches": batches,
        "seconds": round(elapsed, 3),
        "batches_per_s": round(batches / elapsed, 1),
        "payload_mb_per_s": round(payload_bytes / elapsed / 1e6, 2),
        "disk_bytes_per_batch": round(on_disk / len(payloads), 1),
        "append_p50_us": pct(0.50),
        "append_p99_us": pct(0.99),
        "append_max_us": round(latencies_ns[-1] / 1000, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON line, last")
    parser.add_argument("--seconds", type=float, default=5.0, help="time per case (default 5; 4 cases)")
    parser.add_argument("--ack-every", type=int, default=10, help="ack after this many appends (default 10)")
    parser.add_argument(
        "--dir", type=Path, default=None, help="parent of the spool directories (default: $TMPDIR)"
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    payloads = build_payloads(64, args.seed)
    sizes = [len(p) for p in payloads]
    root = Path(tempfile.mkdtemp(prefix="tcu-bench-spool-", dir=args.dir))
    try:
        results = []
        for i, (durability, compression) in enumerate(CASES):
            result = run_case(
                root / f"case{i}",
                durability=durability,
                compression=compression,
                payloads=payloads,
                seconds=args.seconds,
                ack_every=args.ack_every,
            )
            results.append(result)
            print(
                f"{durability:>10} {compression:>4}: {result['batches_per_s']:>9.1f} batches/s "
                f"{result['payload_mb_per_s']:>7.2f} MB/s  {result['disk_bytes_per_batch']:>8.0f} B/batch "
                f"on disk  append p50 {result['append_p50_us']} µs p99 {result['append_p99_us']} µs",
                file=sys.stderr if args.json else sys.stdout,
                flush=True,
            )
        summary = {
            "benchmark": "spool",
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "file_system": file_system_of(root),
            "ack_every": args.ack_every,
            "payloads": {
                "count": len(payloads),
                "min_bytes": min(sizes),
                "max_bytes": max(sizes),
                "mean_bytes": round(statistics.fmean(sizes)),
            },
            "cases": results,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
