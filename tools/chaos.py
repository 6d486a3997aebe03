"""Chaos run: kill, restart and cut the telematics chain on a seeded schedule, then count every sample.

Real processes on loopback: the ingest (``tcu ingest --insecure`` on a fixed free
port, so that restarts keep the address), the simulator (``python -m sim
--reconnect --speed S``: it pauses simulated time while no agent is connected)
and the agent (``tcu agent`` with a crash-durable ``[spool]``,
``[batch] max_age_ms`` small, short reconnect backoff). The agent reaches the
ingest through :class:`LinkProxy`, which this tool uses to cut streams and to
take the link down. On a schedule drawn from ``--seed`` (see
``_chaos_schedule``) it

* kills the agent with SIGKILL and starts a new one on the same spool,
* restarts the ingest (SIGTERM or SIGKILL, then a new process on the same port and database),
* cuts every proxied connection (a stream cut-off),
* takes the link down for offline periods measured in simulated seconds
  (``N`` simulated seconds last ``N / speed`` wall seconds),

then lets the drive end, waits until the agent has read every frame written to
it, stops it with SIGTERM (it drains its spool), reads everything back with
``Fleet.Query`` and checks the SQLite database for duplicate batch keys and
duplicate sample rows. The accounting (``_chaos_account``) is against the
simulator's ground truth; samples the agent held unspooled when it was killed
are reported as ``unspooled_at_kills``, not as lost.

    .venv/bin/python tools/chaos.py --seed 1 --kills 20 --ingest-restarts 5 --offline-minutes 15 --json
    .venv/bin/python tools/chaos.py --seed 2 --kills 3 --ingest-restarts 1 --cutoffs 2 \\
        --offline-minutes 1 --json                                       # small, as the test runs it

With ``--json`` the last line printed is one JSON object with ``kills``,
``ingest_restarts``, ``cutoffs``, ``offline_s``, ``samples_expected``,
``samples_stored``, ``lost`` and ``duplicates`` (and more). The exit status is 0
when nothing was lost or duplicated and no value was wrong, 1 otherwise, 2 when
the run itself failed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from _chaos_account import Segment, account
from _chaos_proxy import LinkProxy, ProxyConfig
from _chaos_schedule import Fault, Schedule, make_schedule

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.demo.procs import Proc, read_json_line, read_stats, spawn, wait_file
from tcu.demo.verify import Series, load_ground_truth
from tcu.errors import TcuError
from tcu.ingest.store import sample_rows
from tcu.signals.dbc import load_dbc
from tcu.signals.mapping import build_catalog, load_mapping

log = logging.getLogger("chaos")


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
    speed: float = 20.0
    max_age_ms: int = 200
    kill_slack_ms: int = 300
    vehicle_id: str = "WTCUCHAOS00000001"
    workdir: Path | None = None
    keep: bool = False
    startup_timeout_s: float = 60.0
    drain_timeout_s: float = 120.0


@dataclass(slots=True)
class ChaosResult:
    kills: int = 0
    ingest_restarts: int = 0
    cutoffs: int = 0
    offline_s: float = 0.0
    samples_expected: int = 0
    samples_stored: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected: int = 0
    value_errors: int = 0
    unspooled_at_kills: int = 0
    max_kill_window_ms: float = 0.0
    kill_window_bound_ms: float = 0.0
    kill_windows_over_bound: int = 0
    ingest_restarts_sigterm: int = 0
    ingest_restarts_sigkill: int = 0
    offline_periods: int = 0
    connections_cut: int = 0
    connections_refused: int = 0
    agent_unexpected_exits: int = 0
    ingest_unexpected_exits: int = 0
    sim_clients: int = 0
    frames: int = 0
    frames_dropped: int = 0
    duplicate_batch_keys: int = 0
    duplicate_sample_rows: int = 0
    batches_stored: int = 0
    batches_unacked_at_stop: int = -1
    simulated_s: float = 0.0
    wall_s: float = 0.0
    seed: int = 0
    speed: float = 0.0
    lost_examples: list[str] = field(default_factory=list)
    workdir: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0 and self.duplicates == 0 and self.value_errors == 0 and self.samples_expected > 0
        )


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

    async def run(self) -> None:
        while True:
            event = await read_json_line(self.sim, None)
            self.events.append(event)
            line = json.dumps(event)
            log.info("sim: %s", line)
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
        """Simulated seconds since the start of the drive (0 before it started)."""
        if self.start_us is None:
            return 0.0
        t = (self._base_us - self.start_us) / 1e6
        if self._running:
            t += (time.monotonic() - self._base_wall) * self.speed
        return t

    def segments(self) -> list[Segment]:
        out: list[Segment] = []
        start: int | None = None
        for e in self.events:
            if e.get("event") != "client":
                continue
            if e["state"] == "connected":
                start = int(e["sim_us"])
            elif start is not None:
                out.append(Segment(start, int(e["sim_us"]), killed=True))
                start = None
        if start is not None:
            out.append(Segment(start, None, killed=False))
        return out


class _Chaos:
    def __init__(self, options: ChaosOptions, workdir: Path, say: Callable[[str], None]) -> None:
        self.o, self.workdir, self.say = options, workdir, say
        self.result = ChaosResult(seed=options.seed, speed=options.speed)
        self.ingest_port = _free_port()
        self.ingest: Proc | None = None
        self.agent: Proc | None = None
        self.sim: Proc | None = None
        self.watcher: _SimWatcher | None = None
        self.proxy: LinkProxy | None = None
        self.agent_config = workdir / "agent.toml"
        self.stats_path = workdir / "agent-stats.json"
        self._ingest_n = 0
        self._agent_n = 0
        self._offline_until_s: float | None = None
        self._offline_started_us = 0
        self._ingest_restart: asyncio.Task[None] | None = None
        self._clients_at_kill = 0

    # ------------------------------------------------------------ processes
    async def start_ingest(self) -> None:
        self._ingest_n += 1
        port_file = self.workdir / "ingest.port"
        port_file.unlink(missing_ok=True)
        self.ingest = await spawn(
            f"ingest-{self._ingest_n}",
            [
                sys.executable,
                "-m",
                "tcu.cli.main",
                "ingest",
                "--insecure",
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
        self.agent_config.write_text(
            "# Written by tools/chaos.py: socketcand from the simulator, uplink through the chaos proxy.\n"
            f'[vehicle]\nid = "{self.o.vehicle_id}"\n\n'
            f'[[bus]]\nname = "{ready["channel"]}"\ninterface = "socketcand"\n'
            f'channel = "{ready["channel"]}"\ndbc = [{json.dumps(ready["dbc"])}]\n'
            f'options = {{ host = "{ready["host"]}", port = {int(ready["port"])} }}\n\n'
            f"[signals]\nmapping = {json.dumps(ready['mapping'])}\n\n"
            f'[uplink]\ntarget = "127.0.0.1:{proxy_port}"\ninsecure = true\n'
            "backoff_initial_s = 0.1\nbackoff_max_s = 1.0\n"
            f"drain_timeout_s = {self.o.drain_timeout_s}\n\n"
            f"[batch]\nmax_age_ms = {self.o.max_age_ms}\n\n"
            f'[spool]\ndirectory = {json.dumps(str(self.workdir / "spool"))}\ndurability = "crash"\n'
        )

    async def check_processes(self) -> None:
        """Restart a process that died without being told to (counted)."""
        if self.agent is not None and self.agent.proc.returncode is not None:
            self.result.agent_unexpected_exits += 1
            log.warning(
                "agent exited by itself (status %s):\n%s", self.agent.proc.returncode, self.agent.tail()
            )
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
        assert self.watcher is not None and self.watcher.start_us is not None
        return self.watcher.start_us + round(self.watcher.elapsed_s() * 1e6)

    async def apply(self, fault: Fault) -> None:
        assert self.proxy is not None and self.agent is not None and self.ingest is not None
        assert self.watcher is not None
        if fault.kind == "kill":
            await self.agent_connected()
            self._clients_at_kill = self.watcher.clients_seen
            self.agent.proc.kill()
            await self.agent.proc.wait()
            self.result.kills += 1
            # the simulator pauses when it sees the client go: from then on its clock is exact
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.watcher.disconnected(), 10.0)
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
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0
            while self.proxy.open_connections == 0 and loop.time() < deadline:
                await self.check_processes()
                await asyncio.sleep(0.02)
            self.result.connections_cut += self.proxy.cut()
            self.result.cutoffs += 1
        elif fault.kind == "offline":
            self.maybe_link_up(force=True)
            self.proxy.set_down(True)
            self._offline_started_us = self._now_us()
            self._offline_until_s = self.watcher.elapsed_s() + fault.duration_s
            self.result.offline_periods += 1
        self.say(
            f"t={self.watcher.elapsed_s():7.1f} s (due {fault.at_s:7.1f})  {fault.kind}"
            f"{f' {fault.duration_s:.0f} s' if fault.duration_s else ''}"
        )

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

    async def fetch_stored(self) -> dict[str, Series]:
        parts: dict[str, tuple[list[int], list[float]]] = {}
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.ingest_port}") as channel:
            stub = fleet_grpc.FleetStub(channel)
            async for update in stub.Query(fleet_pb.QueryRequest(vehicle_id=self.o.vehicle_id)):
                for s in update.series:
                    t, v = parts.setdefault(s.name, ([], []))
                    t.extend(s.t_ns)
                    v.extend(s.double_values)
        return {k: (np.array(t, np.int64), np.array(v, np.float64)) for k, (t, v) in parts.items()}


def _sqlite_duplicates(db_path: Path) -> tuple[int, int, int]:
    """(duplicate batch keys, duplicate sample rows by series and source time, batches stored)."""
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ChaosError(f"cannot open the ingest database {db_path}: {exc}") from exc
    try:
        dup_batches = db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM batches GROUP BY vehicle_id, boot_epoch, seq"
            " HAVING COUNT(*) > 1)"
        ).fetchone()[0]
        # Samples are packed by columns (one row per signal and batch): unpack them to count.
        seen = collections.Counter((v, name, t) for v, name, t, *_ in sample_rows(db))
        dup_samples = sum(n - 1 for n in seen.values())
        batches = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    except sqlite3.Error as exc:
        raise ChaosError(f"cannot query the ingest database {db_path}: {exc}") from exc
    finally:
        db.close()
    return int(dup_batches), int(dup_samples), int(batches)


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
    )


async def run_chaos(options: ChaosOptions, progress: Callable[[str], None] | None = None) -> ChaosResult:
    say = progress or (lambda _m: None)
    started = time.monotonic()
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="tcu-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    schedule = plan(options)
    say(
        f"schedule: {len(schedule.faults)} faults over {schedule.duration_s:.0f} simulated s "
        f"at speed {options.speed:g} (workdir {workdir})"
    )
    chaos = _Chaos(options, workdir, say)
    watch_task: asyncio.Task[None] | None = None
    try:
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
            chaos.write_agent_config(ready, proxy.port)
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
            stored = await chaos.fetch_stored()
            result = chaos.result
            result.connections_refused = proxy.refused
        assert chaos.ingest is not None
        await chaos.ingest.stop()
        dup_batches, dup_rows, batches = await asyncio.to_thread(
            _sqlite_duplicates, workdir / "ingest.sqlite"
        )
        result.duplicate_batch_keys, result.duplicate_sample_rows, result.batches_stored = (
            dup_batches,
            dup_rows,
            batches,
        )
        result.sim_clients = int(done["clients"])
        result.frames = int(done["frames"])
        result.frames_dropped = int(done["dropped"])
        result.simulated_s = round((int(done["end_us"]) - int(done["start_us"])) / 1e6, 3)
        dbc = load_dbc(ready["dbc"])
        catalog = build_catalog(
            load_mapping(ready["mapping"]), {ready["channel"]: [dbc]}, mapping_path=ready["mapping"]
        )
        ground_truth = await asyncio.to_thread(load_ground_truth, done["ground_truth"])
        # The CAN signals are compared with the ground truth; the agent's own Vehicle.Tcu.* are not in it.
        can_names = {s.name for s in catalog.signals}
        stored = {name: series for name, series in stored.items() if name in can_names}
        acc = account(ground_truth, catalog, watcher.segments(), stored)
        result.samples_expected = acc.samples_expected
        result.samples_stored = acc.samples_stored
        result.lost = acc.lost
        result.duplicates = max(acc.duplicates, dup_rows) + dup_batches
        result.unexpected = acc.unexpected
        result.value_errors = acc.value_errors
        result.unspooled_at_kills = acc.unspooled_at_kills
        result.lost_examples = acc.lost_examples
        result.max_kill_window_ms = round(max(acc.kill_windows_ms, default=0.0), 1)
        result.kill_window_bound_ms = (options.max_age_ms + options.kill_slack_ms) * options.speed
        result.kill_windows_over_bound = sum(
            1 for w in acc.kill_windows_ms if w > result.kill_window_bound_ms
        )
        result.offline_s = round(result.offline_s, 1)
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
        if not options.keep and options.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    d = ChaosOptions()
    p = argparse.ArgumentParser(
        prog="tools/chaos.py",
        description="Kill the agent, restart the ingest, cut streams and take the link down on a seeded "
        "schedule while the simulator drives; then compare what the ingest stored with the ground truth.",
        epilog="example: tools/chaos.py --seed 1 --kills 20 --ingest-restarts 5 --offline-minutes 15 --json",
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
        "--speed", type=float, default=d.speed, help=f"simulated s per wall s (default {d.speed:g})"
    )
    p.add_argument(
        "--max-age-ms", type=int, default=d.max_age_ms, help=f"agent [batch] max_age_ms ({d.max_age_ms})"
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep logs, spool and database here")
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s chaos %(levelname)s %(name)s: %(message)s",
    )
    if args.speed <= 0:
        print("tools/chaos.py: --speed must be > 0", file=sys.stderr)
        return 2
    options = ChaosOptions(
        seed=args.seed,
        kills=args.kills,
        ingest_restarts=args.ingest_restarts,
        cutoffs=args.cutoffs,
        offline_minutes=args.offline_minutes,
        offline_periods=args.offline_periods,
        speed=args.speed,
        max_age_ms=args.max_age_ms,
        workdir=args.workdir,
        keep=args.keep,
    )
    try:
        result = asyncio.run(run_chaos(options, lambda m: print(m, file=sys.stderr, flush=True)))
    except (TcuError, ValueError) as exc:
        print(f"tools/chaos.py: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(result)), flush=True)
    else:
        for key, value in asdict(result).items():
            print(f"{key:>26}: {value}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
