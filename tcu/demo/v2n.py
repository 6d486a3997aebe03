"""``tcu demo --scenario v2n``: seven vehicles warn each other of hazards over MQTT, end to end.

Processes, all on loopback: Mosquitto with the project's PKI (mTLS, the ACL binding each
vehicle's certificate to its ITS station id, written by ``tcu pki mosquitto`` from a stations
file), ``tcu ingest``, the simulator's fleet (``python -m sim.v2n``: seven vehicles on the A31,
each on its own socketcand server) and one ``tcu agent`` per vehicle with a ``[v2x]`` section.
The cars stand parked (their CAN traffic flowing) until every agent is connected to the broker
and the broker has carried a CAM from each (``warmup_s``), then drive 14 s at real time: the
leader brakes hard (an EEBL DENM, cancelled when the braking ends), then stands with its hazard
lights on (a stationary vehicle DENM, cancelled when they go off).

Ground truth: the simulator computes from the signals it encoded and from geometry alone
(:mod:`sim.v2n`, which does not use :mod:`tcu.v2x`) which vehicle must be warned of which
event, with the rules written here into the agents' config (:func:`rules_json`).

Checked after the drive (all must hold for exit 0):

* every vehicle the ground truth says must be warned of an event was warned of it exactly
  once (one accepted warning per event, read from the telemetry the ingest stored for that
  vehicle), no other vehicle was, and each warned vehicle got the cancellation;
* each event was published once as new by its source (a backend subscriber on the broker
  sees every DENM) and its cancellation was published;
* no CAN sample of any vehicle was lost (the same check as the plain drive, per vehicle);
* the ground truth is clear-cut (``ambiguous`` empty).

The summary adds the hazard latencies: from the wall time at which the simulator wrote the
CAN frame that made the DENM due to the socket, to the broker's delivery to the backend
subscriber (``publish_ms``) and to each receiving agent's acceptance (``accept_ms``), p50, p99
and max over all (event, receiver) pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.demo.procs import DemoError, Proc, read_json_line, read_stats, spawn, wait_file
from tcu.demo.run import DemoOptions, DemoResult, _agent_config, _fetch_stored, _Security
from tcu.demo.scenario import Scenario, register
from tcu.demo.verify import expected_samples, load_ground_truth, verify_store
from tcu.pki import DevPki
from tcu.pki.mosquitto import mqtt_tls_context
from tcu.signals.dbc import load_dbc
from tcu.signals.mapping import Catalog, build_catalog, load_mapping

__all__ = ["BACKEND", "BACKEND_STATION", "V2nScenario", "rules_json"]

BACKEND = "tcu-demo"
BACKEND_STATION = 9_000_001
PREFIX = "v2x"
MOSQUITTO = "/usr/sbin/mosquitto"
DRIVE_S = 14.0
STANDSTILL_KMH = 2.0  # below it the agents keep the last moving heading ([v2x] standstill_kmh)
SETTLE_S = 1.5  # after the last frame: the agents are done when nothing changes for this long


def _percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    s = sorted(values)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, max(0, -(-int(p * 1000) * len(s) // 1000) - 1))], 1)

    return {"n": len(s), "p50": q(0.50), "p99": q(0.99), "max": round(s[-1], 1)}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(slots=True)
class _Observer:
    """A backend subscriber on the broker: every DENM with its delivery time (wall ns)."""

    denms: list[dict[str, Any]] = field(default_factory=list)
    cams: int = 0
    cam_stations: set[int] = field(default_factory=set)
    undecodable: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, port: int, pki: DevPki) -> None:
        from tcu.v2x import Cam, Denm, V2xError, decode_any

        cert, key = pki.backend(BACKEND)
        tls = mqtt_tls_context(pki.ca_cert, cert, key)
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier="tcu-demo-observer", tls_context=tls,
            protocol=aiomqtt.ProtocolVersion.V5,
        ) as client:  # fmt: skip
            await client.subscribe(f"{PREFIX}/#", qos=1)
            self.ready.set()
            async for message in client.messages:
                now = time.time_ns()
                payload = message.payload
                try:
                    decoded = decode_any(bytes(payload) if isinstance(payload, bytes | bytearray) else b"")
                except V2xError:
                    self.undecodable += 1
                    continue
                if isinstance(decoded, Cam):
                    self.cams += 1
                    self.cam_stations.add(decoded.station_id)
                elif isinstance(decoded, Denm):
                    self.denms.append(
                        {
                            "t_ns": now,
                            "topic": str(message.topic),
                            "station": decoded.station_id,
                            "action": [decoded.action_id.station_id, decoded.action_id.sequence_number],
                            "reference_ms": decoded.reference_time_ms,
                            "detection_ms": decoded.detection_time_ms,
                            "cause": decoded.cause_code,
                            "termination": decoded.termination,
                        }
                    )


@dataclass(frozen=True, slots=True)
class _Trigger:
    """A DENM trigger as the agents are configured, and as the ground truth evaluates it."""

    kind: str  # name in the ground truth
    name: str  # name in the agent's [v2x] config
    all_of: tuple[tuple[str, str, str, str, float], ...]  # (VSS name, DBC message, DBC signal, op, value)
    relevance_m: float
    hold_s: float
    release_s: float
    cause: int
    sub_cause: int
    validity_s: int
    update_s: float

    @property
    def expression(self) -> str:
        return " and ".join(f"{vss} {op} {value:g}" for vss, _m, _s, op, value in self.all_of)


TRIGGERS: tuple[_Trigger, ...] = (
    _Trigger(
        "eebl",
        "hard_braking",
        (
            ("Vehicle.Acceleration.Longitudinal", "ESP_Speed", "LongitudinalAccel", "<", -6.0),
            ("Vehicle.Speed", "ESP_Speed", "VehicleSpeed", ">", 20.0),
        ),
        relevance_m=500.0,
        hold_s=0.0,
        release_s=1.0,
        cause=99,  # dangerousSituation
        sub_cause=1,  # emergencyElectronicBrakeEngaged
        validity_s=60,
        update_s=10.0,
    ),
    _Trigger(
        "stationary",
        "stationary_hazard",
        (
            ("Vehicle.Speed", "ESP_Speed", "VehicleSpeed", "<", 1.0),
            ("Vehicle.Body.Lights.Hazard.IsSignaling", "BCM_Lights", "HazardLights", ">", 0.5),
        ),
        relevance_m=1000.0,
        hold_s=1.0,
        release_s=1.0,
        cause=94,  # stationaryVehicle
        sub_cause=0,
        validity_s=120,
        update_s=30.0,
    ),
)
AHEAD_DEG = 60.0
SAME_DIRECTION_DEG = 60.0


def rules_json() -> dict[str, Any]:
    """The ground-truth rules (``sim.v2n.Rules`` as JSON) matching the agents' ``[v2x]`` section."""
    return {
        "triggers": [
            {
                "kind": t.kind,
                "all": [
                    {"message": m, "signal": sig, "op": op, "value": v} for _vss, m, sig, op, v in t.all_of
                ],
                "relevance_m": t.relevance_m,
                "hold_s": t.hold_s,
                "release_s": t.release_s,
            }
            for t in TRIGGERS
        ],
        "ahead_max_deg": AHEAD_DEG,
        "heading_max_deg": SAME_DIRECTION_DEG,
        "standstill_kmh": STANDSTILL_KMH,
    }


def _check_rule_signals(catalog: Catalog) -> None:
    """The VSS names of the agents' conditions are the DBC signals the ground truth evaluates."""
    specs = catalog.by_name()
    for trigger in TRIGGERS:
        for vss, message, sig, _op, _value in trigger.all_of:
            spec = specs.get(vss)
            if spec is None or (spec.message, spec.signal) != (message, sig):
                found = None if spec is None else f"{spec.message}.{spec.signal}"
                raise DemoError(
                    f"trigger {trigger.name}: {vss} is {found} in the mapping, not {message}.{sig}"
                )


def _issue(pki: DevPki, vins: list[str]) -> None:
    pki.init()
    for vin in vins:
        pki.issue_vehicle(vin)
    pki.issue_backend(BACKEND)


class V2nScenario(Scenario):
    def __init__(self) -> None:
        super().__init__(name="v2n", duration_s=DRIVE_S, speed="1", runs_itself=True)

    async def run(self, options: DemoOptions, say: Callable[[str], None]) -> DemoResult:
        return await _run(options, say)


def _check_observer(observer: _Observer, task: asyncio.Task[None], broker: Proc) -> None:
    """The backend subscriber must be subscribed and still running (it sees every DENM)."""
    if task.done():
        exc = None if task.cancelled() else task.exception()
        raise broker.failed(f"refused or dropped the demo's backend subscriber ({exc!r})")
    if not observer.ready.is_set():
        raise broker.failed("did not let the demo's backend subscriber subscribe in time")


async def _wait_listening(port: int, proc: Proc, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.proc.returncode is not None:
            raise proc.failed(f"exited with status {proc.proc.returncode} while starting")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise proc.failed(f"did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


@dataclass(slots=True)
class _Vehicle:
    name: str
    vin: str
    station_id: int
    ready: dict[str, Any]  # the vehicle's socketcand endpoint, in the one-vehicle ready-line shape
    agent: Proc | None = None
    stats_path: Path | None = None
    final: dict[str, Any] = field(default_factory=dict)


async def _run(options: DemoOptions, say: Callable[[str], None]) -> DemoResult:
    if not options.mtls:
        raise DemoError(
            "the v2n scenario needs mTLS: the broker's ACL binds each station id to a certificate"
        )
    if shutil.which(MOSQUITTO) is None:
        raise DemoError(f"{MOSQUITTO} is not installed (apt-get install mosquitto)")
    started = time.monotonic()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tcu-demo-v2n-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for old in workdir.glob("state-*"):  # a reused workdir: no stale spool from the last run
        shutil.rmtree(old)
    procs: list[Proc] = []
    observer = _Observer()
    observer_task: asyncio.Task[None] | None = None
    try:
        # The fleet first: its ready line names the vehicles (VIN, station id, socketcand port).
        rules_path = workdir / "v2n_rules.json"
        rules_path.write_text(json.dumps(rules_json(), indent=1) + "\n", encoding="utf-8")
        sim = await spawn(
            "sim",
            [
                sys.executable, "-m", "sim.v2n", "--out", str(workdir / "truth"),
                "--duration", str(DRIVE_S), "--speed", "1", "--seed", str(options.seed),
                "--rules", str(rules_path), "--wait-go",
            ],
            workdir,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        procs.append(sim)
        ready = await read_json_line(sim, options.startup_timeout_s)
        if ready.get("event") != "ready":
            raise sim.failed(f"sent {ready} instead of a ready event")
        vehicles = [
            _Vehicle(
                v["name"], v["vin"], int(v["station_id"]),
                {"host": v["host"], "port": v["port"], "channel": v["channel"], "dbc": ready["dbc"],
                 "mapping": ready["mapping"]},
            )
            for v in ready["vehicles"]
        ]  # fmt: skip
        catalog = build_catalog(
            load_mapping(ready["mapping"]), {"can0": [load_dbc(ready["dbc"])]}, mapping_path=ready["mapping"]
        )
        _check_rule_signals(catalog)
        say(f"simulator: {len(vehicles)} vehicles, each on its own socketcand server")

        pki = DevPki(workdir / "pki")
        await asyncio.to_thread(_issue, pki, [v.vin for v in vehicles])
        security = _Security(pki, BACKEND)
        broker_port = _free_port()
        # The broker's configuration as a user writes it: tcu pki mosquitto with a stations file.
        stations = workdir / "stations.toml"
        stations.write_text(
            "[vehicles]\n"
            + "".join(f"{v.vin} = {v.station_id}\n" for v in vehicles)
            + f"\n[backends]\n{BACKEND} = {BACKEND_STATION}\n",
            encoding="utf-8",
        )
        pki_cli = await spawn(
            "pki-mosquitto",
            [
                sys.executable, "-m", "tcu.cli.main", "pki", "mosquitto", str(pki.directory),
                str(workdir / "broker"), "--port", str(broker_port), "--stations", str(stations),
                "--user", getpass.getuser(), "--prefix", PREFIX,
            ],
            workdir,
        )  # fmt: skip
        if await pki_cli.proc.wait() != 0:
            raise pki_cli.failed(f"exited with status {pki_cli.proc.returncode}")
        conf = workdir / "broker" / "mosquitto.conf"
        broker = await spawn("mosquitto", [MOSQUITTO, "-c", str(conf)], workdir)
        procs.append(broker)
        await _wait_listening(broker_port, broker, options.startup_timeout_s)
        say(f"mosquitto on 127.0.0.1:{broker_port} (mTLS, ACL by station id)")
        observer_task = asyncio.create_task(observer.run(broker_port, pki), name="tcu.demo.v2n-observer")
        ready_task = asyncio.create_task(observer.ready.wait(), name="tcu.demo.v2n-observer-ready")
        await asyncio.wait(
            {observer_task, ready_task}, timeout=options.startup_timeout_s, return_when="FIRST_COMPLETED"
        )
        ready_task.cancel()
        _check_observer(observer, observer_task, broker)

        ingest = await spawn(
            "ingest",
            [
                sys.executable, "-m", "tcu.cli.main", "ingest", "--listen", "127.0.0.1:0",
                "--db", str(workdir / "ingest.sqlite"), "--port-file", str(workdir / "ingest.port"),
                *security.ingest_args(),
            ],
            workdir,
        )  # fmt: skip
        procs.append(ingest)
        ingest_port = int(await wait_file(workdir / "ingest.port", ingest, options.startup_timeout_s))
        target = f"127.0.0.1:{ingest_port}"
        say(f"ingest on {target}")

        for v in vehicles:
            config = workdir / f"agent-{v.name}.toml"
            config.write_text(
                _agent_config(v.ready, target, v.vin, security, state_dir=workdir / f"state-{v.name}")
                + _v2x_toml(v, broker_port, pki),
                encoding="utf-8",
            )
            v.stats_path = workdir / f"agent-{v.name}-stats.json"
            v.agent = await spawn(
                f"agent-{v.name}",
                [sys.executable, "-m", "tcu.cli.main", "agent", "--config", str(config),
                 "--stats-file", str(v.stats_path)],
                workdir,
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            procs.append(v.agent)
        say(f"{len(vehicles)} agents started; the cars stand parked until every agent has sent a CAM")
        clients = await read_json_line(sim, options.startup_timeout_s)
        if clients.get("event") != "clients":
            raise sim.failed(f"sent {clients} instead of a clients event")
        parked_at = time.monotonic()
        await _wait_agents_warm(vehicles, observer, options.startup_timeout_s)
        _check_observer(observer, observer_task, broker)
        warmup_s = round(time.monotonic() - parked_at, 2)
        cpu_at_go = _cpu_seconds(procs)
        sim.proc.send_signal(signal.SIGUSR1)
        started_line = await read_json_line(sim, options.startup_timeout_s)
        if started_line.get("event") != "started":
            raise sim.failed(f"sent {started_line} instead of a started event")
        say(f"driving {DRIVE_S:.0f} s at real time")
        done = await _wait_drive(sim, vehicles, say, options.stall_timeout_s)
        cpu_drive = {k: round(v - cpu_at_go.get(k, 0.0), 2) for k, v in _cpu_seconds(procs).items()}
        await _wait_settled(vehicles, say, options.stall_timeout_s)
        for v in vehicles:
            assert v.agent is not None
            v.agent.proc.send_signal(signal.SIGTERM)
        for v in vehicles:
            assert v.agent is not None
            v.final = await read_json_line(v.agent, 120.0)
            await v.agent.proc.wait()
            if v.agent.proc.returncode != 0:
                raise v.agent.failed(f"exited with status {v.agent.proc.returncode}")
        _check_observer(observer, observer_task, broker)
        truth = json.loads(await asyncio.to_thread(Path(done["truth"]).read_text, encoding="utf-8"))
        extra: dict[str, Any] = {
            "warmup_s": warmup_s,
            "cpu_s_during_drive": cpu_drive,
            "cpu_s_before_drive": cpu_at_go,
            # the sources' own figure: PUBACK from the broker minus the triggering frame's CAN time
            "agent_denm_puback_ms": {
                v.name: lat
                for v in vehicles
                if (lat := (v.final.get("v2x") or {}).get("publish_latency", {}).get("denm"))
            },
        }
        extra |= await _summarize(
            vehicles, truth=truth, observer=observer, security=security, target=target, say=say
        )
        totals = await _telemetry(
            vehicles, done=done, catalog=catalog, security=security, target=target, say=say
        )
        return DemoResult(
            frames=sum(int(v.final.get("frames", 0)) for v in vehicles),
            frames_sent=sum(int(n) for n in done["frames"].values()),
            signals_decoded=sum(int(v.final.get("signals_decoded", 0)) for v in vehicles),
            batches_acked=sum(int(v.final.get("batches_acked", 0)) for v in vehicles),
            samples_stored=totals["stored"],
            samples_expected=totals["expected"],
            samples_lost=totals["lost"],
            samples_unexpected=totals["unexpected"],
            value_errors=totals["value_errors"],
            distinct_signals=totals["distinct"],
            simulated_s=DRIVE_S,
            wall_s=round(time.monotonic() - started, 2),
            mtls=True,
            workdir=str(workdir) if options.keep or options.workdir else None,
            scenario="v2n",
            extra=extra,
            scenario_ok=not extra["scenario_problems"],
        )
    finally:
        if observer_task is not None:
            observer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await observer_task
        for p in reversed(procs):
            await p.stop()
        if not options.keep and options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _cpu_seconds(procs: list[Proc]) -> dict[str, float]:
    """CPU seconds (user + system) each running process has used so far, agents summed as ``agents``."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for p in procs:
        try:
            fields = Path(f"/proc/{p.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        key = "agents" if p.name.startswith("agent-") else p.name
        out[key] = round(out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / tick, 2)
    return out


def _v2x_toml(vehicle: _Vehicle, broker_port: int, pki: DevPki) -> str:
    """The agent's ``[v2x]`` section: the broker over mTLS, its station id, the demo's triggers."""
    cert, key = pki.vehicle(vehicle.vin)
    lines = [
        "",
        "# The V2N scenario: CAMs and DENMs over the broker; warnings become telemetry.",
        "[v2x]",
        f'broker = "127.0.0.1:{broker_port}"',
        f"station_id = {vehicle.station_id}",
        f'prefix = "{PREFIX}"',
        "length_m = 4.6",
        "width_m = 1.9",
        f"standstill_kmh = {STANDSTILL_KMH}",
        f"ahead_deg = {AHEAD_DEG}",
        f"same_direction_deg = {SAME_DIRECTION_DEG}",
        "reconnect_max_s = 2.0",
        "",
        "[v2x.tls]",
        f"ca_cert = {json.dumps(str(pki.ca_cert))}",
        f"cert = {json.dumps(str(cert))}",
        f"key = {json.dumps(str(key))}",
    ]
    for t in TRIGGERS:
        lines += [
            "",
            "[[v2x.trigger]]",
            f'name = "{t.name}"',
            f'condition = "{t.expression}"',
            f"cause = {t.cause}",
            f"sub_cause = {t.sub_cause}",
            f"validity_s = {t.validity_s}",
            f"relevance_m = {t.relevance_m}",
            f"hold_ms = {round(t.hold_s * 1000)}",
            f"release_ms = {round(t.release_s * 1000)}",
            f"update_s = {t.update_s}",
        ]
    return "\n".join(lines) + "\n"


async def _wait_agents_warm(vehicles: list[_Vehicle], observer: _Observer, timeout_s: float) -> None:
    """Until every agent is connected to the broker and the broker has carried a CAM of each.

    The fleet stands parked meanwhile: an agent that is still starting (imports, the ASN.1
    compile on its first message, its first subscriptions) must not meet the scenario late.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = []
        for v in vehicles:
            assert v.agent is not None and v.stats_path is not None
            if v.agent.proc.returncode is not None:
                raise v.agent.failed(f"exited with status {v.agent.proc.returncode} while starting")
            v2x = read_stats(v.stats_path).get("v2x")
            if (
                not (isinstance(v2x, dict) and v2x.get("connected"))
                or v.station_id not in observer.cam_stations
            ):
                waiting.append(v.name)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise DemoError(
                f"the agents of {waiting} did not connect and send a CAM within {timeout_s:.0f} s"
            )
        await asyncio.sleep(0.1)


async def _wait_settled(vehicles: list[_Vehicle], say: Callable[[str], None], timeout_s: float) -> None:
    """After the drive: until no agent decodes, sends or receives anything more for SETTLE_S.

    A loaded machine can leave an agent's pipeline and V2N client behind its bus reader; stopping
    it then would cut off warnings it has not yet handled.
    """

    def signature(v: _Vehicle) -> tuple[Any, ...]:
        assert v.stats_path is not None
        stats = read_stats(v.stats_path)
        raw = stats.get("v2x")
        v2x: dict[str, Any] = raw if isinstance(raw, dict) else {}
        raw_counters = v2x.get("counters")
        counters: dict[str, Any] = raw_counters if isinstance(raw_counters, dict) else {}
        return (
            stats.get("signals_decoded"),
            v2x.get("queued"),
            counters.get("rx_messages"),
            counters.get("denm_published"),
            counters.get("cam_published"),
        )

    deadline = time.monotonic() + timeout_s
    last: dict[str, tuple[Any, ...]] = {}
    since = time.monotonic()
    while time.monotonic() < deadline:
        now = {v.name: signature(v) for v in vehicles}
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_S and all(sig[1] == 0 for sig in now.values()):
            return
        await asyncio.sleep(0.2)
    say(f"the agents were still busy {timeout_s:.0f} s after the drive; stopping them")


async def _wait_drive(
    sim: Proc, vehicles: list[_Vehicle], say: Callable[[str], None], stall_timeout_s: float
) -> dict[str, Any]:
    """Until the fleet's ``done`` line, then until every agent has read every frame of its vehicle."""
    done_task = asyncio.create_task(read_json_line(sim, None), name="tcu.demo.v2n-sim-done")
    last_report = 0.0
    done: dict[str, Any] | None = None
    seen: tuple[int, float] = (-1, time.monotonic())
    while True:
        if done is None and done_task.done():
            done = done_task.result()
            if done.get("event") != "done" or done.get("interrupted"):
                raise sim.failed(f"ended the drive with {done}")
            say(f"drive finished: {sum(done['frames'].values())} frames sent")
        frames = {}
        for v in vehicles:
            assert v.agent is not None and v.stats_path is not None
            if v.agent.proc.returncode is not None:
                raise v.agent.failed(f"exited with status {v.agent.proc.returncode} during the drive")
            frames[v.name] = int(read_stats(v.stats_path).get("frames", -1))
        total = sum(frames.values())
        now = time.monotonic()
        if done is not None:
            if all(frames[v.name] >= int(done["frames"][v.name]) for v in vehicles):
                return done
            if total != seen[0]:
                seen = (total, now)
            elif now - seen[1] > stall_timeout_s:
                say(f"agents read {frames} and no more for {stall_timeout_s:.0f} s; stopping them")
                return done
        if now - last_report >= 2.0:
            last_report = now
            say(f"frames read by the agents: {total}")
        await asyncio.sleep(0.1)


WARNING = "Vehicle.Tcu.V2x.Warning"
SENT = "Vehicle.Tcu.V2x.Sent"


async def _v2x_records(
    security: _Security, target: str, vin: str, problems: list[str]
) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """The vehicle's ``Vehicle.Tcu.V2x.*`` string telemetry as stored by the ingest: (t_ns, record)."""
    out: dict[str, list[tuple[int, dict[str, Any]]]] = {WARNING: [], SENT: []}
    async with security.channel(target) as channel:
        stub = fleet_grpc.FleetStub(channel)
        async for update in stub.Query(fleet_pb.QueryRequest(vehicle_id=vin, signals=[WARNING, SENT])):
            for series in update.series:
                if series.name not in out:
                    continue
                for t_ns, text in zip(series.t_ns, series.string_values, strict=True):
                    try:
                        record = json.loads(text)
                    except json.JSONDecodeError:
                        problems.append(f"{vin}: {series.name} at {t_ns} is not JSON: {text[:80]!r}")
                        continue
                    out[series.name].append((int(t_ns), record))
    for records in out.values():
        records.sort(key=lambda r: r[0])
    return out


async def _summarize(
    vehicles: list[_Vehicle],
    *,
    truth: dict[str, Any],
    observer: _Observer,
    security: _Security,
    target: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Warnings the ingest stored for each vehicle against the ground truth; the hazard latencies."""
    from tcu.v2x import unix_ns_from_its

    problems = [f"ground truth: {a}" for a in truth["ambiguous"]]
    trigger_of = {t.kind: t.name for t in TRIGGERS}
    records = {v.name: await _v2x_records(security, target, v.vin, problems) for v in vehicles}
    # Each event of the ground truth is one action (station, sequence number) its source announced.
    events = []
    actions: dict[tuple[int, int], dict[str, Any]] = {}
    for source in vehicles:
        sent = records[source.name][SENT]
        for kind, name in trigger_of.items():
            mine = [e for e in truth["events"] if e["source"] == source.name and e["kind"] == kind]
            new = [r for _, r in sent if r.get("trigger") == name and r.get("kind") == "new"]
            if len(new) != len(mine):
                problems.append(
                    f"{source.name} sent {len(new)} new {name} DENMs, the ground truth has {len(mine)}"
                )
            for event, record in zip(mine, new, strict=False):
                action = (source.station_id, int(record["seq"]))
                cancels = [
                    r for _, r in sent if r.get("kind") == "cancellation" and r.get("seq") == record["seq"]
                ]
                if len(cancels) != 1:
                    problems.append(f"{event['id']}: {len(cancels)} cancellations sent, expected 1")
                detection_ms = (
                    unix_ns_from_its(int(record["reference_time_ms"])) / 1e6 - event["new_us"] / 1e3
                )
                actions[action] = event
                events.append((event, action, detection_ms))
    publish_ms: list[float] = []
    accept_ms: list[float] = []
    cancel_ms: list[float] = []
    agent_ms: list[float] = []
    seen = {(d["action"][0], d["action"][1], d["termination"]) for d in observer.denms}
    first_seen: dict[tuple[int, int, str | None], int] = {}
    for d in observer.denms:
        first_seen.setdefault((d["action"][0], d["action"][1], d["termination"]), d["t_ns"])
    expected = accepted_ok = cancels_expected = cancels_ok = 0
    for event, action, _ in events:
        new_at = first_seen.get((*action, None))
        if new_at is None or (*action, "isCancellation") not in seen:
            problems.append(f"{event['id']}: the broker did not carry its DENM and its cancellation")
        if new_at is not None and event["new_wall_ns"] is not None:
            publish_ms.append((new_at - event["new_wall_ns"]) / 1e6)
        for name in event["must_warn"] + event["must_not_warn"]:
            got = [(t, r) for t, r in records[name][WARNING] if (r.get("station"), r.get("seq")) == action]
            acc = [(t, r) for t, r in got if r.get("kind") == "accepted"]
            must = name in event["must_warn"]
            if must:
                expected += 1
            if name in event["must_hear_cancellation"]:
                cancels_expected += 1
            if must and len(acc) != 1:
                problems.append(f"{event['id']}: {name} was warned {len(acc)} times, expected once")
            elif not must and acc:
                problems.append(f"{event['id']}: {name} was warned ({len(acc)}x) but must not be")
            elif must:
                accepted_ok += 1
                t_acc, r_acc = acc[0]
                if event["new_wall_ns"] is not None:
                    accept_ms.append((t_acc - event["new_wall_ns"]) / 1e6)
                if r_acc.get("latency_ms") is not None:
                    agent_ms.append(float(r_acc["latency_ms"]))
                cancelled = [t for t, r in got if r.get("kind") == "cancelled"]
                if len(cancelled) == 1:
                    cancels_ok += 1
                    if event["cancel_wall_ns"] is not None:
                        cancel_ms.append((cancelled[0] - event["cancel_wall_ns"]) / 1e6)
                else:
                    problems.append(f"{event['id']}: {name} got {len(cancelled)} cancellations, expected 1")
    unexpected = 0
    for v in vehicles:
        for _t, r in records[v.name][WARNING]:
            if r.get("kind") == "accepted" and (r.get("station"), r.get("seq")) not in actions:
                unexpected += 1
                problems.append(
                    f"{v.name} was warned of station {r.get('station')} #{r.get('seq')}: no such event"
                )
    for problem in problems:
        say(f"v2n: {problem}")
    warned = {e["id"]: e["must_warn"] for e, _, _ in events}
    say(f"v2n: {len(events)} events; must warn {warned}; {accepted_ok}/{expected} warned, "
        f"{cancels_ok}/{cancels_expected} cancellations; {observer.cams} CAMs on the broker")  # fmt: skip
    return {
        "vehicles": len(vehicles),
        "v2n_events": [e["id"] for e, _, _ in events],
        "warnings_expected": expected,
        "warnings_ok": accepted_ok,
        "warnings_unexpected": unexpected,
        "cancellations_expected": cancels_expected,
        "cancellations_ok": cancels_ok,
        "must_warn": warned,
        "denms_on_broker": len(observer.denms),
        "cams_on_broker": observer.cams,
        "detection_offset_ms": max((abs(d) for _, _, d in events), default=None),
        "publish_ms": _percentiles(publish_ms),
        "accept_ms": _percentiles(accept_ms),
        "cancel_accept_ms": _percentiles(cancel_ms),
        "agent_latency_ms": _percentiles(agent_ms),
        "scenario_problems": problems,
    }


async def _telemetry(
    vehicles: list[_Vehicle],
    *,
    done: dict[str, Any],
    catalog: Catalog,
    security: _Security,
    target: str,
    say: Callable[[str], None],
) -> dict[str, int]:
    """Every vehicle's CAN samples in the ingest against its own ground truth (the plain drive's check)."""
    totals = {"stored": 0, "expected": 0, "lost": 0, "unexpected": 0, "value_errors": 0, "distinct": 0}
    can_names = {s.name for s in catalog.signals}
    distinct: list[int] = []
    for v in vehicles:
        stored, _ = await _fetch_stored(security, target, v.vin)
        stored = {name: series for name, series in stored.items() if name in can_names}
        expected = await asyncio.to_thread(
            expected_samples, load_ground_truth(done["ground_truth"][v.name]), catalog
        )
        c = verify_store(expected, stored, catalog)
        totals["stored"] += c.samples_stored
        totals["expected"] += c.samples_expected
        totals["lost"] += c.samples_lost
        totals["unexpected"] += c.samples_unexpected
        totals["value_errors"] += c.value_errors
        distinct.append(c.distinct_signals)
        for name, problem in list(c.worst.items())[:3]:
            say(f"{v.name}: value error in {name}: {problem}")
    totals["distinct"] = min(distinct) if distinct else 0
    return totals


register("v2n", V2nScenario)
