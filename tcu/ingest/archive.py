"""``tcu ingest archive``: the stream's history, written into the SQLite store that serves Fleet.Query.

A durable pull consumer (``tcu-archive`` by default) of the JetStream sink's stream reads the
messages the replicas published (:mod:`tcu.ingest._jsformat`) in stream order and hands them
to a :class:`~tcu.ingest.store.SqliteSink`: batches with ``store``, quarantined batches with
``quarantine``, check-ins with ``store_checkin``, so the database has exactly the SQLite sink's
schema and semantics. A message is acked to JetStream only after the SQLite commit that holds
it; a kill between the two redelivers it, and the SQLite sink's unique key ``(vehicle_id,
boot_epoch, seq)`` makes the second write a duplicate. So a killed and restarted archive loses
nothing and stores nothing twice; copies of a batch in the stream (a resend after JetStream's
dedup window) are stored once for the same reason.

A message that does not read back (no catalog in the bucket, bytes that do not decode) is
kept in the ``quarantine`` table with the reason when it names its ``(boot_epoch, seq)``;
one that cannot even be identified is left unacked (redelivered, logged, counted), never
dropped. A commit that fails (disk full, locked) naks its messages for redelivery.

:func:`audit_archive` compares the database with what a sender sent and what was acked: the
check the cluster tests and the chaos schedule use (0 lost, 0 duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from tcu.errors import IngestError
from tcu.ingest import _jsformat as fmt
from tcu.ingest.config import IngestConfig
from tcu.ingest.jetstream import (
    NATS_ERRORS,
    SETUP_S,
    connect,
    open_shared_database,
    read_catalog,
    set_up,
)
from tcu.ingest.model import Batch, Catalog, QuarantinedBatch, StoreResult
from tcu.ingest.store import SqliteSink
from tcu.logutil import RateLimitedLog
from tcu.wire import stamped_identity

__all__ = ["Archive", "ArchiveStats", "Audit", "audit_archive"]

log = logging.getLogger(__name__)

DURABLE: Final = "tcu-archive"


@dataclass(slots=True)
class ArchiveStats:
    messages: int = 0
    """Messages read from the stream (redeliveries included)."""
    stored: int = 0
    """Batches newly stored (quarantined ones and check-ins apart)."""
    duplicates: int = 0
    """Messages whose key the database already held (redeliveries, copies past the dedup window)."""
    quarantined: int = 0
    checkins: int = 0
    unreadable: int = 0
    """Messages kept in quarantine because they did not read back, or left unacked (no key)."""
    failed: int = 0
    """Messages whose commit failed (nak'd, redelivered)."""
    acked: int = 0


class Archive:
    """Consume the stream into ``config.db_path``; ``await Archive(config).run(stop)``."""

    def __init__(
        self,
        config: IngestConfig,
        *,
        durable: str = DURABLE,
        fetch_batch: int = 256,
        ack_wait_s: float = 10.0,
    ) -> None:
        if config.jetstream is None:
            raise IngestError("the archive needs the JetStream settings (servers, stream)")
        if fetch_batch < 1:
            raise IngestError(f"fetch_batch must be at least 1, got {fetch_batch}")
        self._config = config
        self._js_config = config.jetstream
        self._durable = durable
        self._fetch_batch = fetch_batch
        self._ack_wait_s = ack_wait_s
        """Messages a killed archive had fetched but not acked come again after this long."""
        self._catalogs: dict[tuple[str, str], Catalog] = {}
        self._failures = RateLimitedLog(log)
        self.stats = ArchiveStats()

    async def run(self, stop: asyncio.Event, *, on_ready: asyncio.Event | None = None) -> None:
        """Archive until ``stop`` is set; the batch being written is committed and acked first."""
        sink = await open_shared_database(self._config)
        try:
            client = await connect(self._js_config, name="tcu-archive")
            try:
                await self._consume(client, sink, stop, on_ready)
            finally:
                # Every ack was flushed after its fetch; a drain would wait out the pull subscription.
                with contextlib.suppress(*NATS_ERRORS):
                    await client.close()
        finally:
            await sink.aclose()
        log.info("archive stopped: %s", self.stats)

    async def _consume(
        self, client: NatsClient, sink: SqliteSink, stop: asyncio.Event, on_ready: asyncio.Event | None
    ) -> None:
        cfg = self._js_config
        js = client.jetstream(timeout=cfg.publish_timeout_s)
        _, catalogs = await set_up(js, cfg, stop=stop)
        deadline = time.monotonic() + SETUP_S
        while True:  # the consumer too: a cluster that lost a node may take seconds to answer
            try:
                pull = await js.pull_subscribe(
                    f"{cfg.subject_prefix}.>",
                    durable=self._durable,
                    stream=cfg.stream,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL,
                        ack_wait=self._ack_wait_s,
                        max_ack_pending=self._fetch_batch * 4,
                    ),
                )
                break
            except NATS_ERRORS as exc:
                if time.monotonic() >= deadline or stop.is_set():
                    raise IngestError(f"JetStream consumer {self._durable} on {cfg.stream}: {exc!r}") from exc
                log.warning(
                    "archive: JetStream consumer %s on %s: %r; trying again", self._durable, cfg.stream, exc
                )
                await asyncio.sleep(0.5)
        log.info("archive: consuming %s as %s into %s", cfg.stream, self._durable, self._config.db_path)
        if on_ready is not None:
            on_ready.set()
        stopping = asyncio.create_task(stop.wait(), name="tcu-archive.stop")
        try:
            while not stop.is_set():
                fetch = asyncio.ensure_future(pull.fetch(self._fetch_batch, timeout=1.0))
                done, _ = await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if fetch not in done:
                    fetch.cancel()
                    with contextlib.suppress(BaseException):
                        await fetch
                    break
                try:
                    messages = fetch.result()
                except nats.errors.TimeoutError:
                    continue
                except NATS_ERRORS as exc:
                    self._failures.log("fetch", logging.WARNING, "archive: fetch failed (%s), retrying", exc)
                    await asyncio.sleep(0.5)
                    continue
                progress = asyncio.create_task(self._in_progress(messages))
                try:
                    await self._write(messages, sink, catalogs)
                finally:
                    progress.cancel()
                with contextlib.suppress(*NATS_ERRORS):
                    await client.flush(timeout=max(1, int(cfg.publish_timeout_s)))
        finally:
            stopping.cancel()

    async def _in_progress(self, messages: list[Msg]) -> None:
        """A commit that takes longer than half the ack wait tells JetStream the messages are in work."""
        while True:
            await asyncio.sleep(self._ack_wait_s / 2)
            for msg in messages:
                with contextlib.suppress(*NATS_ERRORS):
                    await msg.in_progress()

    async def _item(
        self, msg: Msg, catalogs: KeyValue
    ) -> Batch | QuarantinedBatch | fmt.CheckInMessage | None:
        """The message as a sink item; a QuarantinedBatch when it does not read back; None: no key."""
        cfg = self._js_config
        headers = msg.headers or {}
        vehicle = headers.get(fmt.VEHICLE, "")
        try:
            catalog = None
            if fmt.kind_of(cfg.subject_prefix, msg.subject) == "telemetry":
                catalog = await read_catalog(catalogs, self._catalogs, vehicle, headers.get(fmt.CATALOG, ""))
            return fmt.read_message(cfg.subject_prefix, msg.subject, headers, msg.data, catalog)
        except (IngestError, *NATS_ERRORS) as exc:
            self.stats.unreadable += 1
            identity = stamped_identity(msg.data)
            if not vehicle or identity is None:
                self._failures.log(
                    "unreadable",
                    logging.ERROR,
                    "archive: message %s on %s cannot be read nor identified (%s); left unacked",
                    msg.metadata.sequence.stream if msg.metadata.sequence else "?",
                    msg.subject,
                    exc,
                )
                return None
            epoch, seq = identity
            return QuarantinedBatch(
                vehicle_id=vehicle,
                boot_epoch=epoch,
                seq=seq,
                reason=f"archive: batch {epoch}/{seq} does not read back from the stream: {exc}",
                received_ns=0,
                payload=msg.data,
                catalog_id=headers.get(fmt.CATALOG, ""),
            )

    async def _write(self, messages: list[Msg], sink: SqliteSink, catalogs: KeyValue) -> None:
        self.stats.messages += len(messages)
        items = [await self._item(msg, catalogs) for msg in messages]

        async def put(item: Batch | QuarantinedBatch | fmt.CheckInMessage) -> StoreResult | None:
            if isinstance(item, Batch):
                return await sink.store(item)
            if isinstance(item, QuarantinedBatch):
                return await sink.quarantine(item)
            await sink.store_checkin(item.vehicle_id, item.campaigns)
            return None

        # All handed to the writer at once: one group commit (FIFO per vehicle, as queued).
        tasks = [asyncio.ensure_future(put(item)) if item is not None else None for item in items]
        await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
        answers: list[tuple[Msg, float]] = []  # (message, 0: committed, else nak delay): after the group
        for msg, item, task in zip(messages, items, tasks, strict=True):
            if task is None or item is None:
                answers.append((msg, 5.0))  # no key: it will not read better at once
                continue
            error = task.exception()
            if error is not None:
                self.stats.failed += 1
                self._failures.log("commit", logging.ERROR, "archive: storing failed, will retry: %s", error)
                answers.append((msg, 1.0))
                continue
            result = task.result()
            if result is None:
                self.stats.checkins += 1
            elif result.duplicate:
                self.stats.duplicates += 1
            elif result.quarantined:
                self.stats.quarantined += 1
            else:
                self.stats.stored += 1
            answers.append((msg, 0.0))
        for msg, nak_delay in answers:
            try:
                if not nak_delay:
                    await msg.ack()  # after the commit: a kill before this redelivers, and dedup keeps one
                    self.stats.acked += 1
                else:
                    await msg.nak(delay=nak_delay)
            except NATS_ERRORS as exc:
                self._failures.log(
                    "ack", logging.WARNING, "archive: ack failed (it will come again): %s", exc
                )


@dataclass(slots=True)
class Audit:
    """What :func:`audit_archive` found; ``ok`` when nothing was lost or stored twice."""

    checked: int = 0
    lost: list[tuple[str, int, int]] = field(default_factory=list)
    """Acked batches that are not in the database (or with fewer samples than sent)."""
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)
    """Batches stored more than once (a chunk twice, or more samples than were sent)."""
    unacked_stored: int = 0
    """Batches sent but not acked that are stored anyway (allowed: the vehicle would resend them)."""

    @property
    def ok(self) -> bool:
        return not self.lost and not self.duplicates


def audit_archive(
    db_path: Path,
    sent: Mapping[tuple[str, int, int], int],
    acked: set[tuple[str, int, int]],
) -> Audit:
    """Compare the database with ``sent`` (batch key -> samples) and ``acked`` (keys that got acks).

    An acked batch must be stored exactly once with all its samples; an unacked one may be
    missing (the vehicle resends it) but never stored twice.
    """
    audit = Audit()
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        stored: dict[tuple[str, int, int], int] = {
            (str(v), int(e), int(s)): int(n)
            for v, e, s, n in conn.execute("SELECT vehicle_id, boot_epoch, seq, samples FROM batches")
        }
        chunk_samples: dict[tuple[str, int, int], int] = {}
        for v, e, s, n, copies in conn.execute(
            "SELECT s.vehicle_id, c.boot_epoch, c.seq, sum(c.count), max(k.copies) FROM chunks AS c"
            " JOIN series AS s USING (series_id)"
            " JOIN (SELECT series_id, boot_epoch, seq, count(*) AS copies FROM chunks"
            "       GROUP BY series_id, boot_epoch, seq) AS k USING (series_id, boot_epoch, seq)"
            " GROUP BY s.vehicle_id, c.boot_epoch, c.seq"
        ):
            key = (str(v), int(e), int(s))
            chunk_samples[key] = int(n)
            if int(copies) > 1:
                audit.duplicates.append(key)
    finally:
        conn.close()
    for key, samples in sent.items():
        audit.checked += 1
        found = chunk_samples.get(key, 0)
        if key in acked and (key not in stored or found < samples):
            audit.lost.append(key)
        elif found > samples and key not in audit.duplicates:
            audit.duplicates.append(key)
        elif key not in acked and key in stored:
            audit.unacked_stored += 1
    return audit
