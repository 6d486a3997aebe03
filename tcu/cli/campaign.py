"""``tcu campaign check`` (validate files, report cost and buffer memory) and ``tcu campaign push``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tcu.cli._backend import add_command_args, send_signed_command
from tcu.collect.buffer import (
    BYTES_PER_FRAME,
    BYTES_PER_SAMPLE,
    BufferPlan,
    frame_rates_from_dbc,
    plan_buffers,
    rates_from_dbc,
)
from tcu.collect.campaign import Campaign, Condition, OnChange, Periodic, load_campaigns, validate
from tcu.errors import InputError, TcuError

DEFAULT_BUDGET_BYTES = 16 * 1024 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "campaign",
        help="collection campaigns: check files, push them to a vehicle",
        description="Work with collection campaign files (TOML, [[campaign]] tables).",
    )
    sub = p.add_subparsers(dest="campaign_command", metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="validate campaign files; print each campaign's cost and ring-buffer memory",
        description="Validate campaign files as the agent would load them: syntax, expressions and their "
        "cost limits; with --dbc and --mapping also signal names and ring-buffer memory (rates from the "
        "DBC cycle times) against the budget. Errors print as FILE:LINE:COL: problem and exit 1.",
        epilog="Example: tcu campaign check campaigns.toml --dbc vehicle.dbc --mapping vehicle_vss.toml",
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE", help="campaign TOML file(s)")
    check.add_argument(
        "--dbc",
        action="append",
        default=[],
        metavar="[BUS=]FILE",
        help="DBC file, optionally for a named bus (default bus can0); repeatable",
    )
    check.add_argument("--mapping", type=Path, help="DBC→VSS mapping TOML (needs --dbc)")
    check.add_argument(
        "--memory-budget-bytes",
        type=int,
        default=DEFAULT_BUDGET_BYTES,
        help=f"ring-buffer memory budget (default {DEFAULT_BUDGET_BYTES})",
    )
    check.set_defaults(func=run_check)
    push = sub.add_parser(
        "push",
        help="send a campaign file to a vehicle as a signed command and wait for its answer",
        description="Check FILE, sign it with the backend's command key (campaigns.replace) and send it "
        "through the ingest's Fleet.SendCommand. The vehicle verifies signature, expiry, target and nonce, "
        "replaces its whole campaign set (keeping the old one if the new one is refused) and answers.",
        epilog="Example: tcu campaign push WTCUSIM0000000001 campaigns.toml --pki ./pki",
    )
    push.add_argument("vehicle", help="vehicle id (VIN)")
    push.add_argument("file", type=Path, help="campaign TOML file")
    add_command_args(push)
    push.set_defaults(func=run_push)
    p.set_defaults(func=lambda _args: _usage(p))


def run_push(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read: {exc}", path=str(args.file)) from exc
    load_campaigns(args.file)  # refuse a bad file here, with its line and column, before signing
    status, reason = asyncio.run(push_campaigns(args, text.encode("utf-8")))
    print(f"{args.vehicle}: {status}{(': ' + reason) if reason else ''}")
    return 0 if status == "EXECUTED" else 1


async def push_campaigns(args: argparse.Namespace, payload: bytes) -> tuple[str, str]:
    return await send_signed_command(args, kind="campaigns.replace", payload=payload, id_prefix="campaigns")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_check(args: argparse.Namespace) -> int:
    try:
        lines = check(args.files, args.dbc, args.mapping, args.memory_budget_bytes)
    except TcuError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


def check(files: list[Path], dbc_args: list[str], mapping: Path | None, budget_bytes: int) -> list[str]:
    """The report lines of ``tcu campaign check``; raises the first error found."""
    campaigns: list[Campaign] = []
    for f in files:
        campaigns.extend(load_campaigns(f))
    plan: BufferPlan | None = None
    if mapping is not None or dbc_args:
        if mapping is None or not dbc_args:
            raise InputError("--dbc and --mapping go together")
        from tcu.signals.dbc import load_dbc
        from tcu.signals.decoder import compile_codecs
        from tcu.signals.mapping import build_catalog, load_mapping

        databases: dict[str, list[object]] = {}
        for item in dbc_args:
            bus, _, path = item.rpartition("=")
            databases.setdefault(bus or "can0", []).append(load_dbc(path))
        catalog = build_catalog(load_mapping(mapping), databases, mapping_path=mapping)
        validate(campaigns, catalog)
        codecs = compile_codecs(databases)  # type: ignore[arg-type]  # load_dbc gives cantools Databases
        plan = plan_buffers(
            campaigns,
            catalog,
            rates_from_dbc(catalog, codecs),
            budget_bytes,
            frame_rate_hz=frame_rates_from_dbc(codecs),
        )
    out = [_describe(c, plan) for c in campaigns]
    if plan is None:
        out.append(
            f"{len(campaigns)} campaign(s) OK; signal names and buffer memory not checked "
            "(give --dbc and --mapping)"
        )
    else:
        out.append(
            f"{len(campaigns)} campaign(s) OK; ring buffers {plan.total_bytes} bytes "
            f"({sum(plan.capacity.values())} samples x {BYTES_PER_SAMPLE} B, {len(plan.capacity)} signals"
            + (
                f"; {sum(plan.frame_capacity.values())} frames x {BYTES_PER_FRAME} B, "
                f"{len(plan.frame_capacity)} frame ids"
                if plan.frame_capacity
                else ""
            )
            + ") "
            f"of a {budget_bytes} byte budget"
        )
    return out


def _describe(c: Campaign, plan: BufferPlan | None) -> str:
    head = f"{c.source.path}:{c.source.line}: {c.name} v{c.version} priority {c.priority}"
    mode = c.mode
    if isinstance(mode, Periodic):
        periods = sorted({p for _, p in mode.period_ms})
        body = f"periodic ({', '.join(f'{p} ms' for p in periods)}), {len(c.signals)} signal(s)"
    elif isinstance(mode, OnChange):
        body = f"on_change (min interval {mode.min_interval_ms} ms), {len(c.signals)} signal(s)"
    else:
        assert isinstance(mode, Condition)
        cost = mode.expression.cost()
        body = (
            f"condition {mode.trigger}, pre {mode.pre_trigger_ms} ms, post {mode.post_trigger_ms} ms, "
            f"captures {len(c.signals)} signal(s)"
            + (f" and {len(mode.raw_frames)} raw frame id(s)" if mode.raw_frames else "")
            + f"; cost: {cost.nodes} nodes, depth {cost.depth}, {len(cost.windows)} window(s) "
            f"totalling {cost.total_window_ms:g} ms, reads {len(cost.signals)} signal(s)"
        )
    memory = "" if plan is None else f"; buffers {plan.campaign_bytes.get(c.name, 0)} bytes"
    return f"{head}: {body}{memory}"
