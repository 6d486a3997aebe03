"""Helpers shared by the ingest tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import sqlite3
from typing import Any

from tcu.ingest.store import load_sample_rows


def rows(db: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one query on the ingest's SQLite file (its own connection) and return all rows.

    The samples are packed by columns; a query that names ``sample_rows`` sees them one row
    per sample (a temporary table filled by :func:`tcu.ingest.store.load_sample_rows`).
    """
    conn = sqlite3.connect(db)
    try:
        if "sample_rows" in sql:
            load_sample_rows(conn)
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
