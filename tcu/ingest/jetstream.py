"""The JetStream sink: stateless ingest replicas on a NATS JetStream stream.

Each accepted item is published to the stream (:mod:`tcu.ingest._jsformat` for the layout)
with ``Nats-Msg-Id`` = (vehicle, boot epoch, seq), and answered only after JetStream's
PubAck *and* after the vehicle's acked watermark in the ``<stream>_WATERMARKS`` key-value
bucket includes it. So nothing a replica holds in memory decides what a vehicle may drop
from its spool:

* **Watermark.** Per (vehicle, boot epoch) one key holds the contiguous acked seq, the seqs
  stored above it and the seqs held in quarantine. A replica reads it the first time it sees
  the key (a vehicle that reconnects to another replica resumes from what any replica
  stored), adds the seqs whose PubAck came, and writes it back with compare-and-set on the
  key's revision: several replicas (a reconnecting vehicle's old stream may still be open
  on another) never lose each other's seqs; a conflict re-reads and retries. Updates of
  one key are coalesced (one write for every seq whose PubAck came while the previous write
  was under way), like the SQLite sink's group commit.
* **Dedup.** A seq the watermark holds is answered ``duplicate`` without publishing; a
  publish JetStream recognises by its ``Nats-Msg-Id`` (within ``duplicate_window_s``) is a
  duplicate too. A replica that died between PubAck and the watermark write leaves a seq
  that is stored but not marked: the vehicle resends it and it is published again, a
  JetStream duplicate within the window, or a second copy in the stream after it, which
  the archive stores once (its key is unique in SQLite).
* **Failures** are loud: a publish that gets no PubAck is retried with the same
  ``Nats-Msg-Id`` for ``publish_retry_s`` (a cluster failing over), then the item fails
  with :class:`~tcu.errors.IngestError`, so its Upload stream ends with UNAVAILABLE and
  the vehicle resends it; every failed attempt is counted (:class:`JetStreamStats`) and
  logged (rate-limited).

Catalogs are written once per (vehicle, catalog id) to ``<stream>_CATALOGS`` before the
first batch that names them is published, so the archive and the live feeds can read any
batch back.

History is the archive's (:mod:`tcu.ingest.archive`): ``Fleet.Query`` and ``ListVehicles``
on a replica read the archive's SQLite database (``IngestConfig.db_path``) through a
:class:`~tcu.ingest.store.SqliteSink` that this sink never writes to.

Live data: :meth:`JetStreamSink.feed` runs an ordered JetStream consumer of every vehicle's
telemetry (new messages only) into the replica's :class:`~tcu.ingest.hub.UpdateHub`, so
``Fleet.Subscribe`` on any replica sees every vehicle, whichever replica it uploads to; the
Upload servicer does not publish to the hub itself then. A slow subscriber is ended with a
count by the hub as before; when the replica's own consumer falls behind (the client's
pending limit), every subscriber is ended with a count (never thinned silently).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from tcu.errors import ClosedResourceError, IngestError
from tcu.ingest import _jsformat as fmt
from tcu.ingest.config import IngestConfig, JetStreamConfig
from tcu.ingest.hub import UpdateHub
from tcu.ingest.model import (
    Batch,
    CampaignRef,
    Capture,
    Catalog,
    HistoryQuery,
    QuarantinedBatch,
    Series,
    StoreResult,
    VehicleSummary,
)
from tcu.ingest.store import SqliteSink
from tcu.logutil import RateLimitedLog

__all__ = [
    "NATS_ERRORS",
    "JetStreamSink",
    "JetStreamStats",
    "connect",
    "ensure_stream",
    "open_buckets",
    "open_shared_database",
    "read_catalog",
    "set_up",
    "where",
]

log = logging.getLogger(__name__)

NATS_ERRORS: Final = (nats.errors.Error, asyncio.TimeoutError, OSError)
"""What a NATS call may raise (client errors, JetStream API errors, timeouts, sockets)."""

_CACHE_MAX: Final = 65_536


@dataclass(slots=True)
class JetStreamStats:
    """Counters of one replica's sink (for tests, metrics and benchmarks)."""

    published: int = 0
    """Items JetStream stored (PubAck, not a duplicate)."""
    duplicates: int = 0
    """Items answered as duplicates (held by the watermark, or a JetStream duplicate)."""
    publish_errors: int = 0
    """Publish attempts that got no PubAck (each retry counts)."""
    failed: int = 0
    """Items given up after ``publish_retry_s``: not acked, their stream ended (the vehicle resends)."""
    watermark_writes: int = 0
    watermark_conflicts: int = 0
    """Watermark writes another replica got in first (re-read and retried)."""
    live_messages: int = 0
    """Messages the live feed read from the stream."""
    live_errors: int = 0
    """Live feed messages that did not read back, or slow-consumer drops of the feed."""
    last_error: str = ""
    """The latest publish or watermark error; cleared by the next item that works."""


def _tls_context(config: JetStreamConfig) -> ssl.SSLContext | None:
    if config.tls is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(config.tls.ca))
        if config.tls.cert is not None and config.tls.key is not None:
            context.load_cert_chain(str(config.tls.cert), str(config.tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise IngestError(f"jetstream.tls: cannot load the NATS TLS files: {exc}") from exc
    return context


async def connect(
    config: JetStreamConfig, *, name: str, on_error: Callable[[Exception], None] | None = None
) -> NatsClient:
    """A NATS connection to ``config.servers`` (fails over between them); IngestError when none answers.

    ``on_error(exc)`` sees every asynchronous error of the connection (slow consumer, ...).
    """
    problems: list[str] = []
    up = False  # before the first connect, errors are the answer of connect() itself

    async def error_cb(exc: Exception) -> None:
        problems.append(f"{type(exc).__name__}: {exc}")
        if on_error is not None:
            on_error(exc)
        log.log(logging.WARNING if up else logging.DEBUG, "NATS (%s): %s", name, exc)

    async def on_disconnect() -> None:
        if up and not (client.is_closed or client.is_draining):
            log.warning("NATS (%s): disconnected, reconnecting", name)

    async def on_reconnect() -> None:
        log.warning("NATS (%s): reconnected to %s", name, where(client))

    options: dict[str, Any] = {
        "servers": list(config.servers),
        "name": name,
        "connect_timeout": config.connect_timeout_s,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
        "error_cb": error_cb,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    tls = _tls_context(config)
    if tls is not None:
        options["tls"] = tls
    if config.credentials is not None:
        if not config.credentials.is_file():
            raise IngestError(f"jetstream.credentials: no file at {config.credentials}")
        options["user_credentials"] = str(config.credentials)
    client = NatsClient()
    try:
        # Without this, nats-py retries the first connect forever in the background.
        await asyncio.wait_for(
            client.connect(**{**options, "max_reconnect_attempts": 1}), config.connect_timeout_s * 2 + 1
        )
    except (*NATS_ERRORS, ValueError) as exc:
        with contextlib.suppress(*NATS_ERRORS):
            await client.close()
        why = problems[-1] if problems else f"{type(exc).__name__}: {exc}"
        raise IngestError(f"cannot reach NATS at {', '.join(config.servers)}: {why}") from exc
    client.options["max_reconnect_attempts"] = -1  # once connected, keep reconnecting (fail over)
    up = True
    return client


def where(client: NatsClient) -> str:
    url = client.connected_url
    return url.netloc if url is not None else "?"


def stream_config(config: JetStreamConfig) -> StreamConfig:
    return StreamConfig(
        name=config.stream,
        subjects=[f"{config.subject_prefix}.>"],
        num_replicas=config.replicas,
        duplicate_window=config.duplicate_window_s,
        storage=StorageType.FILE,
    )


async def ensure_stream(js: JetStreamContext, config: JetStreamConfig) -> None:
    """Create the stream when it is missing; an existing one is used as it is (a replica count
    that differs from ``config.replicas`` is logged)."""
    try:
        try:
            info = await js.stream_info(config.stream)
        except nats.js.errors.NotFoundError:
            await js.add_stream(stream_config(config))
            log.info(
                "JetStream stream %s created (subjects %s.>, %d replicas)",
                config.stream,
                config.subject_prefix,
                config.replicas,
            )
            return
    except NATS_ERRORS as exc:
        raise IngestError(f"JetStream stream {config.stream}: {type(exc).__name__}: {exc}") from exc
    if info.config.num_replicas != config.replicas:
        log.warning(
            "JetStream stream %s has %s replicas, configured %d: using it as it is",
            config.stream,
            info.config.num_replicas,
            config.replicas,
        )


SETUP_S: Final = 30.0
"""How long a replica or the archive tries to find or create the stream and buckets at start."""


async def set_up(
    js: JetStreamContext, config: JetStreamConfig, *, stop: asyncio.Event | None = None
) -> tuple[KeyValue, KeyValue]:
    """:func:`ensure_stream` and :func:`open_buckets`, tried again for :data:`SETUP_S` while the
    cluster does not answer (a node that just died: its streams elect new leaders)."""
    deadline = time.monotonic() + SETUP_S
    while True:
        try:
            await ensure_stream(js, config)
            return await open_buckets(js, config)
        except IngestError as exc:
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                raise
            log.warning("%s; trying again", exc)
            await asyncio.sleep(0.5)


async def open_buckets(js: JetStreamContext, config: JetStreamConfig) -> tuple[KeyValue, KeyValue]:
    """The watermark and catalog buckets (created when missing)."""
    buckets: list[KeyValue] = []
    for suffix in ("WATERMARKS", "CATALOGS"):
        name = f"{config.stream}_{suffix}"
        try:
            try:
                buckets.append(await js.key_value(name))
                info = await js.stream_info(f"KV_{name}")
                if info.config.num_replicas != config.replicas:
                    log.warning(
                        "JetStream bucket %s has %s replicas, configured %d: using it as it is",
                        name,
                        info.config.num_replicas,
                        config.replicas,
                    )
            except nats.js.errors.BucketNotFoundError:
                buckets.append(
                    await js.create_key_value(
                        KeyValueConfig(bucket=name, history=1, replicas=config.replicas)
                    )
                )
        except NATS_ERRORS as exc:
            raise IngestError(f"JetStream bucket {name}: {type(exc).__name__}: {exc}") from exc
    return buckets[0], buckets[1]


@dataclass(slots=True)
class _State:
    acked_seq: int = 0
    above: set[int] = field(default_factory=set)
    quarantined: set[int] = field(default_factory=set)

    def holds(self, seq: int) -> bool:
        return seq <= self.acked_seq or seq in self.above

    def add(self, seq: int, quarantined: bool) -> None:
        if self.holds(seq):
            return
        if quarantined:
            self.quarantined.add(seq)
        self.above.add(seq)
        while self.acked_seq + 1 in self.above:
            self.acked_seq += 1
            self.above.discard(self.acked_seq)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "acked_seq": self.acked_seq,
                "above": sorted(self.above),
                "quarantined": sorted(self.quarantined),
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> _State:
        if not data:
            return cls()
        value = json.loads(data)
        return cls(int(value["acked_seq"]), set(value["above"]), set(value["quarantined"]))


@dataclass(slots=True)
class _Pending:
    seq: int
    quarantined: bool
    future: asyncio.Future[tuple[int, bool]]


class _Watermark:
    """One (vehicle, boot epoch): the shared state as last read or written, and coalesced writes."""

    def __init__(
        self, bucket: KeyValue, key: str, stats: JetStreamStats, timeout_s: float, retry_s: float
    ) -> None:
        self._retry_s = retry_s
        self._bucket = bucket
        self.key = key
        self._stats = stats
        self._timeout_s = timeout_s
        self.state: _State | None = None
        self._revision = 0
        self._load_lock = asyncio.Lock()
        self._waiting: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return bool(self._waiting) or self._writer is not None

    async def load(self, *, again: bool = False) -> _State:
        async with self._load_lock:
            if self.state is None or again:
                try:
                    entry = await asyncio.wait_for(self._bucket.get(self.key), self._timeout_s)
                except nats.js.errors.KeyNotFoundError:
                    self.state, self._revision = _State(), 0
                else:
                    self.state, self._revision = _State.decode(entry.value), entry.revision or 0
            return self.state

    async def mark(self, seq: int, quarantined: bool) -> tuple[int, bool]:
        """Add ``seq`` to the shared watermark; return (acked_seq, held in quarantine) once written."""
        future: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(seq, quarantined, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name=f"tcu-ingest-watermark[{self.key}]")
        return await future

    async def _write(self) -> None:
        try:
            while self._waiting:
                taken, self._waiting = self._waiting, []
                try:
                    state = await self._apply(taken)
                except BaseException as exc:
                    failed = IngestError(f"watermark {self.key}: {type(exc).__name__}: {exc}")
                    failed.__cause__ = exc
                    for item in taken:
                        if not item.future.done():
                            item.future.set_exception(failed)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    self.state = None  # read it again next time
                    continue
                for item in taken:
                    if not item.future.done():
                        item.future.set_result((state.acked_seq, item.seq in state.quarantined))
        finally:
            self._writer = None

    async def _apply(self, taken: list[_Pending]) -> _State:
        deadline = time.monotonic() + self._retry_s
        while True:
            try:
                base = await self.load()
                state = _State(base.acked_seq, set(base.above), set(base.quarantined))
                for item in taken:
                    state.add(item.seq, item.quarantined)
                revision = await asyncio.wait_for(
                    self._bucket.update(self.key, state.encode(), last=self._revision), self._timeout_s
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                self._stats.watermark_conflicts += 1
                await self.load(again=True)
                continue
            except NATS_ERRORS:
                self._stats.publish_errors += 1
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)
                self.state = None  # an update may have been written without its answer: read again
                continue
            self._stats.watermark_writes += 1
            self.state, self._revision = state, revision
            return state


class JetStreamSink:
    """Batches to a JetStream stream: ``await JetStreamSink.open(config)``, ``await sink.aclose()``."""

    def __init__(
        self,
        config: IngestConfig,
        *,
        client: NatsClient,
        js: JetStreamContext,
        watermarks: KeyValue,
        catalogs: KeyValue,
        archive: SqliteSink | None,
    ) -> None:
        assert config.jetstream is not None
        self._config = config.jetstream
        self._client = client
        self._js = js
        self._watermarks_kv = watermarks
        self._catalogs_kv = catalogs
        self._archive = archive
        self._watermarks: dict[tuple[str, int], _Watermark] = {}
        self._catalogs_written: set[tuple[str, str]] = set()
        self._catalog_cache: dict[tuple[str, str], Catalog] = {}
        self._feed: Any = None
        self._hub: UpdateHub | None = None
        self._closed = False
        self._failures = RateLimitedLog(log)
        self.stats = JetStreamStats()

    @classmethod
    async def open(cls, config: IngestConfig, *, read_archive: bool = True) -> JetStreamSink:
        """Connect, create the stream and buckets when missing, open the archive database for reading."""
        if config.jetstream is None:
            raise IngestError("the jetstream sink needs jetstream settings (servers, stream)")
        js_config = config.jetstream
        sinks: list[JetStreamSink] = []

        def on_error(exc: Exception) -> None:
            if sinks:
                sinks[0]._on_nats_error(exc)

        client = await connect(js_config, name="tcu-ingest", on_error=on_error)
        try:
            js = client.jetstream(timeout=js_config.publish_timeout_s)
            watermarks, catalogs = await set_up(js, js_config)
            archive = await open_shared_database(config) if read_archive else None
        except BaseException:
            with contextlib.suppress(*NATS_ERRORS):
                await client.close()
            raise
        log.info(
            "JetStream sink on %s: stream %s (%d replicas), history from %s",
            ", ".join(js_config.servers),
            js_config.stream,
            js_config.replicas,
            config.db_path if read_archive else "nowhere",
        )
        sink = cls(config, client=client, js=js, watermarks=watermarks, catalogs=catalogs, archive=archive)
        sinks.append(sink)
        return sink

    @property
    def config(self) -> JetStreamConfig:
        return self._config

    @property
    def connected(self) -> bool:
        return bool(self._client.is_connected)

    # -- writing -----------------------------------------------------------------------------

    def _watermark(self, vehicle_id: str, boot_epoch: int) -> _Watermark:
        key = (vehicle_id, boot_epoch)
        found = self._watermarks.get(key)
        if found is None:
            if len(self._watermarks) >= _CACHE_MAX:
                for old in [k for k, w in self._watermarks.items() if not w.busy]:
                    del self._watermarks[old]
            found = _Watermark(
                self._watermarks_kv,
                fmt.watermark_key(vehicle_id, boot_epoch),
                self.stats,
                self._config.publish_timeout_s,
                self._config.publish_retry_s,
            )
            self._watermarks[key] = found
        return found

    async def store(self, batch: Batch) -> StoreResult:
        await self._write_catalog(batch.vehicle_id, batch.catalog)
        subject = fmt.subject(self._config.subject_prefix, "telemetry", batch.vehicle_id)
        return await self._put(batch, subject, batch.payload, fmt.batch_headers(batch), quarantined=False)

    async def quarantine(self, batch: QuarantinedBatch) -> StoreResult:
        subject = fmt.subject(self._config.subject_prefix, "quarantine", batch.vehicle_id)
        return await self._put(batch, subject, batch.payload, fmt.quarantine_headers(batch), quarantined=True)

    async def store_checkin(self, vehicle_id: str, campaigns: tuple[CampaignRef, ...]) -> None:
        subject = fmt.subject(self._config.subject_prefix, "checkin", vehicle_id)
        await self._publish(
            subject, fmt.checkin_body(campaigns), {fmt.VEHICLE: vehicle_id}, f"check-in of {vehicle_id}"
        )

    async def _put(
        self,
        item: Batch | QuarantinedBatch,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        *,
        quarantined: bool,
    ) -> StoreResult:
        if self._closed:
            raise ClosedResourceError("the JetStream sink is closed")
        label = f"batch {item.boot_epoch}/{item.seq} of {item.vehicle_id}"
        watermark = self._watermark(item.vehicle_id, item.boot_epoch)
        deadline = time.monotonic() + self._config.publish_retry_s
        while True:
            try:
                state = await watermark.load()
                break
            except NATS_ERRORS as exc:
                self.stats.publish_errors += 1
                if time.monotonic() >= deadline:
                    raise self._failed(label, "reading the watermark", exc) from exc
                await asyncio.sleep(0.2)
        if state.holds(item.seq):
            self.stats.duplicates += 1
            # As in SQLite: a quarantined key is reported held only to a quarantined resend.
            return StoreResult(
                duplicate=True,
                acked_seq=state.acked_seq,
                quarantined=quarantined and item.seq in state.quarantined,
            )
        duplicate = await self._publish(subject, payload, headers, label)
        try:
            acked_seq, held = await watermark.mark(item.seq, quarantined and not duplicate)
        except IngestError as exc:  # stored in the stream, not marked: the vehicle resends, a duplicate then
            raise self._failed(label, "writing the watermark", exc) from exc
        if duplicate:
            self.stats.duplicates += 1
        else:
            self.stats.published += 1
        self.stats.last_error = ""
        return StoreResult(duplicate=duplicate, acked_seq=acked_seq, quarantined=quarantined and held)

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str], label: str) -> bool:
        """Publish until a PubAck comes (same Nats-Msg-Id every time); True for a JetStream duplicate."""
        deadline = time.monotonic() + self._config.publish_retry_s
        while True:
            if self._closed:
                raise ClosedResourceError("the JetStream sink is closed")
            try:
                ack = await self._js.publish(
                    subject,
                    payload,
                    timeout=self._config.publish_timeout_s,
                    stream=self._config.stream,
                    headers=headers,
                )
            except NATS_ERRORS as exc:
                self.stats.publish_errors += 1
                if time.monotonic() >= deadline:
                    raise self._failed(label, "no PubAck", exc) from exc
                self._failures.log(
                    "retry",
                    logging.WARNING,
                    "JetStream: %s: no PubAck (%s: %s), retrying",
                    label,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(0.2)
                continue
            return bool(ack.duplicate)

    def _failed(self, label: str, what: str, exc: BaseException) -> IngestError:
        self.stats.failed += 1
        self.stats.last_error = f"{label}: {what}: {type(exc).__name__}: {exc}"
        self._failures.log(
            "failed",
            logging.ERROR,
            "JetStream: %s not acked (%s: %s: %s); the vehicle will resend it",
            label,
            what,
            type(exc).__name__,
            exc,
        )
        return IngestError(
            f"JetStream stream {self._config.stream}: {label}: {what}: {type(exc).__name__}: {exc}"
        )

    async def _write_catalog(self, vehicle_id: str, catalog: Catalog) -> None:
        key = (vehicle_id, catalog.catalog_id)
        if key in self._catalogs_written:
            return
        name = fmt.catalog_key(vehicle_id, catalog.catalog_id)
        label = f"catalog {catalog.catalog_id} of {vehicle_id}"
        deadline = time.monotonic() + self._config.publish_retry_s
        while True:
            try:
                await asyncio.wait_for(
                    self._catalogs_kv.put(name, fmt.catalog_pb(catalog).SerializeToString()),
                    self._config.publish_timeout_s,
                )
                break
            except NATS_ERRORS as exc:
                self.stats.publish_errors += 1
                if time.monotonic() >= deadline:
                    raise self._failed(label, "writing it to the catalog bucket", exc) from exc
                await asyncio.sleep(0.2)
        if len(self._catalogs_written) >= _CACHE_MAX:
            self._catalogs_written.clear()
        self._catalogs_written.add(key)
        self._catalog_cache[key] = catalog

    async def catalog(self, vehicle_id: str, catalog_id: str) -> Catalog | None:
        """A catalog from the bucket (cached); None when the bucket has none of that id."""
        return await read_catalog(self._catalogs_kv, self._catalog_cache, vehicle_id, catalog_id)

    # -- live feed ---------------------------------------------------------------------------

    async def feed(self, hub: UpdateHub) -> None:
        """Feed ``hub`` from the stream: every vehicle's new telemetry, whichever replica took it."""
        self._hub = hub
        prefix = self._config.subject_prefix

        async def on_message(msg: Msg) -> None:
            self.stats.live_messages += 1
            if not len(hub):
                return
            try:
                headers = msg.headers or {}
                found = await self.catalog(headers.get(fmt.VEHICLE, ""), headers.get(fmt.CATALOG, ""))
                item = fmt.read_message(prefix, msg.subject, headers, msg.data, found)
            except (IngestError, *NATS_ERRORS) as exc:
                self.stats.live_errors += 1
                self._failures.log("live", logging.ERROR, "live feed: a message does not read back: %s", exc)
                hub.overflow_all(f"the live feed could not read a message: {exc}")
                return
            if isinstance(item, Batch):
                hub.publish(item)

        try:
            self._feed = await self._js.subscribe(
                f"{prefix}.telemetry.>",
                cb=on_message,
                stream=self._config.stream,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                idle_heartbeat=2.0,
            )
        except NATS_ERRORS as exc:
            raise IngestError(
                f"JetStream stream {self._config.stream}: cannot start the live feed: {exc}"
            ) from exc

    def _on_nats_error(self, exc: Exception) -> None:
        # The feed is the one subscription of a replica that receives a flow; a drop there would
        # thin every subscriber's stream, so they are all ended with a count instead.
        if isinstance(exc, nats.errors.SlowConsumerError) and self._hub is not None:
            self.stats.live_errors += 1
            self._hub.overflow_all("the replica's live feed fell behind the stream and dropped messages")

    # -- reading (the archive's database) ------------------------------------------------------

    def _history(self) -> SqliteSink:
        if self._archive is None:
            raise IngestError("this replica has no archive database to answer history from")
        return self._archive

    async def query(self, query: HistoryQuery) -> AsyncIterator[list[Series]]:
        async for chunk in self._history().query(query):
            yield chunk

    async def events(self, query: HistoryQuery) -> AsyncIterator[list[Capture]]:
        async for chunk in self._history().events(query):
            yield chunk

    async def list_vehicles(self) -> list[VehicleSummary]:
        return await self._history().list_vehicles()

    # -- closing -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._feed is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._feed.unsubscribe()
        writers = [w._writer for w in self._watermarks.values() if w._writer is not None]
        if writers:
            await asyncio.wait(writers, timeout=self._config.publish_timeout_s)
        with contextlib.suppress(*NATS_ERRORS):
            await self._client.drain()
        if self._archive is not None:
            await self._archive.aclose()
        stats = self.stats
        log.info(
            "JetStream sink closed (%d published, %d duplicates, %d failed)",
            stats.published,
            stats.duplicates,
            stats.failed,
        )


async def open_shared_database(config: IngestConfig, *, attempts: int = 5) -> SqliteSink:
    """The archive's database, opened by several processes at once (replicas and the archive).

    The first open of a new file creates its tables; two processes doing that at the same
    moment collide on the schema row, and the one that lost finds the tables made on a retry.
    """
    for attempt in range(attempts):
        try:
            return await SqliteSink.open(config)
        except IngestError as exc:
            if attempt == attempts - 1:
                raise
            log.info(
                "opening %s failed (%s); again (another process may be creating it)", config.db_path, exc
            )
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def read_catalog(
    bucket: KeyValue, cache: dict[tuple[str, str], Catalog], vehicle_id: str, catalog_id: str
) -> Catalog | None:
    key = (vehicle_id, catalog_id)
    found = cache.get(key)
    if found is not None:
        return found
    try:
        entry = await bucket.get(fmt.catalog_key(vehicle_id, catalog_id))
    except nats.js.errors.KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    catalog = fmt.parse_catalog(vehicle_id, entry.value)
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = catalog
    return catalog
