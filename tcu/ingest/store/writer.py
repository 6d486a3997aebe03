"""The writer of the SQLite sink: one thread, group commit, savepoints, quarantine, epochs.

:meth:`SqliteWriter.store` hands a batch to the writer thread and awaits a future; the
writer takes what is queued, one batch per vehicle in turn (round-robin,
:mod:`tcu.ingest._fair`), up to ``commit_max_batches`` batches and ``commit_max_samples``
samples, writes it in one transaction, commits, and only then resolves the futures. A
batch is therefore acknowledged only once it is durable, and a vehicle with huge batches
cannot make another wait behind all of them.

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

Each signal's samples of a batch become one row of ``chunks`` (see
:mod:`tcu.ingest.store.schema`); ``chunk_id`` grows with every chunk written (kept in
``meta`` as ``next_chunk_id`` with each commit).

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

Queue policy: at most ``write_queue_batches`` batches wait for the writer; a
further :meth:`SqliteWriter.store` waits for room, which slows that Upload stream
and, through HTTP/2 flow control, its vehicle (backpressure, nothing dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tcu.errors import ClosedResourceError, IngestError
from tcu.histogram import LATENCY_BUCKETS_S, SIZE_BUCKETS, Histogram
from tcu.ingest._chunks import encode_double_columns, encode_strings, sort_column
from tcu.ingest._events import capture_pb
from tcu.ingest._fair import FairQueue
from tcu.ingest.config import IngestConfig
from tcu.ingest.model import Batch, CampaignRef, QuarantinedBatch, StoreResult, ValueKind
from tcu.ingest.store.schema import open_writer_connection
from tcu.logutil import RateLimitedLog

__all__ = ["SqliteWriter", "WriterStats"]

log = logging.getLogger("tcu.ingest.store")

_CACHE_MAX: Final = 65_536

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


class SqliteWriter:
    """The writing half of :class:`~tcu.ingest.store.SqliteSink` (a mixin; the sink starts the thread)."""

    _path: Path
    _closed: bool
    _writer: threading.Thread | None

    def _init_writer(self, config: IngestConfig) -> None:
        self._synchronous = config.sqlite_synchronous
        self._busy_timeout_s = config.sqlite_busy_timeout_s
        self._writing = 0
        self._commit_max = config.commit_max_batches
        self._commit_max_samples = config.commit_max_samples
        self._room = asyncio.Semaphore(config.write_queue_batches)
        self._jobs: FairQueue[_Job] = FairQueue(key=_job_vehicle, cost=_job_samples)
        self._writer = None
        # Writer-thread state only:
        self._epochs: dict[tuple[str, int], _Epoch] = {}
        self._series: dict[tuple[str, str], int] = {}
        self._catalogs: set[tuple[str, str]] = set()
        self._new_series: list[tuple[str, str]] = []  # cache entries added in the current savepoint
        self._new_catalogs: list[tuple[str, str]] = []
        self._next_chunk = 0
        """The next ``chunks.chunk_id`` (kept in ``meta`` as ``next_chunk_id`` with each commit)."""
        self._turn: contextlib.AbstractContextManager[object] | None = None
        """The workers' shared write turn (set by the sink's owner), or None alone."""
        self._packed: dict[int, list[tuple[bytes, int, int]] | Exception] = {}
        self._data_version = -1
        """``PRAGMA data_version`` at this writer's last transaction (see :meth:`_catch_up`)."""
        self._failures = RateLimitedLog(log)  # a vehicle sending batches that fail cannot flood the log
        self.stats = WriterStats()

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
        conn, self._next_chunk = open_writer_connection(
            self._path, synchronous=self._synchronous, busy_timeout_s=self._busy_timeout_s
        )
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

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        """In a write transaction: forget what another process's commits made stale.

        Several processes may write one database (``tcu ingest --workers N``, or two ingests
        with ``--reuse-port``). ``PRAGMA data_version`` changes when another connection has
        committed since this one last looked; then the cached epochs (a vehicle that acked
        on the other writer) are dropped, to be re-read under this transaction's lock, and
        the next chunk id is taken from ``meta`` (so ids keep growing in commit order).
        Series and catalog ids stay valid: committed rows of them never change.
        """
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if version == self._data_version:
            return
        self._data_version = version
        self._epochs.clear()
        row = conn.execute("SELECT value FROM meta WHERE key = 'next_chunk_id'").fetchone()
        if row is not None:
            self._next_chunk = max(self._next_chunk, int(row[0]))

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
        packed = {id(item): self._pack(item) for item in items if isinstance(item, Batch)}
        self._packed = packed  # the chunk blobs, made before this writer takes its turn
        with self._write_turn():
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._catch_up(conn)
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
        self._packed = {}
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

    def _write_turn(self) -> contextlib.AbstractContextManager[object]:
        """Held from BEGIN to COMMIT: the workers' FIFO turn (:mod:`tcu.ingest.workers`), else nothing.

        SQLite's own lock has no order: a waiting writer polls (busy timeout) while the one that
        just committed takes the lock again at once, so under load one worker's groups could
        wait past ``sqlite_busy_timeout_s`` and fail. The turn makes the writers take it in order.
        """
        return self._turn if self._turn is not None else contextlib.nullcontext()

    @staticmethod
    def _pack(batch: Batch) -> list[tuple[bytes, int, int]] | Exception:
        """The chunk blobs (data, first, last time) of the batch's non-empty columns, in their order.

        Made before the write turn (CPU work other workers need not wait for); an error is kept
        and raised again in the batch's savepoint, where it is the batch's (quarantine).
        """
        try:
            doubles = [c for c in batch.columns if len(c) and c.signal.kind is ValueKind.DOUBLE]
            times = [c.times for c in doubles]
            values = [c.doubles for c in doubles]
            for column, t_ns, v in zip(doubles, times, values, strict=True):
                if len(t_ns) != len(v):
                    raise IngestError(
                        f"column {column.signal.name}: {len(t_ns)} times but {len(v)} values (not validated?)"
                    )
            packed = iter(zip(*encode_double_columns(times, values), strict=True))
            out: list[tuple[bytes, int, int]] = []
            for column in batch.columns:
                if not len(column):
                    continue
                if column.signal.kind is ValueKind.DOUBLE:
                    out.append(next(packed))
                else:
                    sorted_t, texts = sort_column(column.times, list(column.string_values))
                    assert isinstance(texts, list)
                    out.append((encode_strings(sorted_t, texts), int(sorted_t[0]), int(sorted_t[-1])))
            return out
        except Exception as exc:
            return exc

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
        packed = self._packed.get(id(batch))
        blobs = packed if packed is not None else self._pack(batch)
        if isinstance(blobs, Exception):
            raise blobs
        columns = iter(blobs)
        for column in batch.columns:
            count = len(column)
            if not count:
                continue
            series_id = self._series_id(conn, batch.vehicle_id, column.signal.name, column.signal.unit)
            data, low, high = next(columns)
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
