"""Waking up after a long outage: how soon is the first batch acked once the link is back?

A parked car loses its link for minutes; when coverage returns, the agent should deliver
within seconds, not after its reconnect backoff has run out. This starts ``tcu ingest`` and
``tcu agent`` as processes (plain TCP on loopback; the agent reads a CAN log in real time
and spools it), puts the chaos run's loopback proxy between them, lets batches flow, takes
the link down for ``--down-s`` seconds and brings it back. It measures, on the ingest's own
``Fleet.ListVehicles`` polled every 20 ms, the time from the link coming back to the first
batch stored (the ingest acks only after the commit) and to all spooled batches delivered.

``--mode blackhole`` (default) is a cellular link gone silent: nothing is closed, bytes are
dropped both ways, connection attempts are accepted and never answered, and the connections
of that time stay dead afterwards (a NAT that forgot them). ``--mode refuse`` closes every
connection and refuses new ones (no route, RST).

Variants run interleaved, A B A B: ``--variant NAME=KEY=VALUE,...`` sets ``[uplink]`` keys
(``--variant long=backoff_max_s=30`` is the default before 2026-12-06); ``default`` is the
agent's defaults; ``--agent-src NAME=DIR`` runs the agent of another checkout (its config
without ``[state]``, which an older agent does not know). It prints min/median/max per
variant and one JSON line last (``--json``).
It exits 1 when a run saw no batch delivered within ``--timeout-s`` after the link came
back (``--self-test`` keeps the link down and must report that).

    python tools/bench/wakeup.py --down-s 120 --runs 3 --variant old=backoff_max_s=30 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

_TOOLS = Path(__file__).resolve().parents[1]
if str(_TOOLS) not in sys.path:
    sys.path.insert(0, str(_TOOLS))

from _chaos_proxy import LinkProxy, ProxyConfig  # noqa: E402 - after the sys.path fix

from tcu.api.v1 import fleet_pb2 as fleet_pb  # noqa: E402
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc  # noqa: E402

VIN = "WTCUWAKE000000001"
DBC = """VERSION ""

NS_ :

BS_:

BU_: ECU TCU

BO_ 256 Dyn: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" TCU
"""
MAPPING = (
    'version = 1\n[[signal]]\nname = "Vehicle.Speed"\nmessage = "Dyn"\nsignal = "Speed"\nperiod_ms = 100\n'
)


@dataclass
class RunResult:
    variant: str
    first_ack_s: float | None
    caught_up_s: float | None
    batches_before: int
    batches_after: int
    agent_log_tail: list[str] = field(default_factory=list)


def _tcu(*args: str) -> list[str]:
    return [sys.executable, "-m", "tcu.cli.main", "--log-level", "INFO", *args]


async def _wait_file(path: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            text = path.read_text().strip()  # noqa: ASYNC240 - a tiny file, polled
            if text:
                return text
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{path} not written within {timeout_s} s")


async def _stored(stub: Any) -> int:
    reply = await stub.ListVehicles(fleet_pb.ListVehiclesRequest())
    return sum(v.batches for v in reply.vehicles if v.vehicle_id == VIN)


def _unacked(stats: Path) -> int | None:
    try:
        return int(json.loads(stats.read_text() or "{}").get("batches_unacked", -1))
    except (OSError, ValueError):
        return None


async def one_run(
    work: Path, variant: str, uplink_keys: dict[str, str], args: argparse.Namespace, src: str | None = None
) -> RunResult:
    work.mkdir(parents=True)  # noqa: ASYNC240 - set-up before anything runs
    (work / "m.dbc").write_text(DBC)
    (work / "m.toml").write_text(MAPPING)
    seconds = args.warmup_s + args.down_s + args.timeout_s + 30
    t0 = time.time()
    with (work / "drive.log").open("w") as f:  # 20 frames/s in real time, dated now
        for i in range(int(seconds * 20)):
            f.write(f"({t0 + i / 20:.6f}) can0 100#{(i % 60000):04X}000000000000\n")
    ingest = await asyncio.create_subprocess_exec(
        *_tcu("ingest", "--insecure", "--listen", "127.0.0.1:0", "--db", str(work / "ingest.sqlite"),
              "--port-file", str(work / "ingest.port")),
        stdout=asyncio.subprocess.DEVNULL, stderr=(work / "ingest.err").open("w"),
    )  # fmt: skip
    agent: asyncio.subprocess.Process | None = None
    try:
        port = int(await _wait_file(work / "ingest.port", 60))
        async with (
            LinkProxy(ProxyConfig("127.0.0.1", port)) as proxy,
            grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = fleet_grpc.FleetStub(channel)
            extra = "".join(f"{k} = {v}\n" for k, v in uplink_keys.items())
            (work / "agent.toml").write_text(
                f'[vehicle]\nid = "{VIN}"\n\n'
                + ("" if src else f'[state]\ndirectory = "{work / "state"}"\n\n')
                + f'[[bus]]\nname = "can0"\ninterface = "replay"\nchannel = "{work / "drive.log"}"\n'
                'dbc = ["m.dbc"]\n\n[signals]\nmapping = "m.toml"\n\n'
                f'[uplink]\ntarget = "127.0.0.1:{proxy.port}"\ninsecure = true\n{extra}\n'
                "[batch]\nmax_age_ms = 1000\n"
            )
            stats = work / "stats.json"
            agent = await asyncio.create_subprocess_exec(
                *_tcu("agent", "--config", str(work / "agent.toml"), "--stats-file", str(stats)),
                stdout=asyncio.subprocess.DEVNULL, stderr=(work / "agent.err").open("w"),
                env={**os.environ, "PYTHONUNBUFFERED": "1", "STATE_DIRECTORY": str(work / "state"),
                     **({"PYTHONPATH": src, "PYTHONDONTWRITEBYTECODE": "1"} if src else {})},
                cwd=src,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while await _stored(stub) < 2:
                if time.monotonic() > deadline or agent.returncode is not None:
                    raise RuntimeError(f"{variant}: no batch stored before the outage; see {work}")
                await asyncio.sleep(0.1)
            await asyncio.sleep(max(0.0, args.warmup_s - 2))
            proxy.set_down(True, blackhole=args.mode == "blackhole")
            await asyncio.sleep(args.down_s)
            before = await _stored(stub)
            if not args.self_test:
                proxy.set_down(False)
            up = time.monotonic()
            first: float | None = None
            caught: float | None = None
            while time.monotonic() - up < args.timeout_s:
                now = await _stored(stub)
                t = time.monotonic() - up
                if first is None and now > before:
                    first = t
                if first is not None and _unacked(stats) == 0:
                    caught = t
                    break
                await asyncio.sleep(0.02)
            after = await _stored(stub)
    finally:
        for proc in (agent, ingest):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    tail = (work / "agent.err").read_text().splitlines()[-6:] if (work / "agent.err").exists() else []
    return RunResult(variant, first, caught, before, after, [line for line in tail if "uplink" in line])


def _variants(specs: list[str]) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    for spec in specs:
        name, _, rest = spec.partition("=")
        keys = dict(item.split("=", 1) for item in rest.split(",") if item)
        out.append((name, keys))
    return out


def _stats(values: list[float | None]) -> dict[str, float | None]:
    got = [v for v in values if v is not None]
    if not got:
        return {"min": None, "median": None, "max": None}
    return {"min": round(min(got), 3), "median": round(statistics.median(got), 3), "max": round(max(got), 3)}


async def main_async(args: argparse.Namespace) -> int:
    variants = [("default", {}), *_variants(args.variant)]
    sources = dict(spec.split("=", 1) for spec in args.agent_src)
    variants += [(name, {}) for name in sources]
    root = Path(tempfile.mkdtemp(prefix="tcu-bench-wakeup-"))
    results: list[RunResult] = []
    for i in range(args.runs):
        for name, keys in variants:  # interleaved: A B A B
            r = await one_run(root / f"{name}-{i}", name, keys, args, sources.get(name))
            results.append(r)
            print(
                f"run {i + 1} {name}: first ack {r.first_ack_s} s, all delivered {r.caught_up_s} s after"
                f" the link came back ({r.batches_before} -> {r.batches_after} batches)",
                file=sys.stderr,
                flush=True,
            )
    summary: dict[str, Any] = {
        "mode": args.mode,
        "down_s": args.down_s,
        "runs": args.runs,
        "workdir": str(root),
        "variants": {},
    }
    failed = False
    for name, keys in variants:
        mine = [r for r in results if r.variant == name]
        failed |= any(r.first_ack_s is None for r in mine)
        summary["variants"][name] = {
            "uplink": keys,
            "first_ack_s": _stats([r.first_ack_s for r in mine]),
            "caught_up_s": _stats([r.caught_up_s for r in mine]),
            "first_ack_each_s": [r.first_ack_s for r in mine],
            "missed": sum(r.first_ack_s is None for r in mine),
        }
    summary["ok"] = not failed
    if failed:
        print(
            f"FAILED: a run delivered nothing within {args.timeout_s} s of the link coming back",
            file=sys.stderr,
        )
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2), flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--down-s", type=float, default=120.0, help="seconds the link is down (default 120)")
    p.add_argument("--warmup-s", type=float, default=5.0, help="seconds of delivery before the outage")
    p.add_argument("--timeout-s", type=float, default=90.0, help="give up this long after the link is back")
    p.add_argument("--runs", type=int, default=3, help="runs per variant (interleaved)")
    p.add_argument("--mode", choices=("blackhole", "refuse"), default="blackhole")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE,...",
        help="[uplink] keys to compare",
    )
    p.add_argument(
        "--agent-src", action="append", default=[], metavar="NAME=DIR", help="the agent of another checkout"
    )
    p.add_argument("--self-test", action="store_true", help="never bring the link back: must exit 1")
    p.add_argument("--json", action="store_true", help="the summary as one JSON line")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
