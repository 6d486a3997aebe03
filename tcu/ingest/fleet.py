"""``tcu.api.v1.Fleet``: live updates, stored history, the fleet's vehicles and commands, for OEM backends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.api.v1 import fleet_pb2_grpc as fleet_grpc
from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.errors import ClosedResourceError
from tcu.ingest._events import capture_pb
from tcu.ingest._query_wire import signal_update_bytes
from tcu.ingest.commands import (
    CommandConflict,
    CommandInvalid,
    CommandPath,
    CommandRouter,
    CommandsExhausted,
    CommandState,
    CommandUnavailable,
)
from tcu.ingest.hub import SubscriberOverflow, Subscription, UpdateHub
from tcu.ingest.model import HistoryQuery, VehicleNotFound
from tcu.ingest.store import Sink
from tcu.ingest.streams import RETRY_AFTER_MS as STREAMS_RETRY_AFTER_MS
from tcu.ingest.streams import StreamLimiter, StreamsExhausted
from tcu.ingest.validate import INT64_MAX, INT64_MIN
from tcu.logutil import RateLimitedLog

__all__ = ["Caller", "FleetService", "add_to_server", "peer_address", "peer_host"]

log = logging.getLogger(__name__)

Caller: TypeAlias = Callable[["grpc.aio.ServicerContext[Any, Any]"], str]
"""Names who calls (for the log): the backend of the mTLS certificate, or the peer address."""

_STATUS = {
    CommandState.EXECUTED: fleet_pb.COMMAND_STATUS_EXECUTED,
    CommandState.REJECTED: fleet_pb.COMMAND_STATUS_REJECTED,
    CommandState.NOT_CONNECTED: fleet_pb.COMMAND_STATUS_NOT_CONNECTED,
    CommandState.TIMEOUT: fleet_pb.COMMAND_STATUS_TIMEOUT,
    CommandState.EXPIRED: fleet_pb.COMMAND_STATUS_EXPIRED,
    CommandState.QUEUED: fleet_pb.COMMAND_STATUS_QUEUED,
    CommandState.UNKNOWN: fleet_pb.COMMAND_STATUS_UNKNOWN,
}


def peer_address(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller hook without mTLS: the transport peer (e.g. ``ipv4:127.0.0.1:51234``)."""
    return str(context.peer())


def peer_host(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The identity of a caller without mTLS (for stream caps): the peer without its port."""
    return str(context.peer()).rpartition(":")[0] or str(context.peer())


class FleetService(fleet_grpc.FleetServicer):
    """Servicer of ``tcu.api.v1.Fleet``.

    Subscribe: live updates from the hub (see :mod:`tcu.ingest.hub` for the
    overflow policy: RESOURCE_EXHAUSTED naming the missed count). Query: chunks of
    at most ``max_samples_per_chunk`` samples (0: ``default_chunk``; capped at
    ``max_chunk``), time-ordered per signal, signals by name; NOT_FOUND for a
    vehicle without data. With ``include_events`` the events whose trigger time is in
    ``[start_ns, end_ns)`` follow *after* all sample chunks, in trigger-time order, in
    updates that carry only ``events`` (about ``max_samples_per_chunk`` samples each,
    one event at least); a signal filter applies to their columns as in Subscribe.
    ListVehicles: every vehicle the sink knows (stored batches or a check-in) with
    its latest check-in's campaigns, plus vehicles connected now without stored data;
    ``connected`` says whether an Upload stream of it is open.

    SendCommand: see :mod:`tcu.ingest.commands`. INVALID_ARGUMENT for an empty
    vehicle id, command id, kind or envelope, or an envelope above
    ``max_command_bytes``; ALREADY_EXISTS when the same command id is pending for the
    vehicle; RESOURCE_EXHAUSTED beyond the vehicle's pending bound. With durable commands
    (:mod:`tcu.ingest.command_bus`): INVALID_ARGUMENT for an envelope without a readable
    ``expires_ns``, UNAVAILABLE while JetStream cannot be reached. The signature is
    not checked here (the vehicle checks it); mTLS restricts the method to backend
    certificates (``INGEST_POLICY``), and every command is logged with its caller.
    """

    def __init__(
        self,
        sink: Sink,
        hub: UpdateHub,
        *,
        default_chunk: int,
        max_chunk: int,
        commands: CommandPath | None = None,
        caller: Caller = peer_address,
        command_timeout_s: float = 30.0,
        command_timeout_max_s: float = 3600.0,
        max_command_bytes: int = 64 * 1024,
        max_string_bytes: int = 4096,
        streams: StreamLimiter | None = None,
        identity: Caller = peer_host,
        workers: int = 1,
    ) -> None:
        self._sink = sink
        self._workers = workers
        self._streams = (
            streams if streams is not None else StreamLimiter(max_streams=10_000, max_per_identity=4)
        )
        self._identity = identity
        self._hub = hub
        self._default_chunk = default_chunk
        self._max_chunk = max_chunk
        self._commands: CommandPath = commands if commands is not None else CommandRouter()
        self._caller = caller
        self._command_timeout_s = command_timeout_s
        self._command_timeout_max_s = command_timeout_max_s
        self._max_command_bytes = max_command_bytes
        self._max_string_bytes = max_string_bytes
        self._overflows = RateLimitedLog(log)

    async def _refuse_with_workers(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Methods that need every open stream of the ingest are refused when it runs as workers."""
        if self._workers > 1:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"Fleet.{method} is not available: this ingest runs as {self._workers} worker processes and"
                " each knows only the vehicles connected to it; run it with --workers 1 for"
                " Subscribe, SendCommand and ListVehicles (Query works)",
            )

    async def Subscribe(  # type: ignore[override]  # answers with context.write (see below)
        self,
        request: fleet_pb.SubscribeRequest,
        context: grpc.aio.ServicerContext[fleet_pb.SubscribeRequest, fleet_pb.SignalUpdate],
    ) -> None:
        """Live updates, written with ``context.write`` rather than yielded: when the subscriber
        overflows, the hub cancels this task, also while a write is blocked on a client that
        does not read, and the stream ends here with RESOURCE_EXHAUSTED and the missed count.

        The stream counts against ``max_streams`` and the caller's ``max_streams_per_identity``."""
        await self._refuse_with_workers("Subscribe", context)
        who = self._identity(context)
        slot = contextlib.ExitStack()
        try:
            slot.enter_context(self._streams.open("subscriber", who))
        except StreamsExhausted as exc:
            self._overflows.log((who, "streams"), logging.WARNING, "subscriber %s refused: %s", who, exc)
            context.set_trailing_metadata((("retry-after-ms", str(STREAMS_RETRY_AFTER_MS)),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        task = asyncio.current_task()
        assert task is not None

        def on_overflow() -> None:
            task.cancel("subscriber overflow")

        with slot, self._hub.subscribe(request.vehicle_ids, request.signals, on_overflow=on_overflow) as sub:
            log.info(
                "subscriber %s: vehicles %s, signals %s",
                context.peer(),
                list(request.vehicle_ids) or "all",
                list(request.signals) or "all",
            )
            overflow = await self._serve(sub, context, task)
        # Out of the hub (its queue is freed) before the status is sent: sending it waits
        # behind a blocked write until the client reads again or the connection closes.
        self._overflows.log(
            context.peer(), logging.WARNING, "subscriber %s ended: %s", context.peer(), overflow
        )
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(overflow))

    @staticmethod
    async def _serve(
        sub: Subscription,
        context: grpc.aio.ServicerContext[fleet_pb.SubscribeRequest, fleet_pb.SignalUpdate],
        task: asyncio.Task[Any],
    ) -> SubscriberOverflow:
        """Write updates until the subscriber overflows (returned) or the hub closes (UNAVAILABLE)."""
        try:
            while True:
                update = await sub.get()
                if update is None:
                    await context.abort(
                        grpc.StatusCode.UNAVAILABLE, "ingest is shutting down; subscribe again"
                    )
                await context.write(update)
        except SubscriberOverflow as exc:
            return exc
        except asyncio.CancelledError:
            if not sub.missed:  # not the hub's overflow: a revocation, the server stopping
                raise
            task.uncancel()
            try:
                sub.get_nowait_check()
            except SubscriberOverflow as exc:
                return exc
            raise

    async def Query(  # type: ignore[override]  # yields SignalUpdate bytes as well as messages
        self,
        request: fleet_pb.QueryRequest,
        context: grpc.aio.ServicerContext[fleet_pb.QueryRequest, fleet_pb.SignalUpdate],
    ) -> AsyncIterator[fleet_pb.SignalUpdate | bytes]:
        if not request.vehicle_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "query: vehicle_id is empty")
        start_ns = request.start_ns or INT64_MIN
        end_ns = request.end_ns or INT64_MAX
        if end_ns <= start_ns:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"query: end_ns {request.end_ns} is not after start_ns {request.start_ns}",
            )
        chunk = min(request.max_samples_per_chunk or self._default_chunk, self._max_chunk)
        query = HistoryQuery(
            vehicle_id=request.vehicle_id,
            signals=tuple(request.signals),
            start_ns=start_ns,
            end_ns=end_ns,
            chunk_samples=chunk,
        )
        try:
            async for part in self._sink.query(query):
                # Written from the arrays (tcu.ingest._query_wire); add_to_server passes bytes on.
                yield signal_update_bytes(request.vehicle_id, part)
            if request.include_events:
                async for captures in self._sink.events(query):
                    yield fleet_pb.SignalUpdate(
                        vehicle_id=request.vehicle_id, events=[capture_pb(c) for c in captures]
                    )
        except VehicleNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ClosedResourceError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "ingest is shutting down")

    async def ListVehicles(
        self,
        request: fleet_pb.ListVehiclesRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> fleet_pb.ListVehiclesResponse:
        await self._refuse_with_workers("ListVehicles", context)  # ``connected`` needs every stream
        try:
            vehicles = await self._sink.list_vehicles()
        except ClosedResourceError:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "ingest is shutting down")
        connected = self._commands.connected_vehicles()
        stored = {v.vehicle_id for v in vehicles}
        infos = [
            fleet_pb.VehicleInfo(
                vehicle_id=v.vehicle_id,
                boot_epoch=v.boot_epoch,
                batches=v.batches,
                samples=v.samples,
                signals=v.signals,
                first_sample_ns=v.first_sample_ns,
                last_sample_ns=v.last_sample_ns,
                last_seen_ns=v.last_seen_ns,
                lost_batches=v.lost_batches,
                campaigns=[fleet_pb.CampaignInfo(name=c.name, version=c.version) for c in v.campaigns],
                connected=v.vehicle_id in connected,
                quarantined_batches=v.quarantined_batches,
            )
            for v in vehicles
        ]
        infos.extend(
            fleet_pb.VehicleInfo(vehicle_id=vehicle_id, connected=True)
            for vehicle_id in sorted(connected - stored)
        )
        infos.sort(key=lambda info: info.vehicle_id)
        return fleet_pb.ListVehiclesResponse(vehicles=infos)

    async def SendCommand(
        self,
        request: fleet_pb.SendCommandRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> fleet_pb.SendCommandResponse:
        await self._refuse_with_workers("SendCommand", context)  # the vehicle's stream may be elsewhere
        caller = self._caller(context)
        label = f"command {request.command_id!r} ({request.kind}) for vehicle {request.vehicle_id!r}"
        for key in ("vehicle_id", "command_id", "kind"):
            value: str = getattr(request, key)
            if not value:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: {key} is empty")
            if len(value.encode("utf-8")) > self._max_string_bytes:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"send command: {key} is longer than {self._max_string_bytes} bytes",
                )
        if not request.signed_command:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: signed_command is empty")
        if len(request.signed_command) > self._max_command_bytes:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{label}: signed_command has {len(request.signed_command)} bytes,"
                f" more than {self._max_command_bytes}",
            )
        timeout_s = min(
            request.timeout_ms / 1000 if request.timeout_ms else self._command_timeout_s,
            self._command_timeout_max_s,
        )
        log.info(
            "%s sends %s (%d bytes, timeout %g s)", caller, label, len(request.signed_command), timeout_s
        )
        command = ingest_pb.VehicleCommand(
            command_id=request.command_id, kind=request.kind, payload=request.signed_command
        )
        try:
            outcome = await self._commands.send(command, request.vehicle_id, timeout_s)
        except CommandsExhausted as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except CommandConflict as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except CommandInvalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{label}: {exc}")
        except CommandUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{label}: {exc}")
        except ClosedResourceError:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "ingest is shutting down; send the command again"
            )
        log.info(
            "%s from %s: %s%s",
            label,
            caller,
            outcome.state.name,
            f" ({outcome.reason})" if outcome.reason else "",
        )
        return fleet_pb.SendCommandResponse(
            command_id=request.command_id, status=_STATUS[outcome.state], reason=outcome.reason
        )


def _update_bytes(update: fleet_pb.SignalUpdate | bytes) -> bytes:
    """Query's response serializer: a SignalUpdate already in wire form goes out as it is."""
    return update if isinstance(update, bytes) else update.SerializeToString()


def add_to_server(service: FleetService, server: grpc.aio.Server) -> None:
    """``add_FleetServicer_to_server`` with Query's answers written from arrays (see ``Query``)."""
    handlers = {
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            service.Subscribe,
            request_deserializer=fleet_pb.SubscribeRequest.FromString,
            response_serializer=fleet_pb.SignalUpdate.SerializeToString,
        ),
        "Query": grpc.unary_stream_rpc_method_handler(
            service.Query,
            request_deserializer=fleet_pb.QueryRequest.FromString,
            response_serializer=_update_bytes,
        ),
        "ListVehicles": grpc.unary_unary_rpc_method_handler(
            service.ListVehicles,
            request_deserializer=fleet_pb.ListVehiclesRequest.FromString,
            response_serializer=fleet_pb.ListVehiclesResponse.SerializeToString,
        ),
        "SendCommand": grpc.unary_unary_rpc_method_handler(
            service.SendCommand,
            request_deserializer=fleet_pb.SendCommandRequest.FromString,
            response_serializer=fleet_pb.SendCommandResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tcu.api.v1.Fleet", handlers),))
