"""CPU per stage of the ingest's path for one batch, in one process (issue 13): where the time goes.

Builds the load generator's batches (:func:`tools.bench.ingest.templates`, the agent's
``BatchBuilder``), stamps vehicle, base time, boot epoch and seq as the generator does,
and runs each through the servicer's stages on this process's CPU clock:
``parse`` (:func:`tcu.ingest.servicer.read_upload_request`), ``validate``
(:func:`tcu.ingest.validate.validate_batch` and ``implausible_samples``) and ``store``
(the writer's group commit, :meth:`SqliteSink._write_group`, ``--group`` batches per
transaction, ``synchronous`` as given). gRPC, TLS and the event loop are not in it:
``tools/bench/ingest.py`` measures the whole process.

Reports, per stage, CPU microseconds per batch and samples per CPU-second
(min/median/max of ``--rounds`` rounds); ``--profile N`` prints the N costliest
functions of a cProfile run of the validate stage. ``PYTHONPATH=OTHER_CHECKOUT`` runs
another checkout's ingest (its ``tcu``) under the same driver for an A/B comparison.
It checks that every batch validated with its sample count and was stored once
(``batches`` rows and ``vehicles.samples``), and exits 1 otherwise.

    .venv/bin/python tools/bench/ingest_stages.py --batches 400 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.append(str(_REPO))  # after PYTHONPATH: another checkout's tcu wins for an A/B run

from tcu.api.v1 import ingest_pb2 as ingest_pb  # noqa: E402
from tcu.ingest.config import IngestConfig  # noqa: E402
from tcu.ingest.model import Batch  # noqa: E402
from tcu.ingest.servicer import read_upload_request  # noqa: E402
from tcu.ingest.store import SqliteSink  # noqa: E402
from tcu.ingest.validate import Limits, implausible_samples, validate_batch, validate_hello  # noqa: E402
from tools.bench.ingest import CATALOG_ID, _stamp, catalog, templates  # noqa: E402 - after sys.path


def _requests(args: argparse.Namespace, vin: str, epoch: int, first_seq: int) -> list[tuple[bytes, int]]:
    batches = templates(args.signals, args.hz, args.batch_s, seed=1)
    base = time.time_ns() - 10**12
    return [
        (
            _stamp(batches[i % len(batches)][0], vin.encode(), base + i * 10**9, epoch, first_seq + i),
            batches[i % len(batches)][1],
        )
        for i in range(args.batches)
    ]


def _round(
    args: argparse.Namespace, sink: SqliteSink, session: Any, limits: Limits, first_seq: int
) -> dict[str, float]:
    requests = _requests(args, "WSTAGES0000000001", 7, first_seq)
    samples = sum(n for _, n in requests)
    c0 = time.process_time()
    parsed = [read_upload_request(data) for data, _ in requests]
    c1 = time.process_time()
    valid: list[Batch] = []
    now = time.time_ns()
    for raw, (_, n) in zip(parsed, requests, strict=True):
        assert raw.message is not None, raw.error
        batch = validate_batch(session, raw.message.batch, limits)
        implausible_samples(batch, now)
        if batch.samples != n:
            raise SystemExit(f"batch seq {batch.seq}: {batch.samples} samples validated, {n} sent")
        valid.append(batch)
    c2 = time.process_time()
    conn = sink._connect_writer()
    try:
        for at in range(0, len(valid), args.group):
            results = sink._write_group(conn, list(valid[at : at + args.group]))
            if any(isinstance(r, BaseException) or r.duplicate for r in results):
                raise SystemExit(f"the store failed or saw duplicates: {results[:3]}")
    finally:
        conn.close()
    c3 = time.process_time()
    n = len(requests)
    return {
        "parse_us_per_batch": (c1 - c0) / n * 1e6,
        "validate_us_per_batch": (c2 - c1) / n * 1e6,
        "store_us_per_batch": (c3 - c2) / n * 1e6,
        "samples": samples,
        "total_cpu_s": c3 - c0,
    }


def _main(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="tcu-bench-stages-"))
    config = IngestConfig(db_path=work / "stages.sqlite", sqlite_synchronous=args.synchronous, insecure=True)
    sink = SqliteSink(config)  # no writer thread: this process writes the groups itself
    limits = Limits()
    hello = ingest_pb.Hello(vehicle_id="WSTAGES0000000001", boot_epoch=7, catalog=catalog(args.signals))
    session = validate_hello(hello, limits)
    assert session.catalog.catalog_id == CATALOG_ID
    rounds: list[dict[str, float]] = []
    try:
        for r in range(args.rounds):
            rounds.append(_round(args, sink, session, limits, 1 + r * args.batches))
        profile = ""
        if args.profile:
            requests = _requests(args, "WSTAGES0000000001", 8, 1)
            parsed = [read_upload_request(data).message for data, _ in requests]
            profiler = cProfile.Profile()
            profiler.enable()
            for message in parsed:
                assert message is not None
                batch = validate_batch(session, message.batch, limits)
                implausible_samples(batch, time.time_ns())
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.profile)
            profile = out.getvalue()
    finally:
        sink._readers.shutdown()
    conn = sqlite3.connect(config.db_path)
    stored_batches, stored_samples = conn.execute(
        "SELECT count(*), (SELECT sum(samples) FROM vehicles) FROM batches"
    ).fetchone()
    conn.close()
    expected = sum(int(r["samples"]) for r in rounds)
    problems = []
    if stored_batches != args.rounds * args.batches or stored_samples != expected:
        problems.append(f"stored {stored_batches} batches, {stored_samples} samples; expected {expected}")

    def stat(key: str) -> list[float]:
        values = sorted(r[key] for r in rounds)
        return [round(values[0], 1), round(statistics.median(values), 1), round(values[-1], 1)]

    per_batch = int(rounds[0]["samples"]) // args.batches
    result: dict[str, Any] = {
        "tcu_from": str(Path(sys.modules["tcu"].__file__ or "").parent.parent),
        "batches_per_round": args.batches,
        "samples_per_batch": per_batch,
        "rounds": args.rounds,
        "group": args.group,
        "synchronous": args.synchronous,
        **{f"{k}_min_med_max": stat(k) for k in ("parse_us_per_batch", "validate_us_per_batch")},
        "store_us_per_batch_min_med_max": stat("store_us_per_batch"),
        "samples_per_cpu_s_min_med_max": sorted(
            round(r["samples"] / r["total_cpu_s"]) for r in rounds
        )[:: max(1, (args.rounds - 1) // 2)][:3],
        "problems": problems,
        "ok": not problems,
    }
    if profile:
        result["validate_profile"] = profile
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=400, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--signals", type=int, default=100)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--batch-s", type=float, default=1.0)
    parser.add_argument("--group", type=int, default=64, help="batches per transaction")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest validate functions")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = _main(args)
    profile = result.pop("validate_profile", "")
    if profile:
        print(profile, file=sys.stderr)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
