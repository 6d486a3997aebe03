"""The embedded sink: :class:`SqliteSink`, one SQLite file in WAL mode, one writer thread, a few readers.

The writing half is :mod:`tcu.ingest.store.writer`, the reading half
:mod:`tcu.ingest.store.reader`, the tables :mod:`tcu.ingest.store.schema`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from tcu.errors import IngestError
from tcu.ingest.config import IngestConfig
from tcu.ingest.store.reader import SqliteReader
from tcu.ingest.store.writer import SqliteWriter

__all__ = ["SqliteSink"]

log = logging.getLogger("tcu.ingest.store")


class SqliteSink(SqliteWriter, SqliteReader):
    """The embedded sink: one SQLite file, one writer thread, a few reader threads.

    Open with ``sink = await SqliteSink.open(config)``; close with ``await sink.aclose()``.
    """

    def __init__(self, config: IngestConfig) -> None:
        self._path = config.db_path
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None
        self._init_writer(config)
        self._init_reader(config)

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
