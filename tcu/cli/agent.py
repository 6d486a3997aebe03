"""``tcu agent``: run the vehicle agent from a TOML config until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from dataclasses import asdict
from pathlib import Path

from tcu.agent import Agent, AgentStats
from tcu.config import load_agent_config
from tcu.sdnotify import Notifier, notify_settings

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "agent",
        help="run the vehicle agent (CAN → decode → batches → gRPC)",
        description="Read the CAN buses named in the config, decode and sample the mapped signals, "
        "and stream batches to the ingest. SIGTERM drains and stops.",
        epilog="Example: tcu agent --config /etc/tcu/agent.toml",
    )
    p.add_argument("--config", required=True, type=Path, help="agent TOML file")
    p.add_argument("--vehicle-id", help="override [vehicle] id")
    p.add_argument("--target", help="override [uplink] target (host:port)")
    p.add_argument("--stats-file", type=Path, help="write live counters as JSON to this file")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the config and everything it names (DBCs, mapping, campaigns, TLS files and dates,"
        " state directories, target), print a summary and exit: 1 with every problem listed",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.vehicle_id:
        overrides["vehicle.id"] = args.vehicle_id
    if args.target:
        overrides["uplink.target"] = args.target
    if args.check:
        from tcu.agent.check import check_agent

        report, _ = check_agent(args.config, os.environ, overrides)
        for line in report.lines():
            print(line)
        print(report.summary(f"tcu agent --check {args.config}"))
        return 1 if report.problems else 0
    config = load_agent_config(args.config, env=os.environ, overrides=overrides)
    notifier = Notifier(notify_settings(os.environ))  # a no-op outside systemd (no $NOTIFY_SOCKET)
    agent = Agent(config, stats_path=args.stats_file, notifier=notifier if notifier.enabled else None)
    try:
        stats = asyncio.run(_main(agent))
    finally:
        notifier.close()
    print(json.dumps({"event": "stopped", **asdict(stats)}), flush=True)
    return 0


async def _main(agent: Agent) -> AgentStats:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await agent.run(stop)
