"""``tcu.api.v1.Ingest``: the vehicle-facing Upload stream.

A stream starts with a Hello (else INVALID_ARGUMENT), then carries batches,
command results and check-ins in any order (a second Hello is INVALID_ARGUMENT).
Each batch is validated against the Hello, handed to the sink, and answered with
an Ack once it is durable. The stream is pipelined: a reader task keeps reading
and submitting batches (up to ``pipeline_depth`` unacked) while earlier ones
commit; an acker task awaits them in arrival order and queues their acks.

Malformed batches (:mod:`tcu.ingest.validate`): a problem of the stream (a batch
of another vehicle, no usable ``(boot_epoch, seq)``) ends only that stream
with INVALID_ARGUMENT (PERMISSION_DENIED against the certificate), after the
batches before it are acked. A problem of one batch's own content (column
lengths, signal ids, value types, limits, events, bytes that do not decode) puts
that batch in quarantine instead: its bytes as received go to the sink with the
reason (:meth:`~tcu.ingest.store.Sink.quarantine`, committed like any batch), and
its ack lists it in ``Ack.quarantined``; the stream carries on. So one bad batch
cannot block a vehicle's later data, and nothing it sent is dropped. The bytes
are those of the wire: :func:`read_upload_request` (the Upload method's request
deserializer, see :func:`add_to_server`) keeps them; a batch whose bytes do not
decode is identified by the ``(boot_epoch, seq)`` the uplink appends to every
batch (:func:`tcu.wire.wrap_batch`), and ends the stream when it has none.

Downstream, the stream has one outgoing queue: acks (in batch order) and
``VehicleCommand`` s from ``Fleet.SendCommand`` (:mod:`tcu.ingest.commands`) are
put on it and yielded in the order they were queued. While the stream is open its
vehicle counts as connected. A ``CommandResult`` resolves the pending command of
that id *for this stream's vehicle* (unknown ids are logged and ignored); a
``CheckIn`` is validated and stored durably (it replaces the previous one) before
the next message is read.

Flow control: each ack carries a credit (how many more batches the stream may
have in flight). A vehicle above ``max_batches_per_s`` (token bucket with a
burst for spools draining after an outage) is paced: reading its stream waits.
When the wait would exceed ``throttle_max_wait_s`` the stream ends with
RESOURCE_EXHAUSTED and trailing metadata ``retry-after-ms``, which the agent
honours before reconnecting.

Bounds (:mod:`tcu.ingest.streams`): a stream counts against ``max_streams`` from its
start and must send its Hello within ``hello_timeout_s`` (else INVALID_ARGUMENT); once the
Hello names the vehicle it counts against ``max_streams_per_identity``. Beyond a cap the
stream ends with RESOURCE_EXHAUSTED and ``retry-after-ms``. Any message that does not
decode ends the stream with INVALID_ARGUMENT (an undecodable batch with a stamp is
quarantined instead, see above).

Identity: ``identity(context)`` returns the vehicle id the transport proved
(mTLS, later) or None. When it returns a value, a Hello or batch for another
vehicle ends the stream with PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from tcu.api.v1 import ingest_pb2 as ingest_pb
from tcu.api.v1 import ingest_pb2_grpc as ingest_grpc
from tcu.api.v1 import telemetry_pb2 as telemetry_pb
from tcu.errors import BatchRejected, ClosedResourceError, IngestError, StreamRejected
from tcu.ingest.commands import CommandPath, CommandRouter, Link
from tcu.ingest.hub import UpdateHub
from tcu.ingest.model import Batch, QuarantinedBatch, StoreResult
from tcu.ingest.store import Sink
from tcu.ingest.streams import RETRY_AFTER_MS as STREAMS_RETRY_AFTER_MS
from tcu.ingest.streams import StreamLimiter, StreamsExhausted, StreamSlot
from tcu.ingest.validate import (
    INT64_MAX,
    Limits,
    Session,
    check_batch_identity,
    implausible_samples,
    validate_batch,
    validate_checkin,
    validate_hello,
)
from tcu.logutil import RateLimitedLog
from tcu.wire import batch_fields, stamped_identity

__all__ = [
    "Identity",
    "IngestService",
    "RawUpload",
    "add_to_server",
    "no_identity",
    "read_upload_request",
    "stamped_identity",
]

log = logging.getLogger(__name__)

Identity: TypeAlias = Callable[["grpc.aio.ServicerContext[Any, Any]"], "str | None"]
"""Returns the vehicle id bound to the caller's credentials, or None when there is none."""

_SHUTTING_DOWN = "ingest is shutting down; reconnect and resend unacknowledged batches"


def no_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """The identity hook for insecure servers: no vehicle id is bound to the connection."""
    return None


@dataclass(frozen=True, slots=True)
class RawUpload:
    """An ``UploadRequest`` as read from the wire, with its batch's bytes as they arrived.

    ``message`` is None when the request does not decode (``error`` says why): a
    batch whose bytes do not decode (``is_batch``; the servicer quarantines it when it
    can identify it), or any other undecodable request (the stream ends with
    INVALID_ARGUMENT).
    """

    message: ingest_pb.UploadRequest | None
    batch_bytes: bytes = b""
    """The ``UploadRequest.batch`` field's bytes (all occurrences, in order); empty for other kinds."""
    error: str = ""
    is_batch: bool = True
    """With ``message`` None: the request is a ``batch`` and only its bytes do not decode."""


def read_upload_request(data: bytes) -> RawUpload:
    """The Upload method's request deserializer: parse, and keep a batch's bytes as received.

    A batch whose bytes do not decode becomes ``RawUpload(None, bytes, error)``; any
    other undecodable request ``RawUpload(None, error=..., is_batch=False)``. It never
    raises: an exception here would end the stream with UNKNOWN instead of INVALID_ARGUMENT.
    """
    envelope = batch_fields(data)
    if envelope is not None and envelope[1]:
        # Only batch fields: decode their bytes straight into the request's batch (the one parse).
        message = ingest_pb.UploadRequest()
        message.batch.SetInParent()
        try:
            message.batch.MergeFromString(envelope[0])
        except DecodeError as exc:
            return RawUpload(None, envelope[0], f"the batch does not decode as a TelemetryBatch: {exc}")
        return RawUpload(message, envelope[0])
    try:
        message = ingest_pb.UploadRequest.FromString(data)
    except DecodeError as exc:
        return RawUpload(None, error=f"an UploadRequest of {len(data)} bytes: {exc}", is_batch=False)
    batch_bytes = envelope[0] if envelope is not None and message.WhichOneof("kind") == "batch" else b""
    return RawUpload(message, batch_bytes)


def add_to_server(service: IngestService, server: grpc.aio.Server) -> None:
    """``add_IngestServicer_to_server`` with :func:`read_upload_request` as Upload's deserializer."""
    handlers = {
        "Upload": grpc.stream_stream_rpc_method_handler(
            service.Upload,
            request_deserializer=read_upload_request,
            response_serializer=ingest_pb.UploadResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tcu.api.v1.Ingest", handlers),))


@dataclass(frozen=True, slots=True)
class _InFlight:
    batch: Batch | QuarantinedBatch
    task: asyncio.Task[StoreResult]


@dataclass(frozen=True, slots=True)
class _Stop:
    code: grpc.StatusCode
    details: str
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class _Ack:
    batch: Batch | QuarantinedBatch
    result: StoreResult


_EOF = None

_Outgoing: TypeAlias = "ingest_pb.UploadResponse | _Ack | _Stop | None"


class IngestService(ingest_grpc.IngestServicer):
    """Servicer of ``tcu.api.v1.Ingest``; :class:`~tcu.ingest.server.IngestServer` wires it."""

    def __init__(
        self,
        sink: Sink,
        hub: UpdateHub,
        limits: Limits,
        *,
        pipeline_depth: int = 64,
        identity: Identity = no_identity,
        max_batches_per_s: float = 200.0,
        batch_burst: int = 2000,
        throttle_max_wait_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        commands: CommandPath | None = None,
        streams: StreamLimiter | None = None,
        hello_timeout_s: float = 30.0,
        worker: int | None = None,
        publish_live: bool = True,
    ) -> None:
        self._sink = sink
        self._worker = worker
        """This process's index among ``tcu ingest --workers N`` (sent as ``tcu-ingest-worker``)."""
        self._publish_live = publish_live
        """Offer each newly stored batch to the hub (False: the sink feeds the hub itself, from
        the shared stream, as the JetStream sink does)."""
        self._hello_timeout_s = hello_timeout_s
        self._streams = (
            streams if streams is not None else StreamLimiter(max_streams=10_000, max_per_identity=4)
        )
        self._commands: CommandPath = commands if commands is not None else CommandRouter()
        self._hub = hub
        self._limits = limits
        self._depth = pipeline_depth
        self._identity = identity
        self._refusals = RateLimitedLog(log)  # per (vehicle, kind): a looping client cannot flood the log
        self._readers: set[asyncio.Task[None]] = set()
        self._closing = False
        self._rate = max_batches_per_s
        self._burst = float(batch_burst)
        self._clock = clock
        self._max_wait_ms = int(throttle_max_wait_s * 1000)
        self._buckets: dict[str, tuple[float, float]] = {}  # vehicle -> (tokens, last refill)
        self.implausible_times: dict[str, int] = {}
        """Samples per vehicle dated before 2000 or in the future (stored, counted, logged)."""

    def _take_token(self, vehicle_id: str) -> int:
        """0 when a batch may go on, else milliseconds until the next token (RESOURCE_EXHAUSTED)."""
        now = self._clock()
        tokens, last = self._buckets.get(vehicle_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[vehicle_id] = (tokens - 1.0, now)
            return 0
        self._buckets[vehicle_id] = (tokens, now)
        return max(1, int((1.0 - tokens) / self._rate * 1000) + 1)

    def drain(self) -> None:
        """Stop reading: every stream acks what it has in flight, then ends with UNAVAILABLE."""
        self._closing = True
        for reader in list(self._readers):
            reader.cancel()

    async def Upload(
        self,
        request_iterator: AsyncIterator[ingest_pb.UploadRequest | RawUpload],
        context: grpc.aio.ServicerContext[ingest_pb.UploadRequest, ingest_pb.UploadResponse],
    ) -> AsyncIterator[ingest_pb.UploadResponse]:
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
        if self._worker is not None:  # which worker process serves this stream (tests, diagnosis)
            await context.send_initial_metadata((("tcu-ingest-worker", str(self._worker)),))
        bound = self._identity(context)
        try:
            with self._streams.reserve() as place:  # counted from the start, also before its Hello
                async with contextlib.aclosing(
                    self._upload(request_iterator, context, bound, place)
                ) as responses:
                    async for response in responses:
                        yield response
        except StreamsExhausted as exc:
            self._refusals.log(
                (bound or context.peer(), "streams"),
                logging.WARNING,
                "upload from %s refused: %s",
                bound or context.peer(),
                exc,
            )
            context.set_trailing_metadata((("retry-after-ms", str(STREAMS_RETRY_AFTER_MS)),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    async def _upload(
        self,
        request_iterator: AsyncIterator[ingest_pb.UploadRequest | RawUpload],
        context: grpc.aio.ServicerContext[ingest_pb.UploadRequest, ingest_pb.UploadResponse],
        bound: str | None,
        place: StreamSlot,
    ) -> AsyncGenerator[ingest_pb.UploadResponse, None]:
        try:
            raw_first = await asyncio.wait_for(anext(request_iterator), self._hello_timeout_s)
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "stream ended before its Hello")
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"no Hello within hello_timeout_s {self._hello_timeout_s:g} s",
            )
        first = raw_first.message if isinstance(raw_first, RawUpload) else raw_first
        if first is None:
            assert isinstance(raw_first, RawUpload)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message of an Upload stream does not decode (it must be a Hello):"
                f" {raw_first.error}",
            )
        if first.WhichOneof("kind") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the first message of an Upload stream must be a Hello, got {first.WhichOneof('kind')}",
            )
        if bound is not None and first.hello.vehicle_id != bound:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"hello for vehicle {first.hello.vehicle_id!r} on a connection of vehicle {bound!r}",
            )
        try:
            session = validate_hello(first.hello, self._limits)
        except BatchRejected as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        place.bind("vehicle", session.vehicle_id)  # StreamsExhausted: refused by Upload
        log.info(
            "upload from %s (boot epoch %d, catalog %s, %d signals, previous catalogs [%s], agent %s) via %s",
            session.vehicle_id,
            session.boot_epoch,
            session.catalog.catalog_id,
            len(session.catalog.signals),
            ", ".join(c for c in session.catalogs if c != session.catalog.catalog_id),
            session.agent_version or "?",
            context.peer(),
        )
        pending: asyncio.Queue[_InFlight | _Stop | None] = asyncio.Queue()
        # Unbounded by type, bounded in use: at most pipeline_depth acks (slots) plus the
        # router's max_pending commands of this vehicle, plus one final _Stop or EOF.
        out: asyncio.Queue[_Outgoing] = asyncio.Queue()
        slots = asyncio.Semaphore(self._depth)
        reader = asyncio.create_task(
            self._read(request_iterator, session, bound, pending, slots),
            name=f"tcu-ingest-upload[{session.vehicle_id}].read",
        )
        self._readers.add(reader)
        reader.add_done_callback(self._readers.discard)
        acker = asyncio.create_task(
            self._ack(pending, out), name=f"tcu-ingest-upload[{session.vehicle_id}].ack"
        )
        acked = 0
        commands = 0
        try:
            with self._commands.attach(Link(session.vehicle_id, out.put_nowait)):
                while True:
                    item = await out.get()
                    if item is _EOF:
                        break
                    if isinstance(item, _Stop):
                        self._refusals.log(
                            (session.vehicle_id, item.code),
                            logging.WARNING,
                            "%supload from %s ended: %s: %s",
                            "security: " if item.code is grpc.StatusCode.PERMISSION_DENIED else "",
                            session.vehicle_id,
                            item.code.name,
                            item.details,
                        )
                        if item.retry_after_ms:
                            context.set_trailing_metadata((("retry-after-ms", str(item.retry_after_ms)),))
                        await context.abort(item.code, item.details)
                    if isinstance(item, ingest_pb.UploadResponse):
                        commands += 1
                        yield item
                        continue
                    assert isinstance(item, _Ack)
                    slots.release()
                    acked += 1
                    ack = ingest_pb.Ack(
                        vehicle_id=item.batch.vehicle_id,
                        boot_epoch=item.batch.boot_epoch,
                        acked_seq=item.result.acked_seq,
                        batch_seq=item.batch.seq,
                        duplicate=item.result.duplicate,
                        # Batches this stream may still send before it must wait for acks.
                        credit=max(1, self._depth - pending.qsize()),
                    )
                    if item.result.quarantined and isinstance(item.batch, QuarantinedBatch):
                        ack.quarantined.add(seq=item.batch.seq, reason=item.batch.reason)
                    elif item.result.quarantined:  # valid, but the sink failed to write it: kept apart
                        ack.quarantined.add(seq=item.batch.seq, reason=item.result.reason)
                    yield ingest_pb.UploadResponse(ack=ack)
        finally:
            reader.cancel()
            acker.cancel()
            leftovers: list[asyncio.Task[Any]] = [reader, acker]
            while not pending.empty():
                rest = pending.get_nowait()
                if isinstance(rest, _InFlight):
                    rest.task.cancel()
                    leftovers.append(rest.task)
            await asyncio.gather(*leftovers, return_exceptions=True)
            log.info(
                "upload from %s closed after %d acks and %d commands", session.vehicle_id, acked, commands
            )

    async def _ack(
        self, pending: asyncio.Queue[_InFlight | _Stop | None], out: asyncio.Queue[_Outgoing]
    ) -> None:
        """Await stored batches in arrival order, publish new ones, queue their acks; forward the end."""
        while True:
            item = await pending.get()
            if item is _EOF or isinstance(item, _Stop):
                out.put_nowait(item)
                return
            try:
                result = await item.task
            except ClosedResourceError:
                out.put_nowait(_Stop(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN))
                return
            except IngestError as exc:
                out.put_nowait(_Stop(grpc.StatusCode.UNAVAILABLE, f"batch seq {item.batch.seq}: {exc}"))
                return
            new = not result.duplicate and not result.quarantined
            if self._publish_live and new and isinstance(item.batch, Batch):
                self._hub.publish(item.batch)
            out.put_nowait(_Ack(item.batch, result))

    async def _submit(
        self,
        item: Batch | QuarantinedBatch,
        pending: asyncio.Queue[_InFlight | _Stop | None],
        slots: asyncio.Semaphore,
    ) -> bool:
        """Pace the vehicle, then hand the batch to the sink; False when the stream must end."""
        wait_ms = self._take_token(item.vehicle_id)
        while 0 < wait_ms <= self._max_wait_ms:
            # Over its rate: pace the vehicle (HTTP/2 flow control holds its writes).
            await asyncio.sleep(wait_ms / 1000)
            wait_ms = self._take_token(item.vehicle_id)
        if wait_ms:
            pending.put_nowait(
                _Stop(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"batch seq {item.seq}: vehicle {item.vehicle_id} sends more than "
                    f"{self._rate:g} batches/s; retry after {wait_ms} ms",
                    retry_after_ms=wait_ms,
                )
            )
            return False
        await slots.acquire()
        stored = self._sink.store(item) if isinstance(item, Batch) else self._sink.quarantine(item)
        task = asyncio.create_task(stored, name=f"tcu-ingest-store[{item.vehicle_id}:{item.seq}]")
        pending.put_nowait(_InFlight(item, task))
        return True

    async def _checkin(self, session: Session, checkin: ingest_pb.CheckIn) -> _Stop | None:
        """Validate and durably store a check-in; a _Stop when the stream must end."""
        try:
            campaigns = validate_checkin(session, checkin, self._limits)
        except BatchRejected as exc:
            return _Stop(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            await self._sink.store_checkin(session.vehicle_id, campaigns)
        except ClosedResourceError:
            return _Stop(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN)
        except IngestError as exc:
            return _Stop(grpc.StatusCode.UNAVAILABLE, f"check-in of vehicle {session.vehicle_id}: {exc}")
        log.info(
            "vehicle %s checked in: %s",
            session.vehicle_id,
            ", ".join(f"{c.name} v{c.version}" for c in campaigns) or "no campaigns",
        )
        return None

    def _quarantine(
        self, session: Session, batch_bytes: bytes, epoch: int, seq: int, reason: str, *, catalog_id: str = ""
    ) -> QuarantinedBatch:
        self._refusals.log(
            (session.vehicle_id, "quarantine"),
            logging.WARNING,
            "batch %d/%d of vehicle %s is malformed: %s",
            epoch,
            seq,
            session.vehicle_id,
            reason,
        )
        return QuarantinedBatch(
            vehicle_id=session.vehicle_id,
            boot_epoch=epoch,
            seq=seq,
            reason=reason,
            received_ns=time.time_ns(),
            payload=batch_bytes,
            catalog_id=catalog_id or session.catalog.catalog_id,  # as the batch claims it
            agent_version=session.agent_version,
        )

    def _undecodable(self, session: Session, raw: RawUpload) -> QuarantinedBatch | _Stop:
        if not raw.is_batch:
            return _Stop(grpc.StatusCode.INVALID_ARGUMENT, f"a message does not decode: {raw.error}")
        identity = stamped_identity(raw.batch_bytes)
        if identity is None:
            return _Stop(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"a batch of {len(raw.batch_bytes)} bytes does not decode and carries no"
                f" (boot_epoch, seq) to quarantine it under: {raw.error}",
            )
        epoch, seq = identity
        if epoch > INT64_MAX or seq > INT64_MAX:  # (a varint may hold more than uint64)
            return _Stop(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"an undecodable batch's stamp: boot_epoch {epoch} or seq {seq} is above {INT64_MAX}",
            )
        stamp = telemetry_pb.TelemetryBatch(vehicle_id=session.vehicle_id, boot_epoch=epoch, seq=seq)
        try:
            check_batch_identity(session, stamp)
        except StreamRejected as exc:
            return _Stop(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return self._quarantine(session, raw.batch_bytes, epoch, seq, f"batch seq {seq}: {raw.error}")

    async def _take(
        self, received: ingest_pb.UploadRequest | RawUpload, session: Session, bound: str | None
    ) -> Batch | QuarantinedBatch | _Stop | None:
        """One request: a batch to store or quarantine, a _Stop, or None (handled, read on)."""
        if isinstance(received, RawUpload) and received.message is None:
            return self._undecodable(session, received)
        request = received.message if isinstance(received, RawUpload) else received
        assert request is not None
        kind = request.WhichOneof("kind")
        if kind == "command_result":
            self._commands.resolve(session.vehicle_id, request.command_result)
            return None
        if kind == "checkin":
            return await self._checkin(session, request.checkin)
        if kind != "batch":
            return _Stop(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"only the first message may be a Hello; got {kind} after it",
            )
        raw = received.batch_bytes if isinstance(received, RawUpload) else b""
        return self._take_batch(request.batch, raw, session, bound)

    def _take_batch(
        self, message: telemetry_pb.TelemetryBatch, raw: bytes, session: Session, bound: str | None
    ) -> Batch | QuarantinedBatch | _Stop:
        if bound is not None and message.vehicle_id != bound:
            return _Stop(
                grpc.StatusCode.PERMISSION_DENIED,
                f"batch seq {message.seq} for vehicle {message.vehicle_id!r}"
                f" on a connection of vehicle {bound!r}",
            )
        try:
            valid = validate_batch(session, message, self._limits)
        except StreamRejected as exc:
            return _Stop(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except BatchRejected as exc:  # the batch's own content: keep it, carry on
            payload = raw or message.SerializeToString()
            return self._quarantine(
                session, payload, message.boot_epoch, message.seq, str(exc), catalog_id=message.catalog_id
            )
        self._flag_times(valid)
        # The bytes go along so that the sink can quarantine a batch it fails to write.
        return dataclasses.replace(valid, payload=raw or message.SerializeToString())

    def _flag_times(self, batch: Batch) -> None:
        count, first = implausible_samples(batch, time.time_ns())
        if not count or first is None:
            return
        vehicle = batch.vehicle_id
        self.implausible_times[vehicle] = self.implausible_times.get(vehicle, 0) + count
        self._refusals.log(
            (vehicle, "implausible time"),
            logging.WARNING,
            "vehicle %s batch seq %d: %d samples dated before 2000 or in the future (first %s);"
            " stored and counted (%d so far) - a log replayed without its absolute time base?",
            vehicle,
            batch.seq,
            count,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(first // 10**9)),
            self.implausible_times[vehicle],
        )

    async def _read(
        self,
        requests: AsyncIterator[ingest_pb.UploadRequest | RawUpload],
        session: Session,
        bound: str | None,
        pending: asyncio.Queue[_InFlight | _Stop | None],
        slots: asyncio.Semaphore,
    ) -> None:
        """Read, validate and submit batches; end by queueing EOF or a _Stop."""
        try:
            async for received in requests:
                item = await self._take(received, session, bound)
                if item is None:
                    continue
                if isinstance(item, _Stop):
                    pending.put_nowait(item)
                    return
                if not await self._submit(item, pending, slots):
                    return
            pending.put_nowait(_EOF)
        except asyncio.CancelledError:
            pending.put_nowait(_Stop(grpc.StatusCode.UNAVAILABLE, _SHUTTING_DOWN))
            raise
        except Exception as exc:  # a transport error while reading: end the stream, say why
            log.debug("reading upload from %s failed", session.vehicle_id, exc_info=True)
            with contextlib.suppress(Exception):
                pending.put_nowait(_Stop(grpc.StatusCode.INTERNAL, f"reading the stream failed: {exc}"))
