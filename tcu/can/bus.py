"""Open python-can buses from config and read them in a thread, in batches.

python-can's ``recv()`` blocks, so each bus is read by its own thread, which
groups frames into a :class:`~tcu.frames.FrameBatch` (up to ``batch_frames`` frames or
``batch_ms`` of waiting) and hands it to the event loop through a bounded
``asyncio.Queue``. Queue policy: **block**. When the consumer falls behind, the
reader thread waits, the interface's own buffer fills (kernel socket buffer for
SocketCAN, TCP window for socketcand) and the sender is paced; nothing is
dropped silently inside the agent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import can
import numpy as np

from tcu.config import BusConfig
from tcu.errors import BusError
from tcu.frames import FrameBatch

__all__ = ["BusReader", "BusStats", "FrameSource", "open_bus"]

log = logging.getLogger(__name__)


class _SplitReadFilter(logging.Filter):
    """python-can's socketcand client warns each time a TCP read ends inside a message.

    That is normal on a stream (it keeps the part and waits for the rest), so the line
    is dropped; its other warnings (discarded data, invalid frames) still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "Got incomplete message" not in record.getMessage()


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
    try:
        if config.interface == "replay":
            # Imported by name: the replay bus is optional and pulls in the log readers.
            replay = importlib.import_module("tcu.can.logs.replay")
            bus: can.BusABC = replay.ReplayBus(channel=config.channel, **kwargs)
        else:
            bus = can.Bus(interface=config.interface, channel=config.channel, **kwargs)
    except (can.CanError, OSError, ValueError, TypeError, ImportError) as exc:
        raise BusError(
            f"bus {config.name!r}: cannot open interface {config.interface!r} "
            f"channel {config.channel!r}: {exc}"
        ) from exc
    return bus


@runtime_checkable
class FrameSource(Protocol):
    """A python-can bus that can also hand out frames as columns (``tcu.can.logs.replay.ReplayBus``).

    ``recv_frames`` waits at most ``timeout`` seconds for frames that are due and returns
    up to ``max_frames`` of them (None when none came).
    """

    def recv_frames(self, timeout: float | None, max_frames: int) -> FrameBatch | None: ...

    def shutdown(self) -> None: ...


@dataclass(slots=True)
class BusStats:
    frames: int = 0
    error_frames: int = 0
    remote_frames: int = 0
    batches: int = 0
    reopened: int = 0


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


class BusReader:
    """Reads one bus in a thread and posts :class:`FrameBatch` es to a queue."""

    def __init__(
        self,
        config: BusConfig,
        *,
        batch_frames: int = 512,
        batch_ms: int = 20,
        opener: Callable[[BusConfig], can.BusABC] = open_bus,
        reopen_delay_s: float = 1.0,
    ) -> None:
        self.config = config
        self.batch_frames = batch_frames
        self.batch_s = batch_ms / 1000
        self.stats = BusStats()
        self._opener = opener
        self._reopen_delay_s = reopen_delay_s
        self._stop = threading.Event()
        self.opened = False

    async def run(self, out: asyncio.Queue[FrameBatch | None]) -> None:
        """Read until cancelled. The first open failure is raised as :class:`BusError`."""
        loop = asyncio.get_running_loop()
        bus = await asyncio.to_thread(self._opener, self.config)
        self.opened = True
        log.info("bus %s: opened %s channel %s", self.config.name, self.config.interface, self.config.channel)
        self._stop.clear()
        # A thread of its own per bus for the bus's lifetime: the default executor has only a few
        # workers (cpus + 4), and a reader holding one for hours would starve the others.
        done: asyncio.Future[None] = loop.create_future()

        def target() -> None:
            error: BaseException | None = None
            try:
                self._loop(bus, loop, out)
            except BaseException as exc:  # handed to the awaiting task
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(_settle, done, error)

        thread = threading.Thread(target=target, name=f"tcu.bus[{self.config.name}]", daemon=True)
        thread.start()
        try:
            await asyncio.shield(done)
        finally:
            self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    def _post(
        self,
        loop: asyncio.AbstractEventLoop,
        out: asyncio.Queue[FrameBatch | None],
        batch: FrameBatch,
        *,
        final: bool = False,
    ) -> bool:
        """Hand a batch to the loop; blocks while the queue is full (the stated policy).

        ``final``: the last batch at shutdown, delivered although stop is set (the agent
        keeps consuming until every reader has finished), for at most 5 s.
        """
        try:
            future = asyncio.run_coroutine_threadsafe(out.put(batch), loop)
        except RuntimeError:  # the loop is closed
            return False
        deadline = time.monotonic() + 5.0
        while True:
            try:
                future.result(timeout=0.2)
            except concurrent.futures.TimeoutError:
                if loop.is_closed() or (self._stop.is_set() and (not final or time.monotonic() > deadline)):
                    future.cancel()
                    log.warning("bus %s: %d frames not delivered at shutdown", self.config.name, len(batch))
                    return False
                continue
            except (concurrent.futures.CancelledError, RuntimeError):
                return False
            self.stats.batches += 1
            return True

    def _reopen(self, bus: can.BusABC, exc: Exception) -> can.BusABC | None:
        """After a failed receive: close, then reopen every ``reopen_delay_s`` until stopped (None)."""
        log.warning(
            "bus %s: receive failed (%s); reopening in %.1f s", self.config.name, exc, self._reopen_delay_s
        )
        bus.shutdown()
        while not self._stop.wait(self._reopen_delay_s):
            try:
                bus = self._opener(self.config)
            except BusError as err:
                log.warning("%s", err)
                continue
            self.stats.reopened += 1
            return bus
        return None

    def _loop_frames(
        self, bus: FrameSource, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[FrameBatch | None]
    ) -> None:
        """A bus that hands out frame batches itself (the log replay bus): no ``can.Message`` per frame."""
        name = self.config.name
        try:
            while not self._stop.is_set():
                got = bus.recv_frames(timeout=self.batch_s, max_frames=self.batch_frames)
                if got is None or len(got) == 0:
                    continue
                special = got.is_error | got.is_remote
                if special.any():
                    self.stats.error_frames += int(got.is_error.sum())
                    self.stats.remote_frames += int((got.is_remote & ~got.is_error).sum())
                    got = got.select(~special)
                    if len(got) == 0:
                        continue
                # Source times at µs resolution, as from python-can's float seconds on every other bus.
                t_ns = np.round((got.t_ns / 1e9) * 1_000_000).astype(np.int64) * 1000
                batch = FrameBatch.of_bus(
                    name,
                    t_ns,
                    got.arbitration_id,
                    got.is_extended,
                    dlc=got.dlc,
                    data=got.data,
                    is_fd=got.is_fd,
                    bitrate_switch=got.bitrate_switch,
                )
                self.stats.frames += len(batch)
                if not self._post(loop, out, batch):
                    return
        finally:
            bus.shutdown()
            log.info("bus %s: closed after %d frames", name, self.stats.frames)

    def _loop(
        self, bus: can.BusABC, loop: asyncio.AbstractEventLoop, out: asyncio.Queue[FrameBatch | None]
    ) -> None:
        if isinstance(bus, FrameSource):
            self._loop_frames(bus, loop, out)
            return
        name = self.config.name
        t_ns: list[int] = []
        ids: list[int] = []
        ext: list[bool] = []
        fd: list[bool] = []
        brs: list[bool] = []
        data: list[bytes] = []
        first = 0.0
        try:
            while not self._stop.is_set():
                try:
                    msg = bus.recv(timeout=self.batch_s)
                except (can.CanError, OSError) as exc:
                    reopened = self._reopen(bus, exc)
                    if reopened is None:
                        return
                    bus = reopened
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
                    if not self._post(loop, out, batch):
                        return
            if data:  # stopped with a partial batch: deliver it too
                batch = _batch(name, t_ns, ids, ext, fd, brs, data)
                self._post(loop, out, batch, final=True)
        finally:
            bus.shutdown()
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
