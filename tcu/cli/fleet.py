"""``tcu fleet``: the backend's view of the ingest from a shell (``Fleet.ListVehicles``, ``Query``,
``Subscribe``, ``SendCommand``), human output by default and ``--json`` (one object per line).

Signal names given with ``--signal`` are checked against what the ingest lists for the vehicles
(``ListVehicles``): an unknown one is refused with the closest known names, instead of a query
that returns nothing or a subscription that waits forever.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import math
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tcu.cli._backend import add_backend_args, add_command_args, open_backend_channel
from tcu.errors import InputError, TcuError

if TYPE_CHECKING:
    import grpc

    from tcu.api.v1 import fleet_pb2 as fleet_pb

__all__ = [
    "add_subscribe_args",
    "check_signals",
    "event_json",
    "parse_time",
    "register",
    "run_subscribe",
    "sample_rows",
]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "fleet",
        help="the ingest's Fleet API from the shell: vehicles, query, subscribe, command",
        description="Talk to the ingest as an OEM backend (mTLS with the backend certificate of --pki). "
        "Human output by default; --json prints one JSON object per line.",
        epilog="Example: tcu fleet query WTCUSIM0000000001 --pki ./pki --signal Vehicle.Speed --json",
    )
    sub = parser.add_subparsers(dest="fleet_action", metavar="ACTION", required=True)

    p = sub.add_parser("vehicles", help="list the vehicles the ingest knows (Fleet.ListVehicles)")
    add_backend_args(p)
    _add_json(p, "one object per vehicle")

    p = sub.add_parser(
        "query",
        help="stored history of one vehicle (Fleet.Query)",
        epilog="Times: UTC ISO 8601 (2026-12-04T03:34:21Z; no zone means UTC) or epoch nanoseconds.",
    )
    add_backend_args(p)
    p.add_argument("vehicle", help="vehicle id (VIN)")
    p.add_argument("--signal", action="append", default=[], help="VSS name (repeatable; default all)")
    p.add_argument("--start", type=parse_time, default=0, help="from this time, inclusive")
    p.add_argument("--end", type=parse_time, default=0, help="up to this time, exclusive")
    p.add_argument("--events", action="store_true", help="also the campaign events triggered in range")
    p.add_argument("--no-check", action="store_true", help="do not check --signal names against the ingest")
    _add_json(p, "one object per sample (and per event)")

    p = sub.add_parser(
        "subscribe", help="live samples as they are stored (Fleet.Subscribe); alias: tcu watch"
    )
    add_subscribe_args(p)

    p = sub.add_parser(
        "command",
        help="sign a command with the backend's key and send it (Fleet.SendCommand)",
        epilog="Kinds and payloads: docs/commands.md. Example: "
        "tcu fleet command WTCUSIM0000000001 esim.enable --payload 89490200001234567803 --pki ./pki",
    )
    p.add_argument("vehicle", help="target vehicle id (VIN)")
    p.add_argument("kind", help="command kind: campaigns.replace, esim.enable")
    payload = p.add_mutually_exclusive_group(required=True)
    payload.add_argument("--payload", help="the payload as UTF-8 text")
    payload.add_argument("--payload-file", type=Path, metavar="FILE", help="the payload: this file's bytes")
    add_command_args(p)
    _add_json(p, "the outcome as one object")
    parser.set_defaults(func=run)


def add_subscribe_args(p: argparse.ArgumentParser) -> None:
    """The options of ``tcu fleet subscribe`` (and of its alias ``tcu watch``)."""
    add_backend_args(p)
    p.add_argument(
        "--vehicle", action="append", default=[], help="vehicle id to follow (repeatable; default all)"
    )
    p.add_argument(
        "--signal", action="append", default=[], help="VSS name to follow (repeatable; default all)"
    )
    p.add_argument(
        "--count", type=int, default=0, help="stop after this many updates (default: until Ctrl-C)"
    )
    p.add_argument("--no-check", action="store_true", help="do not check --signal names against the ingest")
    _add_json(p, "one object per sample (and per event)")
    p.set_defaults(func=run_subscribe)


def _add_json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"JSON lines: {what}")


def parse_time(text: str) -> int:
    """``--start``/``--end``: epoch nanoseconds, or ISO 8601 (UTC when no zone is given)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch nanoseconds nor an ISO 8601 time (2026-12-04T03:34:21Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def _iso(t_ns: int) -> str:
    seconds, ns = divmod(t_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns // 1_000_000:03d}Z"


def _value(value: float | str) -> float | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": JSON has no such numbers
    return value


def sample_rows(update: fleet_pb.SignalUpdate) -> Iterator[tuple[str, str, int, float | str]]:
    """(signal, unit, t_ns, value) of every sample of an update, series by series."""
    for s in update.series:
        values: Iterable[float | str] = s.double_values if s.double_values else s.string_values
        for t_ns, value in zip(s.t_ns, values, strict=True):
            yield s.name, s.unit, t_ns, value


def event_json(vehicle_id: str, e: fleet_pb.Event) -> dict[str, Any]:
    return {
        "vehicle_id": vehicle_id,
        "event": {
            "campaign": e.campaign,
            "campaign_version": e.campaign_version,
            "trigger_ns": e.trigger_ns,
            "start_ns": e.start_ns,
            "end_ns": e.end_ns,
            "truncated": e.truncated,
            "history_incomplete": e.history_incomplete,
            "series": [
                {
                    "signal": s.name,
                    "unit": s.unit,
                    "t_ns": list(s.t_ns),
                    "values": [_value(v) for v in (s.double_values if s.double_values else s.string_values)],
                }
                for s in e.series
            ],
            "frames": [
                {
                    "bus": f.bus,
                    "arbitration_id": f.arbitration_id,
                    "t_ns": list(f.t_ns),
                    "data": [d.hex() for d in f.data],
                    "dropped": f.dropped,
                }
                for f in e.frames
            ],
        },
    }


def _event_line(vehicle_id: str, e: fleet_pb.Event) -> str:
    frames = sum(len(f.t_ns) for f in e.frames)
    return (
        f"{_iso(e.trigger_ns)} {vehicle_id} event {e.campaign} v{e.campaign_version}:"
        f" {len(e.series)} signals, {sum(len(s.t_ns) for s in e.series)} samples, {frames} raw frames"
        + (" (truncated)" if e.truncated else "")
    )


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, separators=(",", ":")), flush=False)


def _rpc_error(what: str, target: str, exc: grpc.aio.AioRpcError) -> TcuError:
    return TcuError(f"{what} at {target} failed: {exc.code().name}: {exc.details()}")


async def _list_vehicles(channel: grpc.aio.Channel, target: str) -> list[fleet_pb.VehicleInfo]:
    import grpc

    from tcu.api.v1 import fleet_pb2 as fleet_pb
    from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc

    try:
        reply = await fleet_grpc.FleetStub(channel).ListVehicles(fleet_pb.ListVehiclesRequest(), timeout=30)
    except grpc.aio.AioRpcError as exc:
        raise _rpc_error("ListVehicles", target, exc) from exc
    return list(reply.vehicles)


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def check_signals(
    vehicles: list[fleet_pb.VehicleInfo], wanted_vehicles: list[str], signals: list[str]
) -> None:
    """Refuse (:class:`InputError`) ``signals`` none of ``wanted_vehicles`` (all when empty) has sent."""
    if not signals:
        return
    pool = [v for v in vehicles if not wanted_vehicles or v.vehicle_id in wanted_vehicles]
    known = {name for v in pool for name in v.signals}
    scope = f"vehicle {', '.join(wanted_vehicles)}" if wanted_vehicles else "any vehicle"
    if not known:
        log.warning(
            "cannot check --signal names: the ingest lists no signal of %s yet (--no-check hides this)", scope
        )
        return
    for name in signals:
        if name not in known:
            raise InputError(
                f"--signal {name}: {scope + ' has sent no' if wanted_vehicles else 'no vehicle has sent a'}"
                f" signal of that name{_suggest(name, known)};"
                f" the ingest knows {len(known)} signals ('tcu fleet vehicles --json' lists them)"
            )


async def _vehicles(args: argparse.Namespace) -> int:
    async with open_backend_channel(args) as channel:
        vehicles = await _list_vehicles(channel, args.target)
    if args.json:
        for v in vehicles:
            _emit(
                {
                    "vehicle_id": v.vehicle_id,
                    "connected": v.connected,
                    "boot_epoch": v.boot_epoch,
                    "batches": v.batches,
                    "samples": v.samples,
                    "signals": list(v.signals),
                    "first_sample_ns": v.first_sample_ns,
                    "last_sample_ns": v.last_sample_ns,
                    "last_seen_ns": v.last_seen_ns,
                    "lost_batches": v.lost_batches,
                    "quarantined_batches": v.quarantined_batches,
                    "campaigns": [{"name": c.name, "version": c.version} for c in v.campaigns],
                }
            )
        return 0
    if not vehicles:
        print(f"no vehicles at {args.target}")
        return 0
    header = ("VEHICLE", "CONNECTED", "BATCHES", "SAMPLES", "SIGNALS", "LOST", "QUARANTINED", "FIRST", "LAST")
    table = [header] + [
        (
            v.vehicle_id,
            "yes" if v.connected else "no",
            str(v.batches),
            str(v.samples),
            str(len(v.signals)),
            str(v.lost_batches),
            str(v.quarantined_batches),
            _iso(v.first_sample_ns) if v.samples else "-",
            _iso(v.last_sample_ns) if v.samples else "-",
        )
        for v in vehicles
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print(
            "  ".join(
                cell.ljust(w) if i in (0, 1, 7, 8) else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    return 0


async def _query(args: argparse.Namespace) -> int:
    import grpc

    from tcu.api.v1 import fleet_pb2 as fleet_pb
    from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc

    count = 0
    async with open_backend_channel(args) as channel:
        vehicles = await _list_vehicles(channel, args.target)
        ids = [v.vehicle_id for v in vehicles]
        if args.vehicle not in ids:
            raise InputError(
                f"vehicle {args.vehicle}: the ingest at {args.target} has no such vehicle"
                f"{_suggest(args.vehicle, ids)}; it has {len(ids)}"
            )
        if not args.no_check:
            check_signals(vehicles, [args.vehicle], args.signal)
        request = fleet_pb.QueryRequest(
            vehicle_id=args.vehicle,
            signals=args.signal,
            start_ns=args.start,
            end_ns=args.end,
            include_events=args.events,
        )
        try:
            async for update in fleet_grpc.FleetStub(channel).Query(request):
                for name, unit, t_ns, value in sample_rows(update):
                    count += 1
                    if args.json:
                        _emit(
                            {
                                "vehicle_id": update.vehicle_id,
                                "signal": name,
                                "unit": unit,
                                "t_ns": t_ns,
                                "value": _value(value),
                            }
                        )
                    else:
                        print(f"{_iso(t_ns)} {name} {_shown(value)}{(' ' + unit) if unit else ''}")
                for e in update.events:
                    if args.json:
                        _emit(event_json(update.vehicle_id, e))
                    else:
                        print(_event_line(update.vehicle_id, e))
        except grpc.aio.AioRpcError as exc:
            raise _rpc_error("Query", args.target, exc) from exc
    sys.stdout.flush()
    if not args.json:
        print(f"{count} samples", file=sys.stderr)
    return 0


def _shown(value: float | str) -> str:
    return f"{value:.9g}" if isinstance(value, float) else str(value)


async def subscribe(args: argparse.Namespace, channel: grpc.aio.Channel) -> int:
    """Print updates of ``Fleet.Subscribe`` until ``args.count`` updates (0: forever); returns how many."""
    import grpc

    from tcu.api.v1 import fleet_pb2 as fleet_pb
    from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
    from tcu.cli.watch import format_update

    seen = 0
    async with channel:
        if not args.no_check and args.signal:
            check_signals(await _list_vehicles(channel, args.target), args.vehicle, args.signal)
        request = fleet_pb.SubscribeRequest(vehicle_ids=args.vehicle, signals=args.signal)
        try:
            async for update in fleet_grpc.FleetStub(channel).Subscribe(request, wait_for_ready=True):
                if args.json:
                    for name, unit, t_ns, value in sample_rows(update):
                        _emit(
                            {
                                "vehicle_id": update.vehicle_id,
                                "boot_epoch": update.boot_epoch,
                                "seq": update.seq,
                                "signal": name,
                                "unit": unit,
                                "t_ns": t_ns,
                                "value": _value(value),
                            }
                        )
                    for e in update.events:
                        _emit(event_json(update.vehicle_id, e))
                    sys.stdout.flush()
                else:
                    print(format_update(update), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
        except grpc.aio.AioRpcError as exc:
            raise TcuError(
                f"subscription to {args.target} ended: {exc.code().name}: {exc.details()}"
            ) from exc
    return seen


def run_subscribe(args: argparse.Namespace) -> int:
    async def main() -> int:
        return await subscribe(args, open_backend_channel(args))  # the channel belongs to this loop

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print("", file=sys.stderr)
    return 0


async def _command(args: argparse.Namespace) -> int:
    from tcu.cli._backend import send_signed_command

    if args.payload_file is not None:
        try:
            payload = args.payload_file.read_bytes()
        except OSError as exc:
            raise InputError(f"{args.payload_file}: cannot read the payload: {exc.strerror}") from exc
    else:
        payload = args.payload.encode("utf-8")
    status, reason = await send_signed_command(
        args, kind=args.kind, payload=payload, id_prefix=args.kind.replace(".", "-")
    )
    if args.json:
        _emit({"vehicle_id": args.vehicle, "kind": args.kind, "status": status, "reason": reason})
    else:
        print(f"{args.vehicle}: {status}{(': ' + reason) if reason else ''}")
    return 0 if status == "EXECUTED" else 1


def run(args: argparse.Namespace) -> int:
    if args.fleet_action == "subscribe":
        return run_subscribe(args)
    action = {"vehicles": _vehicles, "query": _query, "command": _command}[args.fleet_action]
    return asyncio.run(action(args))
