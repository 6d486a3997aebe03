"""Sinks: where validated batches are stored. The embedded default is SQLite.

:class:`SqliteSink` keeps the database in WAL mode and has exactly one writer
thread doing group commit; a batch is acknowledged only once it is durable.
The package is split along its seams:

* :mod:`tcu.ingest.store.sink`: the :class:`Sink` protocol the servicer and Fleet use;
* :mod:`tcu.ingest.store.schema`: the SQLite tables, the schema version, refusal of an
  older database;
* :mod:`tcu.ingest.store.writer`: the write loop, group commit, savepoints, quarantine,
  epochs (dedup and the acked watermark), check-ins;
* :mod:`tcu.ingest.store.reader`: Query, events, ListVehicles, quarantine reads, and
  :func:`sample_rows` for tools and tests;
* :mod:`tcu.ingest.store.sqlite`: :class:`SqliteSink`, which joins writer and reader.
"""

from __future__ import annotations

from typing import Final

from tcu.ingest.store.reader import load_sample_rows, read_quarantine, sample_rows
from tcu.ingest.store.schema import SCHEMA_VERSION
from tcu.ingest.store.sink import Sink
from tcu.ingest.store.sqlite import SqliteSink
from tcu.ingest.store.writer import WriterStats

_SCHEMA_VERSION: Final = SCHEMA_VERSION
"""The schema version (:mod:`tcu.ingest.store.schema`), under its name of before the split."""

__all__ = ["Sink", "SqliteSink", "WriterStats", "load_sample_rows", "read_quarantine", "sample_rows"]
