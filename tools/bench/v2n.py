"""Benchmark V2N at fleet scale: N stations on a loopback Mosquitto, CAMs at 1-10 Hz and hazards.

Processes, as in a deployment:

* the broker: ``mosquitto`` on a free 127.0.0.1 port (plain TCP, anonymous: the broker's TLS
  and ACL are tested elsewhere; this measures what the software adds);
* ``--procs`` worker processes (this script with ``--worker I``), each running its share of
  the stations in one asyncio loop. Every station is what the agent's V2N tap drives: a
  :class:`tcu.v2x.station.V2xStation` (CAM rules, DENM originator, DENM receiver) around its
  own :class:`tcu.v2x.client.V2xClient` (one MQTT v5 connection, QoS 1, a 3x3 block of
  level-14 tiles followed with hysteresis), fed with the station's state every 100 ms (the
  simulator's GNSS rate), so the ETSI rules give 1 Hz at 4 m/s up to 10 Hz at 40 m/s;
* this script, which lays out the fleet, starts everything, probes the broker and checks.

Layout (seeded): a 40 km x 40 km grid of north-south and east-west roads every 2 km around
Metz; stations drive them at 4-40 m/s in either direction. ``--hazards`` groups of six
ride among them: a leader with followers 50, 150 and 300 m behind, one 100 m ahead and one
oncoming 250 m ahead on the other carriageway. Each leader brakes hard once (the
``hard_braking`` condition holds for 0.3 s: an EEBL DENM, relevance 500 m, then its
cancellation 1 s later).

Latency: the worker takes the wall clock for each station right before it feeds the station
its state (the moment a decoded frame would reach it); when a leader's condition turns true
there, that time is ``trigger_ns`` and the station publishes the DENM through its client. Each
receiving station handles it on the adapter's receive path (topic check, UPER decode,
dedup, relevance in :class:`~tcu.v2x.receive.DenmReceiver`); ``accept_ns`` is taken when the
station reports the warning as accepted. End to end is ``accept_ns - trigger_ns`` (one
machine, one clock). ``broker_ms``: a probe client publishes a small message every 20 ms to a
topic it subscribes to, under the same load (publish → delivery through the broker, both ends
in this process). CPU: each process's CPU time over the measured window
(``time.process_time`` in the workers, ``/proc`` for the broker).

Checks (exit status 1 when one fails): every station the geometry says must be warned of a
hazard (within 500 m, the event ahead within 60° of its heading, headings within 60°, both
at the trigger and at the first repetition 1 s later, not within 5 % / 5° of a limit) accepted
it exactly once, no other station accepted it, every warned station heard the cancellation,
no DENM was dropped unsent, and the end-to-end p99 is under ``--goal-ms`` (100: what 3GPP TS
22.185 allows for V2X warnings; the radio is not simulated). ``--drop-one`` makes one
expected receiver of the first hazard drop every DENM of it before its receive path (the
repetitions would otherwise make up for one lost message), to show the check failing.

    .venv/bin/python tools/bench/v2n.py --json                       # 1,000 stations, 20 s
    .venv/bin/python tools/bench/v2n.py --stations 200 --seconds 10 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from tcu.v2x import (  # noqa: E402
    DEFAULT_TRIGGERS,
    Denm,
    ReceiverConfig,
    StationSettings,
    StationWarning,
    V2xStation,
    VehicleState,
)
from tcu.v2x.client import Received, V2xClient, V2xClientConfig  # noqa: E402
from tcu.v2x.denm import Outgoing  # noqa: E402
from tcu.v2x.geo import angle_difference_deg, bearing_deg, destination, distance_m  # noqa: E402
from tcu.v2x.messages import compile_release  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
CENTRE = (49.12, 6.18)  # Metz
GRID_KM, ROAD_SPACING_KM = 40.0, 2.0
TICK_S = 0.1  # the stations' state updates: the simulator's GNSS rate
HAZARD_HOLD_S = 0.3
GROUP = (
    ("leader", 0.0, 1),
    ("follow-50", -50.0, 1),
    ("follow-150", -150.0, 1),
    ("follow-300", -300.0, 1),
    ("ahead-100", 100.0, 1),
    ("oncoming-250", 250.0, -1),
)
TRIGGER = DEFAULT_TRIGGERS[0]  # hard_braking: EEBL, relevance 500 m, release 1 s, repetition 1 s
RX = ReceiverConfig(own_station_id=0)  # the rules (ahead_deg, same_direction_deg) every station uses
MARGIN_FRACTION, MARGIN_DEG = 0.05, 5.0
# A client still running this long after stop() is counted and cancelled: its drain takes up
# to 2 s and aiomqtt's disconnect waits up to the connect timeout (30 s here) for the broker.
STOP_TIMEOUT_S = 40.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pct(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, math.ceil(p * len(s)) - 1)], 2)

    return {"n": len(s), "p50": q(0.50), "p99": q(0.99), "max": round(s[-1], 2)}


# ------------------------------------------------------------------------------------ layout


@dataclass(frozen=True, slots=True)
class Station:
    id: int
    worker: int
    lat0: float
    lon0: float
    heading: float
    speed: float
    role: str = "random"
    group: int = -1
    hazard_at_s: float | None = None

    def pose(self, t_s: float) -> tuple[float, float]:
        return destination(self.lat0, self.lon0, self.heading, self.speed * t_s)


def _road_point(rng: random.Random) -> tuple[float, float, float]:
    """A random point on the grid of roads and the heading of that road (one of its two ways)."""
    half = GRID_KM * 500.0
    roads = int(GRID_KM / ROAD_SPACING_KM)
    offset = (rng.randrange(roads) + 0.5) * ROAD_SPACING_KM * 1000.0 - half
    along = rng.uniform(-half, half)
    north_south = rng.random() < 0.5
    east, north = (offset, along) if north_south else (along, offset)
    heading = (0.0 if north_south else 90.0) + (180.0 if rng.random() < 0.5 else 0.0)
    lat = CENTRE[0] + north / 111_195.0
    lon = CENTRE[1] + east / (111_195.0 * math.cos(math.radians(CENTRE[0])))
    return lat, lon, heading


def layout(stations: int, hazards: int, procs: int, seconds: float, seed: int) -> list[Station]:
    rng = random.Random(seed)
    out: list[Station] = []
    span = max(1.0, seconds - 6.0)
    for g in range(hazards):
        lat, lon, heading = _road_point(rng)
        speed = rng.uniform(10.0, 35.0)
        at = 3.0 + span * (g + 0.5) / hazards
        for role, offset, way in GROUP:
            la, lo = destination(lat, lon, heading, offset)
            out.append(
                Station(
                    0,
                    0,
                    la,
                    lo,
                    heading if way > 0 else (heading + 180.0) % 360.0,
                    speed,
                    role,
                    g,
                    at if role == "leader" else None,
                )
            )
    while len(out) < stations:
        lat, lon, heading = _road_point(rng)
        out.append(Station(0, 0, lat, lon, heading, rng.uniform(4.0, 40.0)))
    rng.shuffle(out)
    return [
        Station(1000 + i, i % procs, s.lat0, s.lon0, s.heading, s.speed, s.role, s.group, s.hazard_at_s)
        for i, s in enumerate(out[:stations])
    ]


def expected_receivers(stations: list[Station], leader: Station, at_s: float) -> tuple[set[int], set[int]]:
    """(must accept, too close to call) for the leader's DENM sent at ``at_s``, by geometry alone."""
    must: set[int] = set()
    unsure: set[int] = set()
    verdicts: dict[int, list[bool]] = {}
    e_lat, e_lon = leader.pose(at_s)
    for dt in (0.0, 1.0):  # the DENM and its first repetition (the event keeps its first position)
        for st in stations:
            if st.id == leader.id:
                continue
            lat, lon = st.pose(at_s + dt)
            d = distance_m(lat, lon, e_lat, e_lon)
            ahead = angle_difference_deg(bearing_deg(lat, lon, e_lat, e_lon), st.heading) if d > 1.0 else 0.0
            same = angle_difference_deg(leader.heading, st.heading)
            ok = d <= TRIGGER.relevance_distance_m and ahead <= RX.ahead_deg and same <= RX.same_direction_deg
            verdicts.setdefault(st.id, []).append(ok)
            thin = abs(d - TRIGGER.relevance_distance_m) < MARGIN_FRACTION * TRIGGER.relevance_distance_m or (
                d <= TRIGGER.relevance_distance_m
                and (abs(ahead - RX.ahead_deg) < MARGIN_DEG or abs(same - RX.same_direction_deg) < MARGIN_DEG)
            )
            if thin:
                unsure.add(st.id)
    for sid, v in verdicts.items():
        if len(set(v)) > 1:
            unsure.add(sid)
        elif v[0]:
            must.add(sid)
    return must - unsure, unsure


# ------------------------------------------------------------------------------------ worker


@dataclass(slots=True)
class _Live:
    spec: Station
    station: V2xStation
    hazard_from_s: float | None = None  # when this worker first saw the hazard's time come


class _Worker:
    def __init__(self, plan: dict[str, Any], index: int) -> None:
        self.plan, self.index = plan, index
        self.t0_ns = 0
        self.records: list[list[Any]] = []  # [kind, station, action_station, seq, t_ns, received_ns]
        self.dropped = 0
        self.late_ticks: list[float] = []
        self.stations: list[_Live] = []
        self._tick_ns = 0

    def _warned(self, spec: Station, warning: StationWarning) -> None:
        a = warning.denm.action_id
        self.records.append(
            [warning.kind, spec.id, a.station_id, a.sequence_number, time.time_ns(), warning.received_ns]
        )

    def _sent(self, spec: Station, out: Outgoing) -> None:
        a = out.denm.action_id
        self.records.append(
            [f"sent_{out.kind}", spec.id, a.station_id, a.sequence_number, self._tick_ns, None]
        )

    def _dropping(self, spec: Station, handler: Callable[[Received], None]) -> Callable[[Received], None]:
        """--drop-one: this station's receive path never sees one hazard's DENMs."""
        drop = self.plan.get("drop")
        if not drop or drop[0] != spec.id:
            return handler

        def filtered(rec: Received) -> None:
            if isinstance(rec.message, Denm) and rec.message.action_id.station_id == drop[1]:
                self.dropped += 1
                return
            handler(rec)

        return filtered

    async def run(self) -> None:
        plan = self.plan
        specs = [Station(**s) for s in plan["stations"] if s["worker"] == self.index]
        await asyncio.to_thread(compile_release, 1)  # before the clock starts: compiling takes ~1 s
        tasks: list[asyncio.Task[None]] = []
        for spec in specs:
            client = V2xClient(
                V2xClientConfig(
                    host="127.0.0.1",
                    port=plan["port"],
                    client_id=f"bench-{spec.id}",
                    subscribe_types=("denm",),
                    queue_size=64,
                    connect_timeout_s=30.0,
                    session_expiry_s=60,
                )
            )
            station = V2xStation(
                StationSettings(station_id=spec.id, length_m=4.5, width_m=1.8, triggers=(TRIGGER,)),
                client,
                on_warning=functools.partial(self._warned, spec),
                on_sent=functools.partial(self._sent, spec),
            )
            if client.on_message is not None:
                client.on_message = self._dropping(spec, client.on_message)
            client.set_position(spec.lat0, spec.lon0)
            tasks.append(asyncio.create_task(client.run(), name=f"bench.station[{spec.id}]"))
            self.stations.append(_Live(spec, station))
        await asyncio.gather(*(s.station.client.wait_connected(120.0) for s in self.stations))
        _say({"event": "ready", "worker": self.index, "stations": len(self.stations)})
        line = await asyncio.to_thread(sys.stdin.readline)
        self.t0_ns = int(json.loads(line)["t0_ns"])
        await asyncio.sleep(max(0.0, (self.t0_ns - time.time_ns()) / 1e9))
        cpu0, wall0 = time.process_time(), time.monotonic()
        await self.drive(plan["seconds"])
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        await asyncio.sleep(plan["grace_s"])  # messages in flight at the end
        for s in self.stations:
            s.station.client.stop()
        _done, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)  # bounded: a hung client is counted
        for task in stuck:
            task.cancel()
        failed = [t for t in _done if not t.cancelled() and t.exception() is not None]
        counters: Counter[str] = Counter()
        for s in self.stations:
            counters.update(s.station.client.counters)
            counters.update({f"rx_{k}": v for k, v in s.station.receiver.counters.items()})
        _say(
            {
                "event": "done",
                "worker": self.index,
                "records": self.records,
                "counters": dict(counters),
                "cpu_s": cpu,
                "wall_s": wall,
                "dropped_on_purpose": self.dropped,
                "tick_late_ms": _pct(self.late_ticks),
                "clients_not_stopped": len(stuck),
                "clients_failed": [repr(t.exception()) for t in failed][:5],
            }
        )

    async def drive(self, seconds: float) -> None:
        tick = 0
        end_ns = self.t0_ns + round(seconds * 1e9)
        while True:
            due_ns = self.t0_ns + round(tick * TICK_S * 1e9)
            if due_ns >= end_ns:
                return
            delay = (due_ns - time.time_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            else:  # behind: count it, skip the ticks already missed, but let the clients run
                self.late_ticks.append(-delay * 1000.0)
                tick = max(tick, int((time.time_ns() - self.t0_ns) / 1e9 / TICK_S))
                await asyncio.sleep(0)
            tick += 1
            for i, s in enumerate(self.stations):
                if i % 25 == 24:
                    await asyncio.sleep(0)  # let the clients' writers and readers run between stations
                now = time.time_ns()  # this station's "frame": its state and its trigger now
                self._tick_ns = now
                t = (now - self.t0_ns) / 1e9
                spec = s.spec
                lat, lon = spec.pose(t)
                active = False
                if spec.hazard_at_s is not None:
                    if s.hazard_from_s is None and t >= spec.hazard_at_s:
                        s.hazard_from_s = t  # a late tick must not skip the hazard
                    active = s.hazard_from_s is not None and t < s.hazard_from_s + HAZARD_HOLD_S
                s.station.update(
                    VehicleState(now, lat, lon, spec.heading, spec.speed, 0.0, 0.0),
                    {TRIGGER.name: active},
                )


def _say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------------------------ parent


def _broker_conf(path: Path, port: int) -> None:
    path.write_text(
        "# tools/bench/v2n.py: plain loopback listener for the benchmark\n"
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 10000\nlog_dest stderr\nlog_type error\nlog_type warning\n"
    )


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _probe(port: int, stop: asyncio.Event, out: list[float]) -> None:
    """Broker-added latency: publish → delivery of small QoS 1 messages through the loaded broker."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-probe", protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe("bench/probe", qos=1)

        async def reader() -> None:
            async for msg in client.messages:
                sent = int(bytes(msg.payload).decode())
                out.append((time.time_ns() - sent) / 1e6)

        task = asyncio.create_task(reader(), name="bench.probe.rx")
        while not stop.is_set():
            await client.publish("bench/probe", str(time.time_ns()).encode(), qos=1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.02)
        await asyncio.sleep(0.5)
        task.cancel()


async def _read_json(proc: asyncio.subprocess.Process, what: str) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} ended without output (see its log)")
    value: dict[str, Any] = json.loads(line)
    return value


async def _start_broker(work: Path, port: int) -> asyncio.subprocess.Process:
    _broker_conf(work / "mosquitto.conf", port)
    with (work / "mosquitto.log").open("wb") as log_file:
        broker = await asyncio.create_subprocess_exec(
            MOSQUITTO, "-c", str(work / "mosquitto.conf"), stdout=log_file, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 10.0
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return broker
        except OSError:
            if broker.returncode is not None or time.monotonic() > deadline:
                log = (work / "mosquitto.log").read_text()
                raise RuntimeError(f"mosquitto did not start: {log}") from None
            await asyncio.sleep(0.05)


async def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    stations = layout(args.stations, args.hazards, args.procs, args.seconds, args.seed)
    leaders = [s for s in stations if s.hazard_at_s is not None]
    drop = None
    if args.drop_one:  # an expected receiver of the first hazard loses all of that hazard's DENMs
        first = min(leaders, key=lambda s: s.hazard_at_s or 0.0)
        must, _ = expected_receivers(stations, first, first.hazard_at_s or 0.0)
        drop = [min(must), first.id] if must else None
    port = _free_port()
    broker = await _start_broker(work, port)
    workers: list[asyncio.subprocess.Process] = []
    try:
        plan = {
            "port": port,
            "seconds": args.seconds,
            "grace_s": 2.0,
            "drop": drop,
            "stations": [{k: getattr(s, k) for k in Station.__dataclass_fields__} for s in stations],
        }
        (work / "plan.json").write_text(json.dumps(plan))
        for i in range(args.procs):
            with (work / f"worker{i}.log").open("wb") as log_file:
                workers.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        __file__,
                        "--worker",
                        str(i),
                        "--plan",
                        str(work / "plan.json"),
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        stderr=log_file,
                    )
                )
        connect0 = time.monotonic()
        for i, w in enumerate(workers):
            ready = await _read_json(w, f"worker {i}")
            if ready.get("event") != "ready":
                raise RuntimeError(f"worker {i}: {ready}")
        connect_s = time.monotonic() - connect0
        t0_ns = time.time_ns() + 500_000_000
        for w in workers:
            assert w.stdin is not None
            w.stdin.write((json.dumps({"t0_ns": t0_ns}) + "\n").encode())
            await w.stdin.drain()
        await asyncio.sleep(max(0.0, (t0_ns - time.time_ns()) / 1e9))
        broker_cpu0 = _proc_cpu_s(broker.pid)
        stop = asyncio.Event()
        probe_ms: list[float] = []
        probe = asyncio.create_task(_probe(port, stop, probe_ms), name="bench.probe")
        await asyncio.sleep(args.seconds)
        broker_cpu = _proc_cpu_s(broker.pid) - broker_cpu0
        stop.set()
        await probe
        deadline_s = args.seconds + 2.0 + STOP_TIMEOUT_S + 30.0
        results = [
            await asyncio.wait_for(_read_json(w, f"worker {i}"), deadline_s) for i, w in enumerate(workers)
        ]
    finally:
        for p in [*workers, broker]:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(p.wait(), 10)
                except TimeoutError:
                    p.kill()
                    await p.wait()
    return _check(
        args,
        stations=stations,
        leaders=leaders,
        results=results,
        probe_ms=probe_ms,
        broker_cpu=broker_cpu,
        connect_s=connect_s,
        t0_ns=t0_ns,
    )


def _check(
    args: argparse.Namespace,
    *,
    stations: list[Station],
    leaders: list[Station],
    results: list[dict[str, Any]],
    probe_ms: list[float],
    broker_cpu: float,
    connect_s: float,
    t0_ns: int,
) -> dict[str, Any]:
    counters: Counter[str] = Counter()
    records: list[list[Any]] = []
    cpu = 0.0
    for r in results:
        counters.update(r["counters"])
        records.extend(r["records"])
        cpu += r["cpu_s"]
    new = {(r[2], r[3]): r[4] for r in records if r[0] == "sent_new"}
    cancel = {(r[2], r[3]): r[4] for r in records if r[0] == "sent_cancellation"}
    accepted: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    cancelled: dict[tuple[int, int], set[int]] = {}
    for kind, sid, a_sid, seq, t_ns, rx_ns in records:
        if kind == "accepted":
            accepted.setdefault((a_sid, seq), []).append((sid, t_ns, rx_ns))
        elif kind == "cancelled":
            cancelled.setdefault((a_sid, seq), set()).add(sid)
    e2e: list[float] = []
    cancel_ms: list[float] = []
    problems: list[str] = []
    unchecked = warned_expected = 0
    for leader in leaders:
        keys = [k for k in new if k[0] == leader.id]
        if len(keys) != 1:
            problems.append(f"leader {leader.id} sent {len(keys)} new DENMs, expected 1")
            continue
        key = keys[0]
        must, unsure = expected_receivers(stations, leader, (new[key] - t0_ns) / 1e9)
        unchecked += len(unsure)
        warned_expected += len(must)
        got = accepted.get(key, [])
        by_station = Counter(sid for sid, _, _ in got)
        for sid, n in by_station.items():
            if n > 1:
                problems.append(f"station {sid} accepted DENM {key} {n} times")
        missing = sorted(must - set(by_station))
        extra = sorted(set(by_station) - must - unsure)
        if missing:
            problems.append(f"DENM {key}: not accepted by {missing} (must be warned)")
        if extra:
            problems.append(f"DENM {key}: accepted by {extra}, which must not be warned")
        e2e.extend((t - new[key]) / 1e6 for sid, t, _ in got if sid not in unsure)
        heard = cancelled.get(key, set())
        if set(by_station) - heard:
            problems.append(f"DENM {key}: no cancellation at {sorted(set(by_station) - heard)}")
        if key in cancel:
            cancel_ms.extend(
                (t - cancel[key]) / 1e6
                for kind, sid, a_sid, seq, t, _ in records
                if kind == "cancelled" and (a_sid, seq) == key
            )
    for r in results:
        if r["clients_not_stopped"] or r["clients_failed"]:
            problems.append(
                f"worker {r['worker']}: {r['clients_not_stopped']} clients did not stop within "
                f"{STOP_TIMEOUT_S:g} s, failed: {r['clients_failed']}"
            )
    for name in ("denm_dropped", "denm_expired_unsent", "rx_handler_errors"):
        if counters.get(name):
            problems.append(f"{name}: {counters[name]}")
    stats = _pct(e2e)
    if stats.get("n", 0) and float(stats["p99"]) >= args.goal_ms:
        problems.append(f"end-to-end p99 {stats['p99']} ms is not under the goal of {args.goal_ms:g} ms")
    published = counters.get("cam_published", 0) + counters.get("denm_published", 0)
    seconds = args.seconds
    return {
        "loadavg_1m": round(os.getloadavg()[0], 2),  # the machine's load: others' work shares the cores
        "cores": os.cpu_count(),
        "stations": len(stations),
        "procs": args.procs,
        "seconds": seconds,
        "hazards": len(leaders),
        "connect_s": round(connect_s, 2),
        "e2e_ms": stats,
        "cancel_e2e_ms": _pct(cancel_ms),
        "broker_ms": _pct(probe_ms),
        "warned_expected": warned_expected,
        "warned": sum(len(v) for v in accepted.values()),
        "unchecked_borderline": unchecked,
        "cams_per_s": round(counters.get("cam_published", 0) / seconds, 1),
        "cam_hz_per_station": round(counters.get("cam_published", 0) / seconds / max(1, len(stations)), 2),
        "published_per_s": round(published / seconds, 1),
        "delivered_per_s": round(counters.get("rx_messages", 0) / seconds, 1),
        "cam_superseded": counters.get("cam_superseded", 0),
        "cam_dropped": counters.get("cam_dropped", 0),
        "denm_published": counters.get("denm_published", 0),
        "resubscriptions": counters.get("unsubscribed", 0),
        "cpu_workers": round(cpu / seconds, 3),
        "cpu_broker": round(broker_cpu / seconds, 3),
        "cpu_ms_per_station_s": round((cpu + broker_cpu) / seconds / max(1, len(stations)) * 1000, 3),
        "tick_late_ms": [r["tick_late_ms"] for r in results],
        "dropped_on_purpose": sum(r["dropped_on_purpose"] for r in results),
        "goal_ms": args.goal_ms,
        "problems": problems,
        "ok": not problems,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--stations", type=int, default=1000)
    p.add_argument("--procs", type=int, default=4, help="worker processes (default 4)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured drive time (default 20)")
    p.add_argument("--hazards", type=int, default=20, help="hazard groups of six stations (default 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--goal-ms", type=float, default=100.0, help="end-to-end p99 must be under this")
    p.add_argument(
        "--drop-one",
        action="store_true",
        help="one expected receiver loses one hazard's DENMs (the check must fail)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    p.add_argument("--keep", type=Path, help="keep the work directory (logs, plan) here")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        worker = _Worker(json.loads(args.plan.read_text()), args.worker)
        if os.environ.get("TCU_BENCH_PROFILE"):  # a CPU-time cProfile of each worker, to look into it
            import cProfile

            profile = cProfile.Profile(time.process_time)
            try:
                profile.runcall(asyncio.run, worker.run())
            finally:  # also when the parent's SIGTERM ends the worker
                profile.dump_stats(f"{os.environ['TCU_BENCH_PROFILE']}/worker{args.worker}.prof")
        else:
            asyncio.run(worker.run())
        return 0
    if not 1 <= args.procs <= args.stations or args.hazards * len(GROUP) > args.stations or args.seconds < 8:
        p.error("need 1 <= --procs <= --stations, 6 stations per hazard, --seconds >= 8")
    if not Path(MOSQUITTO).exists():
        print(f"mosquitto not found ({MOSQUITTO}): apt-get install mosquitto", file=sys.stderr)
        return 2
    work = args.keep or Path(tempfile.mkdtemp(prefix="tcu-bench-v2n-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = asyncio.run(_run(args, work))
    except (RuntimeError, TimeoutError, OSError) as exc:  # a process that did not start or report
        print(f"tools/bench/v2n.py: {exc or type(exc).__name__} (work directory: {work})", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    for problem in result["problems"]:
        print(f"FAILED: {problem}", file=sys.stderr)
    e2e = result["e2e_ms"]
    print(
        f"{result['stations']} stations, {result['cams_per_s']} CAM/s, {result['hazards']} hazards: "
        f"end to end p50 {e2e.get('p50')} / p99 {e2e.get('p99')} / max {e2e.get('max')} ms "
        f"(broker p99 {result['broker_ms'].get('p99')} ms); {'OK' if result['ok'] else 'FAILED'}",
        file=sys.stderr,
    )
    if args.json:
        print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
