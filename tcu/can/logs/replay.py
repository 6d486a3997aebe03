"""A python-can bus that replays a recorded CAN log.

``ReplayBus(channel="drive.blf", rate=1.0)`` yields the log's frames from ``recv()`` as
``can.Message`` s, paced like the recording (``rate`` 1.0 = real time, 2.0 = twice as fast,
``None`` = as fast as the reader can go). Any log :func:`tcu.can.logs.open_log` reads
works (candump ``.log``, ``.blf``, ``.asc``, ``.trc``, ``.mf4``).

Timestamps: by default (``timestamps="original"``) messages carry the recorded source
timestamps unchanged, so decoded data keeps the time it was recorded at; on the 2nd,
3rd, ... pass of ``loop=True`` they are shifted by the window's length (plus the last
gap) per pass so they keep increasing. ``timestamps="now"`` instead stamps each message
with the wall-clock time at which it is due (``time.time()`` based).

The bus is receive-only: ``send()`` raises ``can.CanOperationError``. When the log is
finished (and ``loop`` is off) ``recv()`` returns ``None`` after its timeout and
:attr:`ReplayBus.finished` is True. Reading the file happens in ``recv()`` (the caller's
thread), like any python-can bus.

Besides python-can's ``recv()``, :meth:`ReplayBus.recv_frames` hands out the frames that
are due as one :class:`~tcu.frames.FrameBatch` (the log reader's columns, no
``can.Message`` per frame): the agent's bus reader takes that path (``tcu replay``), with
the same pacing, window, channel selection and timestamps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import can
import numpy as np
import numpy.typing as npt

from tcu.can.logs.reader import open_log
from tcu.can.logs.reading import to_messages
from tcu.frames import FrameBatch, empty_frames

__all__ = ["ReplayBus"]

log = logging.getLogger(__name__)

_TIMESTAMP_MODES = ("original", "now")


class ReplayBus(can.BusABC):
    """Replay a CAN log as a python-can bus (see the module docstring)."""

    def __init__(
        self,
        channel: str | Path,
        *,
        rate: float | None = 1.0,
        start_s: float = 0.0,
        end_s: float | None = None,
        loop: bool = False,
        channels: Sequence[str] | None = None,
        channel_map: Mapping[str, str] | None = None,
        timestamps: str = "original",
        log_format: str | None = None,
        chunk_frames: int = 16384,
        **kwargs: Any,
    ) -> None:
        """
        :param channel: path of the log file.
        :param rate: playback speed relative to the recording; ``None`` = no pacing.
        :param start_s: skip frames earlier than this many seconds after the log's first frame.
        :param end_s: stop at this many seconds after the log's first frame.
        :param loop: start again at ``start_s`` when the end is reached.
        :param channels: recorded channel names to replay (default: all).
        :param channel_map: recorded channel name → channel name put on the messages.
        :param timestamps: ``"original"`` (default) or ``"now"``.
        """
        if rate is not None and rate <= 0:
            raise ValueError(f"rate must be > 0 or None, got {rate}")
        if timestamps not in _TIMESTAMP_MODES:
            raise ValueError(f"timestamps must be one of {_TIMESTAMP_MODES}, got {timestamps!r}")
        if end_s is not None and end_s < start_s:
            raise ValueError(f"end_s ({end_s}) is before start_s ({start_s})")
        self.path = Path(channel)
        self.rate = None if rate is None else float(rate)
        self.start_s = float(start_s)
        self.end_s = None if end_s is None else float(end_s)
        self.loop = bool(loop)
        self.channels = None if channels is None else frozenset(str(c) for c in channels)
        self.channel_map = dict(channel_map or {})
        self.timestamps = timestamps
        self._log_format = log_format
        self._chunk_frames = chunk_frames
        open_log(self.path, fmt=log_format)  # fail early: missing file, unknown format
        self.channel_info = f"replay of {self.path}"
        self.finished = False
        self.frames_sent = 0
        self._first_ns: int | None = None  # first frame of the whole log
        self._pass = 0
        self._pass_shift_ns = 0
        self._span_ns = 0
        self._window_first_ns: int | None = None  # first replayed frame of the first pass
        self._pending: FrameBatch = empty_frames(())
        self._pending_t_ns: npt.NDArray[np.int64] = np.zeros(0, np.int64)
        self._index = 0
        self._frames: Iterator[FrameBatch] = self._open_pass()
        self._wall_start: float | None = None
        self._replay_start_ns: int | None = None
        super().__init__(channel=str(self.path), **kwargs)

    # -- python-can API ------------------------------------------------------------------

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        raise can.CanOperationError("the replay bus is receive-only")

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        frames = self.recv_frames(timeout, max_frames=1)
        if frames is None:
            return None, False
        (msg,) = to_messages(frames)
        return msg, False

    def recv_frames(self, timeout: float | None, max_frames: int = 512) -> FrameBatch | None:
        """The next frames that are due (at most ``max_frames``, at least one), or None after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._index >= len(self._pending) and not self._refill():
            if deadline is not None:
                time.sleep(max(0.0, deadline - time.monotonic()))
            return None
        first_ns = int(self._pending_t_ns[self._index])
        if self._wall_start is None or self._replay_start_ns is None:
            self._wall_start = time.monotonic()
            self._replay_start_ns = first_ns
        due = self._due(first_ns)
        wait = due - time.monotonic()
        if wait > 0:
            if deadline is not None and due > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                return None
            time.sleep(wait)
        stop = min(len(self._pending), self._index + max(1, max_frames))
        if self.rate is not None:  # only what is due by now
            now_ns = self._replay_start_ns + (time.monotonic() - self._wall_start) * self.rate * 1e9
            stop = max(self._index + 1, min(stop, int(np.searchsorted(self._pending_t_ns, now_ns, "right"))))
        rows = np.arange(self._index, stop)
        self._index = stop
        frames = self._pending.select(rows)
        t_ns = self._pending_t_ns[rows]
        if self.timestamps == "now":
            due_s = np.array([self._due(int(t)) for t in t_ns.tolist()])
            wall = time.time() - time.monotonic()
            t_ns = np.round((wall + due_s) * 1e9).astype(np.int64)
        self.frames_sent += len(rows)
        return FrameBatch(
            t_ns,
            frames.arbitration_id,
            frames.is_extended,
            frames.channel,
            frames.channels,
            frames.dlc,
            frames.data,
            frames.is_fd,
            frames.bitrate_switch,
            frames.is_error,
            frames.is_remote,
            frames.is_rx,
        )

    def _due(self, t_ns: int) -> float:
        """The monotonic time at which the frame recorded at ``t_ns`` is due."""
        assert self._wall_start is not None and self._replay_start_ns is not None
        if self.rate is None:
            return self._wall_start
        return self._wall_start + (t_ns - self._replay_start_ns) / 1e9 / self.rate

    def shutdown(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()
        self._pending = empty_frames(())
        self._pending_t_ns = np.zeros(0, np.int64)
        super().shutdown()

    # -- reading -------------------------------------------------------------------------

    def _open_pass(self) -> Iterator[FrameBatch]:
        return iter(open_log(self.path, fmt=self._log_format, chunk_frames=self._chunk_frames))

    def _refill(self) -> bool:
        """Load the next chunk's messages; False when the log (and looping) is over."""
        while True:
            chunk = next(self._frames, None)
            if chunk is None:
                if not self.loop or self._window_first_ns is None:
                    self.finished = True
                    return False
                self._pass += 1
                self._pass_shift_ns = self._pass * self._span_ns
                self._frames = self._open_pass()
                continue
            frames, t_ns = self._select(chunk)
            if len(frames):
                self._pending, self._pending_t_ns, self._index = frames, t_ns, 0
                return True

    def _select(self, chunk: FrameBatch) -> tuple[FrameBatch, npt.NDArray[np.int64]]:
        """The chunk's frames in the window and channels, renamed, and their (shifted) times."""
        if len(chunk) == 0:
            return chunk, chunk.t_ns
        if self._first_ns is None:
            self._first_ns = int(chunk.t_ns[0])
        rel = chunk.t_ns - self._first_ns
        keep = rel >= round(self.start_s * 1e9)
        if self.end_s is not None:
            keep &= rel <= round(self.end_s * 1e9)
        if self.channels is not None:
            wanted = np.array([name in self.channels for name in chunk.channels] or [False])
            keep &= wanted[chunk.channel]
        selected = chunk.select(keep)
        if len(selected) == 0:
            return selected, selected.t_ns
        if self._pass == 0:
            if self._window_first_ns is None:
                self._window_first_ns = int(selected.t_ns[0])
            last_gap = int(selected.t_ns[-1] - selected.t_ns[-2]) if len(selected) > 1 else 1_000_000
            self._span_ns = int(selected.t_ns[-1]) - self._window_first_ns + max(last_gap, 1)
        t_ns = selected.t_ns + self._pass_shift_ns
        if self.channel_map:
            selected = selected.renamed(tuple(self.channel_map.get(c, c) for c in selected.channels))
        return selected, t_ns
