"""The SQLite schema of the embedded sink: tables, version, refusal of an older database.

Samples are stored by columns: each signal's samples of one batch are one row of
``chunks`` (``series_id, t_first, chunk_id, t_last, boot_epoch, seq, count, data``),
``series`` interning ``(vehicle_id, signal name)`` and ``data`` the packed times and
values in time order (:mod:`tcu.ingest._chunks`: int64 time deltas and float64 values,
byte-shuffled and zstd-compressed when that is smaller; NaN kept as it came). The
primary key ``(series_id, t_first, chunk_id)`` serves Query by (vehicle, signal, time)
(see :mod:`tcu.ingest.store.reader`).

A database of schema version 1 (one row per sample, before the columnar store) is
refused when it is opened, naming the file and what to do; nothing is changed in it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from tcu.errors import IngestError

__all__ = ["SCHEMA", "SCHEMA_VERSION", "open_writer_connection", "schema_version", "version_problem"]

SCHEMA_VERSION: Final = "2"

SCHEMA: Final = """
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


def open_writer_connection(
    path: Path, *, synchronous: str, busy_timeout_s: float
) -> tuple[sqlite3.Connection, int]:
    """Create or open the database for the writer: (its connection, the next ``chunks.chunk_id``).

    Refuses (:class:`~tcu.errors.IngestError`) a database of another schema version before
    changing anything in it, and one where SQLite will not use WAL mode.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=True)
        # The version first: an older database must not be changed at all (not even to WAL).
        found = schema_version(conn)
        if found is not None and found != SCHEMA_VERSION:
            conn.close()
            raise IngestError(version_problem(path, found))
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.close()
            raise IngestError(f"{path}: SQLite refused WAL mode (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA temp_store=MEMORY")  # the per-batch savepoints journal in memory
        conn.executescript(SCHEMA)
        if found is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        row = conn.execute("SELECT value FROM meta WHERE key = 'next_chunk_id'").fetchone()
        next_chunk = int(row[0]) if row is not None else 0
    except sqlite3.Error as exc:
        raise IngestError(f"{path}: cannot open the ingest database: {exc}") from exc
    return conn, next_chunk


def schema_version(conn: sqlite3.Connection) -> str | None:
    """``meta.schema_version`` of the database, or None when it has no ingest tables yet."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'batches'").fetchone():
            return "(none)"
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else str(row[0])


def version_problem(path: Path, found: str) -> str:
    if found == "1":
        return (
            f"{path}: schema_version '1' (one SQLite row per sample): this ingest stores samples by"
            f" columns (schema_version {SCHEMA_VERSION!r}) and does not convert a database in place;"
            " start it with a new --db file (keep this one for the previous release, which reads it)"
        )
    return f"{path}: schema_version {found!r}, this ingest understands {SCHEMA_VERSION!r}"
