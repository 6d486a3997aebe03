"""The SQLite sink's columnar store: one row per signal and batch, queries that merge and cut chunks,
and a database of the old one-row-per-sample schema refused without being touched."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from ingest_helpers import rows

from tcu.errors import IngestError
from tcu.ingest import IngestConfig, SqliteSink
from tcu.ingest.model import Batch, Catalog, Column, HistoryQuery, SignalDef, ValueKind

SPEED = SignalDef(signal_id=1, name="Vehicle.Speed", unit="km/h", kind=ValueKind.DOUBLE)
TEXT = SignalDef(signal_id=2, name="Vehicle.Text", unit="", kind=ValueKind.STRING)
CATALOG = Catalog("c", {1: SPEED, 2: TEXT})

# The schema of schema_version '1' (main before the columnar store), as that release created it.
_OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE batches (
    vehicle_id TEXT NOT NULL, boot_epoch INTEGER NOT NULL, seq INTEGER NOT NULL, catalog_id TEXT NOT NULL,
    base_time_ns INTEGER NOT NULL, created_ns INTEGER NOT NULL, samples INTEGER NOT NULL,
    stored_ns INTEGER NOT NULL, loss_reason TEXT, loss_priority INTEGER, loss_created_ns INTEGER,
    loss_bytes INTEGER, PRIMARY KEY (vehicle_id, boot_epoch, seq)) WITHOUT ROWID;
CREATE TABLE series (
    series_id INTEGER PRIMARY KEY, vehicle_id TEXT NOT NULL, name TEXT NOT NULL, unit TEXT NOT NULL,
    samples INTEGER NOT NULL DEFAULT 0, UNIQUE (vehicle_id, name));
CREATE TABLE samples (
    series_id INTEGER NOT NULL REFERENCES series (series_id), t_ns INTEGER NOT NULL, value_double REAL,
    value_text TEXT, boot_epoch INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX samples_by_time ON samples (series_id, t_ns);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO series VALUES (1, 'veh-1', 'Vehicle.Speed', 'km/h', 1);
INSERT INTO samples VALUES (1, 100, 12.5, NULL, 1, 1);
"""


def _column(signal: SignalDef, t_ns: list[int], values: list[float] | list[str]) -> Column:
    if signal.kind is ValueKind.DOUBLE:
        return Column(signal=signal, t_ns=t_ns, double_values=list(values), string_values=[])  # type: ignore[arg-type]
    return Column(signal=signal, t_ns=t_ns, double_values=[], string_values=list(values))  # type: ignore[arg-type]


def _batch(seq: int, *columns: Column) -> Batch:
    return Batch("veh-1", 1, seq, CATALOG, 0, 0, tuple(columns))


async def _query(sink: SqliteSink, start: int, end: int, chunk: int = 1000) -> list[tuple[str, int, object]]:
    out: list[tuple[str, int, object]] = []
    async for part in sink.query(HistoryQuery("veh-1", (), start, end, chunk)):
        assert sum(len(s.t_ns) for s in part) <= chunk
        for series in part:
            values = series.string_values if series.kind is ValueKind.STRING else series.double_values
            out.extend((series.name, t, v) for t, v in zip(series.t_ns, values, strict=True))
    return out


async def test_each_signal_of_a_batch_is_one_row(tmp_path: Path) -> None:
    sink = await SqliteSink.open(IngestConfig(insecure=True, db_path=tmp_path / "c.db"))
    try:
        await sink.store(
            _batch(
                1, _column(SPEED, list(range(1000, 2000)), [1.0] * 1000), _column(TEXT, [5, 6], ["a", "b"])
            )
        )
    finally:
        await sink.aclose()
    assert rows(tmp_path / "c.db", "SELECT seq, count FROM chunks ORDER BY count") == [(1, 2), (1, 1000)]
    assert rows(tmp_path / "c.db", "SELECT count(*) FROM sample_rows") == [(1002,)]


async def test_query_merges_overlapping_chunks_in_time_order_and_cuts_at_the_range(tmp_path: Path) -> None:
    sink = await SqliteSink.open(IngestConfig(insecure=True, db_path=tmp_path / "m.db"))
    try:
        # Batch 1 and 2 interleave in time; batch 2 arrives unsorted; equal times keep commit order.
        await sink.store(_batch(1, _column(SPEED, [10, 30, 50, 70], [1.0, 3.0, 5.0, 7.0])))
        await sink.store(_batch(2, _column(SPEED, [60, 20, 40, 30], [6.0, 2.0, 4.0, 3.5])))
        await sink.store(_batch(3, _column(SPEED, [80, 90], [math.nan, 9.0])))
        everything = await _query(sink, -(2**63), 2**63 - 1)
        assert [(t, v) for _, t, v in everything][:8] == [
            (10, 1.0),
            (20, 2.0),
            (30, 3.0),
            (30, 3.5),
            (40, 4.0),
            (50, 5.0),
            (60, 6.0),
            (70, 7.0),
        ]
        assert math.isnan(everything[8][2]) and everything[9][1:] == (90, 9.0)  # type: ignore[arg-type]
        cut = await _query(sink, 30, 61, chunk=2)  # [30, 61): both ends inside chunks of two batches
        assert [(t, v) for _, t, v in cut] == [(30, 3.0), (30, 3.5), (40, 4.0), (50, 5.0), (60, 6.0)]
    finally:
        await sink.aclose()


async def test_query_over_many_chunk_pages_is_complete_and_ordered(tmp_path: Path) -> None:
    sink = await SqliteSink.open(IngestConfig(insecure=True, db_path=tmp_path / "p.db"))
    try:
        # 300 batches (more than one page of chunks), each overlapping the next by half.
        for seq in range(1, 301):
            times = [seq * 10 + k * 2 for k in range(10)]
            await sink.store(_batch(seq, _column(SPEED, times, [float(t) for t in times])))
        got = await _query(sink, 100, 2500, chunk=777)
    finally:
        await sink.aclose()
    times = [t for _, t, _ in got]
    assert times == sorted(times) and times[0] == 100 and times[-1] < 2500
    assert len(times) == len(
        [1 for seq in range(1, 301) for k in range(10) if 100 <= seq * 10 + k * 2 < 2500]
    )
    assert all(v == float(t) for _, t, v in got)


async def test_a_string_signal_keeps_its_values(tmp_path: Path) -> None:
    sink = await SqliteSink.open(IngestConfig(insecure=True, db_path=tmp_path / "s.db"))
    try:
        await sink.store(_batch(1, _column(TEXT, [3, 1, 2], ["three", "one", "twö"])))
        assert await _query(sink, 0, 10) == [
            ("Vehicle.Text", 1, "one"),
            ("Vehicle.Text", 2, "twö"),
            ("Vehicle.Text", 3, "three"),
        ]
    finally:
        await sink.aclose()


async def test_an_old_format_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(_OLD_SCHEMA)
    conn.close()
    before = db.read_bytes()
    with pytest.raises(IngestError) as caught:
        await SqliteSink.open(IngestConfig(insecure=True, db_path=db))
    message = str(caught.value)
    assert str(db) in message and "schema_version '1'" in message and "new --db file" in message
    tables = {r[0] for r in rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "chunks" not in tables
    assert rows(db, "SELECT count(*) FROM samples") == [(1,)]
    assert db.read_bytes() == before
