"""``tcu ingest --workers N``: N ingest processes on one machine, one listener, one database.

One Python process does its gRPC, TLS, validation and packing on one core; this spreads
vehicles over several processes without splitting a vehicle's data:

1. The parent opens the database once (creates the schema, or refuses an older one) so
   that the workers do not race on it, and reserves the port: a socket bound with
   ``SO_REUSEPORT`` to ``listen`` (port 0: a free one), not listening, kept until the
   end. A port another process already listens on is refused first (as without
   workers) unless ``--reuse-port`` is given.
2. It starts N workers (``multiprocessing``, spawn). Each runs :func:`tcu.ingest.server.serve`
   on that port with ``SO_REUSEPORT``: the kernel hashes each new connection to one of
   them, so a vehicle's next connection may well land on another worker.
3. Once every worker listens: ``on_listening(port)`` (the port file) and READY for systemd.
4. On SIGTERM or SIGINT every worker is sent SIGTERM (each acks what it has in flight and
   closes its database) and awaited. A worker that ends by itself is an error: the others
   are stopped and :func:`run_workers` raises :class:`~tcu.errors.IngestError`.

What stays exact across workers: the store. Every worker has its own SQLite writer on the
same file (WAL); they take turns in arrival order (:class:`WriteTurn`, held from BEGIN to
COMMIT; the chunk blobs are packed before it), dedup is the primary key ``(vehicle_id, boot_epoch, seq)``
inside those transactions, and a writer re-reads the epochs and the next chunk id whenever
another process committed since its last transaction (``PRAGMA data_version``,
:meth:`tcu.ingest.store.writer.SqliteWriter._catch_up`), so a vehicle that reconnects to
another worker is answered from its durable acked watermark. Query reads the shared file.

What is per process and therefore refused or weakened, said here and logged at start:

* Fleet.Subscribe (live updates of the batches one worker stores), Fleet.SendCommand (the
  vehicle's stream may be on another worker) and Fleet.ListVehicles (its ``connected``) are
  refused with FAILED_PRECONDITION; run one process for them.
* ``max_streams`` is divided among the workers (each takes ``ceil(max_streams / N)``);
  ``max_streams_per_identity`` and ``max_batches_per_s`` apply per worker, so one vehicle can
  hold up to N times as many streams (and batches per second) as one process allows.
* Each worker watches the CRL itself (revoked certificates' streams end on every worker),
  and ``--metrics-listen`` is refused with workers (one port per process is not built).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

from tcu.errors import ConfigError, IngestError, TcuError
from tcu.ingest.config import IngestConfig
from tcu.sdnotify import Notifier

__all__ = ["WORKER_METADATA", "WriteTurn", "run_workers", "worker_config"]

log = logging.getLogger(__name__)

WORKER_METADATA = "tcu-ingest-worker"
"""Initial metadata of every Upload stream under workers: the index of the worker serving it."""

_START_TIMEOUT_S = 60.0


def worker_config(config: IngestConfig, port: int) -> IngestConfig:
    """What one of ``config.workers`` workers runs: the reserved port shared, ``max_streams`` divided."""
    host = config.listen.rpartition(":")[0]
    return dataclasses.replace(
        config,
        listen=f"{host}:{port}",
        reuse_port=True,
        max_streams=max(1, math.ceil(config.max_streams / config.workers)),
    )


def _reserve(listen: str) -> tuple[socket.socket, int]:
    """A socket bound to ``listen`` with SO_REUSEPORT (not listening): the port the workers share."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        holder = socket.socket(family, kind, proto)
    except (OSError, ValueError) as exc:
        raise IngestError(f"ingest.listen: cannot listen on {listen}: {exc}") from exc
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(address)
    except OSError as exc:
        holder.close()
        raise IngestError(f"ingest.listen: cannot listen on {listen}: {exc.strerror or exc}") from exc
    return holder, int(holder.getsockname()[1])


def _prepare_database(config: IngestConfig) -> None:
    """Create the schema once (or refuse an old database) before any worker opens the file."""
    from tcu.ingest.store.schema import open_writer_connection

    conn, _ = open_writer_connection(
        config.db_path, synchronous=config.sqlite_synchronous, busy_timeout_s=config.sqlite_busy_timeout_s
    )
    conn.close()


class WriteTurn:
    """A FIFO (ticket) lock shared by the worker processes: whose turn it is to write the database.

    Each writer holds it from BEGIN to COMMIT. SQLite's lock alone has no order (a waiter
    polls while the writer that just committed takes it again), so one worker could starve.
    Made by the parent, handed to each worker when it is spawned.
    """

    def __init__(self, ctx: Any) -> None:
        self._cond = ctx.Condition(ctx.Lock())
        self._taken = ctx.RawValue("q", 0)
        self._serving = ctx.RawValue("q", 0)

    def __enter__(self) -> WriteTurn:
        with self._cond:
            ticket = self._taken.value
            self._taken.value += 1
            while self._serving.value != ticket:
                self._cond.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving.value += 1
            self._cond.notify_all()


def _worker_main(
    config: IngestConfig,
    index: int,
    setup: Callable[[], None] | None,
    pipe: Connection,
    turn: WriteTurn | None = None,
) -> None:
    """One worker process: serve until SIGTERM/SIGINT; report the port (or the error) on ``pipe``."""
    import asyncio

    from tcu.ingest.server import serve

    if setup is not None:
        setup()
    try:
        asyncio.run(
            serve(
                config,
                on_listening=lambda port: pipe.send(("listening", port)),
                worker=index,
                write_turn=turn,
            )
        )
    except TcuError as exc:
        with contextlib.suppress(OSError):
            pipe.send(("error", str(exc)))
        sys.exit(1)


def run_workers(
    config: IngestConfig,
    *,
    on_listening: Callable[[int], None] | None = None,
    notifier: Notifier | None = None,
    setup: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run ``config.workers`` ingest processes on one port until SIGTERM/SIGINT (or ``stop``).

    ``setup`` runs first in each worker (the CLI's logging set-up; it must pickle).
    Raises :class:`~tcu.errors.IngestError` when a worker cannot start or ends by itself.
    """
    if config.workers < 2:
        raise ConfigError("run_workers needs 2 workers or more", key="ingest.workers")
    if not config.reuse_port:
        from tcu.ingest.server import _bind_problem

        problem = _bind_problem(config.listen)
        if problem is not None:
            raise IngestError(f"ingest.listen: cannot listen on {config.listen}: {problem}")
    _prepare_database(config)
    holder, port = _reserve(config.listen)
    stopping = stop if stop is not None else threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_signal)
    ctx = multiprocessing.get_context("spawn")
    turn = WriteTurn(ctx)
    each = worker_config(config, port)
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        for index in range(config.workers):
            parent_end, child_end = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_worker_main,
                args=(each, index, setup, child_end, turn),
                name=f"tcu-ingest-worker-{index}",
                daemon=False,
            )
            process.start()
            child_end.close()
            workers.append((process, parent_end))
        _await_listening(workers, stopping)
        log.warning(
            "ingest: %d workers on port %d share %s; per worker: max_streams %d, max_streams_per_identity"
            " %d and max_batches_per_s %g (a vehicle may use that on each worker); Fleet.Subscribe,"
            " SendCommand and ListVehicles are refused (run one process for them)",
            config.workers,
            port,
            config.db_path,
            each.max_streams,
            each.max_streams_per_identity,
            each.max_batches_per_s,
        )
        if on_listening is not None:
            on_listening(port)
        if notifier is not None:
            notifier.ready(f"{config.workers} workers listening on port {port}")
        ended = _await_stop(workers, stopping, notifier)
        if ended is not None:
            raise IngestError(ended)
    finally:
        if notifier is not None:
            notifier.stopping(f"stopping {len(workers)} workers")
        _stop_all(workers, config.grace_s)
        holder.close()
        for signo, handler in previous.items():
            signal.signal(signo, handler)


def _await_listening(
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]], stopping: threading.Event
) -> None:
    waiting = {pipe: (index, process) for index, (process, pipe) in enumerate(workers)}
    deadline = time.monotonic() + _START_TIMEOUT_S
    while waiting:
        if stopping.is_set():
            raise IngestError("stopped while the ingest workers were starting")
        left = deadline - time.monotonic()
        if left <= 0:
            raise IngestError(f"{len(waiting)} ingest workers did not listen within {_START_TIMEOUT_S:g} s")
        for ready in multiprocessing.connection.wait(list(waiting), timeout=min(left, 0.5)):
            assert isinstance(ready, Connection)
            index, process = waiting.pop(ready)
            try:
                kind, value = ready.recv()
            except EOFError:
                process.join(5)
                raise IngestError(
                    f"ingest worker {index} ended while starting (exit code {process.exitcode})"
                ) from None
            if kind != "listening":
                raise IngestError(f"ingest worker {index}: {value}")


def _await_stop(
    workers: list[tuple[multiprocessing.process.BaseProcess, Connection]],
    stopping: threading.Event,
    notifier: Notifier | None,
) -> str | None:
    """Wait for SIGTERM/SIGINT (None) or a worker that ends by itself (what happened)."""
    sentinels = {process.sentinel: (index, process) for index, (process, _) in enumerate(workers)}
    while not stopping.is_set():
        ended = multiprocessing.connection.wait(list(sentinels), timeout=0.2)
        if ended:
            index, process = sentinels[ended[0]]  # type: ignore[index]
            process.join(1)
            log.error("ingest worker %d (pid %s) ended, exit code %s", index, process.pid, process.exitcode)
            return f"ingest worker {index} ended by itself (exit code {process.exitcode}); stopped the others"
        if notifier is not None and notifier.watchdog_s:
            notifier.watchdog()  # every worker is alive
    return None


def _stop_all(workers: list[tuple[multiprocessing.process.BaseProcess, Connection]], grace_s: float) -> None:
    for process, _ in workers:
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s + 30.0
    for index, (process, pipe) in enumerate(workers):
        process.join(max(0.1, deadline - time.monotonic()))
        if process.is_alive():
            log.error("ingest worker %d (pid %s) did not stop: killed", index, process.pid)
            process.kill()
            process.join(5)
        pipe.close()
