"""The ingest speaks the systemd notify protocol to a unix datagram socket the test owns.

READY=1 only once the database is open and the port bound; WATCHDOG=1 follows the SQLite
writer thread (a writer stuck in a commit stops the pings while STATUS= goes on); STOPPING=1.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from notify_helpers import NotifySocket

from tcu.ingest import IngestConfig, IngestServer, serve
from tcu.ingest import notify as ingest_notify
from tcu.ingest.notify import IngestNotify
from tcu.ingest.store import SqliteSink
from tcu.sdnotify import Notifier, NotifySettings


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket(f"@tcu-test-ingest-notify-{uuid.uuid4().hex}")
    yield sock
    sock.close()


async def _until(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_serve_is_ready_once_listening_and_says_stopping(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    config = IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "i.db")
    notifier = Notifier(NotifySettings(socket=notify_socket.address, watchdog_s=0.8))
    stop = asyncio.Event()
    ports: list[int] = []
    ready_seen_when_listening: list[bool] = []

    def on_listening(port: int) -> None:
        ready_seen_when_listening.append(bool(notify_socket.lines("READY")))
        ports.append(port)

    task = asyncio.create_task(serve(config, on_listening=on_listening, stop=stop, notifier=notifier))
    await _until(lambda: notify_socket.lines("READY"))
    assert ready_seen_when_listening == [False]  # READY=1 came after the bind, not before
    with socket.create_connection(("127.0.0.1", ports[0]), timeout=2):
        pass  # the port takes connections once READY=1 is out
    assert (tmp_path / "i.db").exists()
    await _until(lambda: len(notify_socket.lines("WATCHDOG")) >= 2)  # an idle writer is healthy
    stop.set()
    await asyncio.wait_for(task, 10)
    assert len(notify_socket.lines("STOPPING")) == 1
    notifier.close()


async def test_watchdog_stops_while_the_writer_is_stuck(
    notify_socket: NotifySocket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest_notify, "STATUS_PERIOD_S", 0.2)
    server = IngestServer(IngestConfig(insecure=True, listen="127.0.0.1:0", db_path=tmp_path / "i.db"))
    await server.start()
    notifier = Notifier(NotifySettings(socket=notify_socket.address, watchdog_s=0.8))
    notify = IngestNotify(server, notifier)
    task = asyncio.create_task(notify.run())
    release = threading.Event()
    sink = server.sink
    assert isinstance(sink, SqliteSink)
    real = sink._write_group

    def stuck_write(conn: Any, items: Any) -> Any:
        release.wait(20)  # a disk that hangs
        return real(conn, items)

    try:
        await _until(lambda: len(notify_socket.lines("WATCHDOG")) >= 2)
        monkeypatch.setattr(sink, "_write_group", stuck_write)
        checkin = asyncio.create_task(sink.store_checkin("WTCUNOTIFY0000001", ()))
        await _until(lambda: sink.writing == 1)
        await asyncio.sleep(0.6)  # WatchdogSec/2 of no progress
        stalled_since = time.monotonic()
        await asyncio.sleep(1.0)
        assert notify_socket.lines("WATCHDOG", since=stalled_since) == []
        assert notify_socket.lines("STATUS", since=stalled_since), "the notify task still runs"
        assert notify.watchdog_missed >= 3
        release.set()
        await asyncio.wait_for(checkin, 10)
        resumed = time.monotonic()
        await _until(lambda: notify_socket.lines("WATCHDOG", since=resumed))
    finally:
        release.set()
        task.cancel()
        await server.stop(1.0)
        notifier.close()
