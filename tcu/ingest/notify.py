"""The ingest under systemd: READY=1 once listening, WATCHDOG=1 from the writer's progress, STATUS=.

:func:`tcu.ingest.serve` sends ``READY=1`` after :meth:`IngestServer.start` returned (the
database is open, its writer thread runs and the port is bound) and ``STOPPING=1`` when
it begins to stop. :class:`IngestNotify` (the task ``tcu.ingest.notify``) pings the
watchdog every ``WatchdogSec/4`` while the SQLite writer thread is healthy: alive, and
either idle (nothing queued, nothing being written) or it committed a group within the
last ``WatchdogSec/2``. A writer stuck in a commit (a disk that hangs, a lock held
elsewhere) stops the pings although the event loop still runs; systemd then restarts the
ingest, whose vehicles resend what was not acked. ``STATUS=`` every few seconds: vehicles
connected, batches stored per second, the writer's queue, subscribers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tcu.sdnotify import Notifier

if TYPE_CHECKING:
    from tcu.ingest.server import IngestServer

__all__ = ["IngestNotify", "WriterProgress"]

log = logging.getLogger(__name__)

STATUS_PERIOD_S = 5.0


class WriterProgress:
    """Is the ingest's writer thread making progress? (``healthy(now, max_age_s)``)."""

    def __init__(self, server: IngestServer, now: float) -> None:
        self._server = server
        self._groups = -1
        self._since = now

    def healthy(self, now: float, max_age_s: float) -> bool:
        from tcu.ingest.store import SqliteSink

        sink = self._server.sink
        if not isinstance(sink, SqliteSink):  # another sink: the event loop's liveness is all we know
            return True
        if not sink.writer_alive:
            return False
        groups = sink.stats.groups + sink.stats.failed_groups
        if groups != self._groups or (sink.queued == 0 and sink.writing == 0):
            self._groups, self._since = groups, now
        return now - self._since <= max_age_s

    def age_s(self, now: float) -> float:
        return now - self._since


def status_line(server: IngestServer, stored_per_s: float) -> str:
    from tcu.ingest.store import SqliteSink

    parts = [
        f"{len(server.commands.connected_vehicles())} vehicles connected",
        f"{stored_per_s:.1f} batches/s",
    ]
    sink = server.sink
    if isinstance(sink, SqliteSink):
        parts.append(f"writer queue {sink.queued}")
        if sink.stats.failed_groups:
            parts.append(f"{sink.stats.failed_groups} failed commits (last: {sink.stats.last_error[:80]})")
    parts.append(f"{len(server.hub)} subscribers")
    return "; ".join(parts)


def _batches(server: IngestServer) -> int:
    from tcu.ingest.store import SqliteSink

    sink = server.sink
    return sink.stats.batches if isinstance(sink, SqliteSink) else 0


class IngestNotify:
    def __init__(self, server: IngestServer, notifier: Notifier) -> None:
        self.server = server
        self.notifier = notifier
        self.watchdog_pings = 0
        self.watchdog_missed = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        watchdog_s = self.notifier.watchdog_s
        tick = min(0.25, watchdog_s / 4) if watchdog_s else 0.25
        max_age = watchdog_s / 2 if watchdog_s else 0.0
        progress = WriterProgress(self.server, loop.time())
        batches = _batches(self.server)
        last_status = last_ping = loop.time()
        stalled = False
        while True:
            now = loop.time()
            if watchdog_s and now - last_ping >= watchdog_s / 4:
                last_ping = now
                if progress.healthy(now, max_age):
                    if stalled:
                        log.warning("ingest: the database writer makes progress again; watchdog pings resume")
                        stalled = False
                    self.notifier.watchdog()
                    self.watchdog_pings += 1
                else:
                    self.watchdog_missed += 1
                    if not stalled:
                        log.error(
                            "ingest: the database writer made no progress for %.1f s (WatchdogSec/2 is"
                            " %.1f s): not pinging the systemd watchdog",
                            progress.age_s(now),
                            max_age,
                        )
                        stalled = True
            if now - last_status >= STATUS_PERIOD_S:
                current = _batches(self.server)
                self.notifier.status(status_line(self.server, (current - batches) / (now - last_status)))
                batches, last_status = current, now
            await asyncio.sleep(tick)
