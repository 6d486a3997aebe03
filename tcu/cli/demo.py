"""``tcu demo``: a simulated drive end to end, with a summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from tcu.demo import DemoOptions, run_demo
from tcu.demo.scenario import load_scenarios


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="drive a simulated car end to end: simulator → agent → ingest",
        description="Start the ingest, the vehicle simulator (CAN over socketcand) and the agent as "
        "separate processes on loopback, drive, and compare what the ingest stored with the "
        "simulator's ground truth. Exits 1 when a sample is lost or wrong.",
        epilog="Example: tcu demo --duration 60 --speed max --json",
    )
    p.add_argument(
        "--duration", type=float, default=60.0, help="simulated drive time in seconds (default 60)"
    )
    p.add_argument(
        "--speed", default="max", help="'max' (as fast as possible) or a real-time factor such as 10"
    )
    p.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    p.add_argument(
        "--workdir",
        type=Path,
        help="keep databases, logs and ground truth in this directory (what a previous run left there is"
        " replaced)",
    )
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary work directory (always kept for border and fleet)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line last")
    p.add_argument(
        "--scenario",
        default="drive",
        choices=sorted(load_scenarios()),
        help="what to show: drive (default), hard-brake (condition campaign), border (eSIM roaming), "
        "v2n (seven vehicles warn each other of hazards over MQTT), fleet (the border drive on a 3-node"
        " NATS JetStream cluster with two ingest replicas and a durable command)",
    )
    p.add_argument(
        "--insecure", action="store_true", help="plain TCP instead of mTLS with a dev PKI (default: mTLS)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.speed != "max":
        try:
            if float(args.speed) <= 0:
                raise ValueError
        except ValueError:
            print(
                f"tcu demo: error: --speed must be 'max' or a positive number, got {args.speed!r}",
                file=sys.stderr,
            )
            return 2
    options = DemoOptions(
        duration_s=args.duration,
        speed=args.speed,
        seed=args.seed,
        workdir=args.workdir,
        keep=args.keep or args.scenario in ("border", "fleet"),  # the summary names the audit log to verify
        mtls=not args.insecure,
        scenario=load_scenarios()[args.scenario](),
    )
    result = asyncio.run(
        run_demo(options, progress=lambda m: print(f"[demo] {m}", file=sys.stderr, flush=True))
    )
    summary = result.as_dict()
    width = max(len(k) for k in summary)
    print("", file=sys.stderr)
    for key, value in summary.items():
        print(f"  {key:<{width}}  {value}", file=sys.stderr)
    print(f"  {'result':<{width}}  {'OK: nothing lost' if result.ok else 'FAILED'}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0 if result.ok else 1
