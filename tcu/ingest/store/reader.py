"""The reader of the SQLite sink: Query, events, ListVehicles, quarantine; sample rows for tools.

Reads (Query, ListVehicles) run on a small thread pool with one read-only
connection per thread, never on the event loop.

Query by (vehicle, signal, time) reads the chunks that overlap the range in
``(t_first, chunk_id)`` order (the primary key of ``chunks``), merges overlapping ones by
``(t_ns, chunk_id)`` (``chunk_id`` grows with every chunk written, so equal times keep
their commit order, as rows did) and cuts at the range's ends.
:func:`sample_rows` unpacks them as ``(vehicle_id, signal, t_ns, value_double,
value_text, boot_epoch, seq)`` for tools and tests (NaN as None, as SQL NULL).

Events are read whole by trigger time (``events_by_trigger``), each a serialised
``tcu.api.v1.Event``.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from tcu.api.v1 import fleet_pb2 as fleet_pb
from tcu.errors import ClosedResourceError, IngestError
from tcu.ingest._chunks import decode_chunk
from tcu.ingest._events import capture_from_pb
from tcu.ingest.config import IngestConfig
from tcu.ingest.model import (
    CampaignRef,
    Capture,
    HistoryQuery,
    QuarantinedBatch,
    Series,
    ValueKind,
    VehicleNotFound,
    VehicleSummary,
)

__all__ = ["SqliteReader", "load_sample_rows", "read_quarantine", "sample_rows"]

_T = TypeVar("_T")
_P = ParamSpec("_P")

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


class SqliteReader:
    """The reading half of :class:`~tcu.ingest.store.SqliteSink` (a mixin)."""

    _path: Path
    _closed: bool

    def _init_reader(self, config: IngestConfig) -> None:
        self._readers = ThreadPoolExecutor(
            max_workers=config.reader_threads, thread_name_prefix="tcu-ingest-read"
        )
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()

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
