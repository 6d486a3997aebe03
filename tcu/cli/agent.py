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
from tcu.config import DEFAULT_METRICS_LISTEN, AgentConfig, load_agent_config
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
        "--state-dir",
        type=Path,
        help="override [state] directory: the default spool, catalogs and nonces"
        " (default $STATE_DIRECTORY, else /var/lib/tcu as root, ~/.local/state/tcu otherwise)",
    )
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="override [metrics] listen: Prometheus /metrics and /healthz (e.g. 127.0.0.1:9108)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="ask the running agent for its health on its metrics port ([metrics] listen, else"
        f" {DEFAULT_METRICS_LISTEN}); exit 1 when unhealthy",
    )
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
    if args.metrics_listen:
        overrides["metrics.listen"] = args.metrics_listen
    if args.state_dir:
        overrides["state.directory"] = str(args.state_dir.absolute())
    if args.status:
        return _status(load_agent_config(args.config, env=os.environ, overrides=overrides))
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
    metrics = None
    if agent.config.metrics_listen is not None:
        from tcu.agent.metrics import agent_health, agent_snapshot
        from tcu.metrics import MetricsServer

        metrics = MetricsServer(
            agent.config.metrics_listen,
            key="metrics.listen",
            loop=loop,
            snapshot=lambda: agent_snapshot(agent),
            health=lambda: agent_health(agent),
        ).start()
    try:
        return await agent.run(stop)
    finally:
        if metrics is not None:
            metrics.stop()


def _status(config: AgentConfig) -> int:
    """``GET /healthz`` of the running agent; prints the JSON, 0 when healthy, 1 when not."""
    import urllib.error
    import urllib.request

    from tcu.errors import ConfigError

    listen = config.metrics_listen or DEFAULT_METRICS_LISTEN  # the shipped unit's --metrics-listen
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:  # 503: unhealthy, with the same JSON body
        body = exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"no agent answers on {url}: {reason}", key="metrics.listen") from exc
    health = json.loads(body)
    print(json.dumps(health, indent=2))
    return 0 if health.get("healthy") else 1
