"""Per-bus frame buffers that the bus readers fill and the event loop empties once per tick.

Every bus reader thread (:class:`tcu.can.bus.BusReader`) appends the frames it reads to its
bus's buffer (:meth:`FrameCollector.put`, a lock and a list append); the agent's pipeline
task wakes once per tick (``[frames] tick_ms``, 20 ms by default) and takes everything of
every bus in one hand-off (:meth:`FrameCollector.take`): one
:class:`~tcu.frames.FrameBatch` whose channel table is the buses in configuration order
and whose ``channel`` column says which bus each frame came from. So the loop is woken a
fixed number of times per second whatever the number of buses and the frame rate, and the
decoder sees one batch of all buses per tick.

**Bounds and overflow policy.** Each bus's buffer holds at most ``max_frames`` frames
(``[frames] buffer_frames``). A batch that does not fit is handled by the bus's policy:

* ``"drop"`` (default for live buses): the batch that does not fit is dropped whole
  (*drop newest*: what is buffered stays contiguous), its frames are counted per bus in
  :attr:`FrameCollector.overflow` and in :attr:`BusStats.overflow_frames`, logged (the first
  time and every 10 s while it goes on) and reported upstream as a ``DataLoss`` batch by the
  agent. It never blocks a reader, so a slow pipeline does not push the loss into a kernel
  buffer where it would go uncounted.
* ``"block"`` (always used for the log replay bus, which has no real time to lose): the
  reader waits until the loop has taken the buffer (or the reader is stopped).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tcu.frames import FrameBatch

__all__ = ["OVERFLOW_POLICIES", "FrameCollector", "Overflow", "PutResult", "merge_buses"]

log = logging.getLogger(__name__)

OVERFLOW_POLICIES = ("drop", "block")
"""``[frames] overflow``: what a full bus buffer does with the next batch (see the module docstring)."""

_LOG_EVERY_S = 10.0

PutResult = Literal["ok", "dropped", "stopped"]


@dataclass(frozen=True, slots=True)
class Overflow:
    """Frames dropped because a bus buffer was full, since the last :meth:`FrameCollector.take_overflow`."""

    frames: dict[str, int]
    """Per bus: frames dropped."""
    payload_bytes: int
    """Their payload bytes (sum of DLCs)."""
    first_ns: int
    """Wall-clock time of the first drop (``time.time_ns``)."""

    @property
    def total(self) -> int:
        return sum(self.frames.values())


class FrameCollector:
    """Bounded per-bus frame buffers: readers :meth:`put`, the loop :meth:`take` s all at once."""

    def __init__(
        self,
        buses: Sequence[str],
        *,
        max_frames: int = 65_536,
        block: Collection[str] = (),
    ) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be positive")
        if len(set(buses)) != len(buses):
            raise ValueError(f"bus names must be unique: {list(buses)}")
        self.buses = tuple(buses)
        self.max_frames = max_frames
        self._index = {name: i for i, name in enumerate(self.buses)}
        self._block = frozenset(block)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._parts: list[list[FrameBatch]] = [[] for _ in self.buses]
        self._held = [0] * len(self.buses)
        self.overflow = dict.fromkeys(self.buses, 0)
        """Frames dropped per bus since start (policy ``drop``)."""
        self._pending_loss: dict[str, int] = {}
        self._pending_loss_bytes = 0
        self._pending_loss_ns = 0
        self._logged_at = dict.fromkeys(self.buses, -_LOG_EVERY_S)
        self.taken_frames = 0
        self.takes = 0
        self._first_put: float | None = None
        self.taken_since: float = 0.0
        """``time.monotonic()`` of the first put of what the last :meth:`take` handed out."""

    def held(self) -> int:
        """Frames buffered now, all buses."""
        with self._lock:
            return sum(self._held)

    def put(
        self,
        bus: str,
        batch: FrameBatch,
        *,
        stopped: threading.Event | None = None,
        deadline: float | None = None,
    ) -> PutResult:
        """Append one bus's frames: ``"ok"``, ``"dropped"`` (policy ``drop``, counted) or ``"stopped"``.

        With the ``block`` policy this waits while the bus's buffer is full, until the loop
        has taken it, or (``"stopped"``, nothing added) until ``deadline`` (monotonic) passes
        or, without a deadline, ``stopped`` is set. A batch larger than the whole buffer is
        taken when the buffer is empty, so no reader waits forever.
        """
        n = len(batch)
        if n == 0:
            return "ok"
        i = self._index[bus]
        with self._lock:
            if self._held[i] + n > self.max_frames and self._held[i] > 0:
                if bus not in self._block:
                    self._drop(bus, batch)
                    return "dropped"
                while self._held[i] + n > self.max_frames and self._held[i] > 0:
                    if deadline is not None:
                        if time.monotonic() >= deadline:
                            return "stopped"
                    elif stopped is not None and stopped.is_set():
                        return "stopped"
                    self._room.wait(0.1)
            self._parts[i].append(batch)
            self._held[i] += n
            if self._first_put is None:
                self._first_put = time.monotonic()
        return "ok"

    def _drop(self, bus: str, batch: FrameBatch) -> None:
        """Count (and log, rate-limited) a dropped batch; the caller holds the lock."""
        n = len(batch)
        self.overflow[bus] += n
        if not self._pending_loss:
            self._pending_loss_ns = time.time_ns()
        self._pending_loss[bus] = self._pending_loss.get(bus, 0) + n
        self._pending_loss_bytes += int(batch.dlc.sum(dtype=np.int64))
        now = time.monotonic()
        if now - self._logged_at[bus] >= _LOG_EVERY_S:
            self._logged_at[bus] = now
            log.error(
                "bus %s: frame buffer full (%d frames, the pipeline is behind): %d frames dropped so far"
                " (counted, reported as DataLoss)",
                bus,
                self.max_frames,
                self.overflow[bus],
            )

    def take(self) -> FrameBatch | None:
        """Everything buffered, of every bus, as one batch (None when empty).

        Channel ``i`` is ``buses[i]``; within a bus the frames keep their arrival order.
        """
        with self._lock:
            if not any(self._held):
                return None
            parts, self._parts = self._parts, [[] for _ in self.buses]
            self._held = [0] * len(self.buses)
            self.taken_since = self._first_put if self._first_put is not None else time.monotonic()
            self._first_put = None
            self._room.notify_all()
        batch = merge_buses(self.buses, parts)
        self.taken_frames += len(batch)
        self.takes += 1
        return batch

    def take_overflow(self) -> Overflow | None:
        """The drops since the last call (None when there were none)."""
        with self._lock:
            if not self._pending_loss:
                return None
            loss = Overflow(dict(self._pending_loss), self._pending_loss_bytes, self._pending_loss_ns)
            self._pending_loss, self._pending_loss_bytes, self._pending_loss_ns = {}, 0, 0
        return loss


def merge_buses(buses: tuple[str, ...], parts: Sequence[Sequence[FrameBatch]]) -> FrameBatch:
    """One batch from single-bus batches: ``parts[i]`` are bus ``buses[i]``'s, channel ``i``."""
    flat = [(i, p) for i, ps in enumerate(parts) for p in ps if len(p)]
    total = sum(len(p) for _, p in flat)
    width = max((p.data.shape[1] for _, p in flat), default=8)
    t_ns = np.empty(total, np.int64)
    ids = np.empty(total, np.uint32)
    ext = np.empty(total, np.bool_)
    channel = np.empty(total, np.int16)
    dlc = np.empty(total, np.uint8)
    data = np.zeros((total, width), np.uint8)
    is_fd = np.empty(total, np.bool_)
    brs = np.empty(total, np.bool_)
    is_error = np.empty(total, np.bool_)
    is_remote = np.empty(total, np.bool_)
    is_rx = np.empty(total, np.bool_)
    row = 0
    for i, p in flat:
        if len(p.channels) > 1:
            raise ValueError(f"bus {buses[i]}: a batch of {len(p.channels)} channels")
        end = row + len(p)
        t_ns[row:end] = p.t_ns
        ids[row:end] = p.arbitration_id
        ext[row:end] = p.is_extended
        channel[row:end] = i
        dlc[row:end] = p.dlc
        data[row:end, : p.data.shape[1]] = p.data
        is_fd[row:end] = p.is_fd
        brs[row:end] = p.bitrate_switch
        is_error[row:end] = p.is_error
        is_remote[row:end] = p.is_remote
        is_rx[row:end] = p.is_rx
        row = end
    return FrameBatch(
        t_ns=t_ns,
        arbitration_id=ids,
        is_extended=ext,
        channel=channel,
        channels=buses,
        dlc=dlc,
        data=data,
        is_fd=is_fd,
        bitrate_switch=brs,
        is_error=is_error,
        is_remote=is_remote,
        is_rx=is_rx,
    )
