"""Fleet load generator for ``tcu ingest`` (issues 13 and 14): N vehicles, real Upload streams.

Starts ``tcu ingest`` as its own process on a free loopback port (mTLS with a development
PKI made here, one certificate per vehicle; ``--insecure`` for plain TCP), then
``--processes`` client processes that each open one channel and one Upload stream per
vehicle (its own identity), send a Hello and then batches built with the project's
:class:`~tcu.collect.batch.BatchBuilder` (``--signals`` signals at ``--hz``, ``--batch-s``
seconds per batch), ``--batches-per-s`` per vehicle (0: as fast as the acks allow, at most
``--window`` unacked per stream). Batch templates are built once; each send stamps the
vehicle id, base time, boot epoch and seq onto the template's bytes (protobuf's last field
wins, as the uplink stamps spooled batches).

Measured after ``--warmup`` seconds for ``--duration`` seconds: acked samples/s, ack
latency p50/p99 from each batch's scheduled send time (so a sender held back by a full
window counts its wait), the ingest's CPU (cores) and RSS, and after a clean stop the
database's bytes per stored sample. Then it checks: every acked batch is in ``batches``
exactly once with its sample count, the sample store holds exactly that many samples per
batch, nothing unacked was stored, and every ack was for a batch sent. ``--query`` also
times ``Fleet.Query`` of the vehicle with the most samples (all signals, checked
time-ordered and complete). It exits 1 when a check fails; ``--self-test`` deletes one
batch's samples before the check to show that it does.

``--ingest-src DIR`` runs the ingest from another checkout's sources (``PYTHONPATH``), so
that two versions can be compared with the same generator.

``--sink jetstream`` runs the scale-out layout instead: ``--nats-nodes`` nats-server processes
(1, or a 3-node cluster; the stream and its buckets get as many replicas), ``--ingest-replicas``
``tcu ingest --sink jetstream`` processes (the client processes spread over them) and one
``tcu ingest archive``; the check then reads the archive's database once it has caught up.
The CPU of every process is reported (``cpu_cores``), with samples per CPU-second of them all
and each group's CPU per million acked samples.

    .venv/bin/python tools/bench/ingest.py --vehicles 100 --duration 20 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.collect.batch import BatchBuilder
from tcu.wire import varint as _varint

_AIO: Any = grpc.aio  # grpc-stubs lacks aio.EOF

CATALOG_ID = "bench-catalog-1"
TEMPLATES = 16
_RESOLUTIONS = (0.01, 0.1, 1.0, 0.5, 0.001, 0.25)


@dataclass(frozen=True)
class Plan:
    target: str
    insecure: bool
    ca: str
    vehicles: list[tuple[str, str, str]]  # (vin, cert, key)
    signals: int
    hz: float
    batch_s: float
    batches_per_s: float
    window: int
    seed: int


def catalog(signals: int) -> telemetry_pb.SignalCatalog:
    cat = telemetry_pb.SignalCatalog(catalog_id=CATALOG_ID)
    for i in range(signals):
        cat.signals.add(
            signal_id=i + 1,
            name=f"Vehicle.Bench.Signal{i:04d}",
            unit="u",
            type=telemetry_pb.VALUE_TYPE_DOUBLE,
            source=f"can0/BENCH_{i // 8}.S{i}",
            resolution=_RESOLUTIONS[i % len(_RESOLUTIONS)],
            period_ms=int(1000 / 10),
        )
    return cat


def templates(signals: int, hz: float, batch_s: float, seed: int) -> list[tuple[bytes, int]]:
    """``TEMPLATES`` batches (bytes without identity, samples) built with the agent's BatchBuilder.

    Per signal a random walk quantised to its resolution (a third of the signals stay
    constant for a while, like gear or door states); times are CAN-like: the period plus a
    few hundred microseconds of jitter.
    """
    rng = np.random.default_rng(seed)
    per = max(1, round(hz * batch_s))
    period_ns = int(1e9 / hz)
    level = rng.uniform(-100, 100, signals)
    out: list[tuple[bytes, int]] = []
    for _ in range(TEMPLATES):
        builder = BatchBuilder(vehicle_id="V", catalog_id=CATALOG_ID, max_samples=10**9, max_age_ms=10**9)
        columns = []
        for i in range(signals):
            res = _RESOLUTIONS[i % len(_RESOLUTIONS)]
            t = np.arange(per, dtype=np.int64) * period_ns + rng.integers(0, 400_000, per)
            if i % 3 == 2:
                steps = np.zeros(per)
                steps[rng.integers(0, per)] = rng.integers(-1, 2)
            else:
                steps = rng.normal(0, 3, per).round()
            values = np.round(level[i] / res + np.cumsum(steps)) * res
            level[i] = values[-1]
            columns.append((i + 1, t, values.astype(np.float64)))
        builder.add(columns)
        payload, count = builder.build()
        # base_time_ns is re-stamped per send; keep the template's offsets from 0.
        message = telemetry_pb.TelemetryBatch.FromString(payload)
        message.base_time_ns = 0
        message.created_ns = 0
        out.append((message.SerializeToString(), count))
    return out


def _stamp(template: bytes, vin: bytes, base_ns: int, epoch: int, seq: int) -> bytes:
    inner = (
        template
        + b"\x0a"
        + _varint(len(vin))
        + vin
        + b"\x28"
        + _varint(base_ns)
        + b"\x10"
        + _varint(epoch)
        + b"\x18"
        + _varint(seq)
    )
    return b"\x12" + _varint(len(inner)) + inner


def _credentials(plan: Plan, cert: str, key: str) -> grpc.ChannelCredentials:
    from tcu.pki.grpc_tls import channel_credentials

    return channel_credentials(plan.ca, cert, key)


async def _vehicle(  # noqa: PLR0917 - one place calls it
    plan: Plan,
    index: int,
    vin: str,
    cert: str,
    key: str,
    batches: list[tuple[bytes, int]],
    connected: asyncio.Event,
    go: asyncio.Future[tuple[float, float, float]],
) -> dict[str, Any]:
    channel: Any  # grpc-stubs types grpc.aio loosely (close(grace), stream calls, EOF)
    if plan.insecure:
        channel = grpc.aio.insecure_channel(plan.target)
    else:
        channel = grpc.aio.secure_channel(plan.target, _credentials(plan, cert, key))
    upload: Any = channel.stream_stream(
        "/tcu.api.v1.Ingest/Upload",
        request_serializer=lambda b: b,
        response_deserializer=ingest_pb.UploadResponse.FromString,
    )
    epoch = 1_000 + index
    hello = ingest_pb.UploadRequest(
        hello=ingest_pb.Hello(
            vehicle_id=vin, boot_epoch=epoch, catalog=catalog(plan.signals), agent_version="bench"
        )
    ).SerializeToString()
    call = upload()
    await call.write(hello)
    await channel.channel_ready()
    connected.set()
    start_at, measure_from, measure_to = await go
    window = (measure_from, measure_to)
    in_window = [0]  # samples acked within the window (by ack time)
    vin_b = vin.encode()
    sent: dict[int, tuple[float, int, bool]] = {}  # seq -> (scheduled, samples, in window)
    acked: dict[int, int] = {}
    latencies: list[float] = []
    problems: list[str] = []
    room = asyncio.Semaphore(plan.window)
    done_sending = asyncio.Event()
    last_seq = 0
    max_lag = 0.0

    async def read() -> None:
        while True:
            response = await call.read()
            if response is _AIO.EOF:
                return
            if response.WhichOneof("kind") != "ack":
                continue
            ack = response.ack
            now = time.time()
            seq = ack.batch_seq
            if seq not in sent:
                problems.append(f"{vin}: ack for seq {seq} never sent")
                continue
            if seq in acked:
                problems.append(f"{vin}: seq {seq} acked twice")
                continue
            if ack.quarantined:
                problems.append(f"{vin}: seq {seq} quarantined: {ack.quarantined[0].reason}")
            scheduled, samples, counted = sent[seq]
            acked[seq] = samples
            if window[0] <= now < window[1]:
                in_window[0] += samples
            if counted:
                latencies.append(now - scheduled)
            room.release()
            if done_sending.is_set() and len(acked) == last_seq:
                return

    reader = asyncio.create_task(read())
    base0 = 1_700_000_000_000_000_000 + index * 10**12
    # Stagger the vehicles across one batch interval so that they do not all send at once.
    interval = 1.0 / plan.batches_per_s if plan.batches_per_s > 0 else 0.0
    first = start_at + (index % 1000) / 1000 * interval
    seq = 0
    try:
        while True:
            scheduled = first + seq * interval if interval else time.time()
            if scheduled >= measure_to:
                break
            delay = scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await room.acquire()
            if reader.done():
                break
            if interval:
                max_lag = max(max_lag, time.time() - scheduled)
            else:
                scheduled = time.time()
                if scheduled >= measure_to:
                    room.release()
                    break
            seq += 1
            template, samples = batches[seq % len(batches)]
            base_ns = base0 + int(seq * plan.batch_s * 1e9)
            sent[seq] = (scheduled, samples, measure_from <= scheduled < measure_to)
            last_seq = seq
            await call.write(_stamp(template, vin_b, base_ns, epoch, seq))
        last_seq = seq
        done_sending.set()
        if len(acked) < last_seq:
            await asyncio.wait_for(asyncio.shield(reader), 300)
        await call.done_writing()
    except (grpc.aio.AioRpcError, TimeoutError) as exc:
        problems.append(f"{vin}: stream failed: {exc!r}"[:300])
    finally:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        await channel.close()
    return {
        "vin": vin,
        "epoch": epoch,
        "sent": len(sent),
        "acked": acked,
        "window_samples": in_window[0],
        "latencies": latencies,
        "max_lag": max_lag,
        "problems": problems,
    }


async def _client(plan: Plan, pipe: Any) -> dict[str, Any]:
    batches = templates(plan.signals, plan.hz, plan.batch_s, plan.seed)
    go: asyncio.Future[tuple[float, float, float]] = asyncio.get_running_loop().create_future()
    events = [asyncio.Event() for _ in plan.vehicles]
    tasks = [
        asyncio.create_task(_vehicle(plan, plan.seed * 100_000 + i, vin, cert, key, batches, events[i], go))
        for i, (vin, cert, key) in enumerate(plan.vehicles)
    ]
    await asyncio.gather(*(e.wait() for e in events))
    pipe.send("ready")
    times = await asyncio.to_thread(pipe.recv)
    go.set_result(times)
    return {"vehicles": await asyncio.gather(*tasks)}


def _client_main(plan: Plan, pipe: Any) -> None:
    pipe.send(asyncio.run(_client(plan, pipe)))
    pipe.close()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def stored_samples_by_batch(conn: sqlite3.Connection) -> dict[tuple[str, int, int], int]:
    """Samples in the sample store per (vehicle, boot epoch, seq), for either schema."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "chunks" in tables:  # columnar schema (version 2): one row per signal and batch
        sql = (
            "SELECT s.vehicle_id, c.boot_epoch, c.seq, sum(c.count) FROM chunks AS c"
            " JOIN series AS s USING (series_id) GROUP BY 1, 2, 3"
        )
    else:  # one row per sample (version 1)
        sql = (
            "SELECT s.vehicle_id, m.boot_epoch, m.seq, count(*) FROM samples AS m"
            " JOIN series AS s USING (series_id) GROUP BY 1, 2, 3"
        )
    return {(str(v), int(e), int(q)): int(n) for v, e, q, n in conn.execute(sql)}


def _self_test_damage(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        key = "series_id, t_first, chunk_id" if "chunks" in tables else "rowid"
        table = "chunks" if "chunks" in tables else "samples"
        seq = conn.execute(f"SELECT seq FROM {table} LIMIT 1").fetchone()[0]
        with conn:
            conn.execute(
                f"DELETE FROM {table} WHERE ({key}) IN (SELECT {key} FROM {table} WHERE seq = ? LIMIT 1)",
                (seq,),
            )
        return f"deleted one row of {table} of a batch with seq {seq}"
    finally:
        conn.close()


def _stored_batches(db: Path) -> int:
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM batches").fetchone()[0])
    except sqlite3.OperationalError:  # no tables yet
        return 0
    finally:
        conn.close()


def check(db: Path, vehicles: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        stored = {
            (str(v), int(e), int(q)): int(n)
            for v, e, q, n in conn.execute("SELECT vehicle_id, boot_epoch, seq, samples FROM batches")
        }
        in_store = stored_samples_by_batch(conn)
    finally:
        conn.close()
    expected: dict[tuple[str, int, int], int] = {}
    for v in vehicles:
        for seq, samples in v["acked"].items():
            expected[(v["vin"], v["epoch"], int(seq))] = samples
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    wrong = [k for k, n in expected.items() if k in stored and stored[k] != n]
    sample_bad = [k for k, n in expected.items() if in_store.get(k, 0) != n]
    sample_extra = [k for k in in_store if k not in expected]
    if missing:
        problems.append(f"{len(missing)} acked batches not in the database, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} stored batches never acked, e.g. {unexpected[0]}")
    if wrong:
        problems.append(f"{len(wrong)} batches with a wrong sample count, e.g. {wrong[0]}")
    if sample_bad:
        k = sample_bad[0]
        problems.append(
            f"{len(sample_bad)} acked batches whose samples are not stored exactly once, e.g. {k}:"
            f" {in_store.get(k, 0)} stored, {expected[k]} acked"
        )
    if sample_extra:
        problems.append(f"{len(sample_extra)} batches with samples in the store but not acked")
    return problems


async def _query(target: str, creds: grpc.ChannelCredentials | None, vin: str, expect: int) -> dict[str, Any]:
    channel: Any = (
        grpc.aio.insecure_channel(target) if creds is None else grpc.aio.secure_channel(target, creds)
    )
    rates: list[float] = []
    problems: list[str] = []
    try:
        stub = fleet_grpc.FleetStub(channel)
        for _ in range(3):
            started = time.perf_counter()
            count = 0
            last: dict[str, int] = {}
            async for update in stub.Query(
                fleet_pb.QueryRequest(vehicle_id=vin, max_samples_per_chunk=100_000)
            ):
                for series in update.series:
                    times = series.t_ns
                    n = len(times)
                    count += n
                    if n and (
                        times[0] < last.get(series.name, -(2**63)) or any(np.diff(np.asarray(times)) < 0)
                    ):
                        problems.append(f"query: {series.name} is not time-ordered")
                    if n:
                        last[series.name] = times[-1]
            elapsed = time.perf_counter() - started
            if count != expect:
                problems.append(f"query of {vin}: {count} samples, {expect} stored")
            rates.append(count / elapsed)
    finally:
        await channel.close()
    return {"query_samples": expect, "query_samples_per_s": [round(r) for r in rates], "problems": problems}


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = (
        Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="tcu-bench-ingest-"))
    )
    work.mkdir(parents=True, exist_ok=True)
    db = work / "ingest.sqlite"
    vins = [f"WBENCH{i:011d}" for i in range(args.vehicles)]
    jetstream = args.sink == "jetstream"
    pki_dir = work / "pki"
    creds_backend: grpc.ChannelCredentials | None = None
    certs: list[tuple[str, str, str]] = []
    ingest_cmd = [sys.executable, "-m", "tcu.cli.main", "ingest", "--listen", "127.0.0.1:0", "--db", str(db)]
    ingest_cmd += ["--sqlite-synchronous", args.synchronous]
    ingest_cmd += ["--max-batches-per-s", "10000"]
    nats_nodes: Any = None
    nats_args: list[str] = []
    if jetstream:
        from tcu.demo.nats import NatsCluster, NatsNode

        if args.nats_nodes == 1:
            nats_nodes = NatsNode(name="single", home=work / "nats")
        else:
            nats_nodes = NatsCluster(home=work / "nats", size=args.nats_nodes)
        nats_nodes.start()
        urls = [nats_nodes.url] if args.nats_nodes == 1 else nats_nodes.urls
        for url in urls:
            nats_args += ["--nats", url]
        nats_args += ["--stream-replicas", str(args.nats_nodes)]
        ingest_cmd += ["--sink", "jetstream", *nats_args]
    if args.insecure:
        ingest_cmd.append("--insecure")
        certs = [(vin, "", "") for vin in vins]
    else:
        from tcu.pki import DevPki
        from tcu.pki.grpc_tls import channel_credentials

        pki = DevPki(pki_dir)
        if not pki.ca_cert.exists():
            pki.init()
        for vin in vins:
            cert, key = pki.vehicle(vin)
            if not cert.exists():
                pki.issue_vehicle(vin)
            certs.append((vin, str(cert), str(key)))
        bcert, bkey = pki.backend("bench")
        if not bcert.exists():
            pki.issue_backend("bench")
        creds_backend = channel_credentials(pki.ca_cert, bcert, bkey)
        ingest_cmd += ["--pki", str(pki_dir)]
    env = dict(os.environ)
    cwd = None
    if args.ingest_src:  # first on sys.path: also before the current directory that -m puts there
        cwd = str(Path(args.ingest_src).resolve())
        env["PYTHONPATH"] = cwd
    replicas = args.ingest_replicas if jetstream else 1
    procs: list[subprocess.Popen[bytes]] = []
    archive: subprocess.Popen[bytes] | None = None
    for index in range(replicas):
        port_file = work / f"port{index}"
        port_file.unlink(missing_ok=True)
        with (work / f"ingest{index}.log").open("w") as log:
            procs.append(
                subprocess.Popen([*ingest_cmd, "--port-file", str(port_file)], stderr=log, env=env, cwd=cwd)
            )
    if jetstream:
        archive_cmd = [sys.executable, "-m", "tcu.cli.main", "ingest", "archive", "--db", str(db), *nats_args]
        with (work / "archive.log").open("w") as log:
            archive = subprocess.Popen(
                [*archive_cmd, "--sqlite-synchronous", args.synchronous], stderr=log, env=env, cwd=cwd
            )
    try:
        targets = []
        for index, replica in enumerate(procs):
            port_file = work / f"port{index}"
            deadline = time.monotonic() + 30
            while not port_file.exists():
                if replica.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"tcu ingest did not start; see {work / f'ingest{index}.log'}")
                time.sleep(0.05)
            targets.append(f"127.0.0.1:{int(port_file.read_text())}")
        time.sleep(0.2)
        target = targets[0]
        ctx = multiprocessing.get_context("spawn")
        children = []
        for p in range(args.processes):
            mine = certs[p :: args.processes]
            if not mine:
                continue
            plan = Plan(
                target=targets[p % len(targets)],
                insecure=args.insecure,
                ca=str(pki_dir / "ca.pem"),
                vehicles=mine,
                signals=args.signals,
                hz=args.hz,
                batch_s=args.batch_s,
                batches_per_s=args.batches_per_s,
                window=args.window,
                seed=p + 1,
            )
            parent_end, child_end = ctx.Pipe()
            child = ctx.Process(target=_client_main, args=(plan, child_end), daemon=True)
            child.start()
            children.append((child, parent_end))
        for _child, pipe in children:  # every stream open, its Hello sent
            if not pipe.poll(300) or pipe.recv() != "ready":
                raise SystemExit("a client process did not open its streams within 300 s")
        start_at = time.time() + 0.5
        measure_from = start_at + args.warmup
        measure_to = measure_from + args.duration
        for _child, pipe in children:
            pipe.send((start_at, measure_from, measure_to))
        measured = {f"ingest{i}": r.pid for i, r in enumerate(procs)}
        if archive is not None:
            measured["archive"] = archive.pid
        if jetstream:
            nodes = [nats_nodes] if args.nats_nodes == 1 else nats_nodes.nodes
            measured.update({f"nats-{n.name}": n.process.pid for n in nodes})
        time.sleep(max(0.0, measure_from - time.time()))
        cpu_start, t0 = {name: _cpu_s(pid) for name, pid in measured.items()}, time.monotonic()
        time.sleep(max(0.0, measure_to - time.time()))
        cpu_end, t1 = {name: _cpu_s(pid) for name, pid in measured.items()}, time.monotonic()
        cpu_cores = {name: round((cpu_end[name] - cpu_start[name]) / (t1 - t0), 3) for name in measured}
        cpu0, cpu1 = (
            sum(cpu_start[f"ingest{i}"] for i in range(replicas)),
            sum(cpu_end[f"ingest{i}"] for i in range(replicas)),
        )
        rss_kib = sum(_status_kib(r.pid, "VmRSS") for r in procs)
        vehicles: list[dict[str, Any]] = []
        for child, pipe in children:
            if not pipe.poll(600):
                raise SystemExit("a client process did not report within 600 s")
            vehicles.extend(pipe.recv()["vehicles"])
            child.join(10)
        archive_wait_s = 0.0
        if archive is not None:  # history: until the archive holds every acked batch
            acked_batches = sum(len(v["acked"]) for v in vehicles)
            waited = time.monotonic()
            while _stored_batches(db) < acked_batches and time.monotonic() - waited < 300:
                if archive.poll() is not None:
                    raise SystemExit(f"the archive ended; see {work / 'archive.log'}")
                time.sleep(0.1)
            archive_wait_s = time.monotonic() - waited
        query: dict[str, Any] = {}
        if args.query:
            conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
            vin, samples = conn.execute(
                "SELECT vehicle_id, samples FROM vehicles ORDER BY samples DESC LIMIT 1"
            ).fetchone()
            conn.close()
            query = asyncio.run(_query(target, creds_backend, vin, int(samples)))
        peak_kib = sum(_status_kib(r.pid, "VmHWM") for r in procs)
    finally:
        for child_proc in [*procs, *([archive] if archive is not None else [])]:
            child_proc.send_signal(signal.SIGTERM)
        for child_proc in [*procs, *([archive] if archive is not None else [])]:
            try:
                child_proc.wait(60)
            except subprocess.TimeoutExpired:
                child_proc.kill()
                child_proc.wait()
        if nats_nodes is not None:
            nats_nodes.stop()
    problems = [p for v in vehicles for p in v["problems"]]
    problems += query.get("problems", [])
    damage = _self_test_damage(db) if args.self_test else ""
    problems += check(db, vehicles)
    latencies = [x for v in vehicles for x in v["latencies"]]
    window_samples = sum(v["window_samples"] for v in vehicles)
    stored = sum(sum(v["acked"].values()) for v in vehicles)
    db_bytes = sum(p.stat().st_size for p in work.glob("ingest.sqlite*"))
    result: dict[str, Any] = {
        "vehicles": args.vehicles,
        "processes": args.processes,
        "mtls": not args.insecure,
        "signals": args.signals,
        "hz": args.hz,
        "batch_s": args.batch_s,
        "batches_per_s_per_vehicle": args.batches_per_s or "max",
        "synchronous": args.synchronous,
        "duration_s": args.duration,
        "acked_samples_per_s": round(window_samples / args.duration),
        "offered_samples_per_s": (
            round(args.vehicles * args.batches_per_s * round(args.hz * args.batch_s) * args.signals)
            if args.batches_per_s
            else None
        ),
        "ack_p50_ms": round(_percentile(latencies, 50) * 1000, 1),
        "ack_p99_ms": round(_percentile(latencies, 99) * 1000, 1),
        "ack_max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
        "max_send_lag_ms": round(max((v["max_lag"] for v in vehicles), default=0.0) * 1000, 1),
        "sink": args.sink,
        "nats_nodes": args.nats_nodes if jetstream else None,
        "ingest_replicas": replicas,
        "ingest_cpu_cores": round((cpu1 - cpu0) / (t1 - t0), 2),
        "cpu_cores": cpu_cores,
        "samples_per_cpu_s": (
            round(window_samples / args.duration / sum(cpu_cores.values()))
            if sum(cpu_cores.values())
            else None
        ),
        "ingest_cpu_s_per_million_samples": (
            round((cpu1 - cpu0) / window_samples * 1e6, 2) if window_samples else None
        ),
        "all_cpu_s_per_million_samples": (
            round((sum(cpu_end.values()) - sum(cpu_start.values())) / window_samples * 1e6, 2)
            if window_samples
            else None
        ),
        "archive_catch_up_s": round(archive_wait_s, 2) if jetstream else None,
        "ingest_rss_mib": rss_kib // 1024,
        "ingest_peak_rss_mib": peak_kib // 1024,
        "samples_stored": stored,
        "db_bytes": db_bytes,
        "db_bytes_per_sample": round(db_bytes / stored, 2) if stored else None,
        **{k: v for k, v in query.items() if k != "problems"},
        "load_1min": round(os.getloadavg()[0], 2),
        "self_test": damage or None,
        "problems": problems[:20],
        "problem_count": len(problems),
        "ok": not problems,
        "workdir": str(work),
    }
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vehicles", type=int, default=100)
    parser.add_argument("--processes", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--signals", type=int, default=100)
    parser.add_argument("--hz", type=float, default=10.0, help="samples per second per signal")
    parser.add_argument("--batch-s", type=float, default=1.0, help="seconds of samples per batch")
    parser.add_argument(
        "--batches-per-s", type=float, default=1.0, help="batches per second per vehicle (0: saturate)"
    )
    parser.add_argument("--window", type=int, default=64, help="unacked batches per stream at most")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--insecure", action="store_true", help="plain TCP instead of mTLS")
    parser.add_argument("--query", action="store_true", help="also time Fleet.Query of one vehicle")
    parser.add_argument("--self-test", action="store_true", help="damage the database before the check")
    parser.add_argument("--ingest-src", help="run the ingest from this source tree (PYTHONPATH)")
    parser.add_argument("--workdir", help="keep the database, PKI and log here")
    parser.add_argument("--json", action="store_true", help="the result as one JSON line")
    parser.add_argument("--sink", choices=("sqlite", "jetstream"), default="sqlite")
    parser.add_argument(
        "--nats-nodes",
        type=int,
        choices=(1, 3),
        default=1,
        help="jetstream: nats-server nodes (= stream replicas)",
    )
    parser.add_argument(
        "--ingest-replicas", type=int, default=2, help="jetstream: tcu ingest processes (default 2)"
    )
    args = parser.parse_args()
    if not 1 <= args.vehicles <= 5000:
        parser.error("--vehicles must be 1 to 5000")
    result = run(args)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    if not result["ok"]:
        print(f"ingest bench: {result['problem_count']} problems: {result['problems'][:3]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
