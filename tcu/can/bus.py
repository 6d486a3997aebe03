"""Open python-can buses from config and read them in a thread each, into per-bus frame buffers.

Each bus is read by its own thread, which appends :class:`~tcu.frames.FrameBatch` es to its
bus's bounded buffer in a :class:`~tcu.can.collector.FrameCollector`; the agent's event loop
takes the buffers of all buses once per tick (see :mod:`tcu.can.collector`, which also
states the overflow policy: a batch that does not fit is dropped and counted, reported as
``DataLoss``; the log replay bus blocks instead).

How a thread reads depends on the bus:

* a bus that can be drained without blocking (:class:`PolledSource`: the bulk socketcand
  reader :class:`~tcu.can.socketcand.SocketcandBus` and the SocketCAN reader
  :class:`~tcu.can.socketcan.SocketcanBus`) is read once per tick: the thread sleeps until
  the next tick and takes everything the socket holds in as few system calls as it can
  (one ``recv`` of up to 256 KiB on TCP, ``recvmmsg`` of up to 256 frames on SocketCAN), so
  it wakes ``1000 / tick_ms`` times a second however fast frames come;
* a bus that hands out columns (:class:`FrameSource`: the log replay bus) is read with
  ``recv_frames`` (up to ``batch_frames`` frames or ``batch_ms`` of waiting);
* any other python-can bus with ``recv()``, grouped into batches the same way.

A bus that cannot be opened (socketcand not up yet, interface missing or down,
``[Errno 97]`` where the kernel has no CAN) or fails while it is read is opened
again by its reader with a backoff that starts at ``retry_initial_s`` and doubles up
to ``retry_max_s``; meanwhile the other buses and the rest of the agent go on. Each
change of state is logged once (down with the reason, a different reason, up again
after n attempts), with a reminder every 10 minutes while a bus stays down; the
attempts are counted in :class:`BusStats`. python-can's socketcand client does not
notice a server that closed the connection (it spins on the dead socket), so the
reader checks the socket for end of file whenever a receive returns nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import can
import numpy as np

from tcu.can.collector import FrameCollector
from tcu.can.socketcan import SocketcanBus
from tcu.can.socketcand import SocketcandBus
from tcu.config import BusConfig
from tcu.errors import BusError
from tcu.frames import FrameBatch

__all__ = [
    "BULK_READERS",
    "SOCKETCAND_READERS",
    "BusReader",
    "BusStats",
    "FrameSource",
    "PolledSource",
    "open_bus",
]

BULK_READERS = ("bulk", "python-can")
"""``options.reader`` of a socketcand or socketcan bus: the project's bulk reader
(:class:`~tcu.can.socketcand.SocketcandBus`, :class:`~tcu.can.socketcan.SocketcanBus`;
default) or python-can's own."""

SOCKETCAND_READERS = BULK_READERS

log = logging.getLogger(__name__)


class _SplitReadFilter(logging.Filter):
    """python-can's socketcand client warns each time a TCP read ends inside a message.

    That is normal on a stream (it keeps the part and waits for the rest), so the line
    is dropped; its other warnings (discarded data, invalid frames) still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # Its connect loop also warns on every refused attempt, hundreds a second for 10 s;
        # the reader logs the failure once instead.
        return "Got incomplete message" not in message and "Failed to connect to server" not in message


_SOCKETCAND_LOG = logging.getLogger("can.interfaces.socketcand.socketcand")


def open_bus(config: BusConfig) -> can.BusABC:
    """Open the bus named by ``config`` with python-can (or the log replay bus)."""
    if config.interface == "socketcand" and not any(
        isinstance(f, _SplitReadFilter) for f in _SOCKETCAND_LOG.filters
    ):
        _SOCKETCAND_LOG.addFilter(_SplitReadFilter())
    kwargs: dict[str, Any] = dict(config.options)
    if config.bitrate is not None:
        kwargs["bitrate"] = config.bitrate
    bulk_capable = config.interface in ("socketcand", "socketcan")
    reader = kwargs.pop("reader", "bulk") if bulk_capable else "python-can"
    if reader not in BULK_READERS:
        raise BusError(
            f"bus {config.name!r}: option reader = {reader!r}: expected one of {', '.join(BULK_READERS)}"
        )
    try:
        if config.interface == "socketcand":
            _probe_socketcand(kwargs)
        if reader == "bulk" and config.interface == "socketcan":
            bus: can.BusABC = SocketcanBus(channel=config.channel, **kwargs)
        elif reader == "bulk":
            bus = SocketcandBus(channel=config.channel, **kwargs)
        elif config.interface == "replay":
            # Imported by name: the replay bus is optional and pulls in the log readers.
            replay = importlib.import_module("tcu.can.logs.replay")
            bus = replay.ReplayBus(channel=config.channel, **kwargs)
        else:
            bus = can.Bus(interface=config.interface, channel=config.channel, **kwargs)
    except (can.CanError, OSError, ValueError, TypeError, ImportError) as exc:
        raise BusError(
            f"bus {config.name!r}: cannot open interface {config.interface!r} "
            f"channel {config.channel!r}: {exc}"
        ) from exc
    return bus


def _probe_socketcand(kwargs: dict[str, Any]) -> None:
    """Fail fast when nothing listens: python-can's client would retry in a busy loop for 10 s."""
    host, port = kwargs.get("host"), kwargs.get("port")
    if host is None or port is None:
        return  # python-can names the missing argument
    with socket.create_connection((str(host), int(port)), timeout=2.0):
        pass


def _peer_closed(bus: can.BusABC) -> bool:
    """True when the socketcand server closed the bus's connection (end of file on its socket).

    python-can 4.x keeps the socket in a private attribute; without it nothing is detected.
    """
    sock = getattr(bus, "_SocketCanDaemonBus__socket", None)
    if not isinstance(sock, socket.socket):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


@runtime_checkable
class FrameSource(Protocol):
    """A python-can bus that can also hand out frames as columns (``tcu.can.logs.replay.ReplayBus``).

    ``recv_frames`` waits at most ``timeout`` seconds for frames that are due and returns
    up to ``max_frames`` of them (None when none came).
    """

    def recv_frames(self, timeout: float | None, max_frames: int) -> FrameBatch | None: ...

    def shutdown(self) -> None: ...


@runtime_checkable
class PolledSource(Protocol):
    """A bus that can be drained without blocking (bulk socketcand, SocketCAN): read once per tick.

    ``poll_frames`` returns every frame the bus holds now (None when none), without
    waiting; it raises (``can.CanError``, ``OSError``) when the bus failed, after handing
    out the frames read before the failure.
    """

    def poll_frames(self) -> FrameBatch | None: ...

    def shutdown(self) -> None: ...


@dataclass(slots=True)
class BusStats:
    frames: int = 0
    """Data frames read (also those dropped afterwards: see ``overflow_frames``)."""
    error_frames: int = 0
    remote_frames: int = 0
    batches: int = 0
    overflow_frames: int = 0
    """Frames dropped because the bus's buffer was full (policy ``drop``; reported as DataLoss)."""
    kernel_dropped: int = 0
    """Frames the kernel dropped before the reader got them (SocketCAN ``SO_RXQ_OVFL``)."""
    reopened: int = 0
    """Times the bus was opened again after it failed while being read."""
    open_failures: int = 0
    """Failed attempts to open the bus (at start or to reopen it)."""
    receive_failures: int = 0
    """Times the bus failed while being read (then it is reopened)."""
    last_error: str = ""


REMINDER_S = 600.0
"""While a bus stays down, a WARNING says so again this often."""


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


class BusReader:
    """Reads one bus in a thread into its buffer of a :class:`~tcu.can.collector.FrameCollector`.

    ``tick_ms``: how often a :class:`PolledSource` is drained; ``batch_frames`` /
    ``batch_ms``: how other buses group frames before they go to the buffer.
    """

    def __init__(
        self,
        config: BusConfig,
        *,
        batch_frames: int = 512,
        batch_ms: int = 20,
        tick_ms: int = 20,
        opener: Callable[[BusConfig], can.BusABC] = open_bus,
    ) -> None:
        self.config = config
        self.batch_frames = batch_frames
        self.batch_s = batch_ms / 1000
        self.tick_s = tick_ms / 1000
        self.stats = BusStats()
        self._opener = opener
        self._stop = threading.Event()
        self._stop_requested = asyncio.Event()
        self.opened = False
        """True once the bus was opened (it may be down again since: see :attr:`up`)."""
        self.up = False
        """True while the bus is open and read."""

    async def run(self, out: FrameCollector) -> None:
        """Open the bus (retrying until it opens) and read it until :meth:`stop`.

        Open and receive failures never end the reader: they are logged, counted and
        retried with backoff. A bus that ends by itself (a replayed log) ends it.
        """
        loop = asyncio.get_running_loop()
        # A thread of its own per bus for the bus's lifetime: the default executor has only a few
        # workers (cpus + 4), and a reader holding one for hours would starve the others.
        done: asyncio.Future[None] = loop.create_future()

        def target() -> None:
            error: BaseException | None = None
            try:
                bus = self._open()
                if bus is not None:
                    self._loop(bus, out)
            except BaseException as exc:  # handed to the awaiting task
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(_settle, done, error)

        thread = threading.Thread(target=target, name=f"tcu.bus[{self.config.name}]", daemon=True)
        thread.start()
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stop_requested.wait())
        waiting: list[asyncio.Future[Any]] = [done, stopped]
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not done.done() and not self.up:
                # Stopped while (re)opening: the thread may be blocked in an open attempt for
                # seconds; it holds no frames, so do not wait for it (it ends on its own).
                return
            await asyncio.shield(done)
        finally:
            stopped.cancel()
            self._stop.set()

    def stop(self) -> None:
        """Stop reading (the last partial batch is still delivered); call from the event loop."""
        self._stop.set()
        self._stop_requested.set()

    def _open(self, *, reopen: bool = False) -> can.BusABC | None:
        """Open the bus, retrying with backoff until it opens; None when stopped first."""
        cfg = self.config
        delay = cfg.retry_initial_s
        attempt = 0
        down_since = time.monotonic()
        last_error = ""
        reminded = down_since
        while not self._stop.is_set():
            attempt += 1
            try:
                bus = self._opener(cfg)
            except BusError as exc:
                self.stats.open_failures += 1
                error = str(exc)
                self.stats.last_error = error
                now = time.monotonic()
                if attempt == 1:
                    log.warning(
                        "bus %s: down: %s; retrying in %.2g s, the wait doubling up to %.3g s"
                        " (the other buses and the uplink go on)",
                        cfg.name,
                        error,
                        delay,
                        cfg.retry_max_s,
                    )
                elif error != last_error:
                    log.warning("bus %s: still down (attempt %d): %s", cfg.name, attempt, error)
                elif now - reminded >= REMINDER_S:
                    reminded = now
                    log.warning(
                        "bus %s: still down after %d attempts over %.0f s: %s",
                        cfg.name,
                        attempt,
                        now - down_since,
                        error,
                    )
                else:
                    log.debug("bus %s: attempt %d failed: %s", cfg.name, attempt, error)
                last_error = error
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, cfg.retry_max_s)
                continue
            if self._stop.is_set():
                bus.shutdown()
                return None
            self.opened = self.up = True
            if attempt > 1 or reopen:
                log.warning(
                    "bus %s: opened %s channel %s after %d attempts (%.1f s down)",
                    cfg.name,
                    cfg.interface,
                    cfg.channel,
                    attempt,
                    time.monotonic() - down_since,
                )
            else:
                log.info("bus %s: opened %s channel %s", cfg.name, cfg.interface, cfg.channel)
            return bus
        return None

    def _post(self, out: FrameCollector, batch: FrameBatch, *, final: bool = False) -> bool:
        """Hand a batch to the bus's buffer (its policy: see :mod:`tcu.can.collector`).

        False only when the reader should end (stopped while a ``block`` buffer was full).
        ``final``: the last batch at shutdown, delivered although stop is set (the agent keeps
        taking until every reader has finished), waiting at most 5 s for room.
        """
        deadline = time.monotonic() + 5.0 if final else None
        result = out.put(self.config.name, batch, stopped=self._stop, deadline=deadline)
        if result == "stopped":
            log.warning("bus %s: %d frames not delivered at shutdown", self.config.name, len(batch))
            return False
        if result == "dropped":
            self.stats.overflow_frames += len(batch)
            return True
        self.stats.batches += 1
        return True

    def _loop_frames(self, bus: FrameSource | PolledSource, out: FrameCollector) -> None:
        """A bus that hands out frame batches (bulk socketcand, SocketCAN, log replay): no ``can.Message``.

        A :class:`PolledSource` is drained once per tick (the thread sleeps in between); a
        :class:`FrameSource` is asked for ``batch_frames`` frames within ``batch_ms``.
        A receive failure (CanError, OSError: the server closed the connection, the socket
        broke) is counted and logged, and the bus is opened again with backoff, as in :meth:`_loop`.
        """
        name = self.config.name
        current: FrameSource | PolledSource | None = bus
        next_tick = time.monotonic()
        try:
            while True:
                assert current is not None
                stopping = self._stop.is_set()
                if stopping and not isinstance(current, PolledSource):
                    break
                try:
                    if isinstance(current, PolledSource):
                        wait = next_tick - time.monotonic()
                        if not stopping and wait > 0 and self._stop.wait(wait):
                            stopping = True  # one last drain: what the socket holds is delivered too
                        next_tick = max(next_tick + self.tick_s, time.monotonic())
                        got = current.poll_frames()
                        self.stats.kernel_dropped = int(getattr(current, "kernel_dropped", 0))
                    else:
                        got = current.recv_frames(timeout=self.batch_s, max_frames=self.batch_frames)
                except (can.CanError, OSError) as exc:
                    self.stats.receive_failures += 1
                    self.stats.last_error = str(exc)
                    log.warning("bus %s: receive failed (%s); reopening", name, exc)
                    self.up = False
                    current.shutdown()
                    current = None
                    if stopping:
                        break
                    reopened = self._open(reopen=True)
                    if reopened is None:  # stopped while reopening
                        break
                    if not isinstance(reopened, (FrameSource, PolledSource)):  # the opener changed its mind
                        reopened.shutdown()
                        raise BusError(f"bus {name}: reopened as a bus without frame batches") from exc
                    current = reopened
                    self.stats.reopened += 1
                    continue
                if (
                    got is not None
                    and len(got)
                    and not self._deliver(got, out, live=isinstance(current, PolledSource), final=stopping)
                ):
                    return
                if stopping:
                    break
        finally:
            self.up = False
            if current is not None:
                current.shutdown()
            log.info("bus %s: closed after %d frames", name, self.stats.frames)

    def _deliver(self, got: FrameBatch, out: FrameCollector, *, live: bool, final: bool) -> bool:
        """Count error and remote frames, leave them out, post the data frames; False: end the reader."""
        special = got.is_error | got.is_remote
        if special.any():
            self.stats.error_frames += int(got.is_error.sum())
            self.stats.remote_frames += int((got.is_remote & ~got.is_error).sum())
            got = got.select(~special)
            if len(got) == 0:
                return True
        # A live bus's own times (ns from SocketCAN, µs from socketcand); others at µs resolution,
        # as from python-can's float seconds on every other bus.
        t_ns = got.t_ns if live else np.round((got.t_ns / 1e9) * 1_000_000).astype(np.int64) * 1000
        batch = FrameBatch.of_bus(
            self.config.name,
            t_ns,
            got.arbitration_id,
            got.is_extended,
            dlc=got.dlc,
            data=got.data,
            is_fd=got.is_fd,
            bitrate_switch=got.bitrate_switch,
        )
        self.stats.frames += len(batch)
        return self._post(out, batch, final=final)

    def _loop(self, bus: can.BusABC, out: FrameCollector) -> None:
        if isinstance(bus, (FrameSource, PolledSource)):
            self._loop_frames(bus, out)
            return
        name = self.config.name
        t_ns: list[int] = []
        ids: list[int] = []
        ext: list[bool] = []
        fd: list[bool] = []
        brs: list[bool] = []
        data: list[bytes] = []
        first = 0.0
        current: can.BusABC | None = bus
        socketcand = self.config.interface == "socketcand"
        try:
            while not self._stop.is_set():
                assert current is not None
                try:
                    msg = current.recv(timeout=self.batch_s)
                    if msg is None and socketcand and _peer_closed(current):
                        raise can.CanError("the socketcand server closed the connection")
                except (can.CanError, OSError) as exc:
                    self.stats.receive_failures += 1
                    self.stats.last_error = str(exc)
                    log.warning("bus %s: receive failed (%s); reopening", name, exc)
                    if data:  # what was read before the failure goes on now, not after the reopen
                        batch = _batch(name, t_ns, ids, ext, fd, brs, data)
                        t_ns, ids, ext, fd, brs, data = [], [], [], [], [], []
                        if not self._post(out, batch, final=True):
                            return
                    # Down from here: a stop no longer waits for this thread (it holds no frames).
                    self.up = False
                    current.shutdown()
                    current = self._open(reopen=True)
                    if current is None:  # stopped while reopening
                        break
                    self.stats.reopened += 1
                    continue
                if msg is not None:
                    if msg.is_error_frame:
                        self.stats.error_frames += 1
                    elif msg.is_remote_frame:
                        self.stats.remote_frames += 1
                    else:
                        if not data:
                            first = time.monotonic()
                        t_ns.append(round(msg.timestamp * 1_000_000) * 1000)
                        ids.append(msg.arbitration_id)
                        ext.append(msg.is_extended_id)
                        fd.append(msg.is_fd)
                        brs.append(msg.bitrate_switch)
                        data.append(bytes(msg.data))
                        self.stats.frames += 1
                        if len(data) < self.batch_frames and time.monotonic() - first < self.batch_s:
                            continue
                if data and (
                    msg is None or len(data) >= self.batch_frames or time.monotonic() - first >= self.batch_s
                ):
                    batch = _batch(name, t_ns, ids, ext, fd, brs, data)
                    t_ns, ids, ext, fd, brs, data = [], [], [], [], [], []
                    if not self._post(out, batch):
                        return
            if data:  # stopped with a partial batch: deliver it too
                batch = _batch(name, t_ns, ids, ext, fd, brs, data)
                self._post(out, batch, final=True)
        finally:
            self.up = False
            if current is not None:
                current.shutdown()
            log.info("bus %s: closed after %d frames", name, self.stats.frames)


def _batch(  # noqa: PLR0917 - the reader's six column lists
    bus: str,
    t_ns: list[int],
    ids: list[int],
    ext: list[bool],
    fd: list[bool],
    brs: list[bool],
    data: list[bytes],
) -> FrameBatch:
    is_fd = np.array(fd, np.bool_)
    any_fd = bool(is_fd.any())
    return FrameBatch.of_payloads(
        bus,
        np.array(t_ns, np.int64),
        np.array(ids, np.uint32),
        data,
        is_extended=np.array(ext, np.bool_),
        is_fd=is_fd if any_fd else None,
        bitrate_switch=np.array(brs, np.bool_) if any_fd else None,
    )
