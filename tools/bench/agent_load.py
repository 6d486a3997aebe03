"""Benchmark the vehicle agent under bus load: N socketcand buses at a share of 500 kbit/s.

Three kinds of processes, as in a deployment:

* the ingest: ``tcu ingest --insecure`` on a free loopback port (SQLite, default settings);
* the buses: one process (this script with ``serve``) holding ``--buses``
  :class:`sim.SocketcandServer` s, one thread each, on free loopback ports;
* the agent: ``tcu agent --config ... --stats-file ...``, reading every bus over
  the bulk socketcand reader (``--reader python-can``: python-can's client) and uploading
  to the ingest.

Frame rate: ``--load`` × ``--bitrate`` / 111 bits per frame. 111 bits is a standard
(11-bit id) data frame with 8 data bytes without stuff bits (SOF 1, id 11, RTR/IDE/r0 3,
DLC 4, data 64, CRC 15 + delimiter 1, ACK 2, EOF 7, interframe space 3). At 500 kbit/s and
0.8 that is 3,603 frames/s per bus, 14,414 frames/s on four buses. Stuff bits would make
real frames longer, so this is at or above what such a bus carries.

Payloads: the 8-byte standard-id frames of a 60 s simulated drive (``sim.Drive`` over
``sim/data/tcu_sim.dbc``: ESP_Speed, ESP_WheelSpeeds, VCU_Drive, MCU_Motor, BMS_PackStatus,
GNSS_Status), taken in cycle. Every bus gets the same sequence; frame ``k`` of a bus is
due at ``t_go + k / rate`` (monotonic clock) and stamped with that wall-clock time. Each bus
thread sends, every 5 ms, the frames that are due; when the agent does not read fast
enough, TCP flow control blocks the send and the bus falls behind its schedule:
``max_lag_s`` is the worst delay of a frame's send behind its due time. The agent's
mapping is the simulator's, repeated per bus (``bus = "canI"``; names on bus I > 0 get
``BusI`` inserted after ``Vehicle``), so every frame is decoded and sampled.

Measured: the agent process's CPU time (``/proc/<pid>/stat`` utime + stime, all threads)
over the steady interval (after ``--warmup`` seconds until the buses stop sending),
``cpu_share`` = CPU seconds per wall second (1.0 = one core fully busy), also split into
the agent's main thread (event loop: decode, sampling, batching, spool, gRPC) and its other
threads (bus readers); the same for the bus server and the ingest processes; frames sent,
frames the agent read (``frames`` in its stats file after it drained), ``dropped`` = sent −
read + frames dropped at full bus buffers, and the samples the ingest stored (Fleet Query).
Lag, two ways: ``max_send_lag_s``, the worst delay of a bus's send behind its schedule (TCP
flow control blocks it when the agent does not read; a loaded machine delays it too), and
``frame_lag_ms_max`` / ``frame_lag_ms_p99`` from the agent's stats: per tick, the wall clock
after decoding and sampling minus the oldest frame's source time (the frames are stamped with
their scheduled wall-clock time, so a sender that falls behind shows here too), over the whole
run; and ``agent_hold_ms_max`` / ``_p99``, only the agent's part: from the reader's hand-off of
a tick's oldest frames to the end of their decode and sampling. The agent runs with a ``power-loss``
spool (``--spool``: an fdatasync per batch) unless told otherwise. ``--agent-tree DIR`` runs the
agent from another checkout (its ``.venv``), for A/B runs against it with the same buses,
ingest and config.

    .venv/bin/python tools/bench/agent_load.py --json                 # 4 buses, 80 %, 30 s: ~37 s
    .venv/bin/python tools/bench/agent_load.py --seconds 10 --buses 1 --json
    .venv/bin/python tools/bench/agent_load.py --json --agent-tree ../main   # the same on main

The last line printed is JSON; ``kept_up`` is true when every bus sent its whole schedule,
no send was more than ``MAX_LAG_S`` (0.1 s) behind it, no frame's ``frame_lag_ms_max`` was
above it, nothing was dropped at a full bus buffer, and the agent read every frame sent (the
exit status is 0 then, else 1). A frame counted as sent was handed to the kernel; frames
still in a socket buffer when the agent stops count as dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
FRAME_BITS = 111
TICK_S = 0.005
#: Worst delay (of a send behind schedule, and of a frame's decode behind its source time) that
#: still counts as keeping up in real time: the target of issue 13.
MAX_LAG_S = 0.1
#: How long past the schedule the buses keep sending (and the agent may catch up).
GRACE_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- bus server process ------------------------------------------------------------------


def _payloads() -> list[tuple[int, bytes]]:
    import sim

    drive = sim.Drive(sim.DriveConfig(duration_s=60.0, speed=None, seed=11, start_epoch_us=0))
    return [
        (m.arbitration_id, bytes(m.data)) for m in drive.frames() if len(m.data) == 8 and not m.is_extended_id
    ]


def _bus_thread(
    *,
    server: Any,
    payloads: list[tuple[int, bytes]],
    rate: float,
    total: int,
    go: threading.Event,
    t_go: list[float],
    result: dict[str, Any],
) -> None:
    import can

    go.wait()
    start_mono, start_wall = t_go
    stop_at = start_mono + total / rate + GRACE_S
    sent = 0
    max_lag_s = 0.0
    n = len(payloads)
    while sent < total and time.monotonic() < stop_at:
        now = time.monotonic()
        due = min(total, int((now - start_mono) * rate) + 1)
        if due > sent:
            lag = now - (start_mono + sent / rate)
            max_lag_s = max(max_lag_s, lag)
            batch = []
            for k in range(sent, due):
                ident, data = payloads[k % n]
                batch.append(
                    can.Message(
                        timestamp=start_wall + k / rate,
                        arbitration_id=ident,
                        is_extended_id=False,
                        data=data,
                        check=False,
                    )
                )
            server.send_frames(batch)  # blocks while the agent's TCP window is full
            sent = due
            result.update(sent=sent, max_lag_s=round(max_lag_s, 4), end_mono=time.monotonic())
        next_at = start_mono + sent / rate
        time.sleep(max(0.0, min(TICK_S, next_at - time.monotonic())))
    result["finished"] = sent == total


def serve(buses: int, rate: float, total: int) -> int:
    """Bus server process: print ports, wait for clients, 'go' on stdin, stream, 'quit' to close."""
    import sim

    payloads = _payloads()
    servers = [sim.SocketcandServer(sim.SocketcandConfig(channel=f"can{i}")) for i in range(buses)]
    ports = [s.start() for s in servers]
    _say({"event": "listening", "ports": ports, "payloads": len(payloads)})
    for s in servers:
        if not s.wait_for_client(120.0):
            _say({"event": "error", "error": "no socketcand client within 120 s"})
            return 1
    _say({"event": "clients"})
    go = threading.Event()
    t_go: list[float] = []
    results: list[dict[str, Any]] = [{"sent": 0, "max_lag_s": 0.0, "end_mono": 0.0} for _ in servers]
    threads = [
        threading.Thread(
            target=_bus_thread,
            kwargs={
                "server": s,
                "payloads": payloads,
                "rate": rate,
                "total": total,
                "go": go,
                "t_go": t_go,
                "result": results[i],
            },
            name=f"bus{i}",
            daemon=True,
        )
        for i, s in enumerate(servers)
    ]
    for t in threads:
        t.start()
    if sys.stdin.readline().strip() != "go":
        go.set()
        return 1
    t_go.extend([time.monotonic(), time.time()])
    go.set()
    for t in threads:  # a thread blocked in a send to a stalled agent is left behind
        t.join(max(0.0, t_go[0] + total / rate + GRACE_S + 5.0 - time.monotonic()))
    for r in results:
        if not r.get("finished", False):  # stuck in a send: behind by as long as it has been stuck
            r["max_lag_s"] = round(max(r["max_lag_s"], time.monotonic() - (t_go[0] + r["sent"] / rate)), 4)
    _say(
        {
            "event": "done",
            "sent": [r["sent"] for r in results],
            "finished": all(r.get("finished", False) for r in results),
            "max_lag_s": max(r["max_lag_s"] for r in results),
            "send_wall_s": round(max(r["end_mono"] for r in results) - t_go[0], 3),
        }
    )
    sys.stdin.readline()  # 'quit': the agent has gone
    for s in servers:
        s.close()
    return 0


def _say(event: dict[str, Any]) -> None:
    print(json.dumps(event), flush=True)


# -- orchestration -------------------------------------------------------------------------


def _cpu_s(pid: int, tid: int | None = None) -> float:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (``comm``; Python threads all share the process's name)."""
    out: dict[str, float] = {}
    main_name = Path(f"/proc/{pid}/comm").read_text().strip()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            cpu = _cpu_s(pid, int(tid))
        except OSError:
            continue
        if int(tid) == pid:
            key = "main (event loop)"
        elif name == main_name:
            key = "python threads (bus readers)"
        else:
            key = name
        out[key] = out.get(key, 0.0) + cpu
    return out


def _read_event(stream: IO[str], timeout_s: float, proc: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            line = stream.readline()
            if not line:
                raise RuntimeError(f"process {proc.args!r} ended (status {proc.wait()})")
            try:
                event: dict[str, Any] = json.loads(line)
            except json.JSONDecodeError:
                continue
            return event
    raise RuntimeError(f"no answer from {proc.args!r} within {timeout_s:.0f} s")


def _stats(path: Path) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value


def _mapping(path: Path, buses: int) -> Path:
    import tomllib

    import sim

    entries = tomllib.loads(sim.DEFAULT_MAPPING_PATH.read_text())["signal"]
    out = ["version = 1\n"]
    for i in range(buses):
        for e in entries:
            name = e["name"] if i == 0 else e["name"].replace("Vehicle.", f"Vehicle.Bus{i}.", 1)
            out.append(
                f'[[signal]]\nname = "{name}"\nmessage = "{e["message"]}"\nsignal = "{e["signal"]}"\n'
                f'period_ms = {e["period_ms"]}\nbus = "can{i}"\n'
            )
    path.write_text("\n".join(out))
    return path


_SHAPES = (
    "{a} > {b} + 1000000",
    "avg({a}, 2s) > 1000000",
    "max({a}, 500ms) - min({a}, 500ms) > 1000000",
    "changed({a}) and {b} > 1000000",
    "abs({a} - {b}) > 1000000 and not is_null({a})",
)


def _campaigns(path: Path, mapping: Path, periodic: int = 50, condition: int = 30) -> Path:
    """``periodic`` campaigns of 10 signals and ``condition`` campaigns (5 captured signals, 5 s
    before, 2 s after), with expressions in five shapes (thresholds, windows, changed, abs)."""
    import random
    import tomllib

    names = [e["name"] for e in tomllib.loads(mapping.read_text())["signal"]]
    rng = random.Random(7)
    out = []
    for i in range(periodic):
        signals = json.dumps(rng.sample(names, 10))
        period = rng.choice([100, 1000, 10_000, 60_000])
        out.append(
            f'[[campaign]]\nname = "periodic_{i}"\nversion = 1\nsignals = {signals}\n'
            f"[campaign.periodic]\nperiod_ms = {period}\n"
        )
    for i in range(condition):
        a, b = rng.sample(names, 2)
        expression = _SHAPES[i % len(_SHAPES)].format(a=a, b=b)
        signals = json.dumps(rng.sample(names, 5))
        out.append(
            f'[[campaign]]\nname = "condition_{i}"\nversion = 1\npriority = 10\nsignals = {signals}\n'
            f'[campaign.condition]\nexpression = "{expression}"\npre_trigger_ms = 5000\n'
            "post_trigger_ms = 2000\nmin_trigger_interval_ms = 1000\n"
        )
    path.write_text("\n".join(out))
    return path


def _agent_config(
    path: Path,
    ports: list[int],
    ingest_port: int,
    mapping: Path,
    campaigns: Path | None = None,
    *,
    reader: str = "bulk",
    spool: str = "power-loss",
) -> Path:
    import sim

    buses = "".join(
        f'[[bus]]\nname = "can{i}"\ninterface = "socketcand"\nchannel = "can{i}"\n'
        f"dbc = [{json.dumps(str(sim.DEFAULT_DBC_PATH))}]\n"
        f'options = {{ host = "127.0.0.1", port = {port}, reader = "{reader}" }}\n\n'
        for i, port in enumerate(ports)
    )
    path.write_text(
        '[vehicle]\nid = "WTCUBENCH00000001"\n\n'
        # Its own state directory (never the machine's default one).
        + f"[state]\ndirectory = {json.dumps(str(path.parent / 'state'))}\n\n"
        + buses
        + f"[signals]\nmapping = {json.dumps(str(mapping))}\n\n"
        + f'[uplink]\ntarget = "127.0.0.1:{ingest_port}"\ninsecure = true\n'
        + (
            "\n[spool]\nenabled = false\n"  # explicit: without [spool] the agent spools by default
            if spool == "none"
            else f'\n[spool]\ndirectory = {json.dumps(str(path.parent / "spool"))}\ndurability = "{spool}"\n'
        )
        + (
            ""
            if campaigns is None
            else f"\n[campaigns]\nfile = {json.dumps(str(campaigns))}\nmemory_budget_bytes = 67108864\n"
        )
    )
    return path


def _samples_stored(port: int, vehicle_id: str) -> int:
    import asyncio

    import grpc

    from tcu.fleet_client import query_series

    async def count() -> int:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return sum(len(s) for s in (await query_series(channel, vehicle_id)).values())

    return asyncio.run(count())


def _tcu(*args: str, tree: Path = ROOT) -> list[str]:
    python = sys.executable if tree == ROOT else str(tree / ".venv" / "bin" / "python")
    return [python, "-m", "tcu.cli.main", "--log-level", "WARNING", *args]


def run(args: argparse.Namespace) -> dict[str, Any]:
    rate = args.load * args.bitrate / FRAME_BITS
    total = round(rate * (args.warmup + args.seconds))
    work = Path(tempfile.mkdtemp(prefix="tcu-bench-agent-"))
    procs: list[subprocess.Popen[str]] = []

    tree = Path(args.agent_tree).resolve() if args.agent_tree else ROOT

    def spawn(name: str, cmd: list[str], cwd: Path = ROOT, **kw: Any) -> subprocess.Popen[str]:
        log = (work / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, stderr=log, text=True, cwd=cwd, **kw)
        procs.append(proc)
        return proc

    try:
        ingest = spawn(
            "ingest",
            _tcu(
                "ingest",
                "--listen",
                "127.0.0.1:0",
                "--db",
                str(work / "ingest.db"),
                "--port-file",
                str(work / "ingest.port"),
                "--insecure",
            ),
            stdout=subprocess.DEVNULL,
        )
        server = spawn(
            "buses",
            [
                sys.executable,
                __file__,
                "serve",
                "--buses",
                str(args.buses),
                "--rate",
                repr(rate),
                "--total",
                str(total),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert server.stdin is not None and server.stdout is not None
        listening = _read_event(server.stdout, 120, server)
        deadline = time.monotonic() + 60
        while not (work / "ingest.port").exists() or not (work / "ingest.port").read_text().strip():
            if time.monotonic() > deadline or ingest.poll() is not None:
                raise RuntimeError(f"ingest did not start; see {work / 'ingest.log'}")
            time.sleep(0.05)
        ingest_port = int((work / "ingest.port").read_text())
        mapping = _mapping(work / "vss.toml", args.buses)
        campaigns = _campaigns(work / "campaigns.toml", mapping) if args.campaigns else None
        config = _agent_config(
            work / "agent.toml",
            listening["ports"],
            ingest_port,
            mapping,
            campaigns,
            reader=args.reader,
            spool=args.spool,
        )
        stats_path = work / "agent.stats.json"
        agent = spawn(
            "agent",
            _tcu("agent", "--config", str(config), "--stats-file", str(stats_path), tree=tree),
            cwd=tree,
            stdout=subprocess.PIPE,
        )
        _read_event(server.stdout, 120, server)  # every bus has its client
        deadline = time.monotonic() + 60
        while not _stats(stats_path).get("uplink_connected"):
            if time.monotonic() > deadline or agent.poll() is not None:
                raise RuntimeError(f"agent did not connect; see {work / 'agent.log'}")
            time.sleep(0.05)
        agent_tids = [int(t) for t in os.listdir(f"/proc/{agent.pid}/task")]
        threads_before: dict[str, float] = {}

        def sample() -> dict[str, float]:
            main = _cpu_s(agent.pid, agent.pid)
            return {
                "wall": time.monotonic(),
                "agent": _cpu_s(agent.pid),
                "agent_main": main,
                "buses": _cpu_s(server.pid),
                "ingest": _cpu_s(ingest.pid),
                "frames": float(_stats(stats_path).get("frames", 0)),
            }

        server.stdin.write("go\n")
        server.stdin.flush()
        t_go = time.monotonic()
        time.sleep(max(0.0, t_go + args.warmup - time.monotonic()))
        threads_before = _threads(agent.pid)
        first = sample()
        time.sleep(max(0.0, t_go + args.warmup + args.seconds - time.monotonic()))
        last = sample()  # the steady window ends when the schedule does, kept up or not
        threads_after = _threads(agent.pid)
        done = _read_event(server.stdout, GRACE_S + 30, server)
        sent = sum(done["sent"])
        # Catch-up: how long after the schedule's end the agent has read every frame sent.
        deadline = time.monotonic() + GRACE_S
        while _stats(stats_path).get("frames", 0) < sent and time.monotonic() < deadline:
            time.sleep(0.02)
        caught_up_s = time.monotonic() - last["wall"]
        agent.send_signal(signal.SIGTERM)
        assert agent.stdout is not None
        try:
            stopped = _read_event(agent.stdout, 60, agent)
        except RuntimeError:
            agent.kill()
            stopped = {**_stats(stats_path), "killed": True}
        agent.wait(30)
        server.stdin.write("quit\n")
        server.stdin.flush()
        server.wait(30)
        stored = _samples_stored(ingest_port, "WTCUBENCH00000001")
        wall = last["wall"] - first["wall"]

        def share(key: str) -> float:
            return round((last[key] - first[key]) / wall, 3)

        read = int(stopped["frames"])
        per_thread = {
            name: round((cpu - threads_before.get(name, 0.0)) / wall, 3)
            for name, cpu in threads_after.items()
        }
        dropped_overflow = int(stopped.get("frames_dropped_overflow", 0))
        lag_ms = stopped.get("frame_lag_ms_max")
        kept_up = (
            done["finished"]
            and sent == read
            and dropped_overflow == 0
            and done["max_lag_s"] <= MAX_LAG_S
            and (lag_ms is None or lag_ms <= MAX_LAG_S * 1000)
        )
        return {
            "bench": "agent_load",
            "campaigns": "50 periodic + 30 condition" if args.campaigns else "default periodic only",
            "kept_up": kept_up,
            "buses": args.buses,
            "bitrate": args.bitrate,
            "load": args.load,
            "reader": args.reader,
            "spool": args.spool,
            "agent_tree": str(tree),
            "max_lag_s_target": MAX_LAG_S,
            "frame_bits": FRAME_BITS,
            "rate_fps_per_bus": round(rate, 1),
            "rate_fps_total": round(rate * args.buses, 1),
            "steady_s": round(wall, 2),
            "cpu_share": share("agent"),
            "cpu_share_agent_main_thread": share("agent_main"),
            "cpu_share_agent_other_threads": round(share("agent") - share("agent_main"), 3),
            "cpu_share_agent_by_thread": dict(sorted(per_thread.items(), key=lambda kv: -kv[1])),
            "cpu_share_bus_servers": share("buses"),
            "cpu_share_ingest": share("ingest"),
            "agent_threads": len(agent_tids),
            "frames_sent": sent,
            "frames_read": read,
            "dropped": sent - read + dropped_overflow,
            "dropped_at_full_bus_buffers": dropped_overflow,
            "frame_lag_ms_max": lag_ms,
            "frame_lag_ms_p99": stopped.get("frame_lag_ms_p99"),
            "agent_hold_ms_max": stopped.get("hold_ms_max"),
            "agent_hold_ms_p99": stopped.get("hold_ms_p99"),
            "ticks": stopped.get("ticks"),
            "read_fps_steady": round((last["frames"] - first["frames"]) / wall, 1),
            "send_finished": done["finished"],
            "send_wall_s": done["send_wall_s"],
            "scheduled_send_s": round(total / rate, 3),
            "max_send_lag_s": done["max_lag_s"],
            "caught_up_after_s": round(caught_up_s, 3),
            "unknown_frames": stopped["unknown_frames"],
            "batches_acked": stopped["batches_acked"],
            "batches_unacked": stopped["batches_unacked"],
            "samples_stored": stored,
            # Kept by the campaigns, plus what the agent's own sources added (the spool's health).
            "samples_collected": stopped["samples_collected"] + stopped.get("samples_emitted", 0),
            "samples_from_can": stopped["samples_collected"],
            "since_go_s": round(time.monotonic() - t_go, 1),
            "cpus": os.cpu_count(),
            "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "workdir": str(work) if args.keep else None,
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    s = sub.add_parser("serve", help="(internal) the bus server process")
    s.add_argument("--buses", type=int, required=True)
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--total", type=int, required=True)
    parser.add_argument("--json", action="store_true", help="print the JSON line last (always printed)")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady-state seconds measured")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--buses", type=int, default=4)
    parser.add_argument("--load", type=float, default=0.8, help="bus load share (default 0.8)")
    parser.add_argument("--bitrate", type=int, default=500_000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, database)")
    parser.add_argument(
        "--reader",
        choices=("bulk", "python-can"),
        default="bulk",
        help="the agent's socketcand reader: the bulk one (default) or python-can's client",
    )
    parser.add_argument(
        "--spool",
        choices=("power-loss", "crash", "none"),
        default="power-loss",
        help="the agent's [spool] durability (default power-loss: fsync per batch); none: in memory",
    )
    parser.add_argument(
        "--agent-tree",
        help="run the agent from this checkout (its .venv) instead of this one, e.g. for A/B runs",
    )
    parser.add_argument(
        "--campaigns",
        action="store_true",
        help="run 50 periodic and 30 condition campaigns beside the default periodic one",
    )
    args = parser.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # sim/ lives next to tcu/ in the checkout
    if args.mode == "serve":
        return serve(args.buses, args.rate, args.total)
    result = run(args)
    print(json.dumps(result), flush=True)
    return 0 if result["kept_up"] else 1


if __name__ == "__main__":
    sys.exit(main())
