"""The ingest's Prometheus metrics and health, read at scrape time (``tcu ingest --metrics-listen``).

Metric names (all prefixed ``tcu_ingest_``; counters end in ``_total``):

============================================  =======  ===========================================
``rpcs_started_total{method}``                counter  RPCs started, per full method name
``batches_total``                             counter  batches answered (stored, duplicate, quarantined)
``batches_duplicate_total``                   counter  batches that were already stored (acked again)
``batches_quarantined_total``                 counter  batches newly kept in quarantine
``commit_groups_total``                       counter  group-commit transactions committed
``commit_failures_total``                     counter  transactions that failed (batches not acked)
``commit_seconds_total``                      counter  time spent in committed transactions
``commit_group_size_max``                     gauge    the largest group committed so far
``writer_queue_batches``                      gauge    batches waiting for the writer
``writer_up``                                 gauge    1 while the writer thread runs
``vehicles_connected``                        gauge    vehicles with an open Upload stream
``subscribers``                               gauge    open Fleet.Subscribe streams
``commands_queued_total``                     counter  durable commands this replica put in JetStream
``commands_duplicate_total``                  counter  SendCommand calls for a command queued or finished
``commands_delivered_total``                  counter  deliveries by this replica (redeliveries included)
``commands_redelivered_total``                counter  deliveries of a command delivered before
``command_outcomes_total{state}``             counter  final outcomes this replica recorded
``commands_bus_errors_total``                 counter  JetStream requests that failed (each logged)
============================================  =======  ===========================================

The ``commands_*`` families are there only with durable commands (``--commands jetstream``, the
default of ``--sink jetstream``).

The mean group size is ``batches_total / commit_groups_total`` and the mean commit
latency ``commit_seconds_total / commit_groups_total`` (rates of both in PromQL).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from tcu.metrics import Family

if TYPE_CHECKING:
    from tcu.ingest.jetstream import JetStreamSink
    from tcu.ingest.server import IngestServer

__all__ = ["RpcCounter", "ingest_health", "ingest_snapshot"]

_P = "tcu_ingest_"


class RpcCounter(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts started RPCs per method (one dict increment per call; nothing per message)."""

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        self.started[handler_call_details.method] += 1
        return await continuation(handler_call_details)


def ingest_snapshot(server: IngestServer, rpcs: RpcCounter) -> Iterable[Family]:
    from tcu.ingest.store import SqliteSink

    def c(name: str, help: str, labels: tuple[str, ...] = ()) -> Family:
        return Family(_P + name, "counter", help, labels)

    def g(name: str, help: str) -> Family:
        return Family(_P + name, "gauge", help)

    started = c("rpcs_started", "RPCs started", ("method",))
    for method, count in sorted(rpcs.started.items()):
        started.add(count, method)
    yield started
    sink = server.sink
    if isinstance(sink, SqliteSink):
        s = sink.stats
        yield c("batches", "Batches answered by the writer (stored, duplicate or quarantined)").add(s.batches)
        yield c("batches_duplicate", "Batches already stored (acked again)").add(s.duplicates)
        yield c("batches_quarantined", "Batches newly kept in quarantine").add(s.quarantined)
        yield c("commit_groups", "Group-commit transactions committed").add(s.groups)
        yield c("commit_failures", "Transactions that failed (their batches were not acked)").add(
            s.failed_groups
        )
        yield c("commit_seconds", "Time spent in committed transactions").add(s.commit_seconds)
        yield g("commit_group_size_max", "The largest group committed").add(s.largest_group)
        yield g("writer_queue_batches", "Batches waiting for the writer").add(sink.queued)
        yield g("writer_up", "1 while the writer thread runs").add(1 if sink.writer_alive else 0)
    stream = _jetstream(sink)
    if stream is not None:
        j = stream.stats
        yield c("jetstream_published", "Batches JetStream stored (PubAck)").add(j.published)
        yield c("jetstream_duplicates", "Batches answered as duplicates").add(j.duplicates)
        yield c("jetstream_publish_errors", "Publish attempts without a PubAck").add(j.publish_errors)
        yield c("jetstream_failed", "Batches given up (not acked; the vehicle resends)").add(j.failed)
        yield c("jetstream_watermark_conflicts", "Watermark writes another replica got in first").add(
            j.watermark_conflicts
        )
        yield c("jetstream_live_errors", "Live feed messages lost or unreadable").add(j.live_errors)
        yield g("jetstream_connected", "1 while connected to a NATS server").add(1 if stream.connected else 0)
    yield g("vehicles_connected", "Vehicles with an open Upload stream").add(
        len(server.commands.connected_vehicles())
    )
    yield g("subscribers", "Open Fleet.Subscribe streams").add(len(server.hub))
    bus = getattr(server.commands, "stats", None)
    if bus is not None:
        yield c("commands_queued", "Durable commands this replica put in JetStream").add(bus.queued)
        yield c("commands_duplicate", "SendCommand calls for a command queued or finished").add(
            bus.duplicates
        )
        yield c("commands_delivered", "Command deliveries by this replica").add(bus.delivered)
        yield c("commands_redelivered", "Deliveries of a command delivered before").add(bus.redelivered)
        outcomes = c("command_outcomes", "Final command outcomes this replica recorded", ("state",))
        for state, count in sorted(bus.outcomes.items()):
            outcomes.add(count, state)
        yield outcomes
        yield c("commands_bus_errors", "JetStream requests of the command bus that failed").add(
            bus.bus_errors
        )
    implausible = c(
        "samples_implausible_time", "Samples stored dated before 2000 or in the future", ("vehicle",)
    )
    for vehicle, count in sorted(server.implausible_times.items()):
        implausible.add(count, vehicle)
    yield implausible


def ingest_health(server: IngestServer) -> dict[str, Any]:
    """Healthy while the store can commit: the writer runs and its last transaction did not fail."""
    from tcu.ingest.store import SqliteSink

    sink = server.sink
    store: dict[str, Any] = {"kind": type(sink).__name__}
    healthy = True
    if isinstance(sink, SqliteSink):
        store.update(
            path=str(sink.path),
            writer_up=sink.writer_alive,
            queued=sink.queued,
            failed_commits=sink.stats.failed_groups,
            last_error=sink.stats.last_error,
        )
        healthy = sink.writer_alive and not sink.stats.last_error
    stream = _jetstream(sink)
    if stream is not None:
        store.update(
            stream=stream.config.stream,
            connected=stream.connected,
            failed=stream.stats.failed,
            last_error=stream.stats.last_error,
        )
        healthy = stream.connected and not stream.stats.last_error
    return {
        "healthy": healthy,
        "store": store,
        "vehicles_connected": len(server.commands.connected_vehicles()),
        "subscribers": len(server.hub),
    }


def _jetstream(sink: object) -> JetStreamSink | None:
    module = sys.modules.get("tcu.ingest.jetstream")  # not imported: not a JetStream sink
    found: JetStreamSink | None = (
        sink if module is not None and isinstance(sink, module.JetStreamSink) else None
    )
    return found
