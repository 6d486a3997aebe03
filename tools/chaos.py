"""Chaos run: kill, restart and cut the telematics chain on a seeded schedule, then count every sample.

Real processes on loopback: the ingest (``tcu ingest`` with a development PKI
(mTLS) or ``--insecure``, on a fixed free port so that restarts keep the
address), the simulator (``python -m sim --reconnect --speed S``: it pauses
simulated time while no agent is connected) and the agent (``tcu agent`` with a
``[spool]`` of ``power-loss`` durability by default, ``[batch] max_age_ms``
small, short reconnect backoff). The agent reaches the ingest through
:class:`LinkProxy`, which this tool uses to cut streams and to take the link
down. On a schedule drawn from ``--seed`` (see ``_chaos_schedule``) it

* kills the agent with SIGKILL and starts a new one on the same spool,
* restarts the ingest (SIGTERM or SIGKILL, then a new process on the same port and database),
* cuts every proxied connection (a stream cut-off),
* takes the link down for offline periods measured in simulated seconds
  (``N`` simulated seconds last ``N / speed`` wall seconds),
* fills the spool's disk: the spool lives on a tmpfs, which is shrunk to what it
  holds plus a margin while the link is down (skipped, with the reason printed,
  where a tmpfs cannot be mounted),
* damages the spool of a killed agent (one record's bytes, or ``state.json``
  cut in half) before starting the next one,

then lets the drive end, waits until the agent has read every frame written to
it and stops it with SIGTERM (it drains its spool). After every kill and after
the stop it reads the spool (``_chaos_spool``, read-only): which batches the
agent had made durable. The accounting (``_chaos_account``) compares the
simulator's ground truth and those spool facts with what the ingest's database
holds (``_chaos_store``: batch rows, quarantine, sample rows), at batch and at
sample level; ``Fleet.Query`` must return the same samples. The facts of the
run are kept in ``run.json`` in the work directory, so that
``--account WORKDIR`` can count a finished run again.

    .venv/bin/python tools/chaos.py --seed 11 --kills 40 --ingest-restarts 8 --cutoffs 15 \\
        --offline-minutes 20 --json
    .venv/bin/python tools/chaos.py --seed 2 --kills 3 --ingest-restarts 1 --cutoffs 2 \\
        --offline-minutes 1 --disk-full 0 --spool-damage 0 --json       # small, as the test runs it
    .venv/bin/python tools/chaos.py --self-test delete-batches --json   # must exit 1

With ``--json`` the last line printed is one JSON object with ``kills``,
``ingest_restarts``, ``cutoffs``, ``offline_s`` (simulated seconds),
``samples_expected``, ``samples_stored``, ``lost`` (silently), ``reported_lost``
(DataLoss at the ingest), ``batches_missing``, ``duplicates``,
``kill_windows_over_bound`` and ``ok`` (and more). The exit status is 0 when
``ok``, 1 otherwise, 2 when the run itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from _chaos_account import Segment, account
from _chaos_proxy import ClockTap, LinkProxy, ProxyConfig
from _chaos_schedule import Fault, Schedule, make_schedule
from _chaos_spool import Damage, SpoolFacts, corrupt_record, inspect_spool, truncate_state
from _chaos_store import StoreContents, delete_batches, read_store
from _chaos_tmpfs import Tmpfs, TmpfsUnavailable

from tcu.demo.procs import Proc, read_json_line, read_stats, spawn, wait_file
from tcu.demo.verify import Series, load_ground_truth
from tcu.errors import TcuError
from tcu.fleet_client import query_series, series_pairs
from tcu.pki import DevPki, channel_credentials
from tcu.signals.dbc import load_dbc
from tcu.signals.mapping import Catalog, build_catalog, load_mapping

log = logging.getLogger("chaos")

_BACKEND = "tcu-chaos"
_RUN_FILE = "run.json"


class ChaosError(TcuError):
    """The chaos run itself failed (a process did not start, a deadline passed)."""


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    seed: int = 1
    kills: int = 20
    ingest_restarts: int = 5
    cutoffs: int = 10
    offline_minutes: float = 15.0
    offline_periods: int | None = None  # None: one per 3 simulated minutes, at least 1
    disk_full: int = 1  # disk-full phases
    disk_full_s: float = 120.0  # simulated seconds of link down on a full spool disk
    disk_full_margin_kib: int = 256  # free space left when the phase starts
    disk_full_hold_s: float = 10.0  # simulated seconds the disk stays full after the link is back
    spool_tmpfs_mib: int = 256  # the spool's tmpfs outside the phase (when there is a disk-full phase)
    spool_damage: int = 2  # spool-damage phases (record, state, record, ...)
    damage_backlog_s: float = 40.0  # simulated seconds of link down before the damage
    speed: float = 20.0
    max_age_ms: int = 200
    # What a kill may lose besides the batch being built: frames in the socket buffers and the
    # agent's lag behind a simulator running at ``speed`` (a restarted agent catching up on its
    # backlog ran 0.5 s of wall time behind at speed 20 here). The bound is
    # (max_age_ms + kill_slack_ms) * speed of simulated time.
    kill_slack_ms: int = 1000
    durability: str = "power-loss"
    mtls: bool = True
    vehicle_id: str = "WTCUCHAOS00000001"
    workdir: Path | None = None
    keep: bool = False
    startup_timeout_s: float = 60.0
    drain_timeout_s: float = 120.0


@dataclass(slots=True)
class ChaosResult:
    ok: bool = False
    kills: int = 0
    ingest_restarts: int = 0
    cutoffs: int = 0
    offline_s: float = 0.0
    samples_expected: int = 0
    samples_stored: int = 0
    lost: int = 0
    reported_lost: int = 0
    duplicates: int = 0
    unexpected: int = 0
    value_errors: int = 0
    unspooled_at_kills: int = 0
    max_kill_window_ms: float = 0.0
    longest_kill_windows_ms: list[float] = field(default_factory=list)
    kill_window_bound_ms: float = 0.0
    kill_windows_over_bound: int = 0
    kill_windows_after_dataloss: int = 0
    kills_unverified: int = 0
    batches_expected: int = 0
    batches_stored: int = 0
    batches_reported_lost: int = 0
    batches_quarantined: int = 0
    batches_missing: int = 0
    loss_reasons: dict[str, int] = field(default_factory=dict)
    unknown_epochs: int = 0
    orphan_samples: int = 0
    incomplete_batches: int = 0
    query_mismatches: int = 0
    durability: str = ""
    mtls: bool = False
    disk_full_phases: int = 0
    disk_full_skipped: str | None = None
    disk_full_bytes: list[int] = field(default_factory=list)
    disk_full_reached: int = 0  # phases in which the spool's disk had less than 64 KiB free
    spool_damages: int = 0
    spool_damage_kinds: list[str] = field(default_factory=list)
    spool_damage_skipped: int = 0
    damaged_records_not_reported: int = 0
    agent_enospc_lines: int = 0
    ingest_restarts_sigterm: int = 0
    ingest_restarts_sigkill: int = 0
    offline_periods: int = 0
    connections_cut: int = 0
    cutoffs_idle: int = 0  # cut-offs that found no stream open (within 3 s)
    connections_refused: int = 0
    agent_unexpected_exits: int = 0
    ingest_unexpected_exits: int = 0
    sim_clients: int = 0
    frames: int = 0
    frames_dropped: int = 0
    batches_unacked_at_stop: int = -1
    simulated_s: float = 0.0
    wall_s: float = 0.0
    seed: int = 0
    speed: float = 0.0
    failures: list[str] = field(default_factory=list)
    lost_examples: list[str] = field(default_factory=list)
    missing_batch_examples: list[str] = field(default_factory=list)
    workdir: str | None = None

    def judge(self) -> bool:
        """Set ``failures`` (every check that did not hold) and ``ok``; returns ``ok``."""
        loss_phases = self.disk_full_phases + self.spool_damages
        checks = [
            (self.samples_expected > 0, "no samples expected"),
            (self.lost == 0, f"{self.lost} samples lost silently"),
            (self.batches_missing == 0, f"{self.batches_missing} batches missing at the ingest"),
            (self.duplicates == 0, f"{self.duplicates} duplicate samples"),
            (self.value_errors == 0, f"{self.value_errors} wrong values"),
            (self.unexpected == 0, f"{self.unexpected} unexpected samples"),
            (
                self.kill_windows_over_bound == 0,
                f"{self.kill_windows_over_bound} kill windows over {self.kill_window_bound_ms:.0f} ms",
            ),
            (self.kills_unverified == 0, f"{self.kills_unverified} kills without readable spool facts"),
            (self.orphan_samples == 0, f"{self.orphan_samples} sample rows without their batch"),
            (self.incomplete_batches == 0, f"{self.incomplete_batches} batches with missing sample rows"),
            (self.query_mismatches == 0, f"Fleet.Query differs from the database by {self.query_mismatches}"),
            (self.batches_unacked_at_stop == 0, f"{self.batches_unacked_at_stop} batches unacked at stop"),
            (
                self.agent_unexpected_exits == 0,
                f"the agent exited by itself {self.agent_unexpected_exits} times",
            ),
            (
                self.damaged_records_not_reported == 0,
                f"{self.damaged_records_not_reported} damaged spool records not reported as DataLoss",
            ),
            (
                loss_phases > 0 or (self.reported_lost == 0 and self.batches_reported_lost == 0),
                f"{self.batches_reported_lost} batches reported lost without a disk-full or damage phase",
            ),
        ]
        self.failures = [what for good, what in checks if not good]
        self.ok = not self.failures
        return self.ok


@dataclass(frozen=True, slots=True)
class _Death:
    """An agent process ended: killed by the harness, by a phase, or by itself."""

    client: int  # the simulator's client number it read as (0: it never connected)
    kill_us: int  # on the simulator's clock, as the harness saw it when it sent SIGKILL
    spool: SpoolFacts | None
    cause: str  # "kill", "damage", "exit"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _SimWatcher:
    """Reads the simulator's JSON events and keeps its simulated clock."""

    def __init__(self, sim: Proc, speed: float, events_path: Path) -> None:
        self.sim, self.speed, self.events_path = sim, speed, events_path
        self.clients_seen = 0
        self.events: list[dict[str, Any]] = []
        self.done: dict[str, Any] | None = None
        self.start_us: int | None = None
        self._base_us = 0
        self._base_wall = 0.0
        self._running = False
        self.connected = asyncio.Event()
        self.idle = asyncio.Event()  # no client (or the drive is done)
        self.tap: ClockTap | None = None  # the newest frame time on the wire to the agent

    async def run(self) -> None:
        while True:
            event = await read_json_line(self.sim, None)
            self.events.append(event)
            line = json.dumps(event)
            log.debug("sim: %s", line)
            with self.events_path.open("a") as fh:
                fh.write(line + "\n")
            if event.get("event") == "done":
                self.done = event
                self._running = False
                self.idle.set()
                return
            if event.get("event") != "client":
                continue
            self._base_us, self._base_wall = int(event["sim_us"]), time.monotonic()
            if event["state"] == "connected":
                self.clients_seen += 1
                if self.start_us is None:
                    self.start_us = self._base_us
                self._running = True
                self.idle.clear()
                self.connected.set()
            else:
                self._running = False
                self.connected.clear()
                self.idle.set()

    async def disconnected(self) -> None:
        await self.idle.wait()

    def elapsed_s(self) -> float:
        """Simulated seconds since the start of the drive (0 before it started).

        From the newest CAN frame forwarded to the agent (the tap); extrapolated from the
        last client event at the nominal speed only before the first frame.
        """
        if self.start_us is None:
            return 0.0
        if self.tap is not None and self.tap.sim_us > 0:
            return (max(self.tap.sim_us, self._base_us) - self.start_us) / 1e6
        t = (self._base_us - self.start_us) / 1e6
        if self._running:
            t += (time.monotonic() - self._base_wall) * self.speed
        return t


def _client_spans(events: list[dict[str, Any]]) -> list[tuple[int, int, int | None]]:
    """(client, connected µs, disconnected µs or None) from the simulator's events."""
    out: list[tuple[int, int, int | None]] = []
    open_: dict[int, int] = {}
    for e in events:
        if e.get("event") != "client":
            continue
        client = int(e["client"])
        if e["state"] == "connected":
            open_[client] = int(e["sim_us"])
        elif client in open_:
            out.append((client, open_.pop(client), int(e["sim_us"])))
    out += [(c, start, None) for c, start in open_.items()]
    return sorted(out)


def segments_of(events: list[dict[str, Any]], deaths: list[_Death]) -> list[Segment]:
    """One segment per simulator client, each with the death of its agent when it had one."""
    by_client = {d.client: d for d in deaths if d.client > 0}
    out: list[Segment] = []
    for client, start, end in _client_spans(events):
        if end is None:
            out.append(Segment(start, None, killed=False))
            continue
        death = by_client.get(client)
        kill_us = end if death is None else min(end, death.kill_us)
        out.append(Segment(start, end, killed=True, kill_us=kill_us, spool=death.spool if death else None))
    return out


class _Chaos:
    def __init__(self, options: ChaosOptions, workdir: Path, say: Callable[[str], None]) -> None:
        self.o, self.workdir, self.say = options, workdir, say
        self.result = ChaosResult(
            seed=options.seed, speed=options.speed, durability=options.durability, mtls=options.mtls
        )
        self.ingest_port = _free_port()
        self.ingest: Proc | None = None
        self.agent: Proc | None = None
        self.sim: Proc | None = None
        self.watcher: _SimWatcher | None = None
        self.proxy: LinkProxy | None = None
        self.tap: ClockTap | None = None
        self.pki: DevPki | None = None
        self.tmpfs: Tmpfs | None = None
        self.spool_dir = workdir / "spool"
        self.agent_config = workdir / "agent.toml"
        self.stats_path = workdir / "agent-stats.json"
        self.deaths: list[_Death] = []
        self.inspections: list[SpoolFacts] = []
        self.damages: list[tuple[Damage, int | None]] = []  # with the spool's epoch
        self._ingest_n = 0
        self._agent_n = 0
        self._offline_until_s: float | None = None
        self._offline_started_us = 0
        self._ingest_restart: asyncio.Task[None] | None = None
        self._clients_at_kill = 0

    # ------------------------------------------------------------ setup
    def make_pki(self) -> None:
        if not self.o.mtls:
            return
        self.pki = DevPki(self.workdir / "pki")
        self.pki.init()
        self.pki.issue_vehicle(self.o.vehicle_id)
        self.pki.issue_backend(_BACKEND)

    def mount_spool(self, schedule: Schedule) -> None:
        """The spool on a tmpfs when the schedule has a disk-full phase (or say why not)."""
        if not schedule.count("disk_full"):
            return
        tmpfs = Tmpfs(self.spool_dir, self.o.spool_tmpfs_mib * 1024 * 1024)
        try:
            tmpfs.mount()
        except TmpfsUnavailable as exc:
            self.result.disk_full_skipped = str(exc)
            self.say(f"disk-full phases skipped: {exc}")
            return
        self.tmpfs = tmpfs
        self.say(f"spool on a {self.o.spool_tmpfs_mib} MiB tmpfs at {self.spool_dir} (disk-full phase)")

    def channel(self) -> grpc.aio.Channel:
        target = f"127.0.0.1:{self.ingest_port}"
        if self.pki is None:
            return grpc.aio.insecure_channel(target)
        cert, key = self.pki.backend(_BACKEND)
        return grpc.aio.secure_channel(target, channel_credentials(self.pki.ca_cert, cert, key))

    # ------------------------------------------------------------ processes
    async def start_ingest(self) -> None:
        self._ingest_n += 1
        port_file = self.workdir / "ingest.port"
        port_file.unlink(missing_ok=True)
        security = ["--insecure"] if self.pki is None else ["--pki", str(self.pki.directory)]
        self.ingest = await spawn(
            f"ingest-{self._ingest_n}",
            [
                sys.executable,
                "-m",
                "tcu.cli.main",
                "ingest",
                *security,
                "--listen",
                f"127.0.0.1:{self.ingest_port}",
                "--db",
                str(self.workdir / "ingest.sqlite"),
                "--port-file",
                str(port_file),
                "--grace",
                "2",
            ],
            self.workdir,
        )
        await wait_file(port_file, self.ingest, self.o.startup_timeout_s)

    async def start_agent(self) -> None:
        self._agent_n += 1
        self.stats_path.unlink(missing_ok=True)
        self.agent = await spawn(
            f"agent-{self._agent_n}",
            [
                sys.executable,
                "-m",
                "tcu.cli.main",
                "agent",
                "--config",
                str(self.agent_config),
                "--stats-file",
                str(self.stats_path),
            ],
            self.workdir,
        )

    def write_agent_config(self, ready: dict[str, Any], proxy_port: int) -> None:
        if self.pki is None:
            security = "insecure = true\n"
        else:
            cert, key = self.pki.vehicle(self.o.vehicle_id)
            security = (
                f"\n[uplink.tls]\nca_cert = {json.dumps(str(self.pki.ca_cert))}\n"
                f"cert = {json.dumps(str(cert))}\nkey = {json.dumps(str(key))}\n"
            )
        self.agent_config.write_text(
            "# Written by tools/chaos.py: socketcand from the simulator, uplink through the chaos proxy.\n"
            f'[vehicle]\nid = "{self.o.vehicle_id}"\n\n'
            f'[[bus]]\nname = "{ready["channel"]}"\ninterface = "socketcand"\n'
            f'channel = "{ready["channel"]}"\ndbc = [{json.dumps(ready["dbc"])}]\n'
            f'options = {{ host = "{ready["host"]}", port = {int(ready["port"])} }}\n\n'
            f"[signals]\nmapping = {json.dumps(ready['mapping'])}\n\n"
            f"[batch]\nmax_age_ms = {self.o.max_age_ms}\n\n"
            # The simulator runs faster than real time and expects the agent to pace it (TCP).
            '[frames]\noverflow = "block"\n\n'
            f"[spool]\ndirectory = {json.dumps(str(self.spool_dir))}\n"
            f"durability = {json.dumps(self.o.durability)}\n\n"
            f'[uplink]\ntarget = "127.0.0.1:{proxy_port}"\n'
            "backoff_initial_s = 0.1\nbackoff_max_s = 1.0\n"
            f"drain_timeout_s = {self.o.drain_timeout_s}\n"
            f"{security}"
        )

    def _client_of_dead_agent(self) -> int:
        """The simulator client the agent that just died read as (0: none since the last death)."""
        assert self.watcher is not None
        latest = self.watcher.clients_seen
        taken = {d.client for d in self.deaths}
        return latest if latest > 0 and latest not in taken else 0

    async def record_death(self, kill_us: int, cause: str) -> SpoolFacts:
        facts = await asyncio.to_thread(inspect_spool, self.spool_dir)
        self.inspections.append(facts)
        self.deaths.append(_Death(self._client_of_dead_agent(), kill_us, facts, cause))
        log.info("spool after %s: %s", cause, facts)
        return facts

    async def check_processes(self) -> None:
        """Restart a process that died without being told to (counted)."""
        if self.agent is not None and self.agent.proc.returncode is not None:
            self.result.agent_unexpected_exits += 1
            log.warning(
                "agent exited by itself (status %s):\n%s", self.agent.proc.returncode, self.agent.tail()
            )
            status = self.agent.proc.returncode
            self.say(f"agent exited by itself (status {status}, log {self.agent.log_path})")
            await self.record_death(self._now_us(), "exit")
            if self.result.agent_unexpected_exits > 5:
                raise self.agent.failed("exited by itself more than 5 times")
            await self.start_agent()
        if self._ingest_restart is not None and self._ingest_restart.done():
            await self.ingest_restarted()
        if (
            self._ingest_restart is None
            and self.ingest is not None
            and self.ingest.proc.returncode is not None
        ):
            self.result.ingest_unexpected_exits += 1
            log.warning("ingest exited by itself (status %s)", self.ingest.proc.returncode)
            if self.result.ingest_unexpected_exits > 3:
                raise self.ingest.failed("exited by itself more than 3 times")
            await self.start_ingest()

    # ------------------------------------------------------------- schedule
    async def wait_until(self, at_s: float) -> None:
        assert self.watcher is not None
        while self.watcher.elapsed_s() < at_s:
            if self.watcher.done is not None:
                raise ChaosError(f"the drive ended before the fault due at {at_s:.1f} simulated s")
            await self.check_processes()
            self.maybe_link_up()
            await asyncio.sleep(0.02)

    def maybe_link_up(self, force: bool = False) -> None:
        assert self.watcher is not None and self.proxy is not None
        if self._offline_until_s is None:
            return
        if force or self.watcher.elapsed_s() >= self._offline_until_s:
            self.proxy.set_down(False)
            self._offline_until_s = None
            now_us = self._now_us()
            self.result.offline_s += (now_us - self._offline_started_us) / 1e6

    @property
    def offline(self) -> bool:
        return self._offline_until_s is not None

    def _now_us(self) -> int:
        """The simulator's clock now, in µs, as the harness reads it from its events."""
        assert self.watcher is not None
        if self.watcher.start_us is None:
            return 0
        return self.watcher.start_us + round(self.watcher.elapsed_s() * 1e6)

    async def kill_agent(self, cause: str) -> SpoolFacts:
        """SIGKILL the agent (reading from the simulator); returns what its spool held."""
        assert self.agent is not None and self.watcher is not None
        await self.agent_connected()
        self._clients_at_kill = self.watcher.clients_seen
        kill_us = self._now_us()
        self.agent.proc.kill()
        await self.agent.proc.wait()
        facts = await self.record_death(kill_us, cause)
        # the simulator pauses when it sees the client go: from then on its clock is exact
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.watcher.disconnected(), 10.0)
        return facts

    async def apply(self, fault: Fault) -> None:
        assert self.proxy is not None and self.agent is not None and self.ingest is not None
        assert self.watcher is not None
        if self.watcher.done is not None:
            raise ChaosError(
                f"the drive ended before the {fault.kind} due at {fault.at_s:.1f} simulated s"
                " (the faults before it took too long)"
            )
        note = ""
        if fault.kind == "kill":
            await self.kill_agent("kill")
            self.result.kills += 1
            await self.start_agent()
        elif fault.kind in ("ingest_term", "ingest_kill"):
            await self.ingest_restarted()  # the previous restart, if any, has finished
            if fault.kind == "ingest_term":
                self.ingest.proc.send_signal(signal.SIGTERM)
                self.result.ingest_restarts_sigterm += 1
            else:
                self.ingest.proc.kill()
                self.result.ingest_restarts_sigkill += 1
            self.result.ingest_restarts += 1
            # in the background: the drive and the schedule go on while the ingest is away
            self._ingest_restart = asyncio.create_task(
                self._restart_ingest(self.ingest), name="chaos.ingest-restart"
            )
        elif fault.kind == "cutoff":
            await self.ingest_restarted()  # no stream can be open while the ingest is away
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0  # the agent may be backing off after the last fault
            while self.proxy.open_connections == 0 and loop.time() < deadline:
                await self.check_processes()
                await asyncio.sleep(0.02)
            cut = self.proxy.cut()
            self.result.connections_cut += cut
            self.result.cutoffs += 1
            if not cut:
                self.result.cutoffs_idle += 1
                note = "  (no stream was open)"
        elif fault.kind == "offline":
            self.maybe_link_up(force=True)
            self.proxy.set_down(True)
            self._offline_started_us = self._now_us()
            self._offline_until_s = self.watcher.elapsed_s() + fault.duration_s
            self.result.offline_periods += 1
        elif fault.kind == "disk_full":
            note = await self.disk_full(fault)
        elif fault.kind == "damage":
            note = await self.damage(fault)
        self.say(
            f"t={self.watcher.elapsed_s():7.1f} s (due {fault.at_s:7.1f})  {fault.kind}"
            f"{f' {fault.variant}' if fault.variant else ''}"
            f"{f' {fault.duration_s:.0f} s' if fault.duration_s else ''}{note}"
        )

    async def _link_down_for(self, duration_s: float) -> float:
        """Take the link down for ``duration_s`` simulated seconds (blocking); returns them as measured."""
        assert self.proxy is not None and self.watcher is not None
        self.maybe_link_up(force=True)
        self.proxy.set_down(True)
        start_us = self._now_us()
        try:
            await self.wait_until(self.watcher.elapsed_s() + duration_s)
        finally:
            self.proxy.set_down(False)
        return (self._now_us() - start_us) / 1e6

    async def disk_full(self, fault: Fault) -> str:
        """Shrink the spool's tmpfs to what it holds plus a margin, link down, link up, then restore."""
        assert self.watcher is not None
        if self.tmpfs is None:
            return f"  (skipped: {self.result.disk_full_skipped})"
        tmpfs = self.tmpfs
        size = await asyncio.to_thread(tmpfs.shrink_to_used, self.o.disk_full_margin_kib * 1024)
        self.result.disk_full_phases += 1
        self.result.disk_full_bytes.append(size)
        least = [tmpfs.free()]

        async def watch_free() -> None:  # the spool may free space again (eviction): keep the least
            while True:
                least[0] = min(least[0], tmpfs.free())
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_free(), name="chaos.disk-free")
        try:
            down_s = await self._link_down_for(fault.duration_s)
            await self.wait_until(self.watcher.elapsed_s() + self.o.disk_full_hold_s)  # acks on a full disk
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await asyncio.to_thread(tmpfs.restore)
        if least[0] < 64 * 1024:
            self.result.disk_full_reached += 1
        return f"  (spool disk {size // 1024} KiB, least free {least[0] // 1024} KiB, {down_s:.0f} s offline)"

    async def damage(self, fault: Fault) -> str:
        """Link down to build a backlog, kill the agent, damage its spool, start the next agent."""
        await self._link_down_for(fault.duration_s)
        assert self.proxy is not None
        self.proxy.set_down(True)  # the new agent starts on the damaged spool while the link is down
        try:
            facts = await self.kill_agent("damage")
            if fault.variant == "state":
                hurt: Damage | None = await asyncio.to_thread(truncate_state, self.spool_dir)
            else:
                hurt = await asyncio.to_thread(corrupt_record, self.spool_dir)
            if hurt is None:
                self.result.spool_damage_skipped += 1
                note = "  (skipped: fewer than 3 unacked records in the spool)"
            else:
                self.damages.append((hurt, facts.boot_epoch))
                self.result.spool_damages += 1
                self.result.spool_damage_kinds.append(hurt.kind)
                note = f"  ({hurt.detail})"
            await self.start_agent()
        finally:
            self.proxy.set_down(False)
        return note

    async def agent_connected(self) -> None:
        """Wait until the agent started after the last kill reads from the simulator."""
        assert self.watcher is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.o.startup_timeout_s
        while self.watcher.clients_seen <= self._clients_at_kill or not self.watcher.connected.is_set():
            if loop.time() > deadline:
                assert self.agent is not None
                raise self.agent.failed("did not connect to the simulator")
            await self.check_processes()
            await asyncio.sleep(0.02)

    async def link_timer(self) -> None:
        """Brings the link up when an offline period is over (runs beside the schedule)."""
        while True:
            self.maybe_link_up()
            await asyncio.sleep(0.02)

    async def _restart_ingest(self, old: Proc) -> None:
        try:
            await asyncio.wait_for(old.proc.wait(), 30.0)
        except TimeoutError:
            raise old.failed("did not exit within 30 s of its signal") from None
        await self.start_ingest()

    async def ingest_restarted(self) -> None:
        """Wait for a restart in progress (its errors surface here)."""
        if self._ingest_restart is not None:
            task, self._ingest_restart = self._ingest_restart, None
            await task

    # ---------------------------------------------------------------- ending
    async def finish_agent(self, frames_last_client: int) -> None:
        """Wait until the agent read every frame written to it, then SIGTERM it (it drains)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.o.drain_timeout_s
        while True:
            await self.check_processes()
            stats = read_stats(self.stats_path)
            if int(stats.get("frames", -1)) >= frames_last_client:
                break
            if loop.time() > deadline:
                raise ChaosError(
                    f"the agent read {stats.get('frames', 0)} of the {frames_last_client} frames"
                    f" written to it within {self.o.drain_timeout_s:.0f} s (stats {self.stats_path})"
                )
            await asyncio.sleep(0.1)
        assert self.agent is not None
        self.agent.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.agent.proc.wait(), self.o.drain_timeout_s + 30.0)
        except TimeoutError:
            raise self.agent.failed("did not stop after SIGTERM") from None
        if self.agent.proc.returncode != 0:
            raise self.agent.failed(f"exited with status {self.agent.proc.returncode} after SIGTERM")
        final = read_stats(self.stats_path)
        self.result.batches_unacked_at_stop = int(final.get("batches_unacked", -1))
        self.inspections.append(await asyncio.to_thread(inspect_spool, self.spool_dir))

    async def fetch_stored(self) -> dict[str, Series]:
        async with self.channel() as channel:
            return series_pairs(await query_series(channel, self.o.vehicle_id))

    def count_enospc(self) -> int:
        n = 0
        for path in self.workdir.glob("agent-*.log"):
            with contextlib.suppress(OSError):
                n += path.read_text(errors="replace").count("No space left on device")
        return n


def _query_mismatches(queried: dict[str, Series], store: StoreContents, names: set[str]) -> int:
    """Samples by which Fleet.Query's answer differs from the database (CAN signals)."""
    n = 0
    for name in names:
        got = np.sort(queried.get(name, (np.empty(0, np.int64), None))[0])
        held = store.series[name].t_ns if name in store.series else np.empty(0, np.int64)
        if len(got) != len(held) or not np.array_equal(got, held):
            n += max(abs(len(got) - len(held)), len(np.setxor1d(got, held)), 1)
    return n


def plan(options: ChaosOptions) -> Schedule:
    offline_s = options.offline_minutes * 60.0
    periods = options.offline_periods
    if periods is None:
        periods = max(1, round(options.offline_minutes / 3)) if offline_s > 0 else 0
    return make_schedule(
        seed=options.seed,
        kills=options.kills,
        ingest_restarts=options.ingest_restarts,
        cutoffs=options.cutoffs,
        offline_s=offline_s,
        offline_periods=periods,
        disk_fulls=options.disk_full,
        disk_full_s=options.disk_full_s + options.disk_full_hold_s,
        damages=options.spool_damage,
        damage_s=options.damage_backlog_s,
        tail_s=120.0,
    )


def _catalog(ready: dict[str, Any]) -> Catalog:
    dbc = load_dbc(ready["dbc"])
    return build_catalog(
        load_mapping(ready["mapping"]), {ready["channel"]: [dbc]}, mapping_path=ready["mapping"]
    )


def _spool_epochs(inspections: list[SpoolFacts]) -> dict[int, int]:
    epochs: dict[int, int] = {}
    for facts in inspections:
        if facts.boot_epoch is not None:
            epochs[facts.boot_epoch] = max(epochs.get(facts.boot_epoch, 0), facts.highest_seq)
    return epochs


def _save_run(workdir: Path, facts: dict[str, Any]) -> None:
    (workdir / _RUN_FILE).write_text(json.dumps(facts, indent=1) + "\n")


def _load_run(workdir: Path) -> dict[str, Any]:
    path = workdir / _RUN_FILE
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ChaosError(f"{path}: cannot read the facts of the run: {exc}") from exc
    return value


def account_run(workdir: Path) -> ChaosResult:
    """Count a finished run again from its work directory (run.json, ground truth, database)."""
    facts = _load_run(workdir)
    known = {f.name for f in fields(ChaosResult)}
    result = ChaosResult(**{k: v for k, v in facts["result"].items() if k in known})
    deaths = [
        _Death(
            int(d["client"]),
            int(d["kill_us"]),
            None if d["spool"] is None else SpoolFacts.from_json(d["spool"]),
            str(d["cause"]),
        )
        for d in facts["deaths"]
    ]
    inspections = [SpoolFacts.from_json(i) for i in facts["inspections"]]
    catalog = _catalog(facts["ready"])
    ground_truth = load_ground_truth(workdir / "ground_truth.npz")
    store = read_store(workdir / "ingest.sqlite", facts["vehicle_id"])
    bound_ms = (int(facts["max_age_ms"]) + int(facts["kill_slack_ms"])) * float(facts["speed"])
    acc = account(
        ground_truth,
        catalog,
        segments_of(facts["sim_events"], deaths),
        store,
        spool_epochs=_spool_epochs(inspections),
        kill_bound_us=round(bound_ms * 1000),
    )
    for key in (
        "samples_expected",
        "samples_stored",
        "lost",
        "reported_lost",
        "unexpected",
        "value_errors",
        "unspooled_at_kills",
        "kills_unverified",
        "batches_expected",
        "batches_stored",
        "batches_reported_lost",
        "batches_quarantined",
        "batches_missing",
        "loss_reasons",
        "unknown_epochs",
        "orphan_samples",
        "incomplete_batches",
        "lost_examples",
        "missing_batch_examples",
    ):
        setattr(result, key, getattr(acc, key))
    result.duplicates = max(acc.duplicates, store.duplicate_sample_rows)
    result.kill_window_bound_ms = bound_ms
    result.max_kill_window_ms = round(max(acc.kill_windows_ms, default=0.0), 1)
    result.longest_kill_windows_ms = [round(w, 1) for w in sorted(acc.kill_windows_ms, reverse=True)[:5]]
    result.kill_windows_over_bound = sum(1 for w in acc.bounded_kill_windows_ms if w > bound_ms)
    result.kill_windows_after_dataloss = acc.kill_windows_after_dataloss

    def reported(epoch: int, seq: int, damaged_ns: int) -> bool:
        """A DataLoss record, quarantine, or the batch itself, committed before the damage."""
        row = store.batches.get((epoch, seq))
        if row is not None and (row.loss_reason is not None or 0 < row.stored_ns < damaged_ns):
            return True  # stored before: sent, but its ack had not reached the spool
        return (epoch, seq) in store.quarantined

    result.damaged_records_not_reported = sum(
        1
        for d in facts["damages"]
        if d["kind"] == "record"
        and not reported(int(d["boot_epoch"] or 0), int(d["seq"]), int(d.get("at_ns", 0)))
    )
    result.judge()
    return result


async def run_chaos(options: ChaosOptions, progress: Callable[[str], None] | None = None) -> ChaosResult:
    say = progress or (lambda _m: None)
    started = time.monotonic()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tcu-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    schedule = plan(options)
    say(
        f"schedule: {len(schedule.faults)} faults over {schedule.duration_s:.0f} simulated s "
        f"at speed {options.speed:g}, {options.durability} spool, "
        f"{'mTLS' if options.mtls else 'insecure'} (workdir {workdir})"
    )
    chaos = _Chaos(options, workdir, say)
    watch_task: asyncio.Task[None] | None = None
    try:
        chaos.make_pki()
        chaos.mount_spool(schedule)
        await chaos.start_ingest()
        async with LinkProxy(ProxyConfig("127.0.0.1", chaos.ingest_port)) as proxy:
            chaos.proxy = proxy
            sim = await spawn(
                "sim",
                [
                    sys.executable,
                    "-m",
                    "sim",
                    "--reconnect",
                    "--duration",
                    str(schedule.duration_s),
                    "--speed",
                    str(options.speed),
                    "--seed",
                    str(options.seed),
                    "--socketcand-port",
                    "0",
                    "--ground-truth",
                    str(workdir / "ground_truth.npz"),
                ],
                workdir,
                stdout=asyncio.subprocess.PIPE,
            )
            chaos.sim = sim
            ready = await read_json_line(sim, options.startup_timeout_s)
            if ready.get("event") != "ready":
                raise sim.failed(f"sent {ready} instead of a ready event")
            watcher = chaos.watcher = _SimWatcher(sim, options.speed, workdir / "sim-events.jsonl")
            watch_task = asyncio.create_task(watcher.run(), name="chaos.sim-events")
            tap = ClockTap(ProxyConfig(str(ready["host"]), int(ready["port"])))
            await tap.__aenter__()
            watcher.tap = chaos.tap = tap
            chaos.write_agent_config({**ready, "port": tap.port}, proxy.port)
            await chaos.start_agent()
            try:
                await asyncio.wait_for(watcher.connected.wait(), options.startup_timeout_s)
            except TimeoutError:
                assert chaos.agent is not None
                raise chaos.agent.failed("did not connect to the simulator") from None
            link_task = asyncio.create_task(chaos.link_timer(), name="chaos.link-timer")
            try:
                for fault in schedule.faults:
                    await chaos.wait_until(fault.at_s)
                    await chaos.apply(fault)
                while chaos.offline:
                    await chaos.check_processes()
                    await asyncio.sleep(0.05)
            finally:
                link_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await link_task
            while not watch_task.done():
                await chaos.check_processes()
                chaos.maybe_link_up()
                await asyncio.sleep(0.05)
            chaos.maybe_link_up(force=True)
            await chaos.ingest_restarted()
            done = watcher.done
            assert done is not None
            say(f"drive done: {done['frames']} frames, {done['clients']} agent connections; draining")
            await chaos.finish_agent(int(done["frames_last_client"]))
            queried = await chaos.fetch_stored()
            result = chaos.result
            result.connections_refused = proxy.refused
        assert chaos.ingest is not None
        await chaos.ingest.stop()
        result.sim_clients = int(done["clients"])
        result.frames = int(done["frames"])
        result.frames_dropped = int(done["dropped"])
        result.simulated_s = round((int(done["end_us"]) - int(done["start_us"])) / 1e6, 3)
        result.offline_s = round(result.offline_s, 1)
        result.agent_enospc_lines = chaos.count_enospc()
        store = await asyncio.to_thread(read_store, workdir / "ingest.sqlite", options.vehicle_id)
        result.query_mismatches = _query_mismatches(queried, store, {s.name for s in _catalog(ready).signals})
        _save_run(
            workdir,
            {
                "vehicle_id": options.vehicle_id,
                "speed": options.speed,
                "max_age_ms": options.max_age_ms,
                "kill_slack_ms": options.kill_slack_ms,
                "ready": ready,
                "sim_events": watcher.events,
                "deaths": [
                    {
                        "client": d.client,
                        "kill_us": d.kill_us,
                        "cause": d.cause,
                        "spool": None if d.spool is None else d.spool.as_json(),
                    }
                    for d in chaos.deaths
                ],
                "inspections": [f.as_json() for f in chaos.inspections],
                "damages": [{**asdict(d), "boot_epoch": epoch} for d, epoch in chaos.damages],
                "result": asdict(result),
            },
        )
        result = await asyncio.to_thread(account_run, workdir)
        result.wall_s = round(time.monotonic() - started, 1)
        result.workdir = str(workdir) if options.keep or options.workdir else None
        return result
    finally:
        if watch_task is not None and not watch_task.done():
            watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TcuError):
                await watch_task
        if chaos._ingest_restart is not None:
            chaos._ingest_restart.cancel()
            with contextlib.suppress(asyncio.CancelledError, TcuError):
                await chaos._ingest_restart
        for p in (chaos.agent, chaos.sim, chaos.ingest):
            if p is not None:
                await p.stop()
        if chaos.tap is not None:
            await chaos.tap.aclose()
        if chaos.tmpfs is not None:
            try:
                chaos.tmpfs.unmount()
            except TmpfsUnavailable as exc:
                log.warning("could not unmount the spool's tmpfs: %s", exc)
        if not options.keep and options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ self-test
SELF_TEST_OPTIONS = ChaosOptions(
    seed=3, kills=2, ingest_restarts=1, cutoffs=1, offline_minutes=0.5, disk_full=0, spool_damage=0
)


def pick_victims(workdir: Path) -> list[tuple[int, int]]:
    """Batches to delete: the newest data batches before each kill, one in the middle, the last one."""
    facts = _load_run(workdir)
    store = read_store(workdir / "ingest.sqlite", facts["vehicle_id"])
    can = {s.name for s in _catalog(facts["ready"]).signals}
    with_can: set[tuple[int, int]] = set()
    for name, series in store.series.items():
        if name in can:
            with_can.update(zip(series.epoch.tolist(), series.seq.tolist(), strict=True))
    data = sorted(k for k in with_can if store.batches[k].loss_reason is None)
    if not data:
        return []
    victims: set[tuple[int, int]] = {data[len(data) // 2], data[-1]}
    for d in facts["deaths"]:
        spool = d["spool"]
        if spool is None or spool["boot_epoch"] is None:
            continue
        before = [k for k in data if k[0] == spool["boot_epoch"] and k[1] <= spool["highest_seq"]]
        victims.update(before[-2:])
    return sorted(victims)


async def self_test(options: ChaosOptions, say: Callable[[str], None]) -> tuple[int, dict[str, Any]]:
    """Run, delete stored batches, count again: (exit status, report). Status 1 when the loss is seen."""
    keep = options.workdir is not None or options.keep
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tcu-chaos-selftest-"))
    try:
        before = await run_chaos(replace(options, workdir=workdir), say)
        report: dict[str, Any] = {"self_test": "delete-batches", "before": asdict(before)}
        if not before.ok:
            say(f"self-test inconclusive: the run itself failed ({'; '.join(before.failures)})")
            return 2, report
        victims = pick_victims(workdir)
        n_batches, n_rows = delete_batches(workdir / "ingest.sqlite", options.vehicle_id, victims)
        say(f"self-test: deleted {n_batches} batches ({n_rows} sample rows) from {workdir / 'ingest.sqlite'}")
        after = account_run(workdir)
        after.workdir = str(workdir) if keep else None
        report.update(deleted_batches=n_batches, deleted_sample_rows=n_rows, after=asdict(after))
        seen = not after.ok and after.batches_missing >= n_batches > 0 and after.lost > 0
        report["detected"] = seen
        if seen:
            say(f"self-test: the accounting reports the loss: {'; '.join(after.failures)}")
            return 1, report
        say("SELF-TEST FAILED: the accounting did not report the deleted batches as lost")
        return 0, report
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    d = ChaosOptions()
    p = argparse.ArgumentParser(
        prog="tools/chaos.py",
        description="Kill the agent, restart the ingest, cut streams, take the link down, fill and damage "
        "the spool on a seeded schedule while the simulator drives; then compare what the ingest's "
        "database holds with the ground truth and the spool.",
        epilog="example: tools/chaos.py --seed 11 --kills 40 --ingest-restarts 8 --cutoffs 15 "
        "--offline-minutes 20 --json",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"schedule and vehicle seed (default {d.seed})")
    p.add_argument("--kills", type=int, default=d.kills, help=f"agent SIGKILLs (default {d.kills})")
    p.add_argument(
        "--ingest-restarts", type=int, default=d.ingest_restarts, help=f"(default {d.ingest_restarts})"
    )
    p.add_argument("--cutoffs", type=int, default=d.cutoffs, help=f"stream cut-offs (default {d.cutoffs})")
    p.add_argument(
        "--offline-minutes",
        type=float,
        default=d.offline_minutes,
        help=f"simulated minutes with the link down, in total (default {d.offline_minutes:g})",
    )
    p.add_argument("--offline-periods", type=int, default=None, help="(default: one per 3 minutes)")
    p.add_argument(
        "--disk-full",
        type=int,
        default=d.disk_full,
        help=f"disk-full phases: the spool's tmpfs fills while the link is down (default {d.disk_full})",
    )
    p.add_argument(
        "--spool-damage",
        type=int,
        default=d.spool_damage,
        help=f"spool-damage phases, a record and state.json in turn (default {d.spool_damage})",
    )
    p.add_argument(
        "--durability",
        choices=("power-loss", "crash"),
        default=d.durability,
        help=f"the agent's [spool] durability (default {d.durability})",
    )
    p.add_argument("--insecure", action="store_true", help="plain TCP instead of mTLS with a dev PKI")
    p.add_argument(
        "--speed", type=float, default=d.speed, help=f"simulated s per wall s (default {d.speed:g})"
    )
    p.add_argument(
        "--max-age-ms", type=int, default=d.max_age_ms, help=f"agent [batch] max_age_ms ({d.max_age_ms})"
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep logs, spool and database here")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument(
        "--account",
        type=Path,
        metavar="WORKDIR",
        help="count a finished run again from its work directory (run.json, database) and exit",
    )
    p.add_argument(
        "--self-test",
        choices=("delete-batches",),
        help="run a short schedule, delete stored batches from its database, count again: "
        "exits 1 when the loss is reported (as it must be), 0 when it is not, 2 when the run failed",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging on stderr")
    return p


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s chaos %(levelname)s %(name)s: %(message)s",
    )
    if args.speed <= 0:
        print("tools/chaos.py: --speed must be > 0", file=sys.stderr)
        return 2

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if args.account is not None:
            result = account_run(args.account)
            _print(asdict(result), args.json)
            return 0 if result.ok else 1
        if args.self_test is not None:
            options = replace(
                SELF_TEST_OPTIONS,
                durability=args.durability,
                mtls=not args.insecure,
                speed=args.speed,
                workdir=args.workdir,
                keep=args.keep,
            )
            status, report = asyncio.run(self_test(options, say))
            _print(report, args.json)
            return status
        options = ChaosOptions(
            seed=args.seed,
            kills=args.kills,
            ingest_restarts=args.ingest_restarts,
            cutoffs=args.cutoffs,
            offline_minutes=args.offline_minutes,
            offline_periods=args.offline_periods,
            disk_full=args.disk_full,
            spool_damage=args.spool_damage,
            durability=args.durability,
            mtls=not args.insecure,
            speed=args.speed,
            max_age_ms=args.max_age_ms,
            workdir=args.workdir,
            keep=args.keep,
        )
        result = asyncio.run(run_chaos(options, say))
    except (TcuError, ValueError, OSError) as exc:
        print(f"tools/chaos.py: {exc}", file=sys.stderr)
        return 2
    if result.failures:
        say("FAILED: " + "; ".join(result.failures))
    else:
        say("ok: every check held")
    _print(asdict(result), args.json)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
