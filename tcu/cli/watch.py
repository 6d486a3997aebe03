"""``tcu watch``: an alias of ``tcu fleet subscribe`` (the live ``Fleet.Subscribe`` stream)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tcu.cli.fleet import add_subscribe_args
from tcu.errors import TcuError

if TYPE_CHECKING:
    import grpc

    from tcu.api.v1 import fleet_pb2 as fleet_pb


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "watch",
        help="print live values from the ingest's Fleet.Subscribe stream (= tcu fleet subscribe)",
        description="Subscribe to the ingest's live stream and print the latest value of each signal "
        "as batches arrive: how an OEM backend consumes the telemetry. The same as 'tcu fleet subscribe'.",
        epilog="Example: tcu watch --target 127.0.0.1:50051 --pki ./pki --signal Vehicle.Speed",
    )
    add_subscribe_args(p)


def format_update(update: fleet_pb.SignalUpdate) -> str:
    parts = []
    latest_ns = 0
    for s in update.series:
        if not s.t_ns:
            continue
        latest_ns = max(latest_ns, s.t_ns[-1])
        value = s.double_values[-1] if s.double_values else (s.string_values[-1] if s.string_values else "")
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        parts.append(f"{s.name}={shown}{(' ' + s.unit) if s.unit else ''}")
    for e in update.events:
        latest_ns = max(latest_ns, e.trigger_ns)
        frames = sum(len(f.t_ns) for f in e.frames)
        parts.append(
            f"event {e.campaign} v{e.campaign_version} at {_clock(e.trigger_ns)}:"
            f" {len(e.series)} signals, {frames} raw frames" + (" (truncated)" if e.truncated else "")
        )
    when = _clock(latest_ns) if latest_ns else "-"
    return f"{when} {update.vehicle_id} seq={update.seq} " + "  ".join(parts)


def _clock(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / 1e9, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


async def watch(
    channel: grpc.aio.Channel, target: str, vehicles: list[str], signals: list[str], count: int
) -> int:
    import grpc

    from tcu.api.v1 import fleet_pb2 as fleet_pb
    from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc

    seen = 0
    async with channel:
        stub = fleet_grpc.FleetStub(channel)
        request = fleet_pb.SubscribeRequest(vehicle_ids=vehicles, signals=signals)
        try:
            async for update in stub.Subscribe(request, wait_for_ready=True):
                print(format_update(update), flush=True)
                seen += 1
                if count and seen >= count:
                    break
        except grpc.aio.AioRpcError as exc:
            raise TcuError(f"subscription to {target} ended: {exc.code().name}: {exc.details()}") from exc
    return seen
