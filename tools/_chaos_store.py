"""What the ingest's SQLite database actually holds, read directly (read-only) for the accounting.

The chaos accounting does not trust an API or a counter of the ingest: it reads
the ``batches`` and ``quarantine`` tables and the packed ``chunks`` (unpacked with
:func:`tcu.ingest.store.sample_rows`) of the database file after
the ingest stopped. A sample counts as stored only when its batch row exists
too (a sample row without one is an *orphan*, counted apart); a batch whose
sample rows do not add up to its own ``samples`` count is *incomplete*.

:func:`delete_batches` removes batch rows and their sample rows, for the
harness's self-test (``tools/chaos.py --self-test delete-batches``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tcu.errors import TcuError
from tcu.ingest.store import sample_rows

__all__ = ["BatchRow", "StoreContents", "StoreReadError", "delete_batches", "read_store"]

Key = tuple[int, int]  # (boot_epoch, seq)


class StoreReadError(TcuError):
    """The ingest database could not be read."""


@dataclass(frozen=True, slots=True)
class BatchRow:
    samples: int
    loss_reason: str | None  # set: the batch stands for a lost one (a DataLoss record)
    stored_ns: int = 0  # when the ingest committed it (its wall clock)


@dataclass(frozen=True, slots=True)
class StoredSeries:
    """One signal's stored samples, sorted by source time, with the batch each came in."""

    t_ns: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    epoch: npt.NDArray[np.int64]
    seq: npt.NDArray[np.int64]


@dataclass(slots=True)
class StoreContents:
    batches: dict[Key, BatchRow] = field(default_factory=dict)
    quarantined: dict[Key, str] = field(default_factory=dict)
    series: dict[str, StoredSeries] = field(default_factory=dict)
    orphan_samples: int = 0
    """Sample rows whose batch row is missing (not counted as stored)."""
    incomplete_batches: int = 0
    """Batch rows whose sample rows do not add up to the batch's own sample count."""
    duplicate_sample_rows: int = 0
    """Sample rows beyond the first with the same signal and source time (any signal)."""


def _connect(db_path: Path, *, write: bool) -> sqlite3.Connection:
    if not db_path.is_file():
        raise StoreReadError(f"{db_path}: no such database file")
    try:
        if write:
            return sqlite3.connect(db_path)
        return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreReadError(f"{db_path}: cannot open the ingest database: {exc}") from exc


def read_store(db_path: Path, vehicle_id: str) -> StoreContents:
    """Everything the database holds for ``vehicle_id``."""
    db = _connect(db_path, write=False)
    out = StoreContents()
    try:
        for epoch, seq, samples, reason, stored_ns in db.execute(
            "SELECT boot_epoch, seq, samples, loss_reason, stored_ns FROM batches WHERE vehicle_id = ?",
            (vehicle_id,),
        ):
            out.batches[(int(epoch), int(seq))] = BatchRow(int(samples), reason, int(stored_ns))
        for epoch, seq, reason in db.execute(
            "SELECT boot_epoch, seq, reason FROM quarantine WHERE vehicle_id = ?", (vehicle_id,)
        ):
            out.quarantined[(int(epoch), int(seq))] = str(reason)
        # Samples are stored by columns (one chunk per signal and batch): unpack them.
        rows = [
            (name, t_ns, value, epoch, seq)
            for _vehicle, name, t_ns, value, _text, epoch, seq in sample_rows(db, vehicle_id)
        ]
    except sqlite3.Error as exc:
        raise StoreReadError(f"{db_path}: cannot query the ingest database: {exc}") from exc
    finally:
        db.close()
    per_batch: dict[Key, int] = {}
    parts: dict[str, list[tuple[int, float, int, int]]] = {}
    for name, t_ns, value, epoch, seq in rows:
        key = (int(epoch), int(seq))
        if key not in out.batches:
            out.orphan_samples += 1
            continue
        per_batch[key] = per_batch.get(key, 0) + 1
        parts.setdefault(str(name), []).append(
            (int(t_ns), float("nan") if value is None else float(value), key[0], key[1])
        )
    out.incomplete_batches = sum(
        1 for key, row in out.batches.items() if per_batch.get(key, 0) != row.samples
    )
    for name, items in parts.items():
        t = np.fromiter((i[0] for i in items), np.int64, len(items))
        v = np.fromiter((i[1] for i in items), np.float64, len(items))
        e = np.fromiter((i[2] for i in items), np.int64, len(items))
        s = np.fromiter((i[3] for i in items), np.int64, len(items))
        order = np.argsort(t, kind="stable")
        out.series[name] = StoredSeries(t[order], v[order], e[order], s[order])
        _, counts = np.unique(t, return_counts=True)
        out.duplicate_sample_rows += int((counts - 1).sum())
    return out


def delete_batches(db_path: Path, vehicle_id: str, keys: Iterable[Key]) -> tuple[int, int]:
    """Delete these batches and their samples (chunks); returns (batches, samples) deleted."""
    db = _connect(db_path, write=True)
    batches = rows = 0
    try:
        with db:
            for epoch, seq in keys:
                where = (
                    " FROM chunks WHERE boot_epoch = ? AND seq = ? AND series_id IN"
                    " (SELECT series_id FROM series WHERE vehicle_id = ?)"
                )
                rows += int(
                    db.execute("SELECT COALESCE(SUM(count), 0)" + where, (epoch, seq, vehicle_id)).fetchone()[
                        0
                    ]
                )
                db.execute("DELETE" + where, (epoch, seq, vehicle_id))
                batches += db.execute(
                    "DELETE FROM batches WHERE vehicle_id = ? AND boot_epoch = ? AND seq = ?",
                    (vehicle_id, epoch, seq),
                ).rowcount
    except sqlite3.Error as exc:
        raise StoreReadError(f"{db_path}: cannot delete batches: {exc}") from exc
    finally:
        db.close()
    return batches, rows
