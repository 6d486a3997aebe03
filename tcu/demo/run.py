"""Run the simulator, the agent and the ingest as separate processes and check the result.

The ingest listens on a free loopback port; the simulator serves its CAN bus
over the socketcand protocol on another; the agent connects to both, exactly as
it would to a socketcand daemon and a remote ingest. When the simulated drive
is over and the agent has read every frame, the agent gets SIGTERM and drains;
then the stored samples are fetched through ``Fleet.Query`` and compared with
the simulator's ground truth.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.demo.procs import DemoError, Proc, read_json_line, read_stats, spawn, wait_file
from tcu.demo.scenario import CloudContext, Scenario, ScenarioContext
from tcu.demo.verify import Series, expected_samples, load_ground_truth, verify_store
from tcu.fleet_client import query_series, series_pairs
from tcu.pki import DevPki, channel_credentials
from tcu.signals.dbc import load_dbc
from tcu.signals.mapping import build_catalog, load_mapping

__all__ = ["DemoError", "DemoOptions", "DemoResult", "progress_line", "run_demo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DemoOptions:
    duration_s: float = 60.0
    speed: str = "max"
    seed: int = 1
    vehicle_id: str = "WTCUSIM0000000001"
    workdir: Path | None = None
    keep: bool = False
    startup_timeout_s: float = 60.0
    stall_timeout_s: float = 30.0
    mtls: bool = True
    scenario: Scenario = field(default_factory=Scenario)


@dataclass(slots=True)
class DemoResult:
    frames: int
    frames_sent: int
    signals_decoded: int
    batches_acked: int
    samples_stored: int
    samples_expected: int
    samples_lost: int
    samples_unexpected: int
    value_errors: int
    distinct_signals: int
    simulated_s: float
    wall_s: float
    mtls: bool
    workdir: str | None
    scenario: str = "drive"
    extra: dict[str, Any] = field(default_factory=dict)
    scenario_ok: bool = True

    @property
    def ok(self) -> bool:
        return (
            self.samples_lost == 0
            and self.value_errors == 0
            and self.samples_unexpected == 0
            and self.samples_stored == self.samples_expected
            and self.scenario_ok
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out.pop("scenario_ok")
        out.update(extra)
        return out


@dataclass(frozen=True, slots=True)
class _Security:
    """The demo's development PKI (mTLS) or nothing (plain TCP with --insecure)."""

    pki: DevPki | None
    backend: str = "tcu-demo"

    def ingest_args(self) -> list[str]:
        return ["--insecure"] if self.pki is None else ["--pki", str(self.pki.directory)]

    def agent_toml(self, vehicle_id: str) -> str:
        if self.pki is None:
            return "insecure = true\n"
        cert, key = self.pki.vehicle(vehicle_id)
        return (
            "\n[uplink.tls]\n"
            f"ca_cert = {json.dumps(str(self.pki.ca_cert))}\n"
            f"cert = {json.dumps(str(cert))}\n"
            f"key = {json.dumps(str(key))}\n"
        )

    def channel(self, target: str) -> grpc.aio.Channel:
        if self.pki is None:
            return grpc.aio.insecure_channel(target)
        cert, key = self.pki.backend(self.backend)
        return grpc.aio.secure_channel(target, channel_credentials(self.pki.ca_cert, cert, key))


def _make_security(options: DemoOptions, workdir: Path) -> _Security:
    if not options.mtls:
        return _Security(None)
    pki = DevPki(workdir / "pki")
    pki.init()
    pki.issue_vehicle(options.vehicle_id)
    pki.issue_backend("tcu-demo")
    return _Security(pki)


async def _fetch_stored(security: _Security, target: str, vehicle_id: str) -> tuple[dict[str, Series], int]:
    async with security.channel(target) as channel:
        stored = series_pairs(await query_series(channel, vehicle_id))
        vehicles = await fleet_grpc.FleetStub(channel).ListVehicles(fleet_pb.ListVehiclesRequest())
    batches = sum(v.batches for v in vehicles.vehicles if v.vehicle_id == vehicle_id)
    return stored, batches


def _agent_config(
    ready: dict[str, Any],
    uplink_target: str,
    vehicle_id: str,
    security: _Security,
    uplink_extra: str = "",
    *,
    state_dir: Path,
) -> str:
    """The agent's TOML; ``state_dir`` is its own (spool by default, catalogs, nonces): the demo
    runs several agents, and none may share another's (or the machine's) state directory."""
    return (
        "# Written by tcu demo: the agent reads the simulator over socketcand and uploads to the ingest.\n"
        f'[vehicle]\nid = "{vehicle_id}"\n\n'
        f"[state]\ndirectory = {json.dumps(str(state_dir))}\n\n"
        f'[[bus]]\nname = "{ready["channel"]}"\ninterface = "socketcand"\nchannel = "{ready["channel"]}"\n'
        f"dbc = [{json.dumps(ready['dbc'])}]\n"
        f'options = {{ host = "{ready["host"]}", port = {int(ready["port"])} }}\n\n'
        f"[signals]\nmapping = {json.dumps(ready['mapping'])}\n\n"
        "# The simulator runs up to 60 times faster than real time: the agent paces it (TCP flow\n"
        "# control) instead of dropping frames at a full bus buffer.\n"
        '[frames]\noverflow = "block"\n\n'
        f"[uplink]\ntarget = {json.dumps(uplink_target)}\n{uplink_extra}" + security.agent_toml(vehicle_id)
    )


_RUN_FILES = (
    "ingest.sqlite",
    "ingest.sqlite-wal",
    "ingest.sqlite-shm",
    "ingest.port",
    "ground_truth.npz",
    "agent-stats.json",
    "spool",
    "state",
    "pki",
)
"""What a run leaves in its work directory that the next run must not find (a stale port file, old
samples in the database, a PKI that would refuse to be created again)."""


def _clear_previous_run(workdir: Path) -> list[str]:
    removed = []
    for name in _RUN_FILES:
        path = workdir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name)
    return removed


def progress_line(stats: dict[str, Any]) -> str:
    """The demo's once-a-second line from the agent's stats file.

    Until the agent has read a frame it says what is going on instead of a row of zeros: the
    agent process is starting (imports, DBC and mapping, spool) and the simulator's drive waits
    for its bus client, so no frame is sent before the agent opens the bus.
    """
    frames = int(stats.get("frames", 0))
    if frames == 0:
        started = "stats file not written yet" if not stats else "bus not read yet"
        return f"agent starting ({started}); the drive begins when it opens the bus"
    return (
        f"frames {frames:>8}  signals {stats.get('signals_decoded', 0):>9}  "
        f"batches acked {stats.get('batches_acked', 0):>5}  "
        f"unacked {stats.get('batches_unacked', 0)}"
    )


async def run_demo(options: DemoOptions, progress: Callable[[str], None] | None = None) -> DemoResult:
    say = progress or (lambda _m: None)
    if options.scenario.runs_itself:
        return await options.scenario.run(options, say)
    started = time.monotonic()
    # Absolute: the processes run in the work directory, so a relative one would be taken twice.
    workdir = options.workdir.resolve() if options.workdir else Path(tempfile.mkdtemp(prefix="tcu-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cleared = _clear_previous_run(workdir)
    if cleared:
        say(f"work directory {workdir} was used before: removed {', '.join(cleared)} of that run")
    scenario = options.scenario
    duration_s = scenario.duration_s if scenario.duration_s is not None else options.duration_s
    speed = scenario.speed if scenario.speed is not None else options.speed
    procs: list[Proc] = []
    try:
        await asyncio.to_thread(scenario.prepare, workdir)
        procs.extend(await scenario.start_peers(workdir, say))
        security = await asyncio.to_thread(_make_security, options, workdir)
        if security.pki is not None:
            say(f"development PKI in {security.pki.directory}: mTLS for the agent and the backend")
        target = await scenario.start_cloud(
            CloudContext(
                workdir=workdir,
                vehicle_id=options.vehicle_id,
                security_args=security.ingest_args(),
                command_keys=security.pki.directory if security.pki is not None else None,
                channel=security.channel,
                startup_timeout_s=options.startup_timeout_s,
                say=say,
            )
        )
        if target is None:
            ingest = await spawn(
                "ingest",
                [
                    sys.executable,
                    "-m",
                    "tcu.cli.main",
                    "ingest",
                    "--listen",
                    "127.0.0.1:0",
                    "--db",
                    str(workdir / "ingest.sqlite"),
                    "--port-file",
                    str(workdir / "ingest.port"),
                    *security.ingest_args(),
                ],
                workdir,
            )
            procs.append(ingest)
            ingest_port = int(await wait_file(workdir / "ingest.port", ingest, options.startup_timeout_s))
            target = f"127.0.0.1:{ingest_port}"
            say(f"ingest listening on {target}")

        ground_truth = workdir / "ground_truth.npz"
        sim = await spawn(
            "sim",
            [
                sys.executable,
                "-m",
                "sim",
                "--duration",
                str(duration_s),
                "--speed",
                speed,
                "--seed",
                str(options.seed),
                "--socketcand-port",
                "0",
                "--ground-truth",
                str(ground_truth),
                *scenario.sim_args,
                *scenario.ingest_sim_args(target),
            ],
            workdir,
            stdout=asyncio.subprocess.PIPE,
        )
        procs.append(sim)
        ready = await read_json_line(sim, options.startup_timeout_s)
        if ready.get("event") != "ready":
            raise sim.failed(f"sent {ready} instead of a ready event")
        say(f"simulator serving socketcand on {ready['host']}:{ready['port']} ({ready['channel']})")

        config_path = workdir / "agent.toml"
        await asyncio.to_thread(
            config_path.write_text,
            _agent_config(
                ready,
                scenario.uplink_target(ready, target),
                options.vehicle_id,
                security,
                scenario.uplink_toml(),
                state_dir=workdir / "state",
            )
            + scenario.agent_toml(workdir, ready),
        )
        stats_path = workdir / "agent-stats.json"
        agent = await spawn(
            "agent",
            [
                sys.executable,
                "-m",
                "tcu.cli.main",
                "agent",
                "--config",
                str(config_path),
                "--stats-file",
                str(stats_path),
            ],
            workdir,
            stdout=asyncio.subprocess.PIPE,
        )
        procs.append(agent)
        say(f"agent started as vehicle {options.vehicle_id}; driving {duration_s:.0f} simulated s")

        done_task = asyncio.create_task(read_json_line(sim, None), name="tcu.demo.sim-done")
        done: dict[str, Any] | None = None
        last_report = 0.0
        seen = (-1, time.monotonic())  # (frames read, when that count was first seen)
        while True:
            if done is None and done_task.done():
                done = done_task.result()
                say(f"drive finished: {done['frames']} frames sent")
            stats = read_stats(stats_path)
            if agent.proc.returncode is not None:
                raise agent.failed(f"exited with status {agent.proc.returncode} during the drive")
            frames_read = int(stats.get("frames", -1))
            if done is not None and frames_read >= int(done["frames"]):
                break
            now = time.monotonic()
            if frames_read != seen[0]:
                seen = (frames_read, now)
            elif done is not None and now - seen[1] > options.stall_timeout_s:
                # Frames lost between simulator and agent: stop waiting; the comparison will show it.
                say(
                    f"agent read {frames_read} of {done['frames']} frames and no more for "
                    f"{options.stall_timeout_s:.0f} s; stopping it"
                )
                break
            if now - last_report >= 1.0:
                last_report = now
                say(progress_line(stats))
            await asyncio.sleep(0.1)

        if done is not None and frames_read >= int(done["frames"]):
            say("agent has read every frame; stopping it (it drains its last batches)")
        agent.proc.send_signal(signal.SIGTERM)
        final = await read_json_line(agent, 120.0)
        await agent.proc.wait()
        if agent.proc.returncode != 0:
            raise agent.failed(f"exited with status {agent.proc.returncode}")

        await scenario.settle()
        stored, _batches = await _fetch_stored(security, target, options.vehicle_id)
        dbc = load_dbc(ready["dbc"])
        catalog = build_catalog(
            load_mapping(ready["mapping"]), {ready["channel"]: [dbc]}, mapping_path=ready["mapping"]
        )
        # The CAN signals are checked here; signals the agent produces itself are the scenario's.
        can_names = {s.name for s in catalog.signals}
        stored = {name: series for name, series in stored.items() if name in can_names}
        extra = await scenario.summarize(
            ScenarioContext(
                workdir=workdir,
                vehicle_id=options.vehicle_id,
                ready=ready,
                done=done,
                agent_final=final,
                catalog=catalog,
                ingest_target=target,
                channel=lambda: security.channel(target),
                say=say,
            )
        )
        expected = expected_samples(load_ground_truth(done["ground_truth"]), catalog)
        comparison = verify_store(expected, stored, catalog)
        for name, problem in list(comparison.worst.items())[:5]:
            say(f"value error in {name}: {problem}")
        return DemoResult(
            frames=int(final["frames"]),
            frames_sent=int(done["frames"]),
            signals_decoded=int(final["signals_decoded"]),
            batches_acked=int(final["batches_acked"]),
            samples_stored=comparison.samples_stored,
            samples_expected=comparison.samples_expected,
            samples_lost=comparison.samples_lost,
            samples_unexpected=comparison.samples_unexpected,
            value_errors=comparison.value_errors,
            distinct_signals=comparison.distinct_signals,
            simulated_s=duration_s,
            wall_s=round(time.monotonic() - started, 2),
            mtls=security.pki is not None,
            workdir=str(workdir) if options.keep or options.workdir else None,
            scenario=scenario.name,
            extra=extra,
            scenario_ok=scenario.ok(extra),
        )
    finally:
        for p in reversed(procs):
            await p.stop()
        await scenario.aclose()
        if not options.keep and options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
