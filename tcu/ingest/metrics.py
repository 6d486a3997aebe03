"""The ingest's Prometheus metrics and health, read at scrape time (``tcu ingest --metrics-listen``).

Metric names (all prefixed ``tcu_ingest_``; counters end in ``_total``):

============================================  =======  ===========================================
``rpcs_started_total{method}``                counter  RPCs started, per full method name
``rpcs_handled_total{method,code}``           counter  RPCs ended, per method and gRPC status code
``rpc_duration_seconds{method}``              histo.   from start to end (a stream: its lifetime)
``batches_total``                             counter  batches answered (stored, duplicate, quarantined)
``batches_duplicate_total``                   counter  batches that were already stored (acked again)
``batches_quarantined_total``                 counter  batches newly kept in quarantine
``commit_groups_total``                       counter  group-commit transactions committed
``commit_failures_total``                     counter  transactions that failed (batches not acked)
``commit_seconds_total``                      counter  time spent in committed transactions
``commit_group_size_max``                     gauge    the largest group committed so far
``commit_group_size_batches``                 histo.   batches and check-ins per committed group
``commit_duration_seconds``                   histo.   time in each committed transaction
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
``subscriber_queued_updates``                 gauge    updates waiting in all subscribers' queues
``subscriber_lag_updates_max``                gauge    the longest subscriber queue, in updates
``subscriber_lag_seconds_max``                gauge    age of the oldest update still queued
``subscriber_overflows_total``                counter  subscribers ended for falling behind
============================================  =======  ===========================================

The ``commands_*`` families are there only with durable commands (``--commands jetstream``, the
default of ``--sink jetstream``).

The mean group size is ``batches_total / commit_groups_total`` and the mean commit
latency ``commit_seconds_total / commit_groups_total`` (rates of both in PromQL).
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from tcu.histogram import LATENCY_BUCKETS_S, Histogram
from tcu.metrics import Family

if TYPE_CHECKING:
    from tcu.ingest.jetstream import JetStreamSink
    from tcu.ingest.server import IngestServer

__all__ = ["RpcCounter", "ingest_health", "ingest_snapshot"]

_P = "tcu_ingest_"


class RpcCounter(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts RPCs per method as they start and end (with their status code) and times them.

    One dict increment at the start and, at the end, one more and a histogram observation:
    nothing per message. A streaming RPC's duration is the lifetime of the stream.
    """

    def __init__(self) -> None:
        self.started: Counter[str] = Counter()
        self.handled: Counter[tuple[str, str]] = Counter()
        self.durations: dict[str, Histogram] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method
        self.started[method] += 1
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behaviour = getattr(handler, kind, None)
            if behaviour is not None:
                return handler._replace(**{kind: self._timed(method, behaviour)})  # type: ignore[attr-defined,no-any-return]
        return handler

    def _end(self, method: str, started: float, code: str) -> None:
        self.handled[(method, code)] += 1
        hist = self.durations.get(method)
        if hist is None:
            hist = self.durations[method] = Histogram(LATENCY_BUCKETS_S)
        hist.observe(time.perf_counter() - started)

    def _timed(self, method: str, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.isasyncgenfunction(behaviour):

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                started, code = time.perf_counter(), "UNKNOWN"
                try:
                    async for item in behaviour(request, context):
                        yield item
                    code = _code(context)
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    code = _code(context, "UNKNOWN")
                    raise
                finally:
                    self._end(method, started, code)

            return stream

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started, code = time.perf_counter(), "UNKNOWN"
            try:
                result = await behaviour(request, context)
                code = _code(context)
                return result
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except BaseException:
                code = _code(context, "UNKNOWN")
                raise
            finally:
                self._end(method, started, code)

        return call


def _code(context: grpc.aio.ServicerContext[Any, Any], unset: str = "OK") -> str:
    """The status code the handler set (``context.abort``/``set_code``), else ``unset``."""
    try:
        code = context.code()
    except Exception:  # an old grpcio or a context that no longer answers
        return unset
    if code is None:
        return unset
    return str(getattr(code, "name", code))


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
    handled = c("rpcs_handled", "RPCs ended, by gRPC status code", ("method", "code"))
    for (method, code), count in sorted(rpcs.handled.items()):
        handled.add(count, method, code)
    yield handled
    durations = Family(
        _P + "rpc_duration_seconds", "histogram", "RPC duration (a stream: its lifetime)", ("method",)
    )
    for method, hist in sorted(rpcs.durations.items()):
        durations.add_histogram(hist, method)
    yield durations
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
        yield Family(
            _P + "commit_group_size_batches", "histogram", "Batches and check-ins per committed group"
        ).add_histogram(s.group_sizes)
        yield Family(
            _P + "commit_duration_seconds", "histogram", "Time in each committed transaction"
        ).add_histogram(s.commit_durations)
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
    subs = server.hub.subscriptions
    now = time.monotonic()
    yield g("subscriber_queued_updates", "Updates waiting in all subscribers' queues").add(
        sum(sub.queued_updates for sub in subs)
    )
    yield g("subscriber_lag_updates_max", "The longest subscriber queue, in updates").add(
        max((sub.queued_updates for sub in subs), default=0)
    )
    yield g("subscriber_lag_seconds_max", "Age of the oldest update still queued for a subscriber").add(
        max((sub.lag_s(now) for sub in subs), default=0.0)
    )
    yield c("subscriber_overflows", "Subscribers ended because they fell behind").add(server.hub.overflows)
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
