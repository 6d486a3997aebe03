"""Helpers shared by the ingest tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import sqlite3
from typing import Any


def rows(db: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one query on the ingest's SQLite file (its own connection) and return all rows."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()
