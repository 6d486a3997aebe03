"""Sinks: where validated batches are stored. The embedded default is SQLite.

:class:`SqliteSink` keeps the database in WAL mode and has exactly one writer
thread doing group commit: :meth:`SqliteSink.store` hands a batch to the writer
and awaits a future; the writer takes what is queued, one batch per vehicle in
turn (round-robin, :mod:`tcu.ingest._fair`), up to ``commit_max_batches`` batches
and ``commit_max_samples`` samples, writes it in one transaction, commits, and only
then resolves the futures. A batch is therefore acknowledged only once it is durable,
and a vehicle with huge batches cannot make another wait behind all of them.

Each item of a group is written inside its own savepoint: an item whose rows fail
(a value SQLite cannot hold, a constraint, a bug) is rolled back alone; a batch is
then kept in ``quarantine`` with the reason and its bytes as received
(``Batch.payload``), and the rest of the group commits. Only an error of the
database itself (locked, disk full, I/O) fails the whole group.

Dedup is by the primary key ``(vehicle_id, boot_epoch, seq)`` of ``batches``: a
retry is answered ``duplicate=True`` and stores nothing. Per (vehicle, boot
epoch) the writer keeps the contiguous high-water mark (the highest ``s`` such
that 1..s are all stored) in ``epochs``, in the same transaction; after a restart
it is re-read and advanced over any later seqs already in ``batches``.

Samples are stored by columns: each signal's samples of one batch are one row of
``chunks`` (``series_id, t_first, chunk_id, t_last, boot_epoch, seq, count, data``),
``series`` interning ``(vehicle_id, signal name)`` and ``data`` the packed times and
values in time order (:mod:`tcu.ingest._chunks`: int64 time deltas and float64 values,
byte-shuffled and zstd-compressed when that is smaller; NaN kept as it came). The
primary key ``(series_id, t_first, chunk_id)`` serves Query by (vehicle, signal, time):
it reads the chunks that overlap the range in ``(t_first, chunk_id)`` order, merges
overlapping ones by ``(t_ns, chunk_id)`` (``chunk_id`` grows with every chunk written,
so equal times keep their commit order, as rows did) and cuts at the range's ends.
:func:`sample_rows` unpacks them as ``(vehicle_id, signal, t_ns, value_double,
value_text, boot_epoch, seq)`` for tools and tests (NaN as None, as SQL NULL).

A database of schema version 1 (one row per sample, before the columnar store) is
refused when it is opened, naming the file and what to do; nothing is changed in it.

Captured events are rows of ``events`` keyed ``(vehicle_id, boot_epoch, seq,
idx)``, written in the batch's transaction and only when the batch row is new, so
a retried batch stores its events once. The campaign fields and times are columns
(``events_by_trigger (vehicle_id, trigger_ns, ...)`` serves Query by trigger
time); the samples are one ``body`` blob, a serialised ``tcu.api.v1.Event``
(absolute times, signal names and units). A blob, not sample rows, because an
event is only ever read whole and by trigger time, never by one of its samples:
one row per event keeps writes and reads to one row each, keeps the samples
table and its index to the vehicle's regular time series, and the blob is packed
protobuf that any client of the API can decode.

Quarantine: a batch whose own content failed validation (see
:mod:`tcu.ingest.validate`) is handed to the writer as a
:class:`~tcu.ingest.model.QuarantinedBatch` (:meth:`SqliteSink.quarantine`) and
written to ``quarantine`` (its bytes as received, the reason, the receive time) in
the same group commit as ordinary batches, resolved only after that commit. Its key
joins the epoch's high-water mark like a stored batch, so the ack passes it and a
retry is a duplicate (``ON CONFLICT DO NOTHING`` and the epoch's seqs keep one row);
after a restart the mark is re-read over both ``batches`` and ``quarantine``. It is
not in ``batches`` or ``vehicles.batches``; ``ListVehicles`` counts it apart.

Check-ins go through the same writer (``store_checkin``) into ``checkins``: one
row per vehicle, replaced by each new check-in, durable before the stream reads on.

Reads (Query, ListVehicles) run on a small thread pool with one read-only
connection per thread, never on the event loop.

Queue policy: at most ``write_queue_batches`` batches wait for the writer; a
further :meth:`SqliteSink.store` waits for room, which slows that Upload stream
and, through HTTP/2 flow control, its vehicle (backpressure, nothing dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.errors import ClosedResourceError, IngestError
from tcu.histogram import LATENCY_BUCKETS_S, SIZE_BUCKETS, Histogram
from tcu.ingest._chunks import decode_chunk, encode_doubles, encode_strings, sort_column
from tcu.ingest._events import capture_from_pb, capture_pb
from tcu.ingest._fair import FairQueue
from tcu.ingest.config import IngestConfig
from tcu.ingest.model import (
    Batch,
    CampaignRef,
    Capture,
    HistoryQuery,
    QuarantinedBatch,
    Series,
    StoreResult,
    ValueKind,
    VehicleNotFound,
    VehicleSummary,
)
from tcu.logutil import RateLimitedLog

__all__ = ["Sink", "SqliteSink", "WriterStats", "load_sample_rows", "read_quarantine", "sample_rows"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")

_SCHEMA_VERSION: Final = "2"
_CACHE_MAX: Final = 65_536

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS batches (
    vehicle_id TEXT NOT NULL,
    boot_epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    catalog_id TEXT NOT NULL,
    base_time_ns INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    stored_ns INTEGER NOT NULL,
    loss_reason TEXT,
    loss_priority INTEGER,
    loss_created_ns INTEGER,
    loss_bytes INTEGER,
    PRIMARY KEY (vehicle_id, boot_epoch, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    vehicle_id TEXT NOT NULL,
    boot_epoch INTEGER NOT NULL,
    acked_seq INTEGER NOT NULL,
    PRIMARY KEY (vehicle_id, boot_epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS catalog_signals (
    vehicle_id TEXT NOT NULL,
    catalog_id TEXT NOT NULL,
    signal_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    unit TEXT NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    resolution REAL NOT NULL,
    period_ms INTEGER NOT NULL,
    PRIMARY KEY (vehicle_id, catalog_id, signal_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    series_id INTEGER PRIMARY KEY,
    vehicle_id TEXT NOT NULL,
    name TEXT NOT NULL,
    unit TEXT NOT NULL,
    UNIQUE (vehicle_id, name)
);
CREATE TABLE IF NOT EXISTS chunks (
    series_id INTEGER NOT NULL REFERENCES series (series_id),
    t_first INTEGER NOT NULL,
    chunk_id INTEGER NOT NULL,
    t_last INTEGER NOT NULL,
    boot_epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (series_id, t_first, chunk_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vehicles (
    vehicle_id TEXT PRIMARY KEY,
    boot_epoch INTEGER NOT NULL,
    batches INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    first_sample_ns INTEGER,
    last_sample_ns INTEGER,
    last_seen_ns INTEGER NOT NULL,
    lost_batches INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    vehicle_id TEXT NOT NULL,
    boot_epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    campaign TEXT NOT NULL,
    campaign_version INTEGER NOT NULL,
    trigger_ns INTEGER NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    truncated INTEGER NOT NULL,
    history_incomplete INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (vehicle_id, boot_epoch, seq, idx)
);
CREATE INDEX IF NOT EXISTS events_by_trigger ON events (vehicle_id, trigger_ns, boot_epoch, seq, idx);
CREATE TABLE IF NOT EXISTS quarantine (
    vehicle_id TEXT NOT NULL,
    boot_epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    received_ns INTEGER NOT NULL,
    stored_ns INTEGER NOT NULL,
    catalog_id TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (vehicle_id, boot_epoch, seq)
);
CREATE TABLE IF NOT EXISTS checkins (
    vehicle_id TEXT PRIMARY KEY,
    campaigns TEXT NOT NULL,
    checkin_ns INTEGER NOT NULL
) WITHOUT ROWID;
"""

_UPSERT_VEHICLE: Final = """
INSERT INTO vehicles (vehicle_id, boot_epoch, batches, samples, first_sample_ns, last_sample_ns, last_seen_ns,
                      lost_batches)
VALUES (?, ?, 1, ?, ?, ?, ?, ?)
ON CONFLICT (vehicle_id) DO UPDATE SET
    boot_epoch = excluded.boot_epoch,
    batches = batches + 1,
    lost_batches = lost_batches + excluded.lost_batches,
    samples = samples + excluded.samples,
    first_sample_ns = min(coalesce(first_sample_ns, excluded.first_sample_ns),
                          coalesce(excluded.first_sample_ns, first_sample_ns)),
    last_sample_ns = max(coalesce(last_sample_ns, excluded.last_sample_ns),
                         coalesce(excluded.last_sample_ns, last_sample_ns)),
    last_seen_ns = excluded.last_seen_ns
"""

_SEEN_VEHICLE: Final = """
INSERT INTO vehicles (vehicle_id, boot_epoch, batches, samples, first_sample_ns, last_sample_ns, last_seen_ns,
                      lost_batches)
VALUES (?, ?, 0, 0, NULL, NULL, ?, 0)
ON CONFLICT (vehicle_id) DO UPDATE SET boot_epoch = excluded.boot_epoch, last_seen_ns = excluded.last_seen_ns
"""

_EVENT_PAGE: Final = """
SELECT trigger_ns, boot_epoch, seq, idx, samples, body FROM events
WHERE vehicle_id = ? AND trigger_ns >= ? AND trigger_ns < ?
  AND (trigger_ns, boot_epoch, seq, idx) > (?, ?, ?, ?)
ORDER BY trigger_ns, boot_epoch, seq, idx LIMIT ?
"""
_EVENT_PAGE_ROWS: Final = 256

_CHUNK_PAGE: Final = """
SELECT t_first, chunk_id, count, data FROM chunks
WHERE series_id = ? AND t_first < ? AND t_last >= ? AND (t_first, chunk_id) > (?, ?)
ORDER BY t_first, chunk_id LIMIT ?
"""
_CHUNK_PAGE_ROWS: Final = 128


@runtime_checkable
class Sink(Protocol):
    """Where the ingest stores batches and reads history (SQLite now, NATS JetStream later)."""

    async def store(self, batch: Batch) -> StoreResult:
        """Store a validated batch; return once it is durable (or was stored before)."""
        ...

    def query(self, query: HistoryQuery) -> AsyncIterator[list[Series]]:
        """Chunks of at most ``query.chunk_samples`` samples, time-ordered per signal.

        Raises :class:`~tcu.ingest.model.VehicleNotFound` for a vehicle without data.
        """
        ...

    def events(self, query: HistoryQuery) -> AsyncIterator[list[Capture]]:
        """Stored events of ``query.vehicle_id`` whose trigger time is in ``[start_ns, end_ns)``.

        In trigger-time order, in chunks of about ``query.chunk_samples`` samples (at
        least one event each); a non-empty ``query.signals`` keeps only those columns
        and only events with at least one of them.
        """
        ...

    async def quarantine(self, batch: QuarantinedBatch) -> StoreResult:
        """Keep a batch with malformed content; return once it is durable (or was kept/stored before).

        The key counts like a stored batch for ``acked_seq`` and for dedup.
        """
        ...

    async def store_checkin(self, vehicle_id: str, campaigns: tuple[CampaignRef, ...]) -> None:
        """Durably replace the vehicle's check-in (the campaigns it runs now)."""
        ...

    async def list_vehicles(self) -> list[VehicleSummary]:
        """Every vehicle with stored batches or a check-in, by vehicle id."""
        ...

    async def aclose(self) -> None:
        """Finish queued writes, then release everything. Idempotent."""
        ...


@dataclass(slots=True)
class WriterStats:
    """Counters of the writer thread (read them for tests and benchmarks)."""

    groups: int = 0
    """Transactions committed."""
    batches: int = 0
    """Batches answered (stored or duplicate)."""
    duplicates: int = 0
    largest_group: int = 0
    quarantined: int = 0
    """Batches newly kept in quarantine (included in ``batches``)."""
    failed_groups: int = 0
    """Transactions that failed (their batches were answered with an error, not acked)."""
    last_error: str = ""
    """The error of the latest failed transaction; cleared by the next commit that works."""
    commit_seconds: float = 0.0
    """Time spent in transactions that committed, all together (with ``groups``: the mean)."""
    commit_durations: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    """Seconds of each committed transaction (``tcu_ingest_commit_duration_seconds``)."""
    group_sizes: Histogram = field(default_factory=lambda: Histogram(SIZE_BUCKETS))
    """Jobs (batches and check-ins) of each committed group (``tcu_ingest_commit_group_size_batches``)."""


@dataclass(slots=True)
class _Epoch:
    acked_seq: int
    above: set[int] = field(default_factory=set)
    """Stored seqs above ``acked_seq`` (out-of-order arrivals)."""

    def copy(self) -> _Epoch:
        return _Epoch(self.acked_seq, set(self.above))

    def holds(self, seq: int) -> bool:
        return seq <= self.acked_seq or seq in self.above

    def add(self, seq: int) -> None:
        self.above.add(seq)
        while self.acked_seq + 1 in self.above:
            self.acked_seq += 1
            self.above.discard(self.acked_seq)


@dataclass(frozen=True, slots=True)
class _CheckIn:
    vehicle_id: str
    campaigns: tuple[CampaignRef, ...]


@dataclass(slots=True)
class _Job:
    batch: Batch | QuarantinedBatch | _CheckIn
    future: asyncio.Future[StoreResult]
    loop: asyncio.AbstractEventLoop
    release: Callable[[], None]
    """The write-queue semaphore's release, called on the loop once the job is settled."""


def _job_vehicle(job: _Job) -> str:
    return job.batch.vehicle_id


def _job_samples(job: _Job) -> int:
    """What a job costs the writer, in samples (its rows), for the group's sample budget."""
    item = job.batch
    if isinstance(item, Batch):
        return item.samples + sum(event.samples + event.frame_count for event in item.events)
    if isinstance(item, QuarantinedBatch):
        return len(item.payload) // 16  # one blob row; its size is what it costs
    return 1


_ITEM_SQLITE_ERRORS: Final = (
    sqlite3.IntegrityError,  # a constraint (NOT NULL, ...)
    sqlite3.DataError,  # a string or blob too big
    sqlite3.InterfaceError,  # a value SQLite cannot bind
)


def _of_the_database(exc: Exception) -> bool:
    """An error of the database itself (locked, disk full, I/O): it fails the whole group.

    Any other error while writing one item belongs to that item (an int SQLite's INTEGER
    cannot hold raises OverflowError, a constraint IntegrityError; a bug its own error).
    """
    return isinstance(exc, sqlite3.Error) and not isinstance(exc, _ITEM_SQLITE_ERRORS)


def _settle(job: _Job, result: StoreResult | BaseException) -> None:
    job.release()
    if job.future.done():  # the caller went away
        return
    if isinstance(result, BaseException):
        job.future.set_exception(result)
    else:
        job.future.set_result(result)


class SqliteSink:
    """The embedded sink: one SQLite file, one writer thread, a few reader threads.

    Open with ``sink = await SqliteSink.open(config)``; close with ``await sink.aclose()``.
    """

    def __init__(self, config: IngestConfig) -> None:
        self._path = config.db_path
        self._synchronous = config.sqlite_synchronous
        self._busy_timeout_s = config.sqlite_busy_timeout_s
        self._writing = 0
        self._commit_max = config.commit_max_batches
        self._commit_max_samples = config.commit_max_samples
        self._room = asyncio.Semaphore(config.write_queue_batches)
        self._jobs: FairQueue[_Job] = FairQueue(key=_job_vehicle, cost=_job_samples)
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(
            max_workers=config.reader_threads, thread_name_prefix="tcu-ingest-read"
        )
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        # Writer-thread state only:
        self._epochs: dict[tuple[str, int], _Epoch] = {}
        self._series: dict[tuple[str, str], int] = {}
        self._catalogs: set[tuple[str, str]] = set()
        self._new_series: list[tuple[str, str]] = []  # cache entries added in the current savepoint
        self._new_catalogs: list[tuple[str, str]] = []
        self._next_chunk = 0
        """The next ``chunks.chunk_id`` (kept in ``meta`` as ``next_chunk_id`` with each commit)."""
        self._failures = RateLimitedLog(log)  # a vehicle sending batches that fail cannot flood the log
        self.stats = WriterStats()

    @classmethod
    async def open(cls, config: IngestConfig) -> SqliteSink:
        """Create or open the database and start the writer thread."""
        sink = cls(config)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def report(error: BaseException | None) -> None:
            if ready.done():
                return
            if error is None:
                ready.set_result(None)
            else:
                ready.set_exception(error)

        def run() -> None:
            try:
                conn = sink._connect_writer()
            except IngestError as exc:
                loop.call_soon_threadsafe(report, exc)
                return
            loop.call_soon_threadsafe(report, None)
            sink._write_loop(conn)

        sink._writer = threading.Thread(target=run, name="tcu-ingest-writer", daemon=True)
        sink._writer.start()
        try:
            await ready
        except BaseException:
            sink._readers.shutdown(wait=False)
            raise
        log.info("SQLite sink open at %s (synchronous=%s)", sink._path, sink._synchronous)
        return sink

    @property
    def path(self) -> Path:
        return self._path

    @property
    def writer_alive(self) -> bool:
        """The writer thread runs (it ends only when the sink is closed)."""
        return self._writer is not None and self._writer.is_alive()

    @property
    def queued(self) -> int:
        """Batches handed to the writer and not yet taken into a transaction."""
        return self._jobs.qsize()

    @property
    def writing(self) -> int:
        """Batches in the transaction being written now (0 between transactions)."""
        return self._writing

    # -- writing -----------------------------------------------------------------------------

    async def store(self, batch: Batch) -> StoreResult:
        return await self._submit(batch)

    async def quarantine(self, batch: QuarantinedBatch) -> StoreResult:
        # Through the writer like a batch: committed in the same group, durable before the ack.
        return await self._submit(batch)

    async def store_checkin(self, vehicle_id: str, campaigns: tuple[CampaignRef, ...]) -> None:
        # Through the writer like a batch (one writer connection, group commit): durable on return.
        await self._submit(_CheckIn(vehicle_id, campaigns))

    async def _submit(self, batch: Batch | QuarantinedBatch | _CheckIn) -> StoreResult:
        if self._closed:
            raise ClosedResourceError(f"SQLite sink {self._path} is closed")
        await self._room.acquire()
        if self._closed:
            self._room.release()
            raise ClosedResourceError(f"SQLite sink {self._path} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoreResult] = loop.create_future()
        self._jobs.put(_Job(batch, future, loop, self._room.release))
        return await future

    def _connect_writer(self) -> sqlite3.Connection:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self._path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=True
            )
            # The version first: an older database must not be changed at all (not even to WAL).
            found = _schema_version(conn)
            if found is not None and found != _SCHEMA_VERSION:
                conn.close()
                raise IngestError(_version_problem(self._path, found))
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise IngestError(f"{self._path}: SQLite refused WAL mode (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA temp_store=MEMORY")  # the per-batch savepoints journal in memory
            conn.executescript(_SCHEMA)
            if found is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (_SCHEMA_VERSION,))
            row = conn.execute("SELECT value FROM meta WHERE key = 'next_chunk_id'").fetchone()
            self._next_chunk = int(row[0]) if row is not None else 0
        except sqlite3.Error as exc:
            raise IngestError(f"{self._path}: cannot open the ingest database: {exc}") from exc
        return conn

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                # Round-robin over vehicles, bounded by batches and samples (tcu.ingest._fair).
                jobs = self._jobs.get_group(self._commit_max, self._commit_max_samples)
                if jobs is None:
                    break
                self._writing = len(jobs)
                try:
                    self._commit(conn, jobs)
                finally:
                    self._writing = 0
        finally:
            conn.close()
            log.debug("SQLite writer for %s stopped", self._path)

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        outcome: list[StoreResult | BaseException] | BaseException
        started = time.perf_counter()
        try:
            outcome = self._write_group(conn, [job.batch for job in jobs])
            took = time.perf_counter() - started
            self.stats.commit_seconds += took
            self.stats.commit_durations.observe(took)
            self.stats.group_sizes.observe(len(jobs))
            self.stats.last_error = ""
        except sqlite3.Error as exc:
            self._failures.log(
                "group",
                logging.ERROR,
                "SQLite write of %d batches to %s failed: %s",
                len(jobs),
                self._path,
                exc,
            )
            outcome = IngestError(f"{self._path}: storing {len(jobs)} batches failed: {exc}")
            outcome.__cause__ = exc
        except Exception as exc:  # a bug must fail the waiting uploads, not leave them hanging
            if self._failures.log(
                "bug",
                logging.ERROR,
                "SQLite writer for %s failed on %d batches: %r",
                self._path,
                len(jobs),
                exc,
            ):
                log.debug("the writer's failure", exc_info=True)
            outcome = IngestError(f"{self._path}: storing {len(jobs)} batches failed: {exc!r}")
            outcome.__cause__ = exc
        if isinstance(outcome, BaseException):
            self.stats.failed_groups += 1
            self.stats.last_error = str(outcome)
        for index, job in enumerate(jobs):
            result = outcome if isinstance(outcome, BaseException) else outcome[index]
            with contextlib.suppress(RuntimeError):  # the event loop is gone
                job.loop.call_soon_threadsafe(_settle, job, result)

    def _load_epoch(self, conn: sqlite3.Connection, key: tuple[str, int]) -> _Epoch:
        row = conn.execute(
            "SELECT acked_seq FROM epochs WHERE vehicle_id = ? AND boot_epoch = ?", key
        ).fetchone()
        epoch = _Epoch(int(row[0]) if row else 0)
        for (seq,) in conn.execute(
            "SELECT seq FROM batches WHERE vehicle_id = ? AND boot_epoch = ? AND seq > ?"
            " UNION SELECT seq FROM quarantine WHERE vehicle_id = ? AND boot_epoch = ? AND seq > ?",
            (*key, epoch.acked_seq, *key, epoch.acked_seq),
        ):
            epoch.add(int(seq))
        return epoch

    def _series_id(self, conn: sqlite3.Connection, vehicle_id: str, name: str, unit: str) -> int:
        key = (vehicle_id, name)
        series_id = self._series.get(key)
        if series_id is None:
            conn.execute(
                "INSERT INTO series (vehicle_id, name, unit) VALUES (?, ?, ?)"
                " ON CONFLICT (vehicle_id, name) DO UPDATE SET unit = excluded.unit",
                (vehicle_id, name, unit),
            )
            row = conn.execute(
                "SELECT series_id FROM series WHERE vehicle_id = ? AND name = ?", key
            ).fetchone()
            series_id = int(row[0])
            self._series[key] = series_id
            self._new_series.append(key)
        return series_id

    def _write_catalog(self, conn: sqlite3.Connection, batch: Batch) -> None:
        key = (batch.vehicle_id, batch.catalog.catalog_id)
        if key in self._catalogs:
            return
        conn.executemany(
            "INSERT OR IGNORE INTO catalog_signals (vehicle_id, catalog_id, signal_id, name, unit, kind,"
            " source, resolution, period_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (*key, s.signal_id, s.name, s.unit, s.kind.value, s.source, s.resolution, s.period_ms)
                for s in batch.catalog.signals.values()
            ],
        )
        self._catalogs.add(key)
        self._new_catalogs.append(key)

    def _write_group(
        self, conn: sqlite3.Connection, items: list[Batch | QuarantinedBatch | _CheckIn]
    ) -> list[StoreResult | BaseException]:
        """Write every item in one transaction, each inside its own savepoint.

        A batch whose rows fail (a value SQLite cannot hold, a constraint, a bug) is rolled
        back alone and quarantined with the reason (:meth:`_isolate`); the rest of the group
        commits. An error of the database itself (locked, disk full, I/O) fails the group.
        """
        now_ns = time.time_ns()
        touched: dict[tuple[str, int], _Epoch] = {}
        results: list[StoreResult | BaseException] = []
        batches = 0
        quarantined = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for item in items:
                batches += not isinstance(item, _CheckIn)
                self._new_series.clear()
                self._new_catalogs.clear()
                conn.execute("SAVEPOINT item")
                try:
                    result: StoreResult | BaseException = self._write_item(conn, item, touched, now_ns)
                except Exception as exc:
                    if _of_the_database(exc):
                        raise
                    conn.execute("ROLLBACK TO item")
                    self._forget_new_rows()
                    result = self._isolate(conn, item, exc, touched, now_ns)
                conn.execute("RELEASE item")
                if isinstance(result, StoreResult) and result.quarantined and not result.duplicate:
                    quarantined += 1
                results.append(result)
            conn.executemany(
                "INSERT INTO epochs (vehicle_id, boot_epoch, acked_seq) VALUES (?, ?, ?)"
                " ON CONFLICT (vehicle_id, boot_epoch) DO UPDATE SET acked_seq = excluded.acked_seq",
                [(*key, epoch.acked_seq) for key, epoch in touched.items()],
            )
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('next_chunk_id', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(self._next_chunk),),
            )
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            # Rows added in the failed transaction are gone: forget what was cached from them.
            self._series.clear()
            self._catalogs.clear()
            raise
        if len(self._epochs) + len(touched) > _CACHE_MAX:
            self._epochs.clear()
        if len(self._series) > _CACHE_MAX:
            self._series.clear()
        if len(self._catalogs) > _CACHE_MAX:
            self._catalogs.clear()
        self._epochs.update(touched)
        stats = self.stats
        stats.groups += 1
        stats.batches += sum(
            isinstance(r, StoreResult) and not isinstance(i, _CheckIn)
            for r, i in zip(results, items, strict=True)
        )
        stats.duplicates += sum(isinstance(r, StoreResult) and r.duplicate for r in results)
        stats.largest_group = max(stats.largest_group, len(items))
        stats.quarantined += quarantined
        log.debug("committed %d batches and %d check-ins to %s", batches, len(items) - batches, self._path)
        return results

    def _write_item(
        self,
        conn: sqlite3.Connection,
        batch: Batch | QuarantinedBatch | _CheckIn,
        touched: dict[tuple[str, int], _Epoch],
        now_ns: int,
    ) -> StoreResult:
        if isinstance(batch, _CheckIn):
            conn.execute(
                "INSERT INTO checkins (vehicle_id, campaigns, checkin_ns) VALUES (?, ?, ?)"
                " ON CONFLICT (vehicle_id) DO UPDATE SET campaigns = excluded.campaigns,"
                " checkin_ns = excluded.checkin_ns",
                (batch.vehicle_id, json.dumps([[c.name, c.version] for c in batch.campaigns]), now_ns),
            )
            return StoreResult(duplicate=False, acked_seq=0)
        epoch = self._touch_epoch(conn, touched, (batch.vehicle_id, batch.boot_epoch))
        if isinstance(batch, QuarantinedBatch):
            duplicate = epoch.holds(batch.seq) or not self._insert_quarantine(conn, batch, now_ns)
            held = not duplicate or self._in_quarantine(conn, batch)
        else:
            duplicate = epoch.holds(batch.seq) or not self._insert_batch(conn, batch, now_ns)
            held = False
        if not duplicate:
            epoch.add(batch.seq)
        return StoreResult(duplicate=duplicate, acked_seq=epoch.acked_seq, quarantined=held)

    def _touch_epoch(
        self, conn: sqlite3.Connection, touched: dict[tuple[str, int], _Epoch], key: tuple[str, int]
    ) -> _Epoch:
        epoch = touched.get(key)
        if epoch is None:
            cached = self._epochs.get(key)
            epoch = cached.copy() if cached is not None else self._load_epoch(conn, key)
            touched[key] = epoch
        return epoch

    def _forget_new_rows(self) -> None:
        """Drop cache entries of rows a rolled-back savepoint removed (their ids are gone)."""
        for key in self._new_series:
            self._series.pop(key, None)
        self._catalogs.difference_update(self._new_catalogs)

    def _isolate(
        self,
        conn: sqlite3.Connection,
        item: Batch | QuarantinedBatch | _CheckIn,
        exc: Exception,
        touched: dict[tuple[str, int], _Epoch],
        now_ns: int,
    ) -> StoreResult | BaseException:
        """The item's rows were rolled back: quarantine a batch with the reason, fail anything else alone."""
        what = f"{exc.__class__.__name__}: {exc}"
        if isinstance(item, Batch):
            reason = f"batch seq {item.seq}: could not be stored: {what}"
            kept = QuarantinedBatch(
                vehicle_id=item.vehicle_id,
                boot_epoch=item.boot_epoch,
                seq=item.seq,
                reason=reason,
                received_ns=now_ns,
                payload=item.payload,
                catalog_id=item.catalog.catalog_id,
            )
            # Logged (rate-limited) by _insert_quarantine, with the reason.
            self._new_series.clear()
            self._new_catalogs.clear()
            conn.execute("SAVEPOINT item_quarantine")
            try:
                result = self._write_item(conn, kept, touched, now_ns)
            except Exception as again:
                if _of_the_database(again):
                    raise
                conn.execute("ROLLBACK TO item_quarantine")
                exc = again
            else:
                return StoreResult(
                    duplicate=result.duplicate, acked_seq=result.acked_seq, quarantined=True, reason=reason
                )
            finally:
                conn.execute("RELEASE item_quarantine")
        self._failures.log(
            (item.vehicle_id, "store-failed"),
            logging.ERROR,
            "writing %s of vehicle %s failed, the others of its group commit: %s",
            item.__class__.__name__,
            item.vehicle_id,
            f"{exc.__class__.__name__}: {exc}",
        )
        label = f"batch seq {item.seq}" if not isinstance(item, _CheckIn) else "check-in"
        failed = IngestError(f"{self._path}: {label} could not be stored: {exc.__class__.__name__}: {exc}")
        failed.__cause__ = exc
        return failed

    def _insert_quarantine(self, conn: sqlite3.Connection, batch: QuarantinedBatch, now_ns: int) -> bool:
        """Keep one malformed batch's bytes and reason; False when the key already exists."""
        if conn.execute(
            "SELECT 1 FROM batches WHERE vehicle_id = ? AND boot_epoch = ? AND seq = ?",
            (batch.vehicle_id, batch.boot_epoch, batch.seq),
        ).fetchone():
            return False  # stored before as a valid batch: this is a (corrupted) retry of it
        cursor = conn.execute(
            "INSERT INTO quarantine (vehicle_id, boot_epoch, seq, reason, received_ns, stored_ns, catalog_id,"
            " agent_version, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                batch.vehicle_id,
                batch.boot_epoch,
                batch.seq,
                batch.reason,
                batch.received_ns,
                now_ns,
                batch.catalog_id,
                batch.agent_version,
                batch.payload,
            ),
        )
        if cursor.rowcount == 0:
            return False
        conn.execute(_SEEN_VEHICLE, (batch.vehicle_id, batch.boot_epoch, now_ns))
        self._failures.log(
            (batch.vehicle_id, "quarantine"),
            logging.ERROR,
            "vehicle %s batch %d/%d quarantined (%d bytes kept): %s",
            batch.vehicle_id,
            batch.boot_epoch,
            batch.seq,
            len(batch.payload),
            batch.reason,
        )
        return True

    @staticmethod
    def _in_quarantine(conn: sqlite3.Connection, batch: QuarantinedBatch) -> bool:
        row = conn.execute(
            "SELECT 1 FROM quarantine WHERE vehicle_id = ? AND boot_epoch = ? AND seq = ?",
            (batch.vehicle_id, batch.boot_epoch, batch.seq),
        ).fetchone()
        return row is not None

    def _insert_batch(self, conn: sqlite3.Connection, batch: Batch, now_ns: int) -> bool:
        """Write one batch's rows; False when the key already exists."""
        samples = batch.samples
        cursor = conn.execute(
            "INSERT INTO batches (vehicle_id, boot_epoch, seq, catalog_id, base_time_ns, created_ns,"
            " samples, stored_ns, loss_reason, loss_priority, loss_created_ns, loss_bytes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                batch.vehicle_id,
                batch.boot_epoch,
                batch.seq,
                batch.catalog.catalog_id,
                batch.base_time_ns,
                batch.created_ns,
                samples,
                now_ns,
                *(
                    (None, None, None, None)
                    if batch.loss is None
                    else (
                        batch.loss.reason,
                        batch.loss.priority,
                        batch.loss.created_ns,
                        batch.loss.payload_bytes,
                    )
                ),
            ),
        )
        if cursor.rowcount == 0:
            return False
        self._write_catalog(conn, batch)
        first_ns: int | None = None
        last_ns: int | None = None
        chunks: list[tuple[int, int, int, int, int, int, int, bytes]] = []
        for column in batch.columns:
            count = len(column.t_ns)
            if not count:
                continue
            series_id = self._series_id(conn, batch.vehicle_id, column.signal.name, column.signal.unit)
            t_ns = np.asarray(column.t_ns, dtype=np.int64)
            if column.signal.kind is ValueKind.DOUBLE:
                times, doubles = sort_column(t_ns, np.asarray(column.double_values, dtype=np.float64))
                assert not isinstance(doubles, list)
                data = encode_doubles(times, doubles)
            else:
                times, texts = sort_column(t_ns, list(column.string_values))
                assert isinstance(texts, list)
                data = encode_strings(times, texts)
            low, high = int(times[0]), int(times[-1])
            chunks.append((series_id, low, self._next_chunk, high, batch.boot_epoch, batch.seq, count, data))
            self._next_chunk += 1
            first_ns = low if first_ns is None else min(first_ns, low)
            last_ns = high if last_ns is None else max(last_ns, high)
        if chunks:
            conn.executemany(
                "INSERT INTO chunks (series_id, t_first, chunk_id, t_last, boot_epoch, seq, count, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                chunks,
            )
        if batch.events:
            conn.executemany(
                "INSERT INTO events (vehicle_id, boot_epoch, seq, idx, campaign, campaign_version,"
                " trigger_ns, start_ns, end_ns, truncated, history_incomplete, samples, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        batch.vehicle_id,
                        batch.boot_epoch,
                        batch.seq,
                        index,
                        event.campaign,
                        event.campaign_version,
                        event.trigger_ns,
                        event.start_ns,
                        event.end_ns,
                        int(event.truncated),
                        int(event.history_incomplete),
                        event.samples,
                        capture_pb(event).SerializeToString(),
                    )
                    for index, event in enumerate(batch.events)
                ],
            )
        conn.execute(
            _UPSERT_VEHICLE,
            (
                batch.vehicle_id,
                batch.boot_epoch,
                samples,
                first_ns,
                last_ns,
                now_ns,
                int(batch.loss is not None),
            ),
        )
        if batch.loss is not None:
            self._failures.log(
                (batch.vehicle_id, "loss"),
                logging.WARNING,
                "vehicle %s reports batch %d/%d lost (%s, priority %d, %d bytes)",
                batch.vehicle_id,
                batch.boot_epoch,
                batch.seq,
                batch.loss.reason,
                batch.loss.priority,
                batch.loss.payload_bytes,
            )
        return True

    # -- reading -----------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self._path, check_same_thread=False)
                conn.execute("PRAGMA query_only = 1")
            except sqlite3.Error as exc:
                raise IngestError(f"{self._path}: cannot open a reader connection: {exc}") from exc
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(
        self, fn: Callable[Concatenate[sqlite3.Connection, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``fn(connection, *args)`` on a reader thread."""
        if self._closed:
            raise ClosedResourceError(f"SQLite sink {self._path} is closed")

        def call() -> _T:
            try:
                return fn(self._reader(), *args, **kwargs)
            except sqlite3.Error as exc:
                raise IngestError(f"{self._path}: read failed: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._readers, call)

    @staticmethod
    def _find_series(
        conn: sqlite3.Connection, vehicle_id: str, names: tuple[str, ...]
    ) -> list[tuple[int, str, str]] | None:
        if conn.execute("SELECT 1 FROM vehicles WHERE vehicle_id = ?", (vehicle_id,)).fetchone() is None:
            return None
        rows = conn.execute(
            "SELECT series_id, name, unit FROM series WHERE vehicle_id = ? ORDER BY name", (vehicle_id,)
        ).fetchall()
        wanted = set(names)
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows if not wanted or r[1] in wanted]

    @staticmethod
    def _merge_page(
        conn: sqlite3.Connection,
        series_id: int,
        query: HistoryQuery,
        after: tuple[int, int],
        pending: _Samples,
    ) -> tuple[_Samples, tuple[int, int], _Samples, bool]:
        """The next samples of a series in ``(t_ns, chunk_id)`` order, cut to the query's range.

        Reads up to ``_CHUNK_PAGE_ROWS`` chunks after ``after``; samples at or after the
        last chunk's ``t_first`` wait in the returned pending part (a later chunk may
        still come before them). Returns (samples, after, pending, series exhausted).
        """
        rows = conn.execute(
            _CHUNK_PAGE, (series_id, query.end_ns, query.start_ns, after[0], after[1], _CHUNK_PAGE_ROWS)
        ).fetchall()
        times, ids, values = [pending.t_ns], [pending.chunk_ids], [pending.values]
        for t_first, chunk_id, count, data in rows:
            t_ns, chunk_values = decode_chunk(int(t_first), int(count), bytes(data))
            times.append(t_ns)
            ids.append(np.full(len(t_ns), int(chunk_id), dtype=np.int64))
            values.append(
                np.array(chunk_values, dtype=object) if isinstance(chunk_values, list) else chunk_values
            )
        t_ns, chunk_ids, merged = np.concatenate(times), np.concatenate(ids), np.concatenate(values)
        if len(t_ns) > 1:
            step = np.diff(t_ns)
            if not bool(((step > 0) | ((step == 0) & (np.diff(chunk_ids) >= 0))).all()):
                order = np.lexsort((chunk_ids, t_ns))
                t_ns, chunk_ids, merged = t_ns[order], chunk_ids[order], merged[order]
        done = len(rows) < _CHUNK_PAGE_ROWS
        final = len(t_ns) if done else int(np.searchsorted(t_ns, int(rows[-1][0]), side="left"))
        rest = _Samples(t_ns[final:], chunk_ids[final:], merged[final:])
        low = int(np.searchsorted(t_ns[:final], query.start_ns, side="left"))
        high = int(np.searchsorted(t_ns[:final], query.end_ns, side="left"))
        out = _Samples(t_ns[low:high], chunk_ids[low:high], merged[low:high])
        return out, ((int(rows[-1][0]), int(rows[-1][1])) if rows else after), rest, done

    async def query(self, query: HistoryQuery) -> AsyncIterator[list[Series]]:
        found: list[tuple[int, str, str]] | None = await self._read(
            self._find_series, query.vehicle_id, query.signals
        )
        if found is None:
            raise VehicleNotFound(f"vehicle {query.vehicle_id!r} has no stored batches")
        chunk: list[Series] = []
        room = query.chunk_samples
        for series_id, name, unit in found:
            after = (-(2**63), -1)  # chunk ids are >= 0: every chunk of the series comes after it
            pending = _Samples.empty()
            done = False
            while not done:
                part, after, pending, done = await self._read(
                    self._merge_page, series_id, query, after, pending
                )
                for kind, t_ns, values in _runs(part):
                    pos = 0
                    while pos < len(t_ns):
                        take = min(room, len(t_ns) - pos)
                        _append_run(
                            chunk,
                            name,
                            unit,
                            kind=kind,
                            t_ns=t_ns[pos : pos + take],
                            values=values[pos : pos + take],
                        )
                        pos += take
                        room -= take
                        if room == 0:
                            yield chunk
                            chunk = []
                            room = query.chunk_samples
        if chunk:
            yield chunk

    @staticmethod
    def _event_page(
        conn: sqlite3.Connection, query: HistoryQuery, after: tuple[int, int, int, int]
    ) -> list[tuple[int, int, int, int, int, bytes]]:
        rows: list[tuple[int, int, int, int, int, bytes]] = conn.execute(
            _EVENT_PAGE, (query.vehicle_id, query.start_ns, query.end_ns, *after, _EVENT_PAGE_ROWS)
        ).fetchall()
        return rows

    async def events(self, query: HistoryQuery) -> AsyncIterator[list[Capture]]:
        wanted = frozenset(query.signals)
        after = (query.start_ns, -1, -1, -1)  # boot epochs, seqs and indexes are >= 0
        chunk: list[Capture] = []
        samples = 0
        while True:
            rows = await self._read(self._event_page, query, after)
            for row in rows:
                message = fleet_pb.Event.FromString(row[5])
                if wanted:  # the same rule as live updates: wanted columns, events with one at least
                    kept = [series for series in message.series if series.name in wanted]
                    if not kept:
                        continue
                    del message.series[:]
                    message.series.extend(kept)
                capture = capture_from_pb(message)
                chunk.append(capture)
                samples += capture.samples + capture.frame_count
                if samples >= query.chunk_samples:
                    yield chunk
                    chunk, samples = [], 0
            if len(rows) < _EVENT_PAGE_ROWS:
                break
            last = rows[-1]
            after = (last[0], last[1], last[2], last[3])
        if chunk:
            yield chunk

    @staticmethod
    def _vehicles(conn: sqlite3.Connection) -> list[VehicleSummary]:
        names: dict[str, list[str]] = {}
        for vehicle_id, name in conn.execute(
            "SELECT vehicle_id, name FROM series AS s"
            " WHERE EXISTS (SELECT 1 FROM chunks AS c WHERE c.series_id = s.series_id)"
            " ORDER BY vehicle_id, name"
        ):
            names.setdefault(vehicle_id, []).append(name)
        quarantined: dict[str, int] = {
            str(vehicle_id): int(count)
            for vehicle_id, count in conn.execute(
                "SELECT vehicle_id, count(*) FROM quarantine GROUP BY vehicle_id"
            )
        }
        return [
            VehicleSummary(
                vehicle_id=row[0],
                boot_epoch=int(row[1]),
                batches=int(row[2]),
                samples=int(row[3]),
                signals=tuple(names.get(row[0], ())),
                first_sample_ns=int(row[4] or 0),
                last_sample_ns=int(row[5] or 0),
                last_seen_ns=int(row[6]),
                lost_batches=int(row[7]),
                campaigns=_campaigns(row[8]),
                checkin_ns=int(row[9] or 0),
                quarantined_batches=quarantined.get(row[0], 0),
            )
            for row in conn.execute(
                "SELECT v.vehicle_id, v.boot_epoch, v.batches, v.samples, v.first_sample_ns,"
                " v.last_sample_ns, v.last_seen_ns, v.lost_batches, c.campaigns, c.checkin_ns"
                " FROM vehicles AS v LEFT JOIN checkins AS c USING (vehicle_id)"
                " UNION ALL"
                " SELECT c.vehicle_id, 0, 0, 0, NULL, NULL, c.checkin_ns, 0, c.campaigns, c.checkin_ns"
                " FROM checkins AS c WHERE c.vehicle_id NOT IN (SELECT vehicle_id FROM vehicles)"
                " ORDER BY 1"
            )
        ]

    async def list_vehicles(self) -> list[VehicleSummary]:
        result: list[VehicleSummary] = await self._read(self._vehicles)
        return result

    async def quarantined(self, vehicle_id: str | None = None) -> list[QuarantinedBatch]:
        """Batches held in quarantine (of one vehicle, or all), by vehicle, boot epoch and seq."""
        result: list[QuarantinedBatch] = await self._read(read_quarantine, vehicle_id)
        return result

    # -- closing -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close(), name="tcu-ingest-sink-close")
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self._closed = True
        writer = self._writer
        if writer is not None:
            self._jobs.stop()
            await asyncio.to_thread(writer.join)
        await asyncio.to_thread(self._readers.shutdown, True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        log.info("SQLite sink %s closed", self._path)


def read_quarantine(conn: sqlite3.Connection, vehicle_id: str | None = None) -> list[QuarantinedBatch]:
    """The rows of ``quarantine`` (of one vehicle, or all), by vehicle, boot epoch and seq."""
    where, args = ("WHERE vehicle_id = ?", (vehicle_id,)) if vehicle_id is not None else ("", ())
    return [
        QuarantinedBatch(
            vehicle_id=str(row[0]),
            boot_epoch=int(row[1]),
            seq=int(row[2]),
            reason=str(row[3]),
            received_ns=int(row[4]),
            payload=bytes(row[5]),
            catalog_id=str(row[6]),
            agent_version=str(row[7]),
        )
        for row in conn.execute(
            "SELECT vehicle_id, boot_epoch, seq, reason, received_ns, payload, catalog_id, agent_version"
            f" FROM quarantine {where} ORDER BY vehicle_id, boot_epoch, seq",
            args,
        )
    ]


def _campaigns(text: str | None) -> tuple[CampaignRef, ...]:
    if not text:
        return ()
    return tuple(CampaignRef(name=str(name), version=int(version)) for name, version in json.loads(text))


@dataclass(frozen=True, slots=True)
class _Samples:
    """Decoded samples of one series: times, the chunk each came from, values (float64 or objects)."""

    t_ns: npt.NDArray[np.int64]
    chunk_ids: npt.NDArray[np.int64]
    values: npt.NDArray[Any]

    @classmethod
    def empty(cls) -> _Samples:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))


def _runs(part: _Samples) -> Iterator[tuple[ValueKind, list[int], list[Any]]]:
    """The samples as runs of one value kind (a signal's kind may change between catalogs)."""
    if not len(part.t_ns):
        return
    t_ns: list[int] = part.t_ns.tolist()
    if part.values.dtype != object:
        yield ValueKind.DOUBLE, t_ns, part.values.tolist()
        return
    values: list[Any] = part.values.tolist()
    start = 0
    for index in range(1, len(values) + 1):
        if index == len(values) or isinstance(values[index], str) != isinstance(values[start], str):
            kind = ValueKind.STRING if isinstance(values[start], str) else ValueKind.DOUBLE
            run = values[start:index] if kind is ValueKind.STRING else [float(v) for v in values[start:index]]
            yield kind, t_ns[start:index], run
            start = index


def _append_run(
    chunk: list[Series], name: str, unit: str, *, kind: ValueKind, t_ns: list[int], values: list[Any]
) -> None:
    """Add samples to the chunk, continuing its last series or opening one (also when the kind changes)."""
    last = chunk[-1] if chunk else None
    if last is None or last.name != name or last.kind is not kind:
        last = Series(name=name, unit=unit, kind=kind, t_ns=[], double_values=[], string_values=[])
        chunk.append(last)
    last.t_ns.extend(t_ns)
    if kind is ValueKind.STRING:
        last.string_values.extend(values)
    else:
        last.double_values.extend(values)


def _schema_version(conn: sqlite3.Connection) -> str | None:
    """``meta.schema_version`` of the database, or None when it has no ingest tables yet."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'batches'").fetchone():
            return "(none)"
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


def _version_problem(path: Path, found: str) -> str:
    if found == "1":
        return (
            f"{path}: schema_version '1' (one SQLite row per sample): this ingest stores samples by"
            f" columns (schema_version {_SCHEMA_VERSION!r}) and does not convert a database in place;"
            " start it with a new --db file (keep this one for the previous release, which reads it)"
        )
    return f"{path}: schema_version {found!r}, this ingest understands {_SCHEMA_VERSION!r}"


def sample_rows(
    conn: sqlite3.Connection, vehicle_id: str | None = None
) -> Iterator[tuple[str, str, int, float | None, str | None, int, int]]:
    """Every stored sample as ``(vehicle_id, signal, t_ns, value_double, value_text, boot_epoch, seq)``.

    Unpacked from ``chunks`` (NaN as None), by vehicle, signal, then ``(t_ns, chunk_id)``,
    for tools and tests; ``Fleet.Query`` is the API.
    """
    where, args = ("WHERE s.vehicle_id = ?", (vehicle_id,)) if vehicle_id is not None else ("", ())
    cursor = conn.execute(
        "SELECT s.vehicle_id, s.name, c.t_first, c.chunk_id, c.count, c.data, c.boot_epoch, c.seq"
        f" FROM chunks AS c JOIN series AS s USING (series_id) {where} ORDER BY s.vehicle_id, s.name",
        args,
    )
    rows: list[tuple[str, str, int, int, float | None, str | None, int, int]] = []
    for vehicle, name, t_first, chunk_id, count, data, epoch, seq in cursor:
        t_ns, values = decode_chunk(int(t_first), int(count), bytes(data))
        for t, value in zip(
            t_ns.tolist(), values if isinstance(values, list) else values.tolist(), strict=True
        ):
            if isinstance(value, str):
                rows.append((vehicle, name, t, chunk_id, None, value, epoch, seq))
            else:
                rows.append(
                    (vehicle, name, t, chunk_id, None if math.isnan(value) else value, None, epoch, seq)
                )
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    for vehicle, name, t, _chunk, value_double, value_text, epoch, seq in rows:
        yield vehicle, name, t, value_double, value_text, epoch, seq


def load_sample_rows(conn: sqlite3.Connection) -> None:
    """Fill a temporary table ``sample_rows`` on ``conn`` with :func:`sample_rows` (for SQL over samples)."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS sample_rows (vehicle_id TEXT, signal TEXT, t_ns INTEGER,"
        " value_double REAL, value_text TEXT, boot_epoch INTEGER, seq INTEGER)"
    )
    conn.execute("DELETE FROM temp.sample_rows")
    conn.executemany("INSERT INTO temp.sample_rows VALUES (?, ?, ?, ?, ?, ?, ?)", sample_rows(conn))
